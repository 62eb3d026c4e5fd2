"""A prepared folder of the synthetic safety data with its per-document score side-car:
shared by the safety recipe's tests."""

from __future__ import annotations

import numpy as np

from llmcore.data.sidecar_writer import write_sidecar
from recipes.tasks import safety_data as sd


def safety_folder(root, n_docs: int = 600, unsafe_fraction: float = 0.3, seed: int = 0):
    """(data folder, tokenizer, train docs): documents in order, `harm_score` float32 per doc."""
    tok = sd.train_tokenizer(str(root / "tok"), ["<probe>", "<pause>", "<harm>"], vocab_size=500)
    docs = sd.documents(n_docs, seed, unsafe_fraction)
    val = sd.documents(60, seed + 1, unsafe_fraction)
    sd.write_prepared(str(root / "data"), tok, docs, val)
    scores = {"train": np.array([d["score"] for d in docs], np.float32),
              "val": np.array([d["score"] for d in val], np.float32)}

    def compute(shards, k):
        _, _, first, count = shards.shard_span(k)
        return scores[shards.split][first:first + count]

    write_sidecar(str(root / "data"), "harm_score", compute, kind="doc", dtype="float32")
    return root / "data", tok, docs
