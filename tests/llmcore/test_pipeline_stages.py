"""Pipelines of dependent stages: variables and `${expr}` overrides, a swept stage crossed with
more keys, early stopping with a minimum improvement, and a pipeline stopped by SIGTERM in its
second stage that goes on there without redoing the first."""

from __future__ import annotations

import os
import re
import shutil
import signal
from dataclasses import dataclass
from typing import ClassVar

import pytest
import yaml
from safetensors.torch import load_file

from llmcore.errors import ConfigError
from llmcore.pipeline.expr import evaluate
from llmcore.pipeline.plan import plan
from llmcore.pipeline.run import run_pipeline
from llmcore.pipeline.spec import Pipeline, Stage, Sweep
from llmcore.recipe.registry import temporary_recipe
from llmcore.train import checkpoint
from llmcore.train.loop import Trainer
from recipes.base import Recipe
from tests.run_configs import RECIPE_RUN


def test_vars_and_expressions_set_each_variant_s_keys(tmp_path):
    spec = Pipeline(out_dir=str(tmp_path), vars={"lam": 0.0, "pre": 100, "post": 640, "data": "d"},
                    overrides=["data.path=${data}/pre"], stages=[
        Stage(name="pre", sweep=Sweep("lam", [0.0, 0.25, 1.0]), overrides=[
            ("data.sources=[{path: '${data}/pre', weight: ${pre * 64}}, "
             "{path: '${data}/post', weight: ${lam * post}, max_tokens: ${int(lam * post)}}]"),
            "train.max_steps=${pre + int(lam * post) // 64}", "optim.lr=${3e-3 / (1 + lam)}"])])
    runs = plan(spec)
    assert [r.variant for r in runs] == ["lam=0.0", "lam=0.25", "lam=1.0"]
    assert [r.config.train.max_steps for r in runs] == [100, 102, 110]
    assert [(s.path, s.weight, s.max_tokens) for s in runs[1].config.data.sources] == [
        ("d/pre", 6400.0, None), ("d/post", 160.0, 160)]
    assert runs[2].config.optim.lr == pytest.approx(1.5e-3) and runs[0].config.data.path == "d/pre"
    assert runs[0].config.data.sources[1].max_tokens == 0  # lam 0: weight 0, budget 0
    assert evaluate("min(7 // 2, 2 ** 3) - abs(-1) + round(2.6) + ceil(0.1)", {}) == 6


@pytest.mark.parametrize("text, message", [
    ("train.max_steps=${steps + 1}", "${steps + 1} uses 'steps', which is not a pipeline variable (vars: lam)"),
    ("train.max_steps=${__import__('os').getpid()}", "only numbers, pipeline variables, + - * / // % ** and"),
    ("train.max_steps=${lam.real}", "only numbers, pipeline variables"),
    ("train.max_steps=${1 / (lam - lam)}", "divides by zero"),
    ("train.max_steps=${1 +}", "is not an arithmetic expression"),
])
def test_a_bad_expression_is_named_before_anything_trains(tmp_path, text, message):
    spec = Pipeline(out_dir=str(tmp_path), vars={"lam": 0.5}, overrides=["data.path=d"],
                    stages=[Stage(name="a", overrides=[text])])
    with pytest.raises(ConfigError, match=re.escape(f"stage 1/1 a: override {text!r}: ") + ".*" + re.escape(message)):
        plan(spec)


def test_a_swept_stage_crossed_with_more_keys_starts_each_run_from_its_own_source(tmp_path):
    lam = Sweep("lam", [0.0, 0.5])
    spec = Pipeline(out_dir=str(tmp_path), vars={"lam": 0.0}, overrides=["data.path=d", "train.max_steps=3"], stages=[
        Stage(name="pre", sweep=lam, overrides=["train.seed=${int(lam * 10)}"]),
        Stage(name="post", init_from="pre", sweep=lam, overrides=["train.keep_best_on=val"]),
        Stage(name="ft", init_from="post", grid=[lam, Sweep("optim.lr", [0.001, 0.01])]),
        Stage(name="bad", init_from="post", grid=[Sweep("lam", [0.0, 0.7]), Sweep("optim.lr", [0.001, 0.01])]),
    ])
    with pytest.raises(ConfigError, match=re.escape(
            "stage 'bad': init_from 'post': stage 'post' has no variant 'lam=0.7' for run 'lam=0.7,optim.lr=0.001'; "
            "its variants: post[lam=0.0], post[lam=0.5]")):
        plan(spec)
    spec.stages.pop()
    runs = {r.name: r for r in plan(spec)}
    assert runs["post[lam=0.5]"].config.train.init_from == str(tmp_path / "pre" / "lam=0.5" / "ckpt-000003")
    for lr in ("0.001", "0.01"):
        for v in ("0.0", "0.5"):
            ft = runs[f"ft[lam={v},optim.lr={lr}]"]
            assert ft.sources == {"train.init_from": f"post[lam={v}]"}
            assert ft.config.train.init_from == str(tmp_path / "post" / f"lam={v}" / "best")
            assert ft.config.optim.lr == float(lr) and "lam" not in ft.config.to_dict()
    assert runs["pre[lam=0.5]"].config.train.seed == 5


