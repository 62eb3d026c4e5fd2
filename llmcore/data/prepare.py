"""``prepare``: text/jsonl/parquet files -> token shards + document index + manifest.

Used by the CLI (`llmcore data prepare`) and tests. Documents are read and tokenized with
``datasets`` (multiprocess ``map``, offline, its cache in a private temp folder that is
deleted afterwards), split into train/val by whole documents, and written as raw memmap-able
shards that ``llmcore.data.shards.TokenShards`` reads. The output folder appears atomically:
it is built beside its final path and renamed only when complete.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from typing import Iterator

import numpy as np

from llmcore.data.files import SAMPLE_BY, check_utf8, resolve_inputs
from llmcore.data.writer import ShardWriter, dtype_for, finish_folder, make_manifest, start_folder, tokenizer_info
from llmcore.errors import ConfigError, DataError
from llmcore.tokenizer import Tokenizer

_WRITE_BATCH = 1000  # documents per Arrow slice while writing shards


def prepare(inputs: list[str], tokenizer: Tokenizer | str, out_dir: str, *,
            val_fraction: float = 0.01, num_proc: int = 1, text_field: str = "text",
            sample_by: str = "paragraph", append_eos: bool = True, shard_tokens: int = 2**27,
            seed: int = 0, overwrite: bool = False, progress: bool = True) -> dict:
    """Tokenize ``inputs`` (files or directories) into ``out_dir``; return the manifest.

    Plain text is cut into documents by ``sample_by`` ("line" | "paragraph" | "document");
    JSON lines / parquet rows are documents, their text in ``text_field``. Blank documents
    are skipped; each other one becomes its ids (+ eos with ``append_eos``). A seeded choice
    of ``val_fraction`` of the documents (at least one when there are two or more) forms
    ``val``. Shards hold at most ``shard_tokens`` tokens (a longer document gets a shard of
    its own) and documents never span shards.
    """
    tok = Tokenizer.load(os.fspath(tokenizer)) if isinstance(tokenizer, (str, os.PathLike)) else tokenizer
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"val_fraction={val_fraction} must be in [0, 1)")
    if sample_by not in SAMPLE_BY:
        raise ConfigError(f"sample_by={sample_by!r} must be one of {SAMPLE_BY}")
    if shard_tokens < 1 or num_proc < 1:
        raise ConfigError(f"shard_tokens={shard_tokens} and num_proc={num_proc} must be >= 1")
    files = resolve_inputs(inputs)
    for path, builder in files:  # datasets reads bad bytes of json as U+FFFD, of text as a traceback
        if builder in ("text", "json"):
            check_utf8(path)
    out_dir, tmp = start_folder(out_dir, overwrite)
    try:
        dtype = dtype_for(tok.vocab_size)
        cache = os.path.join(tmp, ".datasets-cache")
        with _quiet_datasets(progress):
            ds = _tokenize(files, tok, cache, num_proc=num_proc, text_field=text_field,
                           sample_by=sample_by, append_eos=append_eos)
            lengths = ds.data.column("n").to_numpy()
            is_val = _val_mask(lengths, val_fraction, seed)
            writers = {s: ShardWriter(tmp, s, dtype, shard_tokens) for s in ("train", "val")}
            _write(ds, lengths, is_val, writers, progress)
            del ds
        shutil.rmtree(cache, ignore_errors=True)
        splits = {s: w.close() for s, w in writers.items()}
        if splits["train"]["num_tokens"] == 0:
            raise DataError(f"inputs {[p for p, _ in files]} hold no non-blank document")
        manifest = make_manifest(
            tokenizer_info(tok), dtype, splits,
            inputs=[{"path": p, "bytes": os.path.getsize(p)} for p, _ in files],
            settings={"val_fraction": val_fraction, "text_field": text_field,
                      "sample_by": sample_by, "append_eos": append_eos,
                      "shard_tokens": shard_tokens, "seed": seed},
            skipped_empty_docs=int((lengths == 0).sum()))
        finish_folder(tmp, out_dir, manifest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


@contextlib.contextmanager
def _quiet_datasets(progress: bool) -> Iterator[None]:
    """Import ``datasets`` offline; hide its progress bars and logs unless ``progress``."""
    # Local files only: never let a run reach (or wait on) the Hugging Face hub.
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import datasets

    was_disabled = datasets.utils.are_progress_bars_disabled()
    level = datasets.logging.get_verbosity()
    if not progress:
        datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    try:
        yield
    finally:
        datasets.logging.set_verbosity(level)
        if not was_disabled:
            datasets.enable_progress_bars()


def _tokenize_batch(batch: dict, tokenizer: Tokenizer, field: str, append_eos: bool,
                    strip_newlines: bool) -> dict:
    # Module-level so multiprocess map can pickle it; blank documents become empty rows
    # (n == 0) and are skipped at write time, keeping row numbers = input documents.
    texts = [t or "" for t in batch[field]]
    if strip_newlines:  # paragraphs: the file's last one keeps its final "\n", a "\n\n\n" run
        texts = [t.strip("\n") for t in texts]  # leaves one at the start of the next
    texts = ["" if t.isspace() else t for t in texts]
    ids = tokenizer.encode_batch(texts)
    if append_eos:
        for t, x in zip(texts, ids):
            if t:
                x.append(tokenizer.eos_id)
    return {"ids": ids, "n": [len(x) for x in ids]}


def _tokenize(files: list[tuple[str, str]], tok: Tokenizer, cache: str, *, num_proc: int,
              text_field: str, sample_by: str, append_eos: bool):
    """All inputs as one ``datasets.Dataset`` with columns ids (int32 list) and n (length)."""
    import datasets

    # Sequence, not List: List appeared in datasets 4 and pyproject allows >= 2.19
    features = datasets.Features({"ids": datasets.Sequence(datasets.Value("int32")),
                                  "n": datasets.Value("int64")})
    parts = []
    # Consecutive files of one format load together; input order is document order.
    groups: list[tuple[str, list[str]]] = []
    for path, builder in files:
        if groups and groups[-1][0] == builder:
            groups[-1][1].append(path)
        else:
            groups.append((builder, [path]))
    for builder, paths in groups:
        kwargs = {"sample_by": sample_by} if builder == "text" else {}
        try:
            ds = datasets.load_dataset(builder, data_files=paths, split="train",
                                       cache_dir=cache, **kwargs)
        except Exception as e:  # datasets wraps parse errors in many types
            raise DataError(f"cannot read {paths} as {builder}: {e}") from e
        field = "text" if builder == "text" else text_field
        if field not in ds.column_names:
            raise DataError(f"{paths}: no field {field!r} (has {ds.column_names}); set "
                            "text_field")
        if len(ds) == 0:
            continue
        parts.append(ds.map(
            _tokenize_batch, batched=True, batch_size=256, remove_columns=ds.column_names,
            fn_kwargs={"tokenizer": tok, "field": field, "append_eos": append_eos,
                       "strip_newlines": builder == "text" and sample_by == "paragraph"},
            features=features, num_proc=min(num_proc, len(ds)) if num_proc > 1 else None,
            desc=f"tokenize {builder}"))
    if not parts:
        raise DataError(f"inputs {[p for p, _ in files]} hold no document")
    return datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]


def _val_mask(lengths: np.ndarray, val_fraction: float, seed: int) -> np.ndarray:
    """Seeded choice of whole documents for val: round(val_fraction * docs), at least 1 when
    val_fraction > 0 and there are >= 2 documents, never all of them."""
    nonempty = np.flatnonzero(lengths > 0)
    n = len(nonempty)
    n_val = 0 if val_fraction == 0 or n < 2 else min(n - 1, max(1, round(val_fraction * n)))
    mask = np.zeros(len(lengths), dtype=bool)
    rng = np.random.default_rng([seed, 0x7661])  # own stream: "va"
    mask[nonempty[rng.choice(n, size=n_val, replace=False)]] = True
    return mask


def _write(ds, lengths: np.ndarray, is_val: np.ndarray, writers: dict, progress: bool) -> None:
    from tqdm.auto import tqdm

    table = ds.with_format("arrow")
    with tqdm(total=len(ds), unit="doc", desc="write shards", disable=not progress) as bar:
        for lo in range(0, len(ds), _WRITE_BATCH):
            col = table[lo:lo + _WRITE_BATCH].column("ids").combine_chunks()
            flat = col.flatten().to_numpy(zero_copy_only=False)
            offsets = col.offsets.to_numpy()
            offsets = offsets - offsets[0]
            for i in range(len(col)):
                if lengths[lo + i]:
                    writers["val" if is_val[lo + i] else "train"].add(
                        flat[offsets[i]:offsets[i + 1]])
            bar.update(len(col))
