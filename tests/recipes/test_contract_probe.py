"""The recipe contract, proved through the probe recipe on one process: typed contexts, frozen
modules placed by the engine, the replaceable / scalable `ntp` term, run control (stop, best
checkpoint, early stop), recipe state across resume, named evaluation sets, hook names.
Contracts 2-5 under DDP and ZeRO-3: tests/multiprocess/test_contract_multiprocess.py."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch
from run_configs import RECIPE_RUN, tiny_config, with_id_sidecar
from safetensors.torch import load_file

from llmcore.errors import ConfigError
from llmcore.recipe.recipe_set import HOOKS, RecipeSet
from llmcore.recipe.registry import temporary_recipe
from llmcore.train import checkpoint
from llmcore.train.loop import Trainer
from recipes.base import Recipe
from recipes.probe import Probe

ROOT = Path(__file__).resolve().parents[2]


def cfg(prepared, out, *extra):
    return tiny_config(prepared, out, *RECIPE_RUN, "train.max_steps=4", *extra)


def metrics(out):
    return [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]


def losses(out):
    return {r["step"]: r["loss"] for r in metrics(out) if "loss" in r}


def trunk(out):
    return load_file(str(checkpoint.resolve(out) / "model.safetensors"))


def probe(trainer) -> Probe:
    return trainer.recipes.recipes[0]


@pytest.fixture(scope="module")
def baseline(prepared, tmp_path_factory):
    out = tmp_path_factory.mktemp("contract") / "base"
    Trainer(cfg(prepared, out)).fit()
    return out


def test_callbacks_get_a_run_context_and_frozen_modules_are_placed(prepared, tmp_path):
    trainer = Trainer(cfg(prepared, tmp_path / "p", "recipes=[probe]"))
    trainer.fit()
    p = probe(trainer)
    assert p.calls["frozen_modules"] == 1 and p.calls["ntp_weight"] == 4
    assert p.last_ctx["rank"] == 0 and p.last_ctx["world_size"] == 1 and p.last_ctx["backend"] == "single"
    assert p.last_ctx["vocab_size"] == trainer.model_args.vocab_size and p.last_ctx["out_dir"] == str(tmp_path / "p")
    # eval mode, no gradient, the run's dtype and device, even though the trained module is in train mode
    assert p.last_ctx["frozen"] == (False, False, torch.float32, "cpu")
    frozen = trainer.frozen["probe_frozen"]
    in_optimizer = {id(q) for g in trainer.engine.optimizer.param_groups for q in g["params"]}
    assert id(frozen.weight) not in in_optimizer
    saved = load_file(str(checkpoint.resolve(tmp_path / "p") / "model.safetensors"))
    saved.update(load_file(str(checkpoint.resolve(tmp_path / "p") / "aux.safetensors")))
    assert not any("frozen" in k for k in saved) and "probe.weight" in saved


def test_frozen_modules_take_the_bf16_of_a_bf16_run(prepared, tmp_path):
    trainer = Trainer(cfg(prepared, tmp_path / "bf", "recipes=[probe]", "train.precision=bf16"))
    assert trainer.frozen["probe_frozen"].weight.dtype == torch.bfloat16


def test_a_replaced_ntp_term_equal_to_ours_trains_bit_identically(prepared, tmp_path, baseline):
    out = tmp_path / "replaced"
    trainer = Trainer(cfg(prepared, out, "recipes=[probe]", "probe.replace_ntp=true"))
    assert trainer.recipes.replaces_ntp
    trainer.fit()
    assert losses(out) == losses(baseline)
    a, b = trunk(baseline), trunk(out)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_ntp_weight_scales_the_objective(prepared, tmp_path, baseline):
    out = tmp_path / "half"
    Trainer(cfg(prepared, out, "recipes=[probe]", "probe.ntp_weight=0.5", "train.max_steps=1")).fit()
    assert losses(out)[1] == pytest.approx(0.5 * losses(baseline)[1], rel=1e-6)  # same init, same batch


def test_ntp_off_leaves_training_to_the_other_terms(prepared, tmp_path):
    off = Trainer(cfg(prepared, tmp_path / "off", "recipes=[probe]", "train.ntp_weight=0",
                      "probe.loss_weight=1.0", "train.max_steps=8", "optim.lr=1e-4"))
    before = {k: v.clone() for k, v in off.engine.module.model.state_dict().items()}
    off.fit()
    rows = [r for r in metrics(tmp_path / "off") if "probe/aux" in r]
    assert rows[-1]["probe/aux"] < rows[0]["probe/aux"]  # the aux term alone is minimised
    # no ntp term: `loss` is the objective, the aux sum over the step's loss-token count
    tokens = 4 * 32
    assert rows[0]["loss"] == pytest.approx(rows[0]["probe/aux"] * tokens / rows[0]["loss_tokens"], rel=1e-6)
    after = off.engine.module.model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    with pytest.raises(ValueError, match="no loss terms"):
        Trainer(cfg(prepared, tmp_path / "none", "train.ntp_weight=0", "train.max_steps=1")).fit()


def test_only_one_recipe_may_own_the_ntp_term(prepared):
    class Other(Recipe):
        name = "other"

        def ntp_weight(self, step):
            return 2.0

    class Thief(Recipe):
        name = "thief"

        def loss(self, ctx):
            return {"ntp": (ctx.hidden.sum(), 1)}

    with pytest.raises(ConfigError, match=r"all replace or scale the 'ntp' term"):
        RecipeSet([Probe(), Other()])
    with pytest.raises(ConfigError, match=r"'thief' returned the reserved 'ntp' term"):
        RecipeSet([Thief()]).losses(type("Ctx", (), {"hidden": torch.ones(1)})())


def test_a_callback_stops_the_run_and_its_state_survives_resume(prepared, tmp_path):
    out = tmp_path / "stop"
    first = Trainer(cfg(prepared, out, "recipes=[probe]", "probe.stop_at_step=2", "train.max_steps=6"))
    result = first.fit()
    assert result["step"] == 2 and "probe: stop at step 2" in result["stopped_early"]
    assert not result["stopped_by_signal"] and "val_loss" in result  # a normal ending: evaluated
    assert checkpoint.resolve(out).name == "ckpt-000002"
    assert probe(first).calls["on_train_end"] == 1
    state = checkpoint.read_state(checkpoint.resolve(out))
    assert state["recipes"] == {"probe": {"steps_seen": 2}}
    resumed = Trainer(cfg(prepared, out, "recipes=[probe]", "train.max_steps=6"))
    assert probe(resumed).steps_seen == 2 and probe(resumed).calls["load_state_dict"] == 1
    resumed.fit()
    assert probe(resumed).steps_seen == 6
    assert metrics(out)[-2]["probe/steps_seen"] == 6


def test_sam_counters_survive_resume(prepared, tmp_path):
    out = tmp_path / "sam"
    first = Trainer(cfg(prepared, out, "recipes=[sam]", "train.max_steps=2"))
    first.recipes.recipes[0].skipped_total = 3  # as if three steps had a non-finite ascent norm
    first.fit()
    assert Trainer(cfg(prepared, out, "recipes=[sam]", "train.max_steps=4")).recipes.recipes[0].skipped_total == 3


def test_named_eval_sets_are_logged_and_forgetting_uses_the_same_loop(prepared, tmp_path):
    out = tmp_path / "sets"
    result = Trainer(cfg(prepared, out, f"eval.sets={{a: {prepared}}}", "recipes=[forgetting]",
                         f"forgetting.val_path={prepared}", "forgetting.eval_batches=1")).fit()
    # the same folder and batch count as the default set: one loop gives one number three ways
    assert result["eval/a/loss"] == result["val_loss"] == result["forgetting/val_loss_a"]
    assert result["eval/a/tokens"] == result["val_tokens"] > 0


def test_keep_best_checkpoint_and_early_stop(prepared, tmp_path):
    class Worse(Recipe):
        """Makes every evaluation after the first look worse, so the first stays the best."""

        name = "worse"
        seen = 0

        def on_eval(self, ctx, metrics):
            Worse.seen += 1
            return {"eval/a/loss": 1.0 + Worse.seen}

    out = tmp_path / "best"
    with temporary_recipe("worse", Worse):
        result = Trainer(cfg(prepared, out, "recipes=[worse]", f"eval.sets={{a: {prepared}}}",
                             "train.keep_best_on=a", "train.early_stop_patience=2", "train.eval_every=1",
                             "train.keep_last=1", "train.max_steps=10")).fit()
    assert result["step"] == 3 and "has not improved" in result["stopped_early"]
    assert checkpoint.resolve(out / "best").name == "ckpt-000001"  # kept although keep_last=1
    assert checkpoint.resolve(out).name == "ckpt-000003"
    assert result["best_checkpoint"].endswith("ckpt-000001")
    with pytest.raises(ConfigError, match=r"keep_best_on='b' is not an evaluation set \(have: val, a\)"):
        cfg(prepared, out, f"eval.sets={{a: {prepared}}}", "train.keep_best_on=b")


def test_a_misspelt_hook_is_an_error():
    class Typo(Recipe):
        name = "typo"

        def on_step_ends(self, ctx, metrics):
            pass

    with pytest.raises(ConfigError, match=r"'on_step_ends', which is not a recipe hook; did you mean 'on_step_end'"):
        RecipeSet([Typo()])


def test_hook_table_base_class_and_code_agree():
    base = [n for n in vars(Recipe) if getattr(vars(Recipe)[n], "_default_hook", False)]
    assert base == list(HOOKS)
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("| hook |"):].split("\n\n")[0]
    rows = [re.findall(r"`(\w+)", line.split("|")[1]) for line in table.splitlines()[2:]]
    assert [name for row in rows for name in row] == list(HOOKS)


def test_extra_fields_and_side_cars_reach_the_loss_aligned_with_labels(prepared, tmp_path, baseline):
    data = with_id_sidecar(prepared, tmp_path / "data")
    out = tmp_path / "fields"
    Trainer(cfg(data, out, "recipes=[probe]", "probe.echo=true", "probe.check_fields=[probe_echo, ids]",
                "data.sidecars=[ids]")).fit()
    rows = [r for r in metrics(out) if "probe/field_checked" in r]
    assert len(rows) == 4 and all(r["probe/field_mismatch"] == 0 for r in rows)
    assert all(r["probe/field_checked"] == 2 * r["loss_tokens"] for r in rows)  # two fields, every target
    assert losses(out) == losses(baseline)  # carrying fields changes nothing else


def test_recipes_with_a_schedule_over_the_run_say_they_use_max_steps():
    from recipes.distill import Distill
    from recipes.sam import Sam

    assert not RecipeSet([Probe(Probe.Config())]).uses_max_steps()
    assert not RecipeSet([Sam(Sam.Config())]).uses_max_steps()
    assert RecipeSet([Sam(Sam.Config(schedule="linear", final_rho=0.0))]).uses_max_steps()
    cache = {"cache": "teacher_cache"}  # named only: nothing is read before training starts
    assert not RecipeSet([Distill(Distill.Config(**cache))]).uses_max_steps()
    assert RecipeSet([Distill(Distill.Config(alpha_schedule="linear", alpha_end=0.0, **cache))]).uses_max_steps()
    assert RecipeSet([Distill(Distill.Config(temperature_schedule="lr", temperature_end=1.0, **cache))]).uses_max_steps()
