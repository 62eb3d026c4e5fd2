"""Scoring a prepared data folder: one harmfulness score per document, as a side-car.

Used by `llmcore safety score`; the `safety` recipe's tags and `llmcore safety route` read
the result. The side-car is `doc` kind, float32, written shard by shard through
`llmcore.data.sidecar_writer` (so an interrupted run resumes at the first unwritten shard and
a rerun with another classifier or chunk size is refused by name), with a progress bar over
documents.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from llmcore.data import TokenShards
from llmcore.data.sidecar_writer import SidecarWriter
from llmcore.train.metrics import progress_bar

SCORE_NAME = "harm_score"


def documents_of_shard(shards: TokenShards, k: int) -> list[np.ndarray]:
    """The token documents of shard `k` of `shards`, in order."""
    start, n, _, _ = shards.shard_span(k)
    tokens = shards.read(start, n)
    doc = shards.doc_index(start, n)
    cuts = np.flatnonzero(np.diff(doc)) + 1
    return np.split(tokens, cuts)


def score_folder(data_path: str, scorer: Callable[[list[list[int]]], np.ndarray], *, name: str = SCORE_NAME,
                 made_from: dict | None = None, splits=None, progress: bool = True,
                 overwrite: bool = False) -> dict:
    """Write side-car `name` of `data_path`: `scorer(docs) -> (n,)` scores per document of each
    shard. Returns the side-car manifest. Resumable (see the module docstring)."""
    writer = SidecarWriter(data_path, name, kind="doc", dtype="float32", made_from=made_from,
                           splits=splits, overwrite=overwrite)
    todo = {s: writer.pending(s) for s in writer.splits}
    total = sum(int(writer.data["splits"][s]["shards"][k]["num_docs"]) for s, ks in todo.items() for k in ks)
    bar = progress_bar(total, 0, progress, desc=f"score {name}")
    try:
        for split, ks in todo.items():
            if not ks:
                continue
            shards = TokenShards(data_path, split)
            for k in ks:
                docs = documents_of_shard(shards, k)
                scores = np.asarray(scorer([d.tolist() for d in docs]), dtype=np.float32)
                writer.write(split, k, scores)
                bar.update(len(docs))
    finally:
        bar.close()
    return writer.meta
