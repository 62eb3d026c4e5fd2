"""`llmcore.save`: a checkpoint written without an engine (after a weight edit) loads back
exactly, starts a run through `train.init_from`, keeps a given config, refuses to overwrite."""

from __future__ import annotations

import pytest
import torch
from run_configs import RECIPE_RUN, tiny_config

import llmcore
from llmcore.errors import CheckpointError
from llmcore.train import checkpoint
from llmcore.train.loop import Trainer


def test_an_edited_model_round_trips_and_starts_a_run(prepared, tmp_path):
    trainer = Trainer(tiny_config(prepared, tmp_path / "src", *RECIPE_RUN, "train.max_steps=1"))
    trainer.fit()
    model, tok = llmcore.load(str(tmp_path / "src"), device="cpu")
    with torch.no_grad():  # an abliteration-like edit: project a direction out of one matrix
        w = model.layers[0].mlp.down_proj.weight
        d = torch.nn.functional.normalize(torch.randn(w.shape[0]), dim=0)
        w -= torch.outer(d, d @ w)
    out = llmcore.save(model, tok, str(tmp_path / "edited"))
    again, tok2 = llmcore.load(str(out), device="cpu")
    assert tok2.hash == tok.hash
    ref = model.state_dict()
    assert all(torch.equal(ref[k], v) for k, v in again.state_dict().items())
    ids = torch.tensor([tok.encode("The hacker reads the file")])
    assert torch.equal(again.logits(again(ids)), model.logits(model(ids)))
    # a new run starts from the edited weights (same architecture via the spelled-out config)
    run = Trainer(tiny_config(prepared, tmp_path / "next", *RECIPE_RUN, "train.max_steps=1",
                              f"train.init_from={out}"))
    start = run.engine.module.model.state_dict()
    assert all(torch.equal(start[k], ref[k]) for k in ref)


def test_a_given_config_is_kept_and_a_full_folder_refused(prepared, tmp_path):
    cfg = tiny_config(prepared, tmp_path / "r", *RECIPE_RUN, "recipes=[pause]", "pause.fraction=0.2")
    trainer = Trainer(cfg)
    model = trainer.engine.module.model
    out = llmcore.save(model, trainer.tokenizer, str(tmp_path / "s"), cfg)
    assert checkpoint.recipes(out).names == ["pause"]
    assert checkpoint.read_state(out)["step"] == 0
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(CheckpointError, match=r"output folder .*s exists and is not empty; pass overwrite=True"):
        llmcore.save(model, trainer.tokenizer, str(out))
    assert sorted(p.name for p in out.iterdir()) == before
    llmcore.save(model, None, str(out), overwrite=True)  # no tokenizer: weights and config only
    assert not (out / "tokenizer").exists() and (out / "model.safetensors").is_file()
