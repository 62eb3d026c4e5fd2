"""The safety recipe's harm tags (arXiv 2504.16980): only inside documents scored unsafe, at
the configured rate (+-20% over 10k windows), the same after a resume, an ordinary target; a
missing score field or bad config is a named error; a tag-pretraining run trains."""

from __future__ import annotations

import json

import numpy as np
import pytest
from run_configs import RECIPE_RUN, tiny_config
from safety_fixtures import safety_folder

from llmcore.data import PackedLoader, Sample, TokenShards
from llmcore.errors import ConfigError
from llmcore.train.loop import Trainer
from recipes.safety.recipe import Safety
from recipes.safety.tags import insert_tags, unsafe_segments

TAG = 9


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return safety_folder(tmp_path_factory.mktemp("safety_tags"))


def bound(recipe, tok):
    recipe.bind(tok)
    return recipe


def test_unsafe_segments_split_at_documents():
    unsafe = np.array([1, 1, 0, 1, 1, 1, 1, 0], bool)
    docs = np.array([0, 0, 1, 2, 2, 3, 3, 4])
    assert unsafe_segments(unsafe, docs) == [(0, 2), (3, 5), (5, 7)]


def test_tags_follow_a_token_of_their_own_unsafe_document():
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = 65
        doc = np.sort(rng.integers(0, 6, n))
        doc -= doc[0]
        score = rng.integers(0, 6, doc.max() + 1).astype(np.float32)[doc]
        s = Sample(tokens=np.arange(100, 100 + n), doc_ids=doc, loss_mask=np.ones(n, bool),
                   fields={"harm_score": score}, fills={"harm_score": "previous"})
        out = insert_tags(s, TAG, score, 1.0, 0.2, rng)
        assert len(out) == n
        where = np.flatnonzero(out.tokens == TAG)
        assert (where > 0).all() and out.loss_mask[where].all()
        assert (out.fields["harm_score"][where] >= 1.0).all()
        for i in where:  # the nearest real token before a tag is of the tag's unsafe document
            j = i - 1
            while out.tokens[j] == TAG:
                j -= 1
            assert out.doc_ids[j] == out.doc_ids[i] and score[out.tokens[j] - 100] >= 1.0
        assert (out.tokens[out.tokens != TAG] == s.tokens[:n - len(where)]).all()  # order kept


def test_literal_tag_in_raw_text_becomes_unk():
    s = Sample(tokens=np.array([5, TAG, 6, 7]), doc_ids=np.zeros(4, np.int64), loss_mask=np.ones(4, bool))
    out = insert_tags(s, TAG, np.zeros(4), 1.0, 0.5, np.random.default_rng(0), unk_id=0)
    assert out.tokens.tolist() == [5, 0, 6, 7]


def _loader(data, recipe, seq_len=64, batch=32):
    shards = TokenShards(str(data), "train")
    return PackedLoader([("safety", shards, 1.0)], seq_len, batch, seed=3, transform=recipe.transform,
                        sidecars=["harm_score"])


@pytest.mark.parametrize("rate", [0.05, 0.12])
def test_tags_only_in_unsafe_documents_at_the_rate_over_10k_windows(folder, rate):
    data, tok, _ = folder
    recipe = bound(Safety(Safety.Config(rate=rate)), tok)
    loader = _loader(data, recipe)
    tags = unsafe_real = safe_tags = 0
    for _ in range(10_000 // 32 + 1):
        b = loader.next_batch()
        ids, score = b["input_ids"], b["harm_score"]  # score [B, T] belongs to labels[:, t]
        labels = b["labels"]
        is_tag = labels == recipe.tag_id
        tags += int(is_tag.sum())
        unsafe_real += int(((score >= 1.0) & ~is_tag).sum())
        safe_tags += int((is_tag & (score < 1.0)).sum())
        assert not (labels[is_tag] == -100).any()  # a normal target
        del ids
    assert safe_tags == 0
    measured = tags / unsafe_real
    assert abs(measured - rate) <= 0.2 * rate, (measured, rate)


def test_same_tags_after_resume(folder):
    data, tok, _ = folder
    recipe = bound(Safety(), tok)
    a = _loader(data, recipe, batch=8)
    first = [a.next_batch() for _ in range(6)]
    b = _loader(data, recipe, batch=8)
    for _ in range(2):
        b.next_batch()
    state = b.state_dict()
    c = _loader(data, recipe, batch=8)
    c.load_state_dict(state)
    for want in first[2:]:
        got = c.next_batch()
        assert (got["input_ids"] == want["input_ids"]).all() and (got["labels"] == want["labels"]).all()
    assert sum(int((x["input_ids"] == recipe.tag_id).sum()) for x in first[2:]) > 0


def test_missing_score_field_and_bad_config_are_named(folder):
    data, tok, _ = folder
    recipe = bound(Safety(), tok)
    shards = TokenShards(str(data), "train")
    loader = PackedLoader([("s", shards, 1.0)], 32, 4, seed=0, transform=recipe.transform)
    with pytest.raises(ConfigError, match="harm_score.*data.sidecars"):
        loader.next_batch()
    with pytest.raises(ConfigError, match="safety.rate"):
        Safety.Config(rate=1.5)
    with pytest.raises(ConfigError, match="safety.drop_fraction"):
        Safety.Config(drop_fraction=1.0)


def test_reserved_slot_as_the_tag(folder):
    _, tok, _ = folder
    r = bound(Safety(Safety.Config(token="<reserved_0>")), tok)
    assert r.special_tokens() == ["<reserved_0>"] and r.tag_id == tok.token_id("<reserved_0>")


def test_tag_pretraining_run_trains(folder, tmp_path):
    data, _, _ = folder
    out = tmp_path / "run"
    cfg = tiny_config(data, out, *RECIPE_RUN, "recipes=[safety]", "data.sidecars=[harm_score]",
                      "train.max_steps=30", "data.seq_len=64")
    Trainer(cfg).fit()
    lines = (out / "metrics.jsonl").read_text().splitlines()
    curve = [json.loads(line)["loss"] for line in lines if '"loss"' in line]
    assert np.mean(curve[-5:]) < np.mean(curve[:5]) - 0.5
    # the checkpoint's recipes bring the tag ban and SafeBeam to decoding
    import llmcore
    from llmcore.generate.beam import beam_search

    model, tok = llmcore.load(str(out), device="cpu")
    recipes = llmcore.load_recipes(str(out))
    recipes.bind(tok)
    tag = tok.token_id("<harm>")
    found = beam_search(model, tok.encode("Step one: grind"), beam_width=3, max_new_tokens=8,
                        selector=recipes.beam_selector(), logits_processors=recipes.logits_processors())
    assert len(found) == 3 and all(tag not in ids for ids, _ in found)
