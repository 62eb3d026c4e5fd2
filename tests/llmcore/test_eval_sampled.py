"""`llmcore eval --pass-at-k` and `--copy-probe`: sampled pass@k against the closed form for a
model whose next-token distribution is known (uniform), greedy sampling equal to exact match,
the copy probe's indexing through an induction oracle, and the CLI wiring."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch

import llmcore
from llmcore.cli.main import main
from llmcore.errors import ConfigError
from llmcore.eval.copy_probe import copy_probe
from llmcore.eval.sampled import evaluate_pass_at_k, evaluate_pass_at_k_temperatures
from llmcore.eval.tasks import first_line
from llmcore.model.args import ModelArgs
from llmcore.model.transformer import Transformer
from llmcore.tokenizer import Tokenizer


def _uniform_model(vocab):
    model = Transformer(ModelArgs(vocab_size=vocab, d_model=16, n_layers=1, n_heads=2, n_kv_heads=1,
                                  ffn_hidden=32, max_seq_len=64))
    with torch.no_grad():
        model.embed_tokens.weight.zero_()  # tied: every logit 0, the next token uniform
    return model.eval()


def test_pass_at_k_of_a_uniform_model_matches_the_closed_form(prepared):
    tok = Tokenizer.load(str(prepared / "tokenizer"))
    model = _uniform_model(tok.vocab_size)
    answer = "[0-9]"  # any one-digit answer is valid: many answers, one chance p per token
    p = sum(re.fullmatch(answer, first_line(tok.decode([i]))) is not None
            for i in range(tok.vocab_size) if i != tok.eos_id) / tok.vocab_size
    assert 0.005 < p < 0.2
    tasks = [{"prompt": f"Count: {i}", "answer": answer} for i in range(40)]
    out = evaluate_pass_at_k_temperatures(model, tok, tasks, [1, 8, 32], [1.0], n=32, verifier="regex",
                                          max_new_tokens=1)
    got = {k: v["mean"] for k, v in out["T=1"]["overall"].items()}
    for k in (1, 8, 32):
        want = 1 - (1 - p) ** k
        se = math.sqrt(want * (1 - want) / 40) + 0.02
        assert abs(got[k] - want) < 3 * se, (k, got, want)
        lo, hi = out["T=1"]["overall"][k]["lo"], out["T=1"]["overall"][k]["hi"]
        assert lo <= got[k] <= hi
    assert got[1] < got[8] < got[32]


def test_greedy_pass_at_k_is_exact_match_for_every_k(prepared, tmp_path):
    tok = Tokenizer.load(str(prepared / "tokenizer"))
    torch.manual_seed(0)
    model = Transformer(ModelArgs(vocab_size=tok.vocab_size, d_model=16, n_layers=1, n_heads=2, n_kv_heads=1,
                                  ffn_hidden=32, max_seq_len=64)).eval()
    from llmcore.eval.tasks import exact_match

    rows = [{"prompt": f"Count: {i} {i + 1}", "answer": f"{i + 2}."} for i in range(6)]
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    preds = exact_match(model, tok, str(path), max_new_tokens=4)["examples"]
    # make half the answers the greedy prediction, so the accuracy is 0.5
    for r, e in zip(rows[:3], preds[:3]):
        r["answer"] = e["prediction"]
    out = evaluate_pass_at_k(model, tok, rows, [1, 4], n=4, temperature=0.0, max_new_tokens=4)
    assert {k: v["mean"] for k, v in out["overall"].items()} == {1: 0.5, 4: 0.5}
    with pytest.raises(ConfigError, match="needs at least 8 samples"):
        evaluate_pass_at_k(model, tok, rows, [8], n=4)
    with pytest.raises(ConfigError, match="not a regular expression"):
        evaluate_pass_at_k(model, tok, [{"prompt": "a", "answer": "("}], [1], n=1, verifier="regex")
    with pytest.raises(ConfigError, match="temperature"):
        evaluate_pass_at_k(model, tok, rows, [1], n=1, temperature=float("nan"))


class _InductionOracle(torch.nn.Module):
    """Predicts the token that followed the latest earlier occurrence of the current token
    (else token 0): what a perfect copier does."""

    def __init__(self, vocab):
        super().__init__()
        self.vocab = vocab
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, ids):
        return ids

    def logits(self, ids):
        B, T = ids.shape
        out = torch.zeros(B, T, self.vocab)
        for b in range(B):
            last = {}
            for t in range(T):
                tok = int(ids[b, t])
                out[b, t, last.get(tok, 0)] = 100.0
                if t + 1 < T:
                    last[tok] = int(ids[b, t + 1])
        return out


def test_copy_probe_scores_the_second_showing():
    got = copy_probe(_InductionOracle(1000), lo=10, hi=1000, span=12, n_seqs=20)
    assert got["positions"] == 20 * 11
    assert got["copy_accuracy"] > 0.97  # a repeat inside a span can mislead the oracle, rarely
    assert got["first_accuracy"] < 0.05
    assert got["copy_prob"] == pytest.approx(got["copy_accuracy"], abs=1e-3)  # a logit margin of 100: p = 1 or 0
    pooled = copy_probe(_InductionOracle(1000), span=12, n_seqs=20, pool=[500, 501, 502])
    assert pooled["first_accuracy"] > 0.1  # a pool of 3: the first showing repeats ids too
    with pytest.raises(ConfigError, match="max_seq_len"):
        copy_probe(_uniform_model(50), lo=4, hi=50, span=40)


def test_cli_eval_pass_at_k_and_copy_probe(prepared, tmp_path, capsys):
    tok = Tokenizer.load(str(prepared / "tokenizer"))
    llmcore.save(_uniform_model(tok.vocab_size), tok, str(tmp_path / "m"))
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"Count: {i}", "answer": "[0-9]+"}) + "\n" for i in range(3)))
    assert main(["eval", "--checkpoint", str(tmp_path / "m"), "--tasks", str(path), "--pass-at-k", "1,4",
                 "--samples", "4", "--temperature", "0.5,1", "--verifier", "regex", "--max-new-tokens", "2",
                 "--copy-probe", "--copy-span", "8", "--copy-n", "4"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["pass_at_k"]) == {"T=0.5", "T=1"} and out["pass_at_k"]["T=1"]["n"] == 4
    assert set(out["pass_at_k"]["T=1"]["overall"]) == {"1", "4"}  # JSON keys
    assert out["copy_probe"]["positions"] == 4 * 7
