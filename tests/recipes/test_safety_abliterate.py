"""Abliteration (arXiv 2406.11717 / 2510.02768): the edit leaves r^T W ~= 0 (<= 1e-5 relative,
fp32) on every o_proj / down_proj (and the embedding when asked) and every other tensor
bit-identical; the residual stream then has no r component beyond the embedding's; the
directions are normalised differences of means; layer selection and its named errors; the
edited checkpoint exports to HF with logits parity; `llmcore safety abliterate` end to end."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safety_fixtures import safety_folder

import llmcore
from llmcore.cli.main import main
from llmcore.errors import ConfigError
from llmcore.hf.folder import export_hf
from llmcore.model.args import ModelArgs
from llmcore.model.transformer import Transformer
from recipes.safety.abliterate import (
    candidate_layers,
    choose_layer,
    edited_names,
    encode_prompts,
    orthogonalize,
    refusal_directions,
)
from recipes.tasks import safety_data as sd


def peaked(vocab, tie=False, layers=3, seed=0):
    torch.manual_seed(seed)
    m = Transformer(ModelArgs(vocab_size=vocab, d_model=48, n_layers=layers, n_heads=4, n_kv_heads=2,
                              ffn_hidden=80, max_seq_len=128, tie_embeddings=tie)).eval()
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.1)
    return m


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return safety_folder(tmp_path_factory.mktemp("ablit"), n_docs=50)[1]


@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
@pytest.mark.parametrize("embedding", [False, True], ids=["blocks", "blocks+embedding"])
def test_edit_removes_r_and_leaves_every_other_tensor_bit_identical(tie, embedding):
    model = peaked(301, tie)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    r = torch.randn(48, generator=torch.Generator().manual_seed(1))
    out = orthogonalize(model, r, embedding)
    r = r / r.norm()
    names = edited_names(model, embedding)
    assert len(names) == 2 * 3 + int(embedding)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), f"original {k} changed"
    for k, w in out.state_dict().items():
        if k in names:
            resid = w @ r if k == "embed_tokens.weight" else r @ w  # (V,) / (k,)
            assert float(resid.norm() / w.norm()) <= 1e-5, k
            assert not torch.equal(w, before[k])
        else:
            assert torch.equal(w, before[k]), f"{k} must be bit-identical"


def test_residual_stream_keeps_only_the_embeddings_r_component():
    model = peaked(301)
    r = torch.randn(48, generator=torch.Generator().manual_seed(2))
    r = r / r.norm()
    ids = torch.randint(0, 301, (2, 17), generator=torch.Generator().manual_seed(3))
    for embedding in (False, True):
        edited = orthogonalize(model, r, embedding)
        with torch.no_grad():
            _, states = edited(ids, return_layers=[0, 1, 2, 3])
        base = states[0] @ r  # (2, 17)
        scale = states[3].norm(dim=-1).max()
        for i in (1, 2, 3):
            assert float((states[i] @ r - base).abs().max() / scale) <= 1e-5, (embedding, i)
        if embedding:
            assert float(base.abs().max() / scale) <= 1e-5


def test_directions_are_normalised_differences_of_means(tok):
    model = peaked(tok.vocab_size)
    bad = encode_prompts(tok, [r["prompt"] for r in sd.prompts(6, 0, True)])
    good = encode_prompts(tok, [r["prompt"] for r in sd.prompts(5, 0, False)])
    got = refusal_directions(model, bad, good, positions=2)
    assert sorted(got) == [1, 2, 3]

    def mean(prompts, i):  # reference: one full forward per prompt, stack then average
        rows = []
        for p in prompts:
            with torch.no_grad():
                rows.append(model(torch.tensor([p]), return_layers=[i])[1][i][0, -2:].double())
        return torch.cat(rows).mean(0)

    for i in (1, 2, 3):
        d = mean(bad, i) - mean(good, i)
        torch.testing.assert_close(got[i].double(), d / d.norm(), atol=1e-6, rtol=0)


def test_candidate_layers_and_choice():
    assert candidate_layers(10) == list(range(1, 9)) and candidate_layers(4) == [1, 2, 3]
    assert candidate_layers(2) == [1] and candidate_layers(1) == []
    cands = [{"layer": 1, "refusal": 0.2, "kl": 0.05}, {"layer": 2, "refusal": 0.0, "kl": 0.5},
             {"layer": 3, "refusal": 0.2, "kl": 0.01}]
    assert choose_layer(cands, 0.1)["layer"] == 3  # layer 2 refuses least but breaks the bound
    assert choose_layer(cands, 1.0)["layer"] == 2
    with pytest.raises(ConfigError, match="under the bound 0.001.*smallest: 0.01"):
        choose_layer(cands, 0.001)


def test_hf_export_of_the_edited_model_has_logits_parity(tok, tmp_path):
    transformers = pytest.importorskip("transformers")
    os.environ["HF_HUB_OFFLINE"] = "1"
    model = peaked(tok.vocab_size, tie=True)
    r = torch.randn(48, generator=torch.Generator().manual_seed(4))
    edited = orthogonalize(model, r, embedding=True)
    ckpt = llmcore.save(edited, tok, str(tmp_path / "ab"))
    out = export_hf(str(ckpt), str(tmp_path / "hf"))
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(out)).float().eval()
    ids = torch.randint(0, tok.vocab_size, (2, 23), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ours, theirs = edited.logits(edited(ids)), hf(ids).logits.float()
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=0)


def test_abliterate_command_end_to_end(tok, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LLMCORE_COMMANDS", "safety=recipes.safety.cli:add_command")
    ckpt = llmcore.save(peaked(tok.vocab_size, layers=4), tok, str(tmp_path / "orig"))
    bad = sd.write_jsonl(tmp_path / "bad.jsonl", sd.prompts(8, 0, True))
    good = sd.write_jsonl(tmp_path / "good.jsonl", sd.prompts(8, 0, False))
    args = ["safety", "abliterate", "--checkpoint", str(ckpt), "--harmful", bad, "--harmless", good,
            "--new-tokens", "6", "--kl-bound", "100", "--report", str(tmp_path / "rep.json")]
    assert main([*args, "--out", str(tmp_path / "ab")]) == 0
    report = json.loads((tmp_path / "rep.json").read_text())
    assert report["layer"] in (1, 2, 3) and [c["layer"] for c in report["candidates"]] == [1, 2, 3]
    assert report["n_harmful_held_out"] == 4 and report["kl"] >= 0 and report["kl"] >= 0.0
    for key in ("refusal_before", "refusal_after", "false_refusal_before", "false_refusal_after"):
        assert 0.0 <= report[key] <= 1.0
    edited, _ = llmcore.load(str(tmp_path / "ab"), device="cpu")
    orig, _ = llmcore.load(str(ckpt), device="cpu")
    changed = sorted(k for k, v in edited.state_dict().items() if not torch.equal(v, orig.state_dict()[k]))
    assert changed == sorted(report["edited"]) and len(changed) == 8
    capsys.readouterr()
    assert main([*args, "--out", str(tmp_path / "ab2"), "--layer", "9"]) == 2
    assert "--layer 9 is not a layer of this model (1..4)" in capsys.readouterr().err
    assert main([*args[:5], str(tmp_path / "missing.jsonl"), *args[6:], "--out", str(tmp_path / "ab3")]) == 2
    assert "missing.jsonl does not exist" in capsys.readouterr().err
    assert not (tmp_path / "ab2").exists() and not (tmp_path / "ab3").exists()
