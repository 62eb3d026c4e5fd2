"""`llmcore report`: declared metrics read from a pipeline's runs (an early-stopped stage at its
best checkpoint, checked against a direct evaluation of that checkpoint), one row per run of the
last stage with its ancestors' metrics, seed averaging, the frontier areas against hand-worked
values, the PNG, and named errors."""

from __future__ import annotations

import csv
import json
import re
import statistics
import sys

import pytest
import yaml

import llmcore
from llmcore.cli.main import main
from llmcore.errors import ConfigError
from llmcore.eval.loss import validation_loss
from llmcore.pipeline.frontier import frontier_areas, pareto
from llmcore.pipeline.report import write_report
from llmcore.pipeline.run import run_pipeline
from llmcore.train import checkpoint
from tests.run_configs import RECIPE_RUN


def test_front_and_area_by_hand():
    assert pareto([(3, 2.5), (1, 3), (2, 2), (2, 2.2)]) == [(1, 3), (2, 2)]
    areas, shared = frontier_areas({"a": [(1, 3), (2, 2), (3, 2.5)], "b": [(1.5, 1.0), (2.5, 0.5)]})
    # shared range: from the largest first x (1.5) to the largest x of any point (3)
    assert shared == (1.5, 3)
    # a: y* = 3 on [1.5, 2), 2 on [2, 3] -> 0.5 * 3 + 1 * 2;  b: 1 on [1.5, 2.5), 0.5 on [2.5, 3]
    assert areas["a"]["area"] == pytest.approx(3.5) and areas["a"]["mean_y"] == pytest.approx(3.5 / 1.5)
    assert areas["b"]["area"] == pytest.approx(1.25)
    one, none = frontier_areas({"a": [(1, 2)], "b": [(1, 3)]})
    assert none is None and one["a"]["area"] is None  # no range to integrate over


@pytest.fixture(scope="module")
def study(prepared, tmp_path_factory):
    """A 3-stage pipeline: pre (2 lam), post (paired, best checkpoint kept, eval every step), ft
    (paired, x 2 LRs x 2 seeds); trained once for the module."""
    root = tmp_path_factory.mktemp("study")
    lam = {"key": "lam", "values": [0.0, 1.0]}
    doc = {"out_dir": str(root / "runs"), "vars": {"lam": 0.0},
           "overrides": [f"data.path={prepared}", "model.preset=tiny", "train.progress=false", *RECIPE_RUN,
                         f"eval.sets={{a: {prepared}}}", "train.eval_batches=2"],
           "stages": [
               {"name": "pre", "sweep": lam, "overrides": ["train.max_steps=${1 + int(lam)}"]},
               {"name": "post", "init_from": "pre", "sweep": lam,
                "overrides": ["train.max_steps=3", "train.eval_every=1", "train.keep_best_on=a", "optim.lr=0.05"]},
               {"name": "ft", "init_from": "post",
                "grid": [lam, {"key": "optim.lr", "values": [0.001, 0.03]}, {"key": "train.seed", "values": [0, 1]}],
                "overrides": ["train.max_steps=1"]}],
           "report": {"average_over": ["train.seed"],
                      "metrics": {"L_im": {"stage": "post", "set": "a"}, "L_ret": {"stage": "ft", "set": "a"},
                                  "L_val": {"stage": "ft", "set": "val"}},
                      "frontiers": [{"x": "L_val", "y": "L_ret", "over": "optim.lr", "by": "lam"}]}}
    path = root / "p.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    run_pipeline(str(path), print_summary=False)
    return path, doc


