"""Contracts 2-5 of the recipe platform on 2 CPU processes, under DDP and DeepSpeed ZeRO-3,
through the probe recipe: a per-token field added by a transform and a side-car beside the
shards reach every rank's loss aligned with the labels (2, 3); the `ntp` term replaced by the
recipe, or scaled by it, follows the single-process curve (4); the frozen module is whole,
in eval mode, gradient-free and identical on every rank, and never in the checkpoint (5)."""

from __future__ import annotations

import json

import pytest
from mp_helpers import ZERO3_JSON, assert_curves_close, overrides, torchrun
from run_configs import with_id_sidecar
from safetensors.torch import load_file

from llmcore.train import checkpoint

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]

LOSS_REL = 1e-5  # as the plain DDP / ZeRO curves (measured 1e-7 to 2e-7)
STEPS = "train.max_steps=4"
PROBE = ("recipes=[probe]", "probe.echo=true", "probe.check_fields=[probe_echo, ids]", "data.sidecars=[ids]")
NTP = {"replaced": ("probe.replace_ntp=true",), "scaled": ("probe.ntp_weight=0.5",)}


@pytest.fixture(scope="module")
def data(prepared, tmp_path_factory):
    return with_id_sidecar(prepared, tmp_path_factory.mktemp("sidecar") / "data")


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    ds_json = tmp_path_factory.mktemp("dsjson") / "zero3.json"
    ds_json.write_text(json.dumps(ZERO3_JSON))  # every parameter really sharded
    return {"ddp": ["engine.backend=ddp"],
            "zero3": ["engine.backend=deepspeed", "engine.zero_stage=3", f"engine.deepspeed_config={ds_json}"]}


@pytest.mark.parametrize("ntp", sorted(NTP))
@pytest.mark.parametrize("engine", ["ddp", "zero3"])
def test_probe_contracts_across_processes(engine, ntp, data, engines, single_ref, tmp_path):
    # the replaced term is llmcore's own, so its reference is the plain run; the scaled one
    # is compared with the same scaling on one process
    ref = single_ref(f"data.path={data}", STEPS, *(() if ntp == "replaced" else ("recipes=[probe]", *NTP[ntp])))
    out = tmp_path / "run"
    torchrun(2, overrides(data, out, STEPS, *engines[engine], *PROBE, *NTP[ntp]))
    assert_curves_close(ref, out, LOSS_REL)
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    steps = [r for r in rows if "probe/field_checked" in r]
    assert len(steps) == 4
    assert all(r["probe/field_mismatch"] == 0 and r["probe/field_checked"] == 2 * r["loss_tokens"] for r in steps)
    assert all(r["probe/frozen_ok"] == 1 for r in steps)
    ckpt = checkpoint.resolve(out)
    saved = {**load_file(str(ckpt / "model.safetensors")), **load_file(str(ckpt / "aux.safetensors"))}
    assert "probe.weight" in saved and not any("frozen" in k for k in saved)
    assert checkpoint.read_state(ckpt)["recipes"] == {"probe": {"steps_seen": 4}}
