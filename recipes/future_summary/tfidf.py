"""Token weights for FSP-BCE: inverse document frequency over a prepared data folder.

Used by `recipes.future_summary` when `future_summary.tfidf: true`. A bag holds each id at
most once, so a token's term frequency inside a bag is 1 and its tf-idf weight is its idf:
w_i = log((1 + D) / (1 + df_i)) + 1 (the smoothed form: every weight >= 1, unseen tokens get
the largest), with D documents in the train split and df_i of them containing token i.

The document frequencies come from `llmcore.data.stats.cached_document_frequency`: computed
once per dataset (by `llmcore data doc-freq`, or on first use) and stored beside the shards as
`<data>/token_df.npz`, so several sources combine exactly.
"""

from __future__ import annotations

import numpy as np

from llmcore.data.stats import cached_document_frequency


def idf_weights(paths: list[str], vocab_size: int) -> np.ndarray:
    """Smoothed idf [vocab_size] float32 over the train splits of prepared folders `paths`
    (ids beyond the data's vocabulary, e.g. a padded embedding, count as unseen)."""
    df = np.zeros(vocab_size, dtype=np.int64)
    docs = 0
    for path in paths:
        d, n = cached_document_frequency(path)
        df[:len(d)] += d[:vocab_size]
        docs += n
    return (np.log((1.0 + docs) / (1.0 + df)) + 1.0).astype(np.float32)
