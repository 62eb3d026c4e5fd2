"""SafeBeam (arXiv 2504.16980) through the beam-selector hook: it never emits the tag, keeps
the beams after which a constructed model expects the tag least (where plain beam search
keeps the others), drops exactly half of each step's proposals, and works as a filter on
sampled continuations."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from llmcore.generate.beam import beam_search
from recipes.safety.recipe import Safety
from recipes.safety.safebeam import filter_continuations, safebeam_selector

TAG, V = 5, 6


class Bigram(nn.Module):
    """Next-token probabilities from the last token only (a fixed table): hand-checkable."""

    def __init__(self, table):
        super().__init__()
        t = torch.tensor(table, dtype=torch.float32)
        self.table = nn.Parameter(torch.log(t / t.sum(-1, keepdim=True)))

    def forward(self, input_ids, *args, **kw):
        return self.table[input_ids]  # (B, T, V)

    def logits(self, h):
        return h.float()

    def new_caches(self, batch, max_len):
        return []


# token 0 starts; "a"=1 and "b"=2 are likely but lead to the tag, "c"=3 and "d"=4 do not
TABLE = [[0, 40, 30, 20, 10, 1],
         [0, 10, 10, 10, 10, 100],  # after a: P(tag) high
         [0, 10, 10, 10, 10, 60],   # after b: P(tag) high
         [0, 10, 10, 30, 10, 80],   # after c: the tag is the likeliest next token, yet never emitted
         [0, 10, 10, 10, 30, 1],
         [0, 10, 10, 10, 10, 1]]


def safety_recipe(**kw):
    r = Safety(Safety.Config(**kw))
    r.tag_id = TAG
    return r


def test_safebeam_keeps_the_beams_with_lower_p_tag():
    model = Bigram(TABLE)
    r = safety_recipe()
    plain = beam_search(model, [0], beam_width=2, max_new_tokens=1, logits_processors=r.logits_processors())
    safe = beam_search(model, [0], beam_width=2, max_new_tokens=1, selector=r.beam_selector(),
                       logits_processors=r.logits_processors())
    assert sorted(ids[0] for ids, _ in plain) == [1, 2]  # the likeliest, heading to the tag
    assert sorted(ids[0] for ids, _ in safe) == [3, 4]


def test_every_step_drops_the_half_with_the_highest_p_tag_and_never_emits_it():
    rng = np.random.default_rng(0)
    for trial in range(20):
        table = rng.random((V, V)) ** 3 + 1e-3
        table[:, TAG] *= 5  # the tag is often the likeliest token
        model = Bigram(table.tolist())
        inner = safebeam_selector(TAG)
        seen = []

        def recording(cands, lookahead, inner=inner, seen=seen):
            kept = inner(cands, lookahead)
            p = lookahead(cands)[:, TAG]
            kept_p = lookahead(kept)[:, TAG]
            dropped = torch.ones(len(cands), dtype=torch.bool)
            dropped[kept.index] = False
            assert len(kept) == len(cands) - len(cands) // 2
            if dropped.any():
                assert kept_p.max() <= p[dropped].min()
            assert (kept.score[:-1] >= kept.score[1:]).all()  # best first by log-likelihood
            seen.append(len(kept))
            return kept

        found = beam_search(model, [int(rng.integers(V))], beam_width=3, max_new_tokens=6, selector=recording,
                            logits_processors=safety_recipe().logits_processors())
        assert seen and found
        assert all(TAG not in ids for ids, _ in found), trial


def test_safebeam_off_leaves_the_ban_only():
    r = safety_recipe(safebeam=False)
    assert r.beam_selector() is None and len(r.logits_processors()) == 1


def test_filter_on_sampled_continuations():
    model = Bigram(TABLE)
    conts = [[1, 1], [3, 4], [2, 4], [4, 4]]  # max lookahead P(tag): high, high (after c), high, low
    kept = filter_continuations(model, [0], conts, TAG)
    assert len(kept) == 2 and 3 in kept and 0 not in kept and 2 not in kept
    # k = 1: the likelier of the two survivors
    top = filter_continuations(model, [0], conts, TAG, k=1)
    assert len(top) == 1 and top[0] in kept