class Losses(Recipe):
    """Reports a scripted loss of eval set `a` at each evaluation."""

    name = "scripted"
    script: ClassVar[list[float]] = []
    seen = 0

    def on_eval(self, ctx, metrics):
        Losses.seen += 1
        return {"eval/a/loss": Losses.script[min(Losses.seen, len(Losses.script)) - 1]}


def test_early_stop_min_delta_counts_only_real_improvements_and_keep_best_keeps_them(prepared, tmp_path):
    # 1.0 -> 0.9 improves; 0.895 and 0.891 are within min_delta=0.01 of 0.9: two evaluations
    # without improvement stop the run at eval 4 (step 4), the best staying step 2's.
    Losses.script, Losses.seen = [1.0, 0.9, 0.895, 0.891, 0.5, 0.4], 0
    base = [f"data.path={prepared}", "model.preset=tiny", "train.progress=false", *RECIPE_RUN,
            "recipes=[scripted]", f"eval.sets={{a: {prepared}}}", "train.keep_best_on=a", "train.eval_every=1",
            "train.early_stop_patience=2", "train.max_steps=10", "train.keep_last=1"]
    from llmcore.config.load import load_run_config

    with temporary_recipe("scripted", Losses):
        out = tmp_path / "delta"
        result = Trainer(load_run_config(None, [*base, f"train.out_dir={out}", "train.early_stop_min_delta=0.01"])).fit()
        assert result["step"] == 4 and "has not improved on 0.9000 (step 2)" in result["stopped_early"]
        assert checkpoint.resolve(out / "best").name == "ckpt-000002"
        Losses.seen = 0
        plain = tmp_path / "plain"
        result = Trainer(load_run_config(None, [*base, f"train.out_dir={plain}"])).fit()
        # without a minimum 0.895 and 0.891 are improvements: it stops only after 0.4 repeats
        assert result["step"] == 8 and checkpoint.resolve(plain / "best").name == "ckpt-000006"
        with pytest.raises(ConfigError, match="train.early_stop_min_delta=-0.1 is out of range"):
            load_run_config(None, [*base, "train.early_stop_min_delta=-0.1"])


class TermOnce(Recipe):
    """Sends this process SIGTERM after step `at` the first time only (the trainer checkpoints
    and stops, as under slurm's scancel); the config is the same on the rerun."""

    @dataclass
    class Config:
        at: int = 2

    fired = False

    def on_step_end(self, ctx, metrics):
        if ctx.step == self.config.at and not TermOnce.fired:
            TermOnce.fired = True
            os.kill(os.getpid(), signal.SIGTERM)


def test_sigterm_in_stage_two_then_a_rerun_goes_on_in_stage_two_and_skips_stage_one(prepared, tmp_path, monkeypatch):
    def write(out):
        doc = {"out_dir": str(out), "overrides": [f"data.path={prepared}", "model.preset=tiny", "train.progress=false",
                                                  *RECIPE_RUN],
               "stages": [{"name": "pre", "overrides": ["train.max_steps=3"]},
                          {"name": "post", "init_from": "pre",
                           "overrides": ["train.max_steps=5", "recipes=[term_once]", "term_once.at=2"]}]}
        path = tmp_path / f"{out.name}.yaml"
        path.write_text(yaml.safe_dump(doc))
        return str(path)

    fits, steps = [], []
    real_fit, real_step = Trainer.fit, Trainer.train_step
    monkeypatch.setattr(Trainer, "fit", lambda self: fits.append(self.cfg.train.out_dir) or real_fit(self))
    monkeypatch.setattr(Trainer, "train_step", lambda self: steps.append((self.cfg.train.out_dir, self.step))
                        or real_step(self))
    runs = tmp_path / "runs"
    with temporary_recipe("term_once", TermOnce):
        TermOnce.fired = False
        rows = run_pipeline(write(runs), print_summary=False)
        assert [(r["stage"], r["status"], r["step"]) for r in rows] == [("pre", "trained", 3), ("post", "stopped", 2)]
        assert not (runs / "post" / "result.json").exists()
        fits.clear()
        steps.clear()
        rows = run_pipeline(write(runs), print_summary=False)
        assert [(r["stage"], r["status"], r["step"]) for r in rows] == [("pre", "skipped", 3), ("post", "resumed", 5)]
        assert fits == [str(runs / "post")]  # stage 1 not trained again
        assert steps == [(str(runs / "post"), 2), (str(runs / "post"), 3), (str(runs / "post"), 4)]
        TermOnce.fired = True  # an uninterrupted pipeline for reference
        run_pipeline(write(tmp_path / "whole"), print_summary=False)
    for stage in ("pre", "post"):
        a = load_file(str(checkpoint.resolve(runs / stage) / "model.safetensors"))
        b = load_file(str(checkpoint.resolve(tmp_path / "whole" / stage) / "model.safetensors"))
        assert all((a[k] == b[k]).all() for k in a), f"{stage}: the resumed pipeline differs from an uninterrupted one"
    # a stage-1 run trained again would leave stage 2's result stale: refused, naming both
    shutil.rmtree(runs / "pre")
    with temporary_recipe("term_once", TermOnce), pytest.raises(ConfigError, match=re.escape(
            f"stage 2/2 post: {runs / 'post'} finished, but train.init_from comes from pre, which is new")):
        run_pipeline(write(runs), print_summary=False)


