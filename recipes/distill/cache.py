"""The offline teacher cache: side-car arrays beside a prepared folder's shards.

Written by `llmcore distill cache` (`write_cache`), read by the `distill` recipe through the
loader's side-cars (`data.sidecars`). A cache named C is a group of side-cars of kind
``token`` (one row per token of every shard, layout and checks: `llmcore.data.sidecar`):

- top-k (``--top-k k``): ``C_ids`` uint16 [k] (int32 when V > 65536), the teacher's k most
  likely next tokens, most likely first; ``C_logp`` float16 [k], their log-probabilities at
  T = 1 over the whole vocabulary; ``C_lse`` float32, the log-sum-exp of the teacher's logits;
  ``C_entropy`` float32, its entropy (nats). 4k + 8 bytes per token (136 at k = 32).
- sampled (``--sample n``): n ids drawn with replacement from softmax(z / T) (T =
  ``--temperature``), stored as what the target count / n needs of them: the row's u distinct
  ids and the counts of the r of them drawn more than once (the others count 1).
  ``C_n`` / ``C_nrep`` uint8: u and r (0 on an empty row); ``C_ids``: ragged side-car of width
  n, row lengths ``C_n``, the repeated ids then the others; ``C_count`` uint8: ragged, lengths
  ``C_nrep``, the repeated ids' counts (ragged rows read back padded with 0); ``C_lse``,
  ``C_entropy``. 10 + 2u + r bytes per token (u <= n, r <= n / 2; uint16 counts for n >
  255), so the size follows the teacher's entropy: a peaked teacher repeats its likely ids
  (u small), a flat one draws n distinct ids once each (r ~ 0: 2n + 10). made_from ``layout:
  counts``. A cache of the first layout (``C_ids`` [n]: the draws themselves, 2n + 8 bytes;
  made_from without ``layout``) still reads, to the same targets (`layout_of`).

Row j of a shard is the teacher's distribution for token j given the tokens before it: the
stream is read in windows of ``seq_len`` inputs, each predicting the next ``seq_len`` rows,
anchored at the shard's first token (so shards are independent units of work), with the
teacher's own document masking; the stream's very first token has no context and gets an
empty row (entropy NaN, logp -inf: no KD there). In training a window starts anywhere, so
the teacher's context of a token differs from the student's when the two windows differ: the
cache's context reaches back up to ``seq_len`` tokens (within the document when the teacher
masks documents), as a teacher run on the training windows would see on average half that.

Every side-car's ``made_from`` records the teacher's identity (path, manifest sha256), the
mode, k or n, temperature, seq_len and seed; a rerun with anything else, or after the shards
changed, is refused naming both (`SidecarWriter`), and a run naming another teacher than the
cache's is refused naming both (`check_cache`). Shard by shard, resumable: an interrupted
write picks up at the first shard some array of which is missing.
"""

from __future__ import annotations

import os
import time

import numpy as np
import torch

from llmcore.data.shards import TokenShards, read_manifest
from llmcore.data.sidecar import read_sidecar_manifest
from llmcore.data.sidecar_writer import SidecarWriter
from llmcore.errors import ConfigError, DataError
from llmcore.train.metrics import progress_bar
from recipes.distill.targets import (
    count_draws,
    quantise_logp,
    teacher_samples,
    teacher_topk,
)
from recipes.distill.teacher import check_vocab, load_teacher, teacher_identity

COUNT_ROWS = 1 << 20
"""Rows of draws counted at once when a sampled shard is finished (bounds that step's memory)."""

# a cache's layout: top-k; sampled as distinct ids + counts; sampled as the raw draws (the
# first sampled layout, read only). The side-cars a run lists in data.sidecars (C_nrep of the counts layout is read through C_count)
_LISTED = {"topk": ("ids", "logp", "lse", "entropy"), "counts": ("n", "ids", "count", "lse", "entropy"),
           "draws": ("ids", "lse", "entropy")}


def sidecar_names(cache: str, layout: str) -> list[str]:
    """The side-car names of cache `cache` of `layout` (what `data.sidecars` must list)."""
    return [f"{cache}_{p}" for p in _LISTED[layout]]


def layout_of(info: dict) -> str:
    """The layout of a cache from its `made_from` (a sampled one without `layout`: draws)."""
    if info.get("mode") != "sampled":
        return "topk"
    layout = info.get("layout", "draws")
    if layout not in ("counts", "draws"):
        raise DataError(f"a sampled distillation cache of layout {layout!r}: this version reads 'counts' and "
                        "'draws'; rewrite it with `llmcore distill cache --overwrite`")
    return layout


