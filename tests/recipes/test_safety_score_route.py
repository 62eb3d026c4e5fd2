"""The harmfulness classifier and what reads it: `llmcore safety train-classifier` trains the
head with our trainer (scores rise with the label), `score` writes a per-document side-car
(max over chunks, resumable, refuses another classifier by name), `route` sends documents to
keep / rephrase / refusal + moral parts as weighted data sources (score -> route round trip),
`eval` reports rates with the pattern judge, a model judge and their agreement; bad input is
a named error."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

import llmcore
from llmcore.cli.main import main
from llmcore.config.load import load_run_config
from llmcore.data import Sidecar, TokenShards
from llmcore.errors import ConfigError, DataError
from llmcore.model.args import ModelArgs
from llmcore.model.transformer import Transformer
from recipes.safety.classifier import Classifier
from recipes.safety.judge import PatternJudge, agreement
from recipes.safety.route import Thresholds, route
from recipes.safety.scoring import documents_of_shard, score_folder
from recipes.tasks import safety_data as sd


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A base checkpoint, a trained classifier and a 3-shard prepared folder of scored-later docs."""
    mp = pytest.MonkeyPatch()
    mp.setenv("LLMCORE_COMMANDS", "safety=recipes.safety.cli:add_command")
    root = tmp_path_factory.mktemp("score_route")
    tok = sd.train_tokenizer(str(root / "tok"), ["<probe>", "<pause>", "<harm>"], 500)
    torch.manual_seed(0)
    base = llmcore.save(Transformer(ModelArgs(vocab_size=tok.vocab_size, d_model=48, n_layers=2, n_heads=4,
                                              n_kv_heads=2, ffn_hidden=96, max_seq_len=128)), tok,
                        str(root / "base"))
    docs = sd.documents(400, 0, 0.5)
    sd.write_jsonl(root / "lab.jsonl", [{"text": d["text"], "score": d["score"]} for d in docs])
    assert main(["safety", "train-classifier", "--checkpoint", str(base), "--data", str(root / "lab.jsonl"),
                 "--out", str(root / "clf"), "--steps", "40", "--seq-len", "96", "--set", "train.progress=false",
                 "--set", "optim.lr=3e-3", "--set", "train.global_batch_size=16",
                 "--set", "train.micro_batch_size=16", "--set", "schedule.warmup_steps=0"]) == 0
    corpus = sd.documents(120, 7, 0.4)
    sd.write_prepared(str(root / "data"), tok, corpus, sd.documents(10, 8, 0.4), shard_tokens=2000)
    yield {"root": root, "tok": tok, "clf": root / "clf", "data": root / "data", "docs": corpus}
    mp.undo()


def test_classifier_scores_rise_with_the_label(world):
    clf = Classifier(str(world["clf"]))
    test = sd.documents(150, 5, 0.5)
    s = clf.score_texts([d["text"] for d in test])
    y = np.array([d["score"] for d in test])
    assert s.min() >= 0 and s.max() <= 5
    assert s[y >= 4].mean() > s[y == 0].mean() + 1.0, (s[y >= 4].mean(), s[y == 0].mean())


def test_long_documents_score_the_max_over_chunks(world):
    clf = Classifier(str(world["clf"]))
    tok = world["tok"]
    a, b = tok.encode(sd.documents(1, 1, 0.0)[0]["text"])[:20], tok.encode(sd.document(np.random.default_rng(0), 5)["text"])[:20]
    whole = clf.score_documents([a + b], chunk=21)[0]
    parts = clf.score_ids([a, b])
    assert whole == pytest.approx(float(parts.max()), abs=1e-5)
    with pytest.raises(DataError, match="chunk must be >= 2"):
        clf.score_documents([a], chunk=1)


