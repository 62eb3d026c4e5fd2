"""The path-star task: graph structure (a star of chains, the answer a path from the start to
the goal leaf along listed edges), determinism, one token per character, verdicts and
exact-match scoring, and errors for graphs that do not fit."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch

import llmcore.eval.tasks
from llmcore.errors import ConfigError
from llmcore.model.args import ModelArgs
from llmcore.model.transformer import Transformer
from recipes.tasks import path_star as ps


@pytest.mark.parametrize("degree, path_len, num_nodes", [(2, 5, 52), (3, 4, 10), (2, 8, 15)])
def test_graph_is_a_star_of_chains_and_the_answer_walks_it(degree, path_len, num_nodes):
    rng = np.random.default_rng(0)
    for _ in range(50):
        row = ps.problem(rng, degree, path_len, num_nodes)
        edges_txt, query = row["prompt"].split("|")
        assert query.endswith("=") and len(query) == 3
        edges = ps.edges_of(row["prompt"])
        assert len(edges) == len(edges_txt.split(",")) == degree * (path_len - 1)
        nodes = {u for e in edges for u in e}
        assert len(nodes) == degree * (path_len - 1) + 1 and nodes <= set(ps.NODES[:num_nodes])
        out_deg = Counter(u for u, _ in edges)
        in_deg = Counter(v for _, v in edges)
        start, goal = query[0], query[1]
        assert out_deg[start] == degree and in_deg[start] == 0
        assert all(in_deg[v] == 1 for v in nodes - {start})
        assert out_deg[goal] == 0  # a leaf
        ans = row["answer"]
        assert len(ans) == path_len and ans[0] == start and ans[-1] == goal
        assert all((a, b) in edges for a, b in zip(ans, ans[1:]))
        assert ps.judge(row["prompt"], ans, ans) == {"correct": True, "first": True, "valid_walk": True}


def test_problems_are_distinct_deterministic_and_respect_exclude():
    a = ps.problems(200, 7, 2, 5, 20)
    assert a == ps.problems(200, 7, 2, 5, 20)
    assert a != ps.problems(200, 8, 2, 5, 20)
    assert len({r["prompt"] for r in a}) == 200
    b = ps.problems(50, 7, 2, 5, 20, exclude={r["prompt"] for r in a[:10]})
    assert not {r["prompt"] for r in b} & {r["prompt"] for r in a[:10]}
    goals_first = Counter(r["answer"][1] == sorted(v for u, v in ps.edges_of(r["prompt"]) if u == r["answer"][0])[0]
                          for r in a)
    assert 60 < goals_first[True] < 140  # the goal arm is not given away by the order of names


def test_judge_tells_first_choice_and_clever_hans_walks_apart():
    prompt, answer = "fq,ab,qk,bz,fa,kt|ft=", "fqkt"
    assert ps.judge(prompt, answer, "fabz") == {"correct": False, "first": False, "valid_walk": True}
    assert ps.judge(prompt, answer, "fqkz") == {"correct": False, "first": True, "valid_walk": False}
    assert ps.judge(prompt, answer, "") == {"correct": False, "first": False, "valid_walk": False}


def test_tokenizer_has_one_piece_per_character(tmp_path):
    tok = ps.train_tokenizer(str(tmp_path / "tok"))
    for row in ps.problems(20, 1, 2, 8, 52):
        p, a = tok.encode(row["prompt"]), tok.encode(row["answer"])
        assert len(p) == len(row["prompt"]) and len(a) == len(row["answer"])
        assert tok.encode(row["prompt"] + row["answer"]) == p + a
        assert tok.decode(p + a) == row["prompt"] + row["answer"]
    assert len({tok.encode(c)[0] for c in ps.CHARS}) == len(ps.CHARS)


def test_score_counts_exact_match_first_choice_and_walks(tmp_path, monkeypatch):
    rows = ps.problems(8, 3, 2, 5, 20)
    path = ps.write_jsonl(tmp_path / "t.jsonl", rows)
    assert [json.loads(line) for line in open(path)] == rows

    def fake_generate(model, tokenizer, prompts, max_new_tokens, **kw):
        out = []
        for i, p in enumerate(prompts):
            ans = next(r["answer"] for r in rows if r["prompt"] == p)
            other = next(v for u, v in ps.edges_of(p) if u == ans[0] and v != ans[1])
            out.append(ans if i % 2 == 0 else ans[0] + other + "\nrest")
        return out

    monkeypatch.setattr(llmcore.eval.tasks, "generate_text", fake_generate)
    res = ps.score(None, None, path)
    assert res == {"accuracy": 0.5, "n": 8, "first_step": 0.5, "valid_walk": 1.0}


def test_score_runs_a_real_model(tmp_path):
    tok = ps.train_tokenizer(str(tmp_path / "tok"))
    path = ps.write_jsonl(tmp_path / "t.jsonl", ps.problems(5, 3, 2, 4, 20))
    torch.manual_seed(0)
    model = Transformer(ModelArgs(vocab_size=tok.vocab_size, d_model=16, n_layers=1, n_heads=2, n_kv_heads=2,
                                  ffn_hidden=32, max_seq_len=64)).eval()
    res = ps.score(model, tok, path)
    assert res["n"] == 5 and 0.0 <= res["first_step"] <= 1.0 and res["accuracy"] <= res["first_step"]


@pytest.mark.parametrize("degree, path_len, num_nodes, message", [
    (2, 10, 15, "19 nodes do not fit in num_nodes=15"),
    (1, 5, 20, "degree >= 2"),
    (2, 5, 60, "at most 52"),
])
def test_bad_sizes_are_config_errors(degree, path_len, num_nodes, message):
    with pytest.raises(ConfigError, match=message):
        ps.problem(np.random.default_rng(0), degree, path_len, num_nodes)
