"""The training data stream: packed windows from a weighted mixture of token sources.

Used by the trainer (``PackedLoader``: one batch per micro-step, its ``state_dict`` in every
checkpoint) and by evaluation (``eval_batches`` over a val split).

How the stream is defined, so that it is the same for any number of processes:
- a source of N tokens offers windows ``[i*T, i*T + T + 1)`` for ``i < (N - 1) // T``
  (T = seq_len; the extra token gives the last label), visited in a permutation drawn from
  ``(seed, source index, epoch)`` -- reshuffled every epoch;
- global sample g comes from the source picked by one uniform of a seeded PCG64 stream
  (weights normalised; ``mixing="random"``), or, with ``mixing="exact"``, from the source
  furthest behind its share: argmax_i (w_i * (g + 1) - served_i), ties to the lower index, so
  every prefix of the stream holds each source within one window of its share by tokens for up
  to three sources (measured: at most 1.14 windows with up to eight; every window is seq_len
  tokens after packing) and a source's own order does not depend on the
  other sources' weights (only where its windows land does);
- a source may be cut to its first ``max_tokens`` tokens in stream order (``max_tokens //
  seq_len`` windows; the last one reads one more token as its final label), after skipping
  its first ``skip_tokens`` (``skip_tokens // seq_len`` windows): the same windows for every
  seed and weight, so a budget of N tokens always means the same documents, a smaller
  budget's windows are a subset of a larger one's, and skip = N serves exactly the windows
  a budget of N left out;
- each global batch is samples ``[k*B, (k+1)*B)``; rank r keeps samples r, r + W, r + 2W, ...
  of it (W = world size), but every rank advances every cursor, so ranks never talk;
- a recipe ``transform(sample, rng)`` (a ``Sample`` in, a ``Sample`` of the same length out)
  gets ``rng = default_rng([seed, g, 7])``: reproducible on resume without any saved state of
  its own;
- side-car rows are read for exactly the window served, so they need no state either.
"""

from __future__ import annotations

import os
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from llmcore.data.collate import to_batch
from llmcore.data.sample import Sample, checked
from llmcore.data.shards import TokenShards
from llmcore.data.sidecar import Sidecar, open_sidecars
from llmcore.errors import ConfigError, DataError

Transform = Callable[[Sample, np.random.Generator], Sample]


def read_window(shards: TokenShards, start: int, n: int, sidecars: list[Sidecar] = (), *,
                source: str = "", source_index: int = 0) -> Sample:
    """Tokens ``[start, start + n)`` of ``shards`` as a Sample: document ids (0 for the window's
    first document), a full loss mask, each side-car's rows of exactly this window as a field
    (its manifest's fill rule for inserted slots), and provenance of the first token."""
    doc_index, doc_offset = shards.locate(start)
    return Sample(tokens=shards.read(start, n), doc_ids=shards.doc_ids(start, n),
                  loss_mask=np.ones(n, dtype=bool), fields={sc.name: sc.read(start, n) for sc in sidecars},
                  fills={sc.name: sc.fill for sc in sidecars}, source=source, source_index=source_index,
                  doc_index=doc_index, doc_offset=doc_offset)


def _same_layout(per_source: list[tuple[str, list[Sidecar]]]) -> None:
    """Side-cars of one name must stack into one tensor across a mixture's sources."""
    name0, ref = per_source[0]
    for name, cars in per_source[1:]:
        for a, b in zip(ref, cars):
            if (a.kind, a.dtype, a.shape, repr(a.fill)) != (b.kind, b.dtype, b.shape, repr(b.fill)):  # NaN fills
                raise DataError(f"side-car {a.name!r} differs between sources {name0!r} ({a.kind}, "
                                f"{a.dtype.name}{list(a.shape)}, fill {a.fill!r}) and {name!r} ({b.kind}, "
                                f"{b.dtype.name}{list(b.shape)}, fill {b.fill!r})")


MIXING = ("random", "exact")


