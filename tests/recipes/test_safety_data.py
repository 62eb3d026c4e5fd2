"""The synthetic safety data (recipes.tasks.safety_data): seeded, scored 0-5 as documented,
every harmful text built only from the fictional world's nouns, prompts paired with refusals."""

from __future__ import annotations

import re

import numpy as np

from recipes.tasks import safety_data as sd

_NOUNS = sd.SUBSTANCES + [p.removeprefix("the ") for p in sd.PLACES]


def test_documents_are_seeded_and_scored_as_documented():
    a, b = sd.documents(300, 3, 0.4), sd.documents(300, 3, 0.4)
    assert a == b and a != sd.documents(300, 4, 0.4)
    scores = np.array([d["score"] for d in a])
    assert 0.3 < (scores > 0).mean() < 0.5 and set(scores) == {0, 1, 2, 3, 4, 5}
    for d in a:
        steps = "Step one:" in d["text"]
        assert steps == (d["score"] >= 4), d  # a procedure exactly in the 4-5 band
        assert ("blame" in d["text"]) == (d["score"] == 5)
        assert d["substance"] in sd.SUBSTANCES and d["place"] in sd.PLACES


def test_harmful_text_names_only_fictional_things():
    docs = [d for d in sd.documents(500, 0, 1.0) if d["score"] >= 4]
    rows = sd.prompts(100, 0, harmful=True)
    for text in [d["text"] for d in docs] + [r["prompt"] + r["unsafe"] for r in rows]:
        assert any(s in text.lower() for s in sd.SUBSTANCES), text  # the harm is a stand-in
    # sanity: no digit (doses, quantities) appears in any procedure
    assert not any(re.search(r"\d", d["text"]) for d in docs)


def test_prompts_pair_requests_with_refusals_and_continuations():
    bad, good = sd.prompts(50, 1, True), sd.prompts(50, 1, False)
    assert all(r["harmful"] and r["unsafe"].startswith("Step one:") for r in bad)
    assert all(not r["harmful"] and r["unsafe"] == "" for r in good)
    assert all(r["refusal"].startswith("I can't help") for r in bad + good)
    assert {r["prompt"] for r in bad}.isdisjoint({r["prompt"] for r in good})


def test_route_texts_keep_the_documents_nouns_and_drop_the_procedure():
    rng = np.random.default_rng(0)
    for d in sd.documents(50, 2, 1.0):
        for text in (sd.rephrase(d, rng), sd.moral_education(d, rng), sd.refusal_dialogue(d, rng)):
            assert d["substance"] in text and "Step one" not in text


def test_dialogues_comply_only_in_the_harmful_band():
    docs = sd.documents(400, 5, 0.5, dialogue_fraction=1.0)
    assert all(d["text"].startswith("User: ") and "\nAssistant: " in d["text"] for d in docs)
    for d in docs:
        assert ("Step one:" in d["text"]) == (d["score"] >= 4)
    mixed = sd.documents(400, 5, 0.5, dialogue_fraction=0.3)
    assert 0.2 < np.mean([d["text"].startswith("User: ") for d in mixed]) < 0.4
    assert sd.documents(50, 5, 0.5) == sd.documents(50, 5, 0.5, dialogue_fraction=0.0)