def id_dtype(vocab: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab <= 65536 else np.dtype(np.int32)


def _specs(cache: str, width: int, vocab: int, sampled: bool) -> dict[str, dict]:
    """part -> SidecarWriter settings, in writing order (a ragged part after its lengths);
    an inserted token (a pause) gets an empty row."""
    out = {}
    if sampled:
        small = np.dtype(np.uint8) if width <= 255 else np.dtype(np.uint16)
        out["n"] = {"dtype": small, "shape": (), "fill": 0}
        out["nrep"] = {"dtype": small, "shape": (), "fill": 0}
        out["ids"] = {"dtype": id_dtype(vocab), "shape": (width,), "fill": 0, "layout": "ragged",
                      "lengths": f"{cache}_n"}
        out["count"] = {"dtype": small, "shape": (width,), "fill": 0, "layout": "ragged", "lengths": f"{cache}_nrep"}
    else:
        out["ids"] = {"dtype": id_dtype(vocab), "shape": (width,), "fill": 0}
        out["logp"] = {"dtype": np.dtype(np.float16), "shape": (width,), "fill": float("-inf")}
    out["lse"] = {"dtype": np.dtype(np.float32), "shape": (), "fill": 0.0}
    out["entropy"] = {"dtype": np.dtype(np.float32), "shape": (), "fill": float("nan")}
    return out


def read_cache_info(data_path: str, cache: str) -> dict:
    """`made_from` of cache `cache` in `data_path` (DataError naming what exists if absent)."""
    return read_sidecar_manifest(data_path, f"{cache}_ids").get("made_from", {})


def check_cache(data_path: str, cache: str, teacher_path: str | None, teacher: dict | None = None) -> dict:
    """The cache's `made_from`, after checking it was made by `teacher_path` (when given;
    `teacher`: its `teacher_identity`, when the caller checks several data folders)."""
    info = read_cache_info(data_path, cache)
    if teacher_path:
        want = teacher or teacher_identity(teacher_path)
        have = info.get("teacher", {})
        if have.get("sha256") != want["sha256"]:
            raise ConfigError(f"distill.cache={cache!r} in {data_path} was made by teacher {have.get('path')} "
                              f"(sha256 {str(have.get('sha256'))[:12]}), distill.teacher is {want['path']} "
                              f"(sha256 {want['sha256'][:12]}): another teacher; rebuild the cache or drop "
                              "distill.teacher")
    return info


@torch.no_grad()
def _shard_rows(model, shards: TokenShards, k_shard: int, *, seq_len: int, width: int, sampled: bool,
                temperature: float, seed: int, batch_windows: int, block_rows: int, real_vocab: int,
                device, bar) -> dict[str, np.ndarray]:
    first, n, _, _ = shards.shard_span(k_shard)
    tw = model.output_weight.detach()[:real_vocab]
    gen = torch.Generator(device=device).manual_seed(seed * 1_000_003 + k_shard)  # a shard alone decides its draws
    out = {"ids": np.zeros((n, width), dtype=id_dtype(real_vocab)), "lse": np.zeros(n, np.float32),
           "entropy": np.full(n, np.nan, np.float32)}
    if not sampled:
        out["logp"] = np.full((n, width), -np.inf, np.float16)
    # window i reads inputs [a, a + L) and fills rows a+1 .. a+L of the stream (shard-local a+1-first)
    starts = list(range(first - 1, first + n - 1, seq_len))
    for lo in range(0, len(starts), batch_windows):
        group = starts[lo:lo + batch_windows]
        spans = [(max(a, 0), min(a + seq_len, first + n - 1) - max(a, 0)) for a in group]
        spans = [(a, m) for a, m in spans if m > 0]
        if not spans:
            continue
        full = [s for s in spans if s[1] == seq_len]
        for batch in ([full] if full else []) + [[s] for s in spans if s[1] != seq_len]:
            ids = torch.from_numpy(np.stack([shards.read(a, m) for a, m in batch])).to(device)
            doc = torch.from_numpy(np.stack([shards.doc_ids(a, m) for a, m in batch])).to(device)
            th = model(ids, doc).reshape(-1, model.args.d_model)
            if sampled:
                got = teacher_samples(th, tw, width, temperature, gen, block_rows)
            else:
                got = teacher_topk(th, tw, width, block_rows)
                got["logp"] = quantise_logp(got["logp"])
            got = {part: t.cpu().numpy() for part, t in got.items()}  # one copy per batch, not per window
            m = batch[0][1]
            for i, (a, _) in enumerate(batch):
                rows = slice(a + 1 - first, a + 1 - first + m)
                for part, t in got.items():
                    out[part][rows] = t[i * m:(i + 1) * m]
            bar.update(len(batch) * m)
    if sampled:  # the draws as distinct ids + repeats' counts; a row without a teacher (entropy NaN) is empty
        out.update(_counted(out.pop("ids"), np.isfinite(out["entropy"])))
    return out


def _counted(draws: np.ndarray, has_row: np.ndarray, rows: int = COUNT_ROWS) -> dict:
    """`count_draws` of a shard's draws [N, n], `rows` rows at a time (rows in order, so the
    ragged parts simply concatenate): the sort runs on int64, which a whole shard of uint16
    draws would make 4x its size at once."""
    parts = [count_draws(torch.from_numpy(draws[i:i + rows].astype(np.int64)), torch.from_numpy(has_row[i:i + rows]))
             for i in range(0, len(draws), rows)]
    names = ("n", "nrep", "ids", "count")
    return {k: np.concatenate([p[j].numpy() for p in parts]) if parts else np.zeros(0, np.int64)
            for j, k in enumerate(names)}


def write_cache(teacher_path: str, data_path: str, cache: str, *, top_k: int | None = None,
                sample: int | None = None, temperature: float = 1.0, seq_len: int | None = None, seed: int = 0,
                batch_windows: int = 8, block_rows: int | None = None, splits=None, device: str | None = None,
                progress: bool = True, overwrite: bool = False) -> dict:
    """Write (or finish) cache `cache` of `data_path` from `teacher_path`; returns a summary
    {"tokens", "seconds", "bytes_per_token" (array bytes without .npy headers, over the
    tokens; a sampled cache's depends on its teacher), "sidecars"} of the shards written by
    this call. `block_rows`: rows of logits per pass (None: 256 on a CPU, 1024 on a GPU)."""
    if (top_k is None) == (sample is None):
        raise ConfigError("distill cache: give exactly one of --top-k K or --sample N")
    width = int(top_k or sample)
    sampled = sample is not None
    if width < 1:
        raise ConfigError(f"distill cache: {'--sample' if sampled else '--top-k'} must be >= 1, got {width}")
    if temperature <= 0:
        raise ConfigError(f"distill cache: --temperature must be > 0, got {temperature}")
    if not sampled and temperature != 1.0:
        raise ConfigError("distill cache: --temperature is for --sample only (a top-k cache stores log p at T = 1; "
                          "the run applies its own temperature)")
    data = read_manifest(data_path)
    model, tok = load_teacher(teacher_path, "distill cache --teacher")
    from llmcore.tokenizer import Tokenizer

    data_tok = Tokenizer.load(os.path.join(os.path.abspath(data_path), "tokenizer"))
    if data_tok.hash != data["tokenizer"].get("hash"):
        raise DataError(f"{data_path}/tokenizer does not match the shards' tokenizer hash")
    real = data_tok.vocab_size
    check_vocab(data_tok, tok, model.args.vocab_size, model.args.vocab_size, "distill cache --teacher")
    if width > real:
        raise ConfigError(f"distill cache: {width} ids per token exceed the vocabulary ({real})")
    seq_len = int(seq_len or model.args.max_seq_len)
    if seq_len > model.args.max_seq_len:
        raise ConfigError(f"distill cache: --seq-len {seq_len} exceeds the teacher's max_seq_len {model.args.max_seq_len}")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if block_rows is None:
        # Rows of logits per softmax pass. On a CPU a [256, V] block stays in the cache through the
        # max / exp / sum / dot / sampling passes, where at 1024 rows each pass streams 16 MB from
        # memory (V = 4096); fewer rows re-read the output weight more often (d = 768: 128 rows are a little
        # slower than 1024). Top-32 of 2048 rows, V = 4096: 51.1 / 57.3 / 109.3 ms at d = 128 / 256
        # / 768 with 256 rows, 71.7 / 73.2 / 108.6 with 1024.
        block_rows = 256 if dev.type == "cpu" else 1024
    model.to(dev)
    made_from = {"teacher": teacher_identity(teacher_path), "mode": "sampled" if sampled else "topk",
                 "width": width, "temperature": float(temperature), "seq_len": seq_len, "seed": int(seed),
                 "vocab": real}
    if sampled:
        made_from["layout"] = "counts"
    specs = _specs(cache, width, real, sampled)
    writers = {part: SidecarWriter(data_path, f"{cache}_{part}", kind="token", made_from=made_from, splits=splits,
                                   overwrite=overwrite, **spec)
               for part, spec in specs.items()}
    some = next(iter(writers.values()))
    todo = {s: sorted(set().union(*(w.pending(s) for w in writers.values()))) for s in some.splits}
    total = sum(int(data["splits"][s]["shards"][k]["num_tokens"]) for s, ks in todo.items() for k in ks)
    bar = progress_bar(total, 0, progress, desc=f"distill cache {cache}")
    t0, tokens, row_bytes = time.perf_counter(), 0, 0
    for split, ks in todo.items():
        if not ks:
            continue
        shards = TokenShards(data_path, split)
        for k in ks:
            rows = _shard_rows(model, shards, k, seq_len=seq_len, width=width, sampled=sampled,
                               temperature=temperature, seed=seed, batch_windows=batch_windows,
                               block_rows=block_rows, real_vocab=real, device=dev, bar=bar)
            for part, w in writers.items():
                w.write(split, k, rows[part])
                row_bytes += rows[part].size * specs[part]["dtype"].itemsize
            tokens += shards.shard_span(k)[1]
    secs = time.perf_counter() - t0
    return {"tokens": tokens, "seconds": secs, "bytes_per_token": round(row_bytes / max(tokens, 1), 2),
            "sidecars": sidecar_names(cache, "counts" if sampled else "topk")}
