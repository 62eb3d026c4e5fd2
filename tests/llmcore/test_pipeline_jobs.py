"""`llmcore pipeline --jobs N`: runs in worker processes, each as soon as its sources finished,
ending exactly where the in-order runner ends; a failed run is named and stops new launches;
a signal reaches every worker, which checkpoints, and a rerun goes on."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
import yaml
from safetensors.torch import load_file

from llmcore.errors import LlmcoreError
from llmcore.pipeline.parallel import slot_env
from llmcore.pipeline.run import run_pipeline
from tests.run_configs import RECIPE_RUN


def pipeline_file(tmp_path, prepared, stages) -> str:
    doc = {"out_dir": str(tmp_path / "runs"), "stages": stages,
           "overrides": [f"data.path={prepared}", "model.preset=tiny", "train.progress=false", *RECIPE_RUN]}
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return str(path)


def final_weights(run_dir) -> dict:
    return load_file(str(run_dir / (run_dir / "latest").read_text().strip() / "model.safetensors"))


SEEDS = {"key": "train.seed", "values": [0, 1]}


def test_two_jobs_end_where_one_job_ends_and_a_rerun_trains_nothing(prepared, tmp_path):
    stages = [{"name": "pre", "overrides": ["train.max_steps=3"], "sweep": SEEDS},
              {"name": "ft", "init_from": "pre", "overrides": ["train.max_steps=2", "optim.lr=3e-3"], "sweep": SEEDS}]
    one = run_pipeline(pipeline_file(tmp_path / "one", prepared, stages), print_summary=False)
    two = run_pipeline(pipeline_file(tmp_path / "two", prepared, stages), print_summary=False, jobs=2)

    key = [(r["stage"], r["variant"]) for r in one]
    assert [(r["stage"], r["variant"]) for r in two] == key
    assert {r["status"] for r in two} == {"trained"}
    assert [r["val_loss"] for r in two] == [r["val_loss"] for r in one]
    for stage, variant in key:
        a = final_weights(tmp_path / "one" / "runs" / stage / variant)
        b = final_weights(tmp_path / "two" / "runs" / stage / variant)
        assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a), f"{stage}[{variant}] differs"
    # each fine-tune started from its own seed's pretraining, which had finished
    for seed in (0, 1):
        saved = yaml.safe_load((tmp_path / "two" / "runs" / "ft" / f"train.seed={seed}" / "ckpt-000002"
                                / "config.yaml").read_text())
        assert saved["train"]["init_from"] == str(tmp_path / "two" / "runs" / "pre" / f"train.seed={seed}" / "ckpt-000003")

    # a progress bar on or off is not another config: workers turn theirs off
    again = run_pipeline(pipeline_file(tmp_path / "two", prepared, stages), overrides=["train.progress=true"],
                         print_summary=False, jobs=2)
    assert [r["status"] for r in again] == ["skipped"] * 4
    assert [r["val_loss"] for r in again] == [r["val_loss"] for r in one]


def test_a_failed_run_is_raised_by_name_and_what_depends_on_it_never_starts(prepared, tmp_path):
    stages = [{"name": "good", "overrides": ["train.max_steps=2"]},
              {"name": "bad", "overrides": ["train.max_steps=2", f"train.init_from={tmp_path / 'no_such_ckpt'}"]},
              {"name": "after_bad", "init_from": "bad", "overrides": ["train.max_steps=1"]}]
    with pytest.raises(LlmcoreError, match="no_such_ckpt"):
        run_pipeline(pipeline_file(tmp_path, prepared, stages), print_summary=False, jobs=2)
    runs = tmp_path / "runs"
    assert (runs / "good" / "result.json").is_file()  # the run beside the failure finished and kept its result
    assert not (runs / "bad" / "result.json").exists()
    assert not (runs / "after_bad").exists()


def test_jobs_must_be_positive_and_are_refused_under_torchrun(prepared, tmp_path, monkeypatch):
    from llmcore.errors import ConfigError

    path = pipeline_file(tmp_path, prepared, [{"name": "a", "overrides": ["train.max_steps=1"]}])
    with pytest.raises(ConfigError, match="--jobs must be at least 1, got 0"):
        run_pipeline(path, print_summary=False, jobs=0)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="under torchrun every rank must run the same runs in order"):
        run_pipeline(path, print_summary=False, jobs=2)


def test_each_worker_gets_its_share_of_the_cores_and_one_device_when_there_are_enough():
    assert slot_env(0, 2, [], 16, {}) == {"OMP_NUM_THREADS": "8"}
    assert slot_env(1, 3, [], 2, {}) == {"OMP_NUM_THREADS": "1"}
    assert slot_env(1, 2, [], 16, {"OMP_NUM_THREADS": "4"}) == {}  # the user's setting wins
    assert slot_env(1, 2, ["4", "5", "6"], 16, {"OMP_NUM_THREADS": "4"}) == {"CUDA_VISIBLE_DEVICES": "5"}
    assert slot_env(1, 4, ["0", "1"], 16, {"OMP_NUM_THREADS": "4"}) == {}  # fewer devices than jobs: all shared


@pytest.mark.slow
def test_sigterm_reaches_every_worker_and_a_rerun_resumes_them(prepared, tmp_path):
    stages = [{"name": "long", "overrides": ["train.max_steps=400", "train.save_every=1000"], "sweep": SEEDS},
              {"name": "next", "init_from": "long", "overrides": ["train.max_steps=1"], "sweep": SEEDS}]
    path = pipeline_file(tmp_path, prepared, stages)
    runs = tmp_path / "runs" / "long"

    def stop_when_both_train():
        deadline = time.time() + 120
        while time.time() < deadline:
            if all((runs / f"train.seed={s}" / "metrics.jsonl").is_file() for s in (0, 1)):
                os.kill(os.getpid(), signal.SIGTERM)
                return
            time.sleep(0.2)

    threading.Thread(target=stop_when_both_train, daemon=True).start()
    rows = run_pipeline(path, print_summary=False, jobs=2)
    assert [(r["stage"], r["status"]) for r in rows] == [("long", "stopped"), ("long", "stopped")]
    assert all(0 < r["step"] < 400 for r in rows)
    assert not (tmp_path / "runs" / "next").exists()

    again = run_pipeline(path, print_summary=False, jobs=2)
    assert [(r["stage"], r["status"], r["step"]) for r in again] == [
        ("long", "resumed", 400), ("long", "resumed", 400), ("next", "trained", 1), ("next", "trained", 1)]