def test_fields_added_since_a_save_change_nothing_but_a_changed_source_list_does(prepared, tmp_path):
    """A run saved before a config field existed (a source's budget, the mixing mode) resumes
    and, finished, is skipped, since it trained at the field's default; setting the field
    otherwise, or changing or removing a source, is named."""
    from llmcore.config.load import load_run_config
    from llmcore.train.config_change import changed_keys

    sources = f"data.sources=[{{name: a, path: '{prepared}', weight: 0.5}}, {{name: b, path: '{prepared}'}}]"
    opts = [f"data.path={prepared}", "model.preset=tiny", "train.progress=false", *RECIPE_RUN, sources]
    spec = Pipeline(out_dir=str(tmp_path / "runs"), stages=[Stage(name="s", overrides=[*opts, "train.max_steps=1"])])
    run_pipeline(spec, print_summary=False)
    saved_path = checkpoint.resolve(tmp_path / "runs" / "s") / "config.yaml"
    saved = yaml.safe_load(saved_path.read_text())
    del saved["data"]["mixing"], saved["train"]["early_stop_min_delta"]
    for src in saved["data"]["sources"]:
        del src["max_tokens"], src["skip_tokens"]
    saved_path.write_text(yaml.safe_dump(saved))
    (row,) = run_pipeline(spec, print_summary=False)
    assert row["status"] == "skipped"
    cfg = load_run_config(None, opts)
    assert changed_keys(saved, cfg) == []  # the trainer's resume check agrees
    # the saved run trained at the added field's default: a run that sets it otherwise now differs,
    # for the resume check and the pipeline alike
    exact = load_run_config(None, [*opts, "data.mixing=exact"])
    assert changed_keys(saved, exact) == ["data.mixing: 'random' -> 'exact'"]
    with pytest.raises(ConfigError, match=re.escape("finished with another config (data.mixing: 'random' -> 'exact')")):
        run_pipeline(spec, overrides=["data.mixing=exact"], print_summary=False)
    fewer = {**saved, "data": {**saved["data"], "sources": saved["data"]["sources"][:1]}}
    assert "data.sources.#: 1 -> 2" in changed_keys(fewer, cfg)
    saved["data"]["sources"][0]["weight"] = 0.25
    saved_path.write_text(yaml.safe_dump(saved))
    with pytest.raises(ConfigError, match=re.escape("finished with another config (data.sources.0.weight: 0.25 -> 0.5)")):
        run_pipeline(spec, print_summary=False)


def test_dropout_in_a_stage_started_from_an_earlier_stage(prepared, tmp_path):
    """Stage 2's optional dropout: a stage may turn `model.dropout` on over a checkpoint trained
    without it (dropout has no weights, so the architecture check allows it), and it acts: the
    same first batch from the same weights gives another training loss than without dropout."""
    import json

    from llmcore.config.load import load_run_config

    base = [f"data.path={prepared}", "model.preset=tiny", "train.progress=false", *RECIPE_RUN,
            "train.log_every=1"]
    first = tmp_path / "pre"
    Trainer(load_run_config(None, [*base, f"train.out_dir={first}", "train.max_steps=3"])).fit()

    def stage_two(name, dropout):
        out = tmp_path / name
        Trainer(load_run_config(None, [*base, f"train.out_dir={out}", "train.max_steps=2",
                                       f"train.init_from={first}", f"model.dropout={dropout}"])).fit()
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
        return [r["loss"] for r in rows if "loss" in r], yaml.safe_load((checkpoint.resolve(out) / "config.yaml").read_text())

    plain, plain_cfg = stage_two("plain", 0.0)
    dropped, dropped_cfg = stage_two("dropout", 0.3)
    assert plain_cfg["model"]["dropout"] == 0.0 and dropped_cfg["model"]["dropout"] == 0.3
    assert len(plain) == len(dropped) == 2
    assert dropped[0] != plain[0]
    again, _ = stage_two("dropout_again", 0.3)
    assert again == dropped  # seeded: the same masks on a rerun
