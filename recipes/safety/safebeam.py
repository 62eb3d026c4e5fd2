"""SafeBeam decoding (Safety pretraining, arXiv 2504.16980): prefer continuations after which
the model does not expect its harmfulness tag.

A tag-pretrained model puts probability on `<harm>` where its text is heading somewhere
harmful. SafeBeam reads that with a one-token lookahead: per proposed beam extension, the
model's P(tag) for the token after it; the half of the extensions with the highest P(tag)
are dropped, and the beam keeps the top-k of the rest by log-likelihood. The tag itself is
never emitted (the recipe's logits processor bans it); the lookahead sees the raw model.

Choices the paper leaves open, made here:
- "Half" of N proposals drops floor(N / 2) of them (an odd N keeps the extra one); the beam
  search proposes 2W extensions per step, so W survive and the search's own top-W by
  cumulative log-likelihood is the paper's top-k (k = beam width).
- Ties in P(tag) are broken by the higher cumulative log-likelihood.
- As a filter on n sampled continuations (`filter_continuations`), a continuation's P(tag)
  is its largest one-token lookahead over its generated steps (the most harmful moment, not
  the average, which a long harmless tail would dilute), and its log-likelihood is the sum
  over its tokens with the tag excluded from the distribution, as at decoding.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from llmcore.generate.beam import Candidates


def safebeam_selector(tag_id: int, drop_fraction: float = 0.5):
    """A `beam_selector` (see `llmcore.generate.beam.Selector`): drop the `drop_fraction` of
    the proposals with the highest lookahead P(tag), return the rest best-first by score."""

    def select(cands: Candidates, lookahead) -> Candidates:
        n = len(cands)
        if n == 0:
            return cands
        log_p_tag = lookahead(cands)[:, tag_id]  # (N,)
        keep = n - int(n * drop_fraction)
        keep = max(keep, 1)
        # lowest P(tag) first; among equals the more likely sequence (a stable sort by score
        # first, then by P(tag), orders by (P(tag), -score))
        by_score = cands.score.argsort(descending=True, stable=True)
        order = by_score[log_p_tag[by_score].argsort(stable=True)]
        rest = cands.select(order[:keep])
        return rest.select(rest.score.argsort(descending=True, stable=True))
    return select


@torch.inference_mode()
def continuation_scores(model, prompt_ids: Sequence[int], continuations: Sequence[Sequence[int]],
                        tag_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(max lookahead log P(tag) (n,), log-likelihood (n,)) of each continuation of a prompt.

    One forward per continuation of prompt + continuation. Step j's lookahead is the log P(tag)
    predicted after the continuation's token j; the log-likelihood sums log p(token j) under
    the distribution with the tag removed (what decoding samples from).
    """
    device = next(model.parameters()).device
    tags, lls = [], []
    p = len(prompt_ids)
    for cont in continuations:
        ids = torch.tensor([list(prompt_ids) + list(cont)], dtype=torch.long, device=device)  # (1, p + m)
        logp = model.logits(model(ids))[0].log_softmax(-1)  # (p + m, V)
        after = logp[p:]  # (m, V): lookahead after each generated token
        tags.append(after[:, tag_id].max() if len(cont) else torch.tensor(float("-inf"), device=device))
        banned = logp[p - 1:p - 1 + len(cont)].clone()  # (m, V): predicts each generated token
        banned[:, tag_id] = float("-inf")
        banned = banned.log_softmax(-1)
        target = torch.tensor(list(cont), dtype=torch.long, device=device)
        lls.append(banned.gather(1, target[:, None]).sum())
    return torch.stack(tags).float(), torch.stack(lls).float()


def filter_continuations(model, prompt_ids: Sequence[int], continuations: Sequence[Sequence[int]],
                         tag_id: int, k: int | None = None, drop_fraction: float = 0.5) -> list[int]:
    """SafeBeam as a filter on sampled continuations: indices of the kept ones, best first.

    Drops the `drop_fraction` of the continuations with the highest P(tag) (see
    `continuation_scores`), keeps the top `k` (default: all survivors) of the rest by
    log-likelihood.
    """
    n = len(continuations)
    if n == 0:
        return []
    tag, ll = continuation_scores(model, prompt_ids, continuations, tag_id)
    by_ll = ll.argsort(descending=True, stable=True)
    order = by_ll[tag[by_ll].argsort(stable=True)]
    rest = order[:max(1, n - int(n * drop_fraction))]
    rest = rest[ll[rest].argsort(descending=True, stable=True)]
    return rest[:k].tolist() if k is not None else rest.tolist()
