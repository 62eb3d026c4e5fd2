"""Pipelines of runs: a stage really starts from an earlier stage's weights, sweeps and grids
get their folders and summary rows, a rerun trains nothing, an interrupted stage resumes where
it stopped, and every mistake in the file is named before anything trains."""

from __future__ import annotations

import csv
import json
import re

import pytest
import yaml
from safetensors.torch import load_file

from llmcore.cli.main import main
from llmcore.errors import ConfigError
from llmcore.pipeline.plan import plan
from llmcore.pipeline.run import run_pipeline
from llmcore.pipeline.spec import Pipeline, Stage, Sweep, load_pipeline
from llmcore.train.loop import Trainer
from tests.run_configs import RECIPE_RUN


def base_overrides(prepared) -> list[str]:
    return [f"data.path={prepared}", "model.preset=tiny", "train.progress=false", *RECIPE_RUN]


def write_pipeline(tmp_path, prepared, stages, name="p.yaml", **top) -> str:
    doc = {"out_dir": str(tmp_path / "runs"), "overrides": base_overrides(prepared), "stages": stages, **top}
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return str(path)


def weights(run_dir) -> dict:
    latest = (run_dir / "latest").read_text().strip()
    return load_file(str(run_dir / latest / "model.safetensors"))


def read_csv(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def count_fits(monkeypatch):
    """Counts Trainer.fit calls (still training for real)."""
    calls = []
    real = Trainer.fit

    def fit(self):
        calls.append(self.cfg.train.out_dir)
        return real(self)

    monkeypatch.setattr(Trainer, "fit", fit)
    return calls


def test_second_stage_starts_from_the_first_stages_weights(prepared, tmp_path, capsys):
    # lr 0 leaves the weights where they start: the fine-tune ends exactly where pretrain ended
    # only if it started there; `scratch` (same, no init_from) shows a fresh init does not.
    frozen = ["optim.lr=0.0", "train.max_steps=2", "train.seed=1"]
    path = write_pipeline(tmp_path, prepared, [
        {"name": "pretrain", "overrides": ["train.max_steps=3"]},
        {"name": "finetune", "init_from": "pretrain", "overrides": frozen},
        {"name": "scratch", "overrides": frozen},
    ])
    assert main(["pipeline", "--config", path, "--dry-run"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert listed[1] == (f"stage 2/3 finetune: new of 2 steps -> {tmp_path / 'runs' / 'finetune'}, "
                         "train.init_from <- pretrain")
    assert not (tmp_path / "runs").exists()  # a dry run trains nothing

    assert main(["pipeline", "--config", path]) == 0
    runs = tmp_path / "runs"
    pre, ft, scratch = weights(runs / "pretrain"), weights(runs / "finetune"), weights(runs / "scratch")
    assert pre.keys() == ft.keys()
    assert all((pre[k] == ft[k]).all() for k in pre), "finetune did not start from pretrain's final weights"
    assert not all((pre[k] == scratch[k]).all() for k in pre)
    saved = yaml.safe_load((runs / "finetune" / "ckpt-000002" / "config.yaml").read_text())
    assert saved["train"]["init_from"] == str(runs / "pretrain" / "ckpt-000003")

    rows = read_csv(runs / "summary.csv")
    assert [(r["stage"], r["variant"], r["step"]) for r in rows] == [("pretrain", "", "3"), ("finetune", "", "2"),
                                                                      ("scratch", "", "2")]
    assert all(float(r["loss"]) > 0 and float(r["val_loss"]) > 0 for r in rows)
    result = json.loads((runs / "pretrain" / "result.json").read_text())
    assert result["step"] == 3 and result["metrics"]["val_loss"] == pytest.approx(float(rows[0]["val_loss"]))
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("| stage | variant | step | loss | val_loss |") and len(table) == 5


def test_sweep_and_grid_folders_summary_and_a_rerun_that_trains_nothing(prepared, tmp_path, count_fits):
    lrs = [0.001, 0.003]
    path = write_pipeline(tmp_path, prepared, [
        {"name": "lr", "overrides": ["train.max_steps=1"], "sweep": {"key": "optim.lr", "values": lrs}},
        {"name": "grid", "overrides": ["train.max_steps=1"],
         "grid": [{"key": "optim.lr", "values": lrs}, {"key": "train.seed", "values": [0, 1]}]},
    ])
    rows = run_pipeline(path, print_summary=False)
    runs = tmp_path / "runs"
    variants = [("lr", "optim.lr=0.001"), ("lr", "optim.lr=0.003"),
                ("grid", "optim.lr=0.001,train.seed=0"), ("grid", "optim.lr=0.001,train.seed=1"),
                ("grid", "optim.lr=0.003,train.seed=0"), ("grid", "optim.lr=0.003,train.seed=1")]
    assert [(r["stage"], r["variant"]) for r in rows] == variants
    assert len(count_fits) == 6 and {r["status"] for r in rows} == {"trained"}
    for stage, variant in variants:
        saved = yaml.safe_load((runs / stage / variant / "ckpt-000001" / "config.yaml").read_text())
        params = dict(kv.split("=") for kv in variant.split(","))
        assert saved["optim"]["lr"] == float(params["optim.lr"])
        assert saved["train"]["seed"] == int(params.get("train.seed", 0))
    summary = read_csv(runs / "summary.csv")
    assert [(r["stage"], r["variant"], r["out_dir"], r["step"]) for r in summary] == [
        (s, v, str(runs / s / v), "1") for s, v in variants]
    # every grid setting trained differently; the sweep's runs are the grid's seed-0 runs again
    val = [r["val_loss"] for r in summary]
    assert len(set(val[2:])) == 4 and val[:2] == [val[2], val[4]]

    before = {p: p.stat().st_mtime_ns for p in runs.rglob("model.safetensors")}
    again = run_pipeline(path, print_summary=False)
    assert len(count_fits) == 6, "a rerun trained a finished run"
    assert [r["status"] for r in again] == ["skipped"] * 6
    assert [r["loss"] for r in again] == [r["loss"] for r in rows]
    assert {p: p.stat().st_mtime_ns for p in runs.rglob("model.safetensors")} == before
    assert read_csv(runs / "summary.csv") == summary

    # a finished run is never reported for a config that did not make it
    with pytest.raises(ConfigError, match=re.escape(
            "stage 1/2 lr [optim.lr=0.001]: " + str(runs / "lr" / "optim.lr=0.001")
            + " finished with another config (optim.weight_decay: 0.1 -> 0.0)")):
        run_pipeline(path, overrides=["optim.weight_decay=0.0"], print_summary=False)
    assert len(count_fits) == 6


def test_interrupted_stage_resumes_and_ends_as_an_uninterrupted_run(prepared, tmp_path, monkeypatch):
    stage = {"name": "pretrain", "overrides": ["train.max_steps=4", "train.save_every=1"]}
    path = write_pipeline(tmp_path, prepared, [stage])
    real_step = Trainer.train_step
    steps_run = []

    def crash_at_third_step(self):
        if self.step == 2:
            raise RuntimeError("node lost")
        steps_run.append(self.step)
        return real_step(self)

    monkeypatch.setattr(Trainer, "train_step", crash_at_third_step)
    with pytest.raises(RuntimeError, match="node lost"):
        run_pipeline(path, print_summary=False)
    run_dir = tmp_path / "runs" / "pretrain"
    assert (run_dir / "latest").read_text().strip() == "ckpt-000002"
    assert not (run_dir / "result.json").exists()

    def record(self):
        steps_run.append(self.step)
        return real_step(self)

    monkeypatch.setattr(Trainer, "train_step", record)
    (row,) = run_pipeline(path, print_summary=False)
    assert steps_run == [0, 1, 2, 3]  # the rerun went on from step 2
    assert row["status"] == "resumed" and row["step"] == 4 and (run_dir / "result.json").is_file()

    whole = write_pipeline(tmp_path, prepared, [stage], name="whole.yaml", out_dir=str(tmp_path / "whole"))
    run_pipeline(whole, print_summary=False)
    a, b = weights(run_dir), weights(tmp_path / "whole" / "pretrain")
    assert all((a[k] == b[k]).all() for k in a), "the resumed run differs from an uninterrupted one"


def test_swept_sources_pair_run_by_run_or_by_a_named_variant(tmp_path):
    sweep = Sweep("optim.lr", [0.001, 0.003])
    base = ["data.path=runs/data", "train.max_steps=5"]
    spec = Pipeline(out_dir=str(tmp_path), overrides=base, stages=[
        Stage(name="pre", sweep=sweep),
        Stage(name="paired", init_from="pre", sweep=sweep),
        Stage(name="one", init_from="pre[optim.lr=0.003]", sweep=Sweep("train.seed", [0, 1])),
        Stage(name="student", inputs={"future_summary.revlm_checkpoint": "one[train.seed=1]"},
              overrides=["recipes=[future_summary]", "future_summary.kind=fsp_revlm"]),
    ])
    runs = plan(spec)
    assert [r.name for r in runs] == ["pre[optim.lr=0.001]", "pre[optim.lr=0.003]", "paired[optim.lr=0.001]",
                                      "paired[optim.lr=0.003]", "one[train.seed=0]", "one[train.seed=1]",
                                      "student"]
    pre = {r.variant: str(tmp_path / "pre" / r.variant / "ckpt-000005") for r in runs[:2]}
    assert [r.config.train.init_from for r in runs[2:4]] == [pre["optim.lr=0.001"], pre["optim.lr=0.003"]]
    assert [r.config.train.init_from for r in runs[4:6]] == [pre["optim.lr=0.003"]] * 2
    assert runs[6].config.recipe["future_summary"].revlm_checkpoint == str(
        tmp_path / "one" / "train.seed=1" / "ckpt-000005")
    assert all(r.state == "new" for r in runs)


def test_stage_configs_are_read_relative_to_the_pipeline_file(tmp_path):
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "run.yaml").write_text("optim:\n  lr: 0.25\n")
    (tmp_path / "pipes").mkdir()
    (tmp_path / "pipes" / "p.yaml").write_text(yaml.safe_dump({
        "out_dir": str(tmp_path / "runs"), "overrides": ["data.path=runs/data"],
        "stages": [{"name": "a", "config": "../configs/run.yaml"}]}))
    (run,) = plan(load_pipeline(tmp_path / "pipes" / "p.yaml"))
    assert run.config.optim.lr == 0.25 and run.out_dir == tmp_path / "runs" / "a"


PRE = {"name": "pretrain", "overrides": ["train.max_steps=1"]}
SWEPT = {**PRE, "sweep": {"key": "optim.lr", "values": [0.001, 0.003]}}


@pytest.mark.parametrize("stages, message", [
    ([PRE, {"name": "finetune", "sweep": {"key": "optim.lrr", "values": [0.001]}}],
     "stage 2/2 finetune [optim.lrr=0.001]: <defaults>: unknown key 'optim.lrr'; did you mean 'optim.lr'?"),
    ([{**PRE, "overides": []}], "unknown key 'stages[0].overides'; did you mean 'stages[0].overrides'?"),
    ([PRE, {"name": "finetune", "init_from": "pretrian"}],
     "stage 'finetune': init_from 'pretrian' is not a stage of the pipeline; did you mean 'pretrain'?"),
    ([{**PRE, "init_from": "finetune"}, {"name": "finetune"}],
     ("stage 'pretrain': init_from 'finetune' names stage 2, which comes later: a stage can only use the "
      "stages before it")),
    ([{**PRE, "init_from": "pretrain"}], "stage 'pretrain': init_from 'pretrain' names itself"),
    ([PRE, {"name": "pretrain"}], "duplicate stage name 'pretrain' (stages 1 and 2)"),
    ([SWEPT, {"name": "finetune", "init_from": "pretrain"}],
     ("stage 'finetune': init_from 'pretrain': stage 'pretrain' is swept (pretrain[optim.lr=0.001], "
      "pretrain[optim.lr=0.003]); name one variant, e.g. 'pretrain[optim.lr=0.001]', or sweep 'finetune' over "
      "the same values to pair the runs")),
    ([SWEPT, {"name": "finetune", "init_from": "pretrain[optim.lr=0.01]"}],
     ("stage 'finetune': init_from 'pretrain[optim.lr=0.01]': stage 'pretrain' has no variant 'optim.lr=0.01'; "
      "its variants: pretrain[optim.lr=0.001], pretrain[optim.lr=0.003]")),
    ([PRE, {"name": "finetune", "inputs": {"distill.teacher": "teacher"}}],
     "stage 'finetune': inputs distill.teacher 'teacher' is not a stage of the pipeline"),
    ([PRE, {"name": "finetune", "config": "missing.yaml"}], "stage 2/2 finetune: config file not found"),
    ([{**PRE, "sweep": {"key": "optim.lr", "values": [0.001]}, "grid": [{"key": "train.seed", "values": [0]}]}],
     "stage 'pretrain': give sweep (one key) or grid (several keys), not both"),
    ([{**PRE, "name": "pre/train"}], "stage name 'pre/train' may hold only letters, digits and _.-"),
], ids=["unknown-sweep-key", "unknown-file-key", "unknown-init-from", "later-init-from", "self-init-from",
        "duplicate-name", "swept-source-without-variant", "unknown-variant", "unknown-input", "missing-config",
        "sweep-and-grid", "bad-name"])
def test_mistakes_are_named_before_anything_trains(prepared, tmp_path, monkeypatch, stages, message):
    monkeypatch.setattr(Trainer, "fit", lambda self: pytest.fail("trained before the pipeline was checked"))
    path = write_pipeline(tmp_path, prepared, stages)
    with pytest.raises(ConfigError, match=re.escape(message)):
        run_pipeline(path)
    assert not (tmp_path / "runs").exists()


def test_cli_names_a_pipeline_mistake_in_one_line(prepared, tmp_path, capsys):
    path = write_pipeline(tmp_path, prepared, [PRE, {"name": "pretrain"}])
    assert main(["pipeline", "--config", path]) == 2
    assert "duplicate stage name 'pretrain' (stages 1 and 2)" in capsys.readouterr().err


def test_an_early_stopped_stage_is_finished_and_its_best_checkpoint_starts_the_next(prepared, tmp_path, count_fits):
    """Early exposure's stage 2: early stopping with a kept best checkpoint. A rerun must not
    resume the stopped run (it would train past where it stopped), and the next stage starts
    from the best checkpoint, whose step is not known before the run trains."""
    path = write_pipeline(tmp_path, prepared, [
        {"name": "post", "overrides": ["train.max_steps=8", "recipes=[probe]", "probe.stop_at_step=3",
                                       "train.eval_every=1", "train.keep_best_on=val"]},
        {"name": "ft", "init_from": "post", "overrides": ["optim.lr=0.0", "train.max_steps=1"]},
    ])
    rows = run_pipeline(path, print_summary=False)
    runs = tmp_path / "runs"
    assert rows[0]["step"] == 3 and count_fits == [str(runs / "post"), str(runs / "ft")]
    best = (runs / "post" / "best").read_text().strip()
    saved = yaml.safe_load((runs / "ft" / "ckpt-000001" / "config.yaml").read_text())
    assert saved["train"]["init_from"] == str(runs / "post" / "best")
    start = load_file(str(runs / "post" / best / "model.safetensors"))
    assert all((start[k] == v).all() for k, v in weights(runs / "ft").items())  # lr 0: still the best
    count_fits.clear()
    rows = run_pipeline(path, print_summary=False)
    assert count_fits == [] and [r["status"] for r in rows] == ["skipped", "skipped"]
    # a longer cap would have stopped at the same step: still finished, nothing trains
    longer = write_pipeline(tmp_path, prepared, [
        {"name": "post", "overrides": ["train.max_steps=16", "recipes=[probe]", "probe.stop_at_step=3",
                                       "train.eval_every=1", "train.keep_best_on=val"]},
        {"name": "ft", "init_from": "post", "overrides": ["optim.lr=0.0", "train.max_steps=1"]},
    ], name="longer.yaml")
    rows = run_pipeline(longer, print_summary=False)
    assert count_fits == [] and [r["status"] for r in rows] == ["skipped", "skipped"]
    with pytest.raises(ConfigError, match="past train.max_steps=2"):
        run_pipeline(path, overrides=["train.max_steps=2"], print_summary=False)
    # under a decaying LR every step saw the cap: a longer one is another run, refused by name
    decaying = write_pipeline(tmp_path, prepared, [
        {"name": "post", "overrides": ["train.max_steps=8", "recipes=[probe]", "probe.stop_at_step=3",
                                       "train.eval_every=1", "schedule.kind=cosine"]}], name="cosine.yaml",
        out_dir=str(tmp_path / "cosine"))
    run_pipeline(decaying, print_summary=False)
    with pytest.raises(ConfigError, match=re.escape("finished with another config (train.max_steps: 8 -> 16)")):
        run_pipeline(decaying, overrides=["train.max_steps=16"], print_summary=False)


def test_a_longer_cap_is_the_same_run_only_while_the_schedule_gave_every_step_the_same_lr():
    from llmcore.config.load import load_run_config
    from llmcore.pipeline.plan import _cap_free

    def cfg(*o):
        return load_run_config(None, ["data.path=unused", "train.max_steps=100", "schedule.warmup_steps=10", *o])

    assert _cap_free(cfg("schedule.kind=constant"), 40, 50)
    assert not _cap_free(cfg("schedule.kind=constant", "schedule.warmup_steps=60"), 40, 50)  # warmup spans the cap
    assert not _cap_free(cfg("schedule.kind=cosine"), 40, 50)
    # WSD (a 20% anneal): flat before either anneal starts (step 40 of 50), not once the old one has
    assert _cap_free(cfg("schedule.kind=wsd", "schedule.anneal_fraction=0.2"), 40, 50)
    assert not _cap_free(cfg("schedule.kind=wsd", "schedule.anneal_fraction=0.2"), 45, 50)
