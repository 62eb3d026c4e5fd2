"""Token weights for FSP-BCE: inverse document frequency over a prepared data folder.

Used by `recipes.future_summary` when `future_summary.tfidf: true`. A bag holds each id at
most once, so a token's term frequency inside a bag is 1 and its tf-idf weight is its idf:
w_i = log((1 + D) / (1 + df_i)) + 1 (the smoothed form: every weight >= 1, unseen tokens get
the largest), with D documents in the train split and df_i of them containing token i.

Computed once per dataset and stored beside the shards as `<data>/token_df.npz` (document
frequencies, document count, tokenizer hash), so several sources combine exactly and a stale
file (another tokenizer) is recomputed. A folder that cannot be written is computed in memory.
"""

from __future__ import annotations

import logging
import os

import numpy as np

from llmcore.data.shards import TokenShards

log = logging.getLogger(__name__)
CACHE = "token_df.npz"


def document_frequency(shards: TokenShards, chunk: int = 1 << 22) -> np.ndarray:
    """df [V] int64: in how many documents of `shards` each token id occurs."""
    vocab = shards.vocab_size
    df = np.zeros(vocab, dtype=np.int64)
    carry = np.zeros(0, dtype=np.int64)  # ids of the document still open at the chunk's end
    for start in range(0, shards.num_tokens, chunk):
        n = min(chunk, shards.num_tokens - start)
        toks = shards.read(start, n)
        # one token of overlap tells whether the chunk's first document began earlier
        docs = shards.doc_ids(max(start - 1, 0), n + (start > 0))
        cont = start > 0 and docs[0] == docs[1]
        docs = docs[1:] - docs[1] if start > 0 else docs
        pairs = np.unique(docs * vocab + toks)
        doc_of, tok = pairs // vocab, pairs % vocab
        keep = ~((doc_of == 0) & np.isin(tok, carry)) if cont else np.ones(len(tok), dtype=bool)
        df += np.bincount(tok[keep], minlength=vocab)
        last = tok[doc_of == docs[-1]]
        carry = np.union1d(carry, last) if cont and docs[-1] == 0 else last
    return df


def _cached_df(path: str) -> tuple[np.ndarray, int]:
    shards = TokenShards(path, "train")
    cache = os.path.join(path, CACHE)
    if os.path.isfile(cache):
        with np.load(cache) as f:
            if str(f["tokenizer_hash"]) == str(shards.tokenizer_hash) and len(f["df"]) == shards.vocab_size:
                return f["df"], int(f["num_docs"])
    df = document_frequency(shards)
    try:
        tmp = cache + f".tmp-{os.getpid()}.npz"
        np.savez(tmp, df=df, num_docs=shards.num_docs, tokenizer_hash=str(shards.tokenizer_hash))
        os.replace(tmp, cache)
    except OSError as e:
        log.warning("future_summary: cannot store %s (%s); document frequencies stay in memory", cache, e)
    return df, shards.num_docs


def idf_weights(paths: list[str], vocab_size: int) -> np.ndarray:
    """Smoothed idf [vocab_size] float32 over the train splits of prepared folders `paths`
    (ids beyond the data's vocabulary, e.g. a padded embedding, count as unseen)."""
    df = np.zeros(vocab_size, dtype=np.int64)
    docs = 0
    for path in paths:
        d, n = _cached_df(path)
        df[:len(d)] += d[:vocab_size]
        docs += n
    return (np.log((1.0 + docs) / (1.0 + df)) + 1.0).astype(np.float32)
