"""``Sample``: one training sequence of seq_len + 1 tokens and everything that travels with it.

Made by the loaders (``llmcore.data.loader`` for packed windows, ``llmcore.data.sft`` for
prompt/answer rows), rewritten by recipe transforms (``transform(sample, rng) -> Sample``),
stacked into a batch by ``llmcore.data.collate.to_batch``.

Why a type and not a dict: a transform that moves tokens (pauses, tags, prefixes) must move
every per-token array with them, including side-car fields it has never heard of (a teacher's
top-k ids). The operations here (``insert``, ``trim``, ``reversed``) do that for all of them at
once, so no recipe has to know which fields a run carries.

What a sample holds (n = seq_len + 1):
- ``tokens`` int64 [n], ``doc_ids`` int64 [n] (0 for the first document of the sequence),
  ``loss_mask`` bool [n] (False: the token is never a target);
- ``fields``: per-token arrays aligned with ``tokens``, first dim n, any trailing dims
  (e.g. [n, k] top-k ids); ``fills[name]`` is what an inserted slot gets (default 0, or
  ``FILL_PREVIOUS``: the value of the token before it, as a document id does);
- ``values``: per-sample numbers or fixed-shape arrays (an SFT row's ``prompt_len``, extra
  jsonl fields);
- provenance: where the sequence's first token was read from, before any transform --
  ``source`` (name) / ``source_index`` (position in the loader's source list), ``doc_index``
  (document ordinal within the source's split, or example ordinal of an SFT file) and
  ``doc_offset`` (offset of that token within its document). Transforms never change it:
  it names the data read, not the rewritten sequence.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

FILL_PREVIOUS = "previous"
"""Fill rule: an inserted slot copies the value of the token before it (the first token's
when inserted at the front) -- what document ids and per-document side-cars need."""


@dataclass
class Sample:
    """One sequence and its aligned arrays; see the module docstring."""

    tokens: np.ndarray
    doc_ids: np.ndarray
    loss_mask: np.ndarray
    fields: dict[str, np.ndarray] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)
    fills: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    source_index: int = 0
    doc_index: int = 0
    doc_offset: int = 0

    def __post_init__(self):
        n = len(self.tokens)
        for name, a in (("doc_ids", self.doc_ids), ("loss_mask", self.loss_mask), *self.fields.items()):
            if np.shape(a)[:1] != (n,):
                raise ValueError(f"sample array {name!r} has shape {np.shape(a)}; every per-token "
                                 f"array must have first dim {n} (len(tokens))")

    def __len__(self) -> int:
        return len(self.tokens)

    def per_token(self) -> dict[str, np.ndarray]:
        """Every per-token array by name: tokens, doc_ids, loss_mask, then the fields."""
        return {"tokens": self.tokens, "doc_ids": self.doc_ids, "loss_mask": self.loss_mask, **self.fields}

    def _with(self, arrays: dict[str, np.ndarray]) -> "Sample":
        fields = {k: arrays[k] for k in self.fields}
        return dataclasses.replace(self, tokens=arrays["tokens"], doc_ids=arrays["doc_ids"],
                                   loss_mask=arrays["loss_mask"], fields=fields,
                                   values=dict(self.values), fills=dict(self.fills))

    def copy(self) -> "Sample":
        """A deep copy: arrays and array values are new, so the copy may be written in place."""
        out = self._with({k: np.array(v) for k, v in self.per_token().items()})
        out.values = {k: (np.array(v) if isinstance(v, np.ndarray) else v) for k, v in self.values.items()}
        return out

    def insert(self, at: Sequence[int] | np.ndarray, tokens: int | Sequence[int], *, loss: bool = False,
               fill: dict[str, Any] | None = None) -> "Sample":
        """New tokens before positions ``at`` of this sample (``np.insert`` rules: indices into the
        current sequence, ``len(self)`` appends, equal indices insert consecutively in order).

        Every per-token array gets a slot at the same places, so each old value stays with its
        old token. The new slots get: ``tokens`` (one id for all, or one per slot), the document
        id of the token before them (the first token's at the front), ``loss_mask = loss``
        (False by default: an inserted token is not data, so it is not a target unless the
        caller says so), and for each field ``fill.get(name, self.fills.get(name, 0))``: a
        number, an array of the field's trailing shape, or ``FILL_PREVIOUS``. The result is
        longer by ``len(at)``; ``trim`` brings it back. Returns a new sample.
        """
        at = np.asarray(at, dtype=np.int64).reshape(-1)
        k, n = len(at), len(self)
        if k == 0:
            return self.copy()
        if at.min() < 0 or at.max() > n:
            raise IndexError(f"insert positions must be in [0, {n}], got {at.min()}..{at.max()}")
        fill = fill or {}
        unknown = sorted(set(fill) - set(self.fields))
        if unknown:
            raise KeyError(f"fill names fields {unknown} this sample lacks (it has {sorted(self.fields)})")
        before = np.maximum(at - 1, 0)
        new = {"tokens": np.broadcast_to(np.asarray(tokens, dtype=self.tokens.dtype), (k,)),
               "doc_ids": self.doc_ids[before],
               "loss_mask": np.full(k, bool(loss))}
        for name, a in self.fields.items():
            rule = fill.get(name, self.fills.get(name, 0))
            if isinstance(rule, str):
                if rule != FILL_PREVIOUS:
                    raise ValueError(f"fill for field {name!r} is {rule!r}: a number, an array or "
                                     f"{FILL_PREVIOUS!r}")
                new[name] = a[before]
            else:
                new[name] = np.broadcast_to(np.asarray(rule, dtype=a.dtype), (k, *a.shape[1:]))
        return self._with({name: np.insert(a, at, new[name], axis=0) for name, a in self.per_token().items()})

    def trim(self, n: int) -> "Sample":
        """The first ``n`` positions of every per-token array (a new sample)."""
        if not 0 <= n <= len(self):
            raise ValueError(f"cannot trim a sample of {len(self)} tokens to {n}")
        return self._with({k: v[:n].copy() for k, v in self.per_token().items()})

    def reversed(self) -> "Sample":
        """Right-to-left order of every per-token array (a reverse LM's view of the window).

        Document ids are reversed as they are, not renumbered: only equality of ids matters to
        the model's document mask. Provenance still names the window's first token as read.
        """
        return self._with({k: v[::-1].copy() for k, v in self.per_token().items()})


def checked(transform, out, n: int, where: str) -> Sample:
    """``out`` if it is a Sample of ``n`` tokens, else a ValueError naming the transform and
    ``where`` (the source or file): a transform may move tokens but never change the sequence
    length, because the batch is [b, seq_len]."""
    if not isinstance(out, Sample) or len(out) != n:
        got = f"length {len(out)}" if isinstance(out, Sample) else type(out).__name__
        raise ValueError(f"transform {transform!r} must return a Sample of length {n}; got {got} ({where})")
    return out
