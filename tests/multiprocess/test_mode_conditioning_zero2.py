"""Mode-conditioned SFT (modes from a per-example side-car, with mode dropout) under DeepSpeed
ZeRO-2 on 2 CPU processes follows the single-process loss and gradient norm within 1e-5
relative: the prefix transform is a function of the global sample index, not of the rank."""

from __future__ import annotations

import json

import numpy as np
import pytest
from mp_helpers import assert_curves_close, curve, overrides, torchrun

from llmcore.data.example_sidecar import write_example_sidecar

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]

LOSS_REL = 1e-5


def test_mode_conditioning_zero2_matches_single_process(prepared, single_ref, tmp_path_factory):
    d = tmp_path_factory.mktemp("modc")
    jsonl = d / "train.jsonl"
    jsonl.write_text("".join(json.dumps({"prompt": f"Count: {i} {i + 1}", "answer": f" {i + 2} {i + 3}."}) + "\n"
                             for i in range(24)))
    write_example_sidecar(str(jsonl), "clusters", (np.arange(24) % 3 == 0).astype(np.int64))
    extra = ("train.max_steps=6", "data.format=sft", f"data.path={jsonl}", f"data.val_path={jsonl}",
             f"data.tokenizer={prepared / 'tokenizer'}", "data.seq_len=24", "data.sidecars=[clusters]",
             "recipes=[mode_conditioning]", "mode_conditioning.mode_field=clusters",
             "mode_conditioning.mode_dropout=0.25")
    ref = single_ref(*extra)
    out = tmp_path_factory.mktemp("modc_zero2")
    torchrun(2, overrides(prepared, out, *extra, "engine.backend=deepspeed", "engine.zero_stage=2"))
    assert_curves_close(ref, out, LOSS_REL)
    assert len(curve(out)) == 6