class _Source:
    """One weighted source: its windows, the current epoch's order and the cursor in it."""

    def __init__(self, index: int, name: str, shards: TokenShards, weight: float,
                 seq_len: int, seed: int, sidecars: list[Sidecar], max_tokens: int | None = None,
                 skip_tokens: int = 0):
        self.index, self.name, self.shards, self.weight = index, name, shards, weight
        self.sidecars = sidecars
        self.seq_len, self.seed = seq_len, seed
        self.first = skip_tokens // seq_len  # window index of the source's first served window
        available = (shards.num_tokens - 1) // seq_len
        if skip_tokens < 0 or self.first > available:
            raise DataError(f"source {name!r}: skip_tokens={skip_tokens} skips {self.first} windows of "
                            f"seq_len={seq_len}, but {shards.path} (split {shards.split!r}) has {available}")
        available -= self.first
        self.num_windows = available
        if max_tokens is not None:
            if max_tokens < 0 or max_tokens // seq_len > available:
                raise DataError(f"source {name!r}: max_tokens={max_tokens} asks for {max_tokens // seq_len} "
                                f"windows of seq_len={seq_len}, but {shards.path} (split {shards.split!r}) "
                                f"has {available}" + (f" after skip_tokens={skip_tokens}" if skip_tokens else "")
                                + f" ({shards.num_tokens} tokens)")
            self.num_windows = max_tokens // seq_len
        if self.num_windows < 1 and not (weight == 0 and max_tokens is not None):
            raise DataError(f"source {name!r} ({shards.path}, split {shards.split!r}) has "
                            f"{shards.num_tokens} tokens" + (f" (max_tokens={max_tokens})" if max_tokens else "")
                            + f": fewer than one window of seq_len + 1 = {seq_len + 1}")
        self.epoch = self.cursor = self.samples = 0
        self._order: np.ndarray | None = None

    def order(self) -> np.ndarray:
        if self._order is None:  # one permutation per epoch, rebuilt lazily after resume
            rng = np.random.default_rng([self.seed, self.index, self.epoch])
            self._order = rng.permutation(self.num_windows)
        return self._order

    def next_window(self) -> int:
        """Start token of the next window; moves the cursor (and the epoch at its end)."""
        start = (self.first + int(self.order()[self.cursor])) * self.seq_len
        self.cursor += 1
        self.samples += 1
        if self.cursor == self.num_windows:
            self.epoch, self.cursor, self._order = self.epoch + 1, 0, None
        return start

    def sample(self, start: int) -> Sample:
        return read_window(self.shards, start, self.seq_len + 1, self.sidecars,
                           source=self.name, source_index=self.index)


