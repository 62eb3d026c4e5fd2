"""Corpus statistics used as baselines in evaluation: the unigram entropy of a split.

`llmcore eval` prints it beside the validation loss: a model that has learned anything
beyond token frequencies must have a cross-entropy well below it.
"""

from __future__ import annotations

import numpy as np

from llmcore.data.shards import TokenShards


def unigram_entropy(shards: TokenShards, chunk: int = 1 << 22) -> float:
    """Entropy in nats of the split's token frequency distribution (its own frequencies,
    so this is the best loss a context-free model could reach on this split)."""
    counts = np.zeros(shards.vocab_size, dtype=np.int64)
    for start in range(0, shards.num_tokens, chunk):
        counts += np.bincount(shards.read(start, min(chunk, shards.num_tokens - start)),
                              minlength=shards.vocab_size)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())
