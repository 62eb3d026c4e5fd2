"""``to_batch``: a list of ``Sample`` -> the model's batch, one layout for packed data and SFT.

Used by ``PackedLoader``, ``eval_batches``, the SFT loader and tests. Every value of the batch
is a tensor whose dim 0 is the sample, so the trainer's micro-batch split ``v[i*mb:(i+1)*mb]``
(and a rank's ``v[r::W]``) keeps every key aligned with ``input_ids``.

Keys (b samples of n = T + 1 tokens):
- ``input_ids`` [b, T] = tokens[:-1]; ``labels`` [b, T] = tokens[1:], -100 where
  loss_mask[1:] is False; ``doc_ids`` [b, T] = doc_ids[:-1]; all int64;
- each per-token field ``f``: ``batch[f]`` [b, T, ...] = field[1:], shifted like the labels so
  ``batch[f][:, t]`` belongs to the token ``labels[:, t]`` predicts (a teacher's distribution
  over that token, that token's document score);
- each per-sample value ``v``: ``batch[v]`` [b, ...];
- provenance ``source_index``, ``doc_index``, ``doc_offset``: int64 [b].
Dtypes are kept (float16 and int8 quantised side-cars stay small on their way to the device)
except uint16/uint32/uint64, which become int64: torch can neither index nor do arithmetic
with them.
"""

from __future__ import annotations

import re
from typing import Iterable

import numpy as np
import torch

from llmcore.data.sample import Sample
from llmcore.errors import ConfigError

CORE_KEYS = ("input_ids", "labels", "doc_ids")
PROVENANCE_KEYS = ("source_index", "doc_index", "doc_offset")
RESERVED = frozenset(CORE_KEYS + PROVENANCE_KEYS + ("tokens", "loss_mask", "n_loss_tokens"))
"""Names no field or value may take: the batch's own keys, the sample's own arrays, and
``n_loss_tokens`` (added by the trainer to every micro-batch)."""
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def check_extra_names(names: Iterable[str], where: str) -> None:
    """ConfigError unless every name is an identifier that is not a batch key (``where`` says
    where the names came from, e.g. ``data.sidecars``)."""
    for name in names:
        if not isinstance(name, str) or not _NAME.match(name):
            raise ConfigError(f"{where}: {name!r} is not a valid field name (letters, digits, _)")
        if name in RESERVED:
            raise ConfigError(f"{where}: field name {name!r} collides with the batch key {name!r}; "
                              f"reserved: {sorted(RESERVED)}")


def _tensor(a: np.ndarray) -> torch.Tensor:
    if a.dtype.kind == "u" and a.dtype.itemsize > 1:
        a = a.astype(np.int64)
    return torch.from_numpy(np.ascontiguousarray(a))


def to_batch(samples: list[Sample]) -> dict[str, torch.Tensor]:
    """Stack samples of equal length into the batch described in the module docstring.

    Every sample must carry the same field and value names (a batch is one tensor per key);
    a name colliding with a batch key, or a field also used as a value, is a ConfigError.
    """
    if not samples:
        raise ValueError("to_batch needs at least one sample")
    first = samples[0]
    check_extra_names(first.fields, "sample field")
    check_extra_names(first.values, "sample value")
    both = sorted(set(first.fields) & set(first.values))
    if both:
        raise ConfigError(f"{both} are both per-token fields and per-sample values of one sample")
    for i, s in enumerate(samples[1:], start=1):
        if s.fields.keys() != first.fields.keys() or s.values.keys() != first.values.keys():
            raise ValueError(f"sample {i} of the batch has fields {sorted(s.fields)} and values "
                             f"{sorted(s.values)}; sample 0 has {sorted(first.fields)} and {sorted(first.values)}")
    tokens = np.stack([s.tokens for s in samples]).astype(np.int64)  # (b, n)
    mask = np.stack([s.loss_mask for s in samples]).astype(bool)
    doc = np.stack([s.doc_ids for s in samples]).astype(np.int64)
    batch = {"input_ids": _tensor(tokens[:, :-1]),
             "labels": _tensor(np.where(mask[:, 1:], tokens[:, 1:], -100)),
             "doc_ids": _tensor(doc[:, :-1])}
    for name in first.fields:
        batch[name] = _tensor(np.stack([s.fields[name][1:] for s in samples]))  # (b, T, ...)
    for name in first.values:
        vals = [np.asarray(s.values[name]) for s in samples]
        shapes = {v.shape for v in vals}
        if len(shapes) > 1:
            raise ValueError(f"per-sample value {name!r} has shapes {sorted(shapes)} within one batch")
        batch[name] = _tensor(np.stack(vals))  # (b, ...)
    for name in PROVENANCE_KEYS:
        batch[name] = torch.tensor([getattr(s, name) for s in samples], dtype=torch.int64)
    return batch
