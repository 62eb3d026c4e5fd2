"""Harmfulness tags: the `safety` recipe's transform (Safety pretraining, arXiv 2504.16980).

A special token (the tag, `<harm>` by default) is inserted at random positions inside the
parts of a packed window that belong to documents scored unsafe by a harmfulness classifier,
so the model learns P(tag | context): high where the text is heading somewhere harmful, about
zero on safe text. SafeBeam (`recipes.safety.safebeam`) reads that probability at decoding.

Choices the paper leaves open, made here:
- "Unsafe" is a per-document score side-car (`llmcore safety score` writes it; the loader
  hands it to the transform as a per-token field) at or above `min_score`.
- A segment is a maximal run of consecutive tokens of one unsafe document inside the window
  (a document cut by the window edge is a shorter segment). It gets k tags with
  E[k] = rate x its length: floor(rate x L) plus one more with probability of the remainder
  (stochastic rounding), so short segments are tagged at the configured rate on average
  instead of never (round(0.05 x 9) = 0).
- Positions: each tag goes after a uniformly drawn token of its segment (with replacement, so
  two tags may sit side by side), never before the segment's first token: a tag always
  follows a token of its own document, takes that document's id and score, and so never
  touches safe text. The window is then trimmed back to seq_len + 1.
- The tag is an ordinary target (loss on it: the model must learn to predict it); its own
  output predicts the next real token as usual.
- A tag id already in the window (a literal "<harm>" in raw text) is data, not a tag: it is
  replaced by unk, so tags appear exactly where this transform put them.
- Randomness only from the loader's `rng` (seeded by the sample's global index): a resumed
  run inserts the same tags at the same places.
"""

from __future__ import annotations

import itertools

import numpy as np

from llmcore.data import Sample


def unsafe_segments(unsafe: np.ndarray, doc_ids: np.ndarray) -> list[tuple[int, int]]:
    """[(start, end)] of maximal runs of True in `unsafe` (n,) that stay in one document."""
    n = len(unsafe)
    if n == 0:
        return []
    cut = np.flatnonzero((np.diff(unsafe.astype(np.int8)) != 0) | (np.diff(doc_ids) != 0)) + 1
    bounds = np.concatenate([[0], cut, [n]])
    return [(int(a), int(b)) for a, b in itertools.pairwise(bounds) if unsafe[a]]


def insert_tags(sample: Sample, tag_id: int, scores: np.ndarray, min_score: float, rate: float,
                rng: np.random.Generator, unk_id: int = 0) -> Sample:
    """The window `sample` (n tokens) with tags in its unsafe segments, trimmed back to n.

    scores (n,): each token's document score; a token is unsafe when score >= min_score.
    Per segment of length L: floor(rate x L) tags plus one with probability frac(rate x L),
    each inserted after a uniform token of the segment (see the module docstring). The tag
    has loss_mask True and, like every inserted slot, each field's fill value (a document
    score side-car copies the token before it: the tag's own document). Returns a new sample.
    """
    n = len(sample)
    if (sample.tokens == tag_id).any():
        sample = sample.copy()
        sample.tokens[sample.tokens == tag_id] = unk_id
    unsafe = np.asarray(scores, dtype=np.float64).reshape(n) >= min_score
    at = []
    for s, e in unsafe_segments(unsafe, sample.doc_ids):
        want = rate * (e - s)
        k = int(want) + int(rng.random() < want - int(want))
        at.append(rng.integers(s + 1, e + 1, size=k))  # insert before index i = after token i - 1
    at = np.sort(np.concatenate(at)) if at else np.zeros(0, dtype=np.int64)
    if len(at) == 0:
        return sample
    return sample.insert(at, tag_id, loss=True).trim(n)
