"""`train.loggers`: TensorBoard and W&B get the rows of metrics.jsonl with the same keys and
values (read back from the event file and the offline W&B run file), a resume does not
duplicate replayed steps, and a tracker is never imported unless listed."""

from __future__ import annotations

import ast
import json
import shutil
import sys
from pathlib import Path

import pytest
from run_configs import tiny_config

from llmcore.config.load import load_config
from llmcore.errors import ConfigError
from llmcore.train import checkpoint
from llmcore.train.loggers import WandbTracker, scalars
from llmcore.train.loop import Trainer

STEPS = ("data.seq_len=32", "train.global_batch_size=4", "model.n_layers=2", "train.log_every=1",
         "train.eval_batches=1", "train.eval_every=2")


def rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def expected_series(out: Path) -> dict[str, list[tuple[int, float]]]:
    """key -> [(step, value)] of every number in metrics.jsonl, as the trackers should show it."""
    series: dict[str, list[tuple[int, float]]] = {}
    for row in rows(out):
        for key, value in scalars(row).items():
            series.setdefault(key, []).append((row["step"], value))
    return series


def tensorboard_series(out: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def assert_same_series(got, want):
    assert sorted(got) == sorted(want)
    for key in want:
        assert [s for s, _ in got[key]] == [s for s, _ in want[key]], key
        # TensorBoard stores float32
        assert [v for _, v in got[key]] == pytest.approx([v for _, v in want[key]], rel=1e-6, abs=1e-30), key


def test_tensorboard_resume_drops_replayed_steps(prepared, tmp_path):
    """Run 4 steps (checkpoints at 2 and 4), point latest back at step 2, resume to 4: the event
    file shows each step once, with the resumed run's values, as metrics.jsonl does."""
    pytest.importorskip("tensorboard")
    out = tmp_path / "run"
    args = (*STEPS, "train.max_steps=4", "train.save_every=2", "train.keep_last=0",
            "train.loggers=[jsonl, tensorboard]")
    Trainer(tiny_config(prepared, out, *args)).fit()
    shutil.rmtree(checkpoint.resolve(out))
    (out / "latest").write_text("ckpt-000002\n")
    Trainer(tiny_config(prepared, out, *args, "optim.lr=1e-2", "train.allow_config_change=true")).fit()  # replayed values differ
    want = expected_series(out)
    assert [s for s, _ in want["loss"]] == [1, 2, 3, 4]
    assert_same_series(tensorboard_series(out), want)


def wandb_history(out: Path) -> dict[int, dict]:
    """step -> logged values, read from the offline run's `.wandb` file: a LevelDB-style log of
    32 KiB blocks (after a 7-byte file header), each record chunk with a 7-byte header
    (crc32, little-endian length, type 1 full / 2 first / 3 middle / 4 last), holding
    protobuf `Record`s."""
    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = out.glob("wandb/offline-run-*/run-*.wandb")
    data, block, pos, pending = path.read_bytes(), 32768, 7, b""
    assert data[:4] == b":W&B"
    history: dict[int, dict] = {}
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind not in (1, 4):
            continue
        record, pending = pb.Record.FromString(pending), b""
        if record.WhichOneof("record_type") == "history":
            items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
            history[items["_step"]] = {k: v for k, v in items.items() if not k.startswith("_")}
    return history


def test_tensorboard_and_wandb_get_every_metric_row(prepared, tmp_path, monkeypatch):
    """One run logging to both (W&B offline: no key), read back from the event file and the
    offline run file: every number of every metrics.jsonl row, same key, same step."""
    pytest.importorskip("tensorboard")
    pytest.importorskip("wandb")
    for var in ("WANDB_API_KEY", "WANDB_MODE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "run"
    Trainer(tiny_config(prepared, out, *STEPS, "train.max_steps=4", "train.loggers=[jsonl, tensorboard, wandb]",
                        "train.wandb_project=unit")).fit()
    want = expected_series(out)
    assert {"loss", "lr", "grad_norm", "tokens_per_s", "tokens", "val_loss"} <= set(want)
    assert [s for s, _ in want["val_loss"]] == [2, 4]
    assert_same_series(tensorboard_series(out), want)
    history = wandb_history(out)
    assert sorted(history) == [1, 2, 3, 4]
    for key, points in want.items():
        for step, value in points:
            assert history[step][key] == pytest.approx(value, rel=1e-12), (key, step)
    assert {k for values in history.values() for k in values} == set(want)
    assert (out / "wandb" / "run-id").read_text().strip() in next(out.glob("wandb/offline-run-*")).name


def test_missing_tracker_package_is_named(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "wandb", None)  # what an environment without it imports
    with pytest.raises(ConfigError, match=r"train.loggers lists wandb, but the wandb package is not installed: "
                                          r"pip install 'llmcore\[wandb\]'"):
        WandbTracker(tmp_path, "p", {})


def test_logger_names_are_checked():
    for value, message in (("[jsonl, tensorbord]", "unknown logger 'tensorbord' \\(have jsonl, tensorboard, wandb\\)"),
                           ("[tensorboard]", "must include jsonl"),
                           ("[jsonl, jsonl]", "lists a logger twice")):
        with pytest.raises(ConfigError, match=message):
            load_config(None, ["data.path=d", f"train.loggers={value}"])
    assert load_config(None, ["data.path=d"]).train.loggers == ["jsonl"]


def test_trackers_are_imported_only_inside_functions():
    """`import llmcore...` never pulls in wandb or tensorboard: every import of them in
    llmcore sits inside a function (run only when the logger is listed)."""
    root = Path(__file__).resolve().parents[2] / "llmcore"
    top_level = []
    for path in root.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in tree.body:  # module level only; function bodies are not in tree.body
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            top_level += [f"{path.name}: {n}" for n in names if n.split(".")[0] == "wandb" or "tensorboard" in n]
    assert top_level == []
    assert "import wandb" in (root / "train" / "loggers.py").read_text()  # the check looks at the right file