def test_rows_take_each_metric_from_the_run_they_descend_from(study, prepared, tmp_path):
    path, doc = study
    doc = {**doc, "report": {**doc["report"], "average_over": []}}
    single = tmp_path / "single.yaml"
    single.write_text(yaml.safe_dump(doc, sort_keys=False))
    rep = write_report(str(single), out=tmp_path / "rep", plots=False)
    rows = rep["rows"]
    assert [r["run"] for r in rows][:3] == ["ft[lam=0.0,optim.lr=0.001,train.seed=0]",
                                            "ft[lam=0.0,optim.lr=0.001,train.seed=1]",
                                            "ft[lam=0.0,optim.lr=0.03,train.seed=0]"]
    assert len(rows) == 8 and rep["missing"] == []
    out = path.parent / "runs"
    for row in rows:
        seed, lam = row["params"]["train.seed"], row["params"]["lam"]
        post = out / "post" / f"lam={lam}"
        # L_im is the post run's best checkpoint, evaluated here without the report's code path
        model, _ = llmcore.load(str(checkpoint.resolve(post / "best")), device="cpu")
        direct = validation_loss(model, prepared, 32, 2, 2)["loss"]
        assert row["L_im"] == pytest.approx(direct, rel=1e-5)
        ft = out / "ft" / f"lam={lam},optim.lr={row['params']['optim.lr']},train.seed={seed}"
        model, _ = llmcore.load(str(checkpoint.resolve(ft)), device="cpu")
        assert row["L_ret"] == pytest.approx(validation_loss(model, prepared, 32, 2, 2)["loss"], rel=1e-5)
    with open(tmp_path / "rep" / "report.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == ["lam", "optim.lr", "train.seed", "run", "L_im", "L_ret", "L_val"]
    assert float(table[5]["L_ret"]) == rows[5]["L_ret"]


def test_seed_averages_frontiers_png_and_cli(study, tmp_path, capsys):
    path, _ = study
    single = write_report(str(path), out=tmp_path / "avg")
    rows = single["rows"]
    assert [r["params"] for r in rows] == [{"lam": lam, "optim.lr": lr} for lam in (0.0, 1.0) for lr in (0.001, 0.03)]
    assert all(r["n"] == 2 for r in rows)
    # the mean and std of the two seeds' runs, read from their result files
    vals = [json.loads((path.parent / "runs" / "ft" / f"lam=1.0,optim.lr=0.03,train.seed={s}" / "result.json")
                       .read_text())["metrics"]["eval/a/loss"] for s in (0, 1)]
    assert rows[3]["L_ret"] == pytest.approx(statistics.fmean(vals))
    assert rows[3]["L_ret_std"] == pytest.approx(statistics.stdev(vals))
    assert {f["curve"] for f in single["frontiers"]} == {"lam=0.0", "lam=1.0"}
    png = tmp_path / "avg" / "frontier_L_ret_vs_L_val.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open(tmp_path / "avg" / "frontiers.csv", newline="") as f:
        fronts = list(csv.DictReader(f))
    assert [r["curve"] for r in fronts] == ["lam=0.0", "lam=1.0"]
    assert main(["report", "--config", str(path), "--out", str(tmp_path / "cli"), "--no-plots"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("| lam | optim.lr | n | L_im | L_ret | L_val |") and "area" in printed
    assert not list((tmp_path / "cli").glob("*.png"))


def test_missing_matplotlib_and_bad_report_sections_are_named(study, tmp_path, monkeypatch):
    path, doc = study
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ConfigError, match=r"matplotlib, which is not installed: pip install 'llmcore\[plots\]'"):
        write_report(str(path), out=tmp_path / "r")
    for report, message in [
        ({"metrics": {"L": {"stage": "pots", "set": "a"}}},
         "report.metrics.L: stage 'pots' is not a stage of the pipeline; did you mean 'post'?"),
        ({"metrics": {"L": {"stage": "ft"}}, "frontiers": [{"x": "L", "y": "M", "over": "optim.lr"}]},
         "report.frontiers[0].y='M' is not a metric of report.metrics (have: L)"),
        ({"metrics": {"L": {"stage": "ft"}}, "frontiers": [{"x": "L", "y": "L", "over": "optim.lr", "by": "seed"}]},
         "by='seed' is not a swept key of the table's rows (have: lam, optim.lr, train.seed)"),
        ({}, "the pipeline has no report.metrics"),
    ]:
        bad = tmp_path / "bad.yaml"
        bad.write_text(yaml.safe_dump({**doc, "report": report}, sort_keys=False))
        with pytest.raises(ConfigError, match=re.escape(message)):
            write_report(str(bad), out=tmp_path / "r", plots=False)
