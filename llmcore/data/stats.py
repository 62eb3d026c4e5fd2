"""Corpus statistics of a prepared folder.

- `unigram_entropy`: `llmcore eval` prints it beside the validation loss; a model that has
  learned anything beyond token frequencies must have a cross-entropy well below it.
- `document_frequency` / `cached_document_frequency`: in how many documents each token occurs
  (tf-idf weights of FSP-BCE), stored beside the shards by `llmcore data doc-freq`.
"""

from __future__ import annotations

import logging
import os

import numpy as np

from llmcore.data.shards import TokenShards

log = logging.getLogger("llmcore")
DF_FILE = "token_df.npz"


def unigram_entropy(shards: TokenShards, chunk: int = 1 << 22) -> float:
    """Entropy in nats of the split's token frequency distribution (its own frequencies,
    so this is the best loss a context-free model could reach on this split)."""
    counts = np.zeros(shards.vocab_size, dtype=np.int64)
    for start in range(0, shards.num_tokens, chunk):
        counts += np.bincount(shards.read(start, min(chunk, shards.num_tokens - start)),
                              minlength=shards.vocab_size)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


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


def cached_document_frequency(path: str) -> tuple[np.ndarray, int]:
    """(df [V], number of documents) of a prepared folder's train split, read from
    `<path>/token_df.npz` when it was made with the same tokenizer, else computed and stored
    there (in memory only when the folder is read-only)."""
    shards = TokenShards(path, "train")
    cache = os.path.join(path, DF_FILE)
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
        log.warning("cannot store %s (%s); document frequencies stay in memory", cache, e)
    return df, shards.num_docs