class PackedLoader:
    """Deterministic, resumable batches of packed windows from weighted sources.

    ``sources``: ``[(name, TokenShards, weight), ...]`` or ``(name, TokenShards, weight,
    max_tokens[, skip_tokens])`` to serve only the source's first ``max_tokens`` tokens after
    its first ``skip_tokens`` (None: all; 0 is allowed for a source of weight 0, which is then
    never drawn). ``mixing``: ``random``
    (a seeded draw per window) or ``exact`` (each prefix within one window of the weights'
    shares; see the module docstring). Every ``next_batch()`` returns this
    rank's ``global_batch_size // world_size`` samples of the next global batch, collated by
    ``to_batch``: ``input_ids``, ``labels``, ``doc_ids`` [b, seq_len], provenance [b], and one
    key per side-car. ``sidecars``: names of side-cars every source must carry (opened and
    checked here, at the shards' verify level); each sample gets their rows of its window.
    They add nothing to the resume state: a window's rows are a function of its position.
    """

    def __init__(self, sources: list[tuple[str, TokenShards, float]], seq_len: int,
                 global_batch_size: int, *, seed: int, rank: int = 0, world_size: int = 1,
                 transform: Transform | None = None, sidecars: Sequence[str] = (),
                 mixing: str = "random"):
        if not sources:
            raise ConfigError("the data loader needs at least one source")
        if seq_len < 1 or global_batch_size < 1:
            raise ConfigError(f"seq_len={seq_len} and global_batch_size={global_batch_size} "
                              "must be >= 1")
        if world_size < 1 or not 0 <= rank < world_size or global_batch_size % world_size:
            raise ConfigError(f"global_batch_size={global_batch_size} must be a multiple of "
                              f"world_size={world_size} (rank={rank})")
        if mixing not in MIXING:
            raise ConfigError(f"mixing={mixing!r} is not one of {', '.join(MIXING)}")
        budgets = [s[3] if len(s) > 3 else None for s in sources]
        skips = [s[4] if len(s) > 4 else 0 for s in sources]
        sources = [tuple(s[:3]) for s in sources]
        names = [s[0] for s in sources]
        if len(set(names)) != len(names):
            raise ConfigError(f"data source names must be unique: {names}")
        weights = np.asarray([float(s[2]) for s in sources])
        if not np.all(np.isfinite(weights)) or np.any(weights < 0) or weights.sum() <= 0:
            raise ConfigError(f"data source weights {dict(zip(names, weights.tolist()))} must "
                              "be >= 0 with a positive sum")
        hashes = {s[1].tokenizer_hash for s in sources}
        if len(hashes) > 1:
            raise DataError("data sources were made with different tokenizers: "
                            + ", ".join(f"{n}: {s.tokenizer_hash}" for n, s, _ in sources))
        self.seq_len, self.global_batch_size, self.seed = seq_len, global_batch_size, seed
        self.rank, self.world_size, self.transform = rank, world_size, transform
        self.batch_size = global_batch_size // world_size
        cars = [(n, open_sidecars(s, sidecars)) for n, s, _ in sources]
        if sidecars:
            _same_layout(cars)
        self._sources = [_Source(i, n, s, float(w), seq_len, seed, cars[i][1], budgets[i], skips[i])
                         for i, (n, s, w) in enumerate(sources)]
        self.source_names = names  # batch["source_index"] indexes this list
        self.mixing = mixing
        self._share = weights / weights.sum()
        self._cdf = np.cumsum(weights) / weights.sum()
        self._rng = np.random.Generator(np.random.PCG64([seed, 0x6D6978]))  # "mix" stream
        self.samples = 0  # global samples consumed (all ranks)

    def _pick(self, n: int) -> np.ndarray:
        if self.mixing == "exact":
            return self._pick_exact(n)
        u = self._rng.random(n)
        # min(): u can round to the last cdf entry exactly when it is 1 - eps
        return np.minimum(np.searchsorted(self._cdf, u, side="right"), len(self._cdf) - 1)

    def _pick_exact(self, n: int) -> np.ndarray:
        """The next n sources by largest deficit; needs no state beyond the served counts."""
        served = np.asarray([s.samples for s in self._sources], dtype=np.float64)
        picks = np.empty(n, dtype=np.int64)
        for j in range(n):
            k = int(np.argmax(self._share * (self.samples + j + 1) - served))  # first maximum wins ties
            picks[j] = k
            served[k] += 1
        return picks

    def next_batch(self) -> dict[str, torch.Tensor]:
        """This rank's part of the next global batch (keys: ``to_batch``)."""
        picks = self._pick(self.global_batch_size)
        samples = []
        for j, k in enumerate(picks):
            src = self._sources[int(k)]
            start = src.next_window()
            if j % self.world_size != self.rank:
                continue
            sample = src.sample(start)
            if self.transform is not None:
                g = self.samples + j
                sample = self._apply(sample, np.random.default_rng([self.seed, g, 7]), src)
            samples.append(sample)
        self.samples += self.global_batch_size
        return to_batch(samples)

    def _apply(self, sample: Sample, rng: np.random.Generator, src: _Source) -> Sample:
        return checked(self.transform, self.transform(sample, rng), self.seq_len + 1, src.name)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        return self.next_batch()

    # ------------------------------------------------------------------ resume
    def state_dict(self) -> dict:
        """JSON-serialisable position: samples consumed, mixing RNG state, per-source
        epoch/cursor/samples. 128-bit RNG words are strings so any JSON reader keeps them."""
        st = self._rng.bit_generator.state
        return {
            "version": 1, "seed": self.seed, "seq_len": self.seq_len, "samples": self.samples,
            "mixing": self.mixing,
            "rng": {"state": str(st["state"]["state"]), "inc": str(st["state"]["inc"]),
                    "has_uint32": st["has_uint32"], "uinteger": st["uinteger"]},
            "sources": [{"name": s.name, "num_windows": s.num_windows, "first_window": s.first, "epoch": s.epoch,
                         "cursor": s.cursor, "samples": s.samples,
                         "tokens": s.samples * self.seq_len} for s in self._sources],
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue exactly where ``state`` (from ``state_dict``) stopped. The world size and
        batch size may differ from the saved run; seed, seq_len and sources may not."""
        if state.get("version") != 1:
            raise DataError(f"data-loader state has version {state.get('version')!r}, expected 1")
        for key in ("seed", "seq_len"):
            if state[key] != getattr(self, key):
                raise ConfigError(f"cannot resume data loader: saved {key}={state[key]}, "
                                  f"this run has {key}={getattr(self, key)}")
        if state.get("mixing", "random") != self.mixing:  # states before exact mixing were random
            raise ConfigError(f"cannot resume data loader: saved mixing={state.get('mixing', 'random')}, "
                              f"this run has mixing={self.mixing}")
        saved = [(s["name"], s["num_windows"], s.get("first_window", 0)) for s in state["sources"]]
        mine = [(s.name, s.num_windows, s.first) for s in self._sources]
        if saved != mine:
            raise DataError(f"cannot resume data loader: saved sources (name, windows, first window) {saved} "
                            f"differ from this run's {mine}")
        r = state["rng"]
        self._rng.bit_generator.state = {
            "bit_generator": "PCG64", "has_uint32": r["has_uint32"], "uinteger": r["uinteger"],
            "state": {"state": int(r["state"]), "inc": int(r["inc"])}}
        self.samples = int(state["samples"])
        for src, s in zip(self._sources, state["sources"]):
            src.epoch, src.cursor = int(s["epoch"]), int(s["cursor"])
            src.samples = int(s["samples"])
            src._order = None

    def stats(self) -> dict:
        """Token accounting: per source the samples and tokens (seq_len per sample) consumed
        by the whole run (all ranks), its share of all tokens, and epochs completed so far."""
        total = max(1, self.samples)
        return {"samples": self.samples, "tokens": self.samples * self.seq_len,
                "sources": {s.name: {"weight": s.weight, "samples": s.samples,
                                     "tokens": s.samples * self.seq_len,
                                     "share": s.samples / total, "epoch": s.epoch,
                                     "epochs": s.epoch + s.cursor / max(1, s.num_windows)}
                            for s in self._sources}}


def eval_batches(shards: TokenShards, seq_len: int, batch_size: int,
                 max_batches: int | None = None,
                 transform: Callable[[Sample], Sample] | None = None,
                 sidecars: Sequence[str] = ()) -> Iterator[dict[str, torch.Tensor]]:
    """Sequential non-overlapping windows ``[i*T, i*T + T + 1)`` of ``shards`` in batches of
    ``batch_size`` (the last one may be smaller), same keys as ``PackedLoader.next_batch``.
    ``transform(sample)`` rewrites each window first (e.g. reversal for a right-to-left LM);
    ``sidecars`` as in ``PackedLoader``."""
    cars = open_sidecars(shards, sidecars)
    name = os.path.basename(shards.path)
    n_windows = max(0, (shards.num_tokens - 1) // seq_len)
    batch: list[Sample] = []
    made = 0
    for i in range(n_windows):
        if max_batches is not None and made >= max_batches:
            return
        sample = read_window(shards, i * seq_len, seq_len + 1, cars, source=name)
        batch.append(checked(transform, transform(sample), seq_len + 1, name) if transform is not None else sample)
        if len(batch) == batch_size:
            yield to_batch(batch)
            made, batch = made + 1, []
    if batch and (max_batches is None or made < max_batches):
        yield to_batch(batch)