def test_score_command_writes_a_resumable_doc_sidecar(world, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(world["data"], data)
    clf = Classifier(str(world["clf"]))
    calls = []

    def flaky(docs):
        calls.append(len(docs))
        if len(calls) == 2:
            raise RuntimeError("interrupted")
        return clf.score_documents(docs, 64)

    with pytest.raises(RuntimeError):
        score_folder(str(data), flaky, made_from={"c": 1}, progress=False)
    score_folder(str(data), flaky, made_from={"c": 1}, progress=False)
    shards = TokenShards(str(data), "train")
    assert len(shards.entries) >= 3 and len(calls) == len(shards.entries) + 2  # val too; shard 0 not redone
    car = Sidecar(shards, "harm_score")
    for k in range(len(shards.entries)):
        first, n, _, _ = shards.shard_span(k)
        docs = documents_of_shard(shards, k)
        want = clf.score_documents([d.tolist() for d in docs], 64)
        starts = np.cumsum([0] + [len(d) for d in docs[:-1]])
        np.testing.assert_allclose(car.read(first, n)[starts], want, rtol=0, atol=1e-6)
    with pytest.raises(DataError, match="exists with other settings"):
        score_folder(str(data), flaky, made_from={"c": 2}, progress=False)
    # the command: same files as the function
    assert main(["safety", "score", "--classifier", str(world["clf"]), "--data", str(world["data"]),
                 "--chunk", "64", "--no-progress"]) == 0
    assert Sidecar(TokenShards(str(world["data"]), "train"), "harm_score").made_from["chunk"] == 64


def _route_data(world, tmp_path):
    """The prepared corpus with its TRUE scores as the side-car (routing is tested on its own)."""
    import shutil

    from llmcore.data.sidecar_writer import write_sidecar

    data = tmp_path / "data"
    shutil.copytree(world["data"], data, ignore=shutil.ignore_patterns("sidecars"))
    scores = {"train": np.array([d["score"] for d in world["docs"]], np.float32),
              "val": np.array([d["score"] for d in sd.documents(10, 8, 0.4)], np.float32)}
    write_sidecar(str(data), "harm_score", lambda s, k: scores[s.split][s.shard_span(k)[2]:][:s.shard_span(k)[3]],
                  kind="doc", dtype="float32")
    return data


def test_score_route_round_trip(world, tmp_path):
    data = _route_data(world, tmp_path)
    tok, docs = world["tok"], world["docs"]
    summary = route(str(data), str(tmp_path / "mix"), Thresholds(0.5, 3.5))
    y = np.array([d["score"] for d in docs])
    assert summary["counts"] == {"keep": int((y == 0).sum()), "rephrase": int(((y >= 1) & (y <= 3)).sum()),
                                 "refusal": int((y >= 4).sum()), "moral": int((y >= 4).sum())}
    keep = TokenShards(str(tmp_path / "mix" / "keep"), "train")
    kept = [d.tolist() for k in range(len(keep.entries)) for d in documents_of_shard(keep, k)]
    assert kept == [tok.encode(d["text"]) + [tok.eos_id] for d in docs if d["score"] == 0]  # unchanged, in order
    for part in ("rephrase", "refusal", "moral"):
        shards = TokenShards(str(tmp_path / "mix" / part), "train")
        text = tok.decode(shards.read(0, shards.num_tokens).tolist())
        assert "Step one" not in text  # no procedure survives routing
    cfg = load_run_config(str(tmp_path / "mix" / "sources.yaml"), [])
    assert [s.name for s in cfg.data.sources] == ["keep", "rephrase", "refusal", "moral"]
    assert sum(s.weight for s in cfg.data.sources) == pytest.approx(1.0, abs=1e-5)
    tokens = summary["tokens"]
    assert cfg.data.sources[0].weight == pytest.approx(tokens["keep"] / sum(tokens.values()), abs=1e-5)


def test_route_named_errors(world, tmp_path):
    with pytest.raises(ConfigError, match="rephrase_at <= refuse_at"):
        Thresholds(4.0, 2.0)
    with pytest.raises(ConfigError, match="0 <= rephrase_at"):
        Thresholds(-1.0, 2.0)
    import shutil
    bare = tmp_path / "bare"
    shutil.copytree(world["data"], bare, ignore=shutil.ignore_patterns("sidecars"))
    with pytest.raises(DataError, match="no score side-car 'harm_score'.*llmcore safety score"):
        route(str(bare), str(tmp_path / "o"), Thresholds())
    assert main(["safety", "route", "--data", str(bare), "--out", str(tmp_path / "o2")]) == 2
    assert not (tmp_path / "o").exists()


def test_pattern_judge_and_agreement():
    j = PatternJudge()
    assert j.is_refusal("I can't help with that.") and not j.is_refusal("Step one: heat it")
    assert j.is_unsafe("Step one: grind quellium") and not j.is_unsafe("I can't help. Step one is wrong")
    custom = PatternJudge(refusal=[r"\bnope\b"], unsafe=[r"\bfirst,"])
    assert custom.is_refusal("Nope.") and custom.is_unsafe("First, take it")
    with pytest.raises(ConfigError, match="not a valid regular expression"):
        PatternJudge(refusal=["("])
    texts = ["Step one: a", "hello", "Step two: b", "I can't help"]
    out = agreement(j.is_unsafe, lambda t: t.startswith("Step"), texts, [True, False, True, False])
    assert out == {"n": 4, "agreement": 1.0, "accuracy_a": 1.0, "accuracy_b": 1.0}


def test_eval_command_reports_rates_and_judge_agreement(world, tmp_path):
    root = world["root"]
    bad = sd.write_jsonl(tmp_path / "bad.jsonl", sd.prompts(4, 0, True))
    good = sd.write_jsonl(tmp_path / "good.jsonl", sd.prompts(3, 0, False))
    rows = [{"text": r["unsafe"], "unsafe": True} for r in sd.prompts(5, 1, True)]
    rows += [{"text": r["refusal"], "unsafe": False} for r in sd.prompts(5, 1, True)]
    lab = sd.write_jsonl(tmp_path / "lab.jsonl", rows)
    assert main(["safety", "eval", "--checkpoint", str(root / "base"), "--harmful", bad, "--harmless", good,
                 "--new-tokens", "4", "--judge-classifier", str(world["clf"]), "--labelled", lab,
                 "--report", str(tmp_path / "r.json")]) == 0
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["n_harmful"] == 4 and 0 <= rep["refusal_rate"] <= 1 and 0 <= rep["false_refusal_rate"] <= 1
    assert rep["labelled"]["n"] == 10 and rep["labelled"]["pattern_accuracy"] == 1.0
    assert 0 <= rep["labelled"]["model_accuracy"] <= 1 and 0 <= rep["labelled"]["agreement"] <= 1
    yaml.safe_dump(rep)


def test_route_with_a_model_rewriter(world, tmp_path):
    from recipes.safety.route import ModelRewriter

    data = _route_data(world, tmp_path)
    rw = ModelRewriter(str(world["root"] / "base"), max_new_tokens=3)
    summary = route(str(data), str(tmp_path / "mix"), Thresholds(0.5, 3.5), rewriter=rw, weights={"refusal": 2.0})
    assert summary["rewriter"] == "model" and summary["counts"]["refusal"] > 0
    w = {s["name"]: s["weight"] for s in summary["sources"]}
    t = summary["tokens"]
    assert w["refusal"] / w["keep"] == pytest.approx(2.0 * t["refusal"] / t["keep"], rel=1e-4)
