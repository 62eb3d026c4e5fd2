"""Supervised fine-tuning data: prompt/answer jsonl, loss on the answer only.

Used by the trainer when `data.format: sft` (pause-finetuning, task fine-tunes, the
forgetting harness). Each example becomes one `Sample` of seq_len + 1 tokens:
`prompt + answer + eos`, right-padded with `pad`; `loss_mask` is True on the answer and eos
(target side) only. Its per-sample values hold `prompt_len` (so recipe transforms can act at
the boundary, e.g. append pauses after the prompt) and the extra jsonl fields named in
`data.sft_fields` (numbers or fixed-length number lists: int64 when every line's are integers,
else float32); provenance is the file and the example's ordinal in it. Batches come from the
same `to_batch` as packed data, so `batch["prompt_len"]` and each extra field are [b, ...].
Per-example side-cars beside the file (`data.sidecars`, `llmcore.data.example_sidecar`)
arrive the same way, as values.
The loader has PackedLoader's interface: the global batch is the same for any world size,
rank r takes rows r, r+W, ...; resumable; a transform gets
`rng = default_rng([seed, global_index, 7])`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from llmcore.data.collate import check_extra_names, to_batch
from llmcore.data.example_sidecar import read_example_sidecar
from llmcore.data.jsonl import read_json_lines
from llmcore.data.sample import Sample, checked
from llmcore.errors import ConfigError, DataError


def read_tasks(path: str, prompt_field: str = "prompt", answer_field: str = "answer",
               fields: Sequence[str] = ()) -> list[dict]:
    """The {"prompt", "answer"} pairs of a JSON-lines file; blank lines are skipped.

    Used by SFT training and by exact-match evaluation. With ``fields``, each pair also has
    ``values``: {field: its number(s) as numpy} (see the module docstring for the dtypes).
    DataError naming the file and line number for a missing file, invalid UTF-8, a line that is
    not a JSON object, one without every field, a prompt or answer that is not a string or a
    number (null, true, a list: never trained as the text "None"), or an extra field that is
    not a number or a list of as many numbers as on the first line.
    """
    p = Path(path)
    tasks, raw = _read_rows(p, prompt_field, answer_field, fields)
    if not tasks:
        raise DataError(f"task file {p} holds no examples")
    for j, name in enumerate(fields):
        column = _numbers(p, name, [(lineno, vals[j]) for lineno, vals in raw])
        for task, v in zip(tasks, column):
            task.setdefault("values", {})[name] = v
    return tasks


def _text(p: Path, lineno: int, row: dict, key: str) -> str:
    """A prompt or answer cell as text: a JSON string, or a number (as `str` writes it)."""
    value = row[key]
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise DataError(f"{p}:{lineno}: field {key!r} is {json.dumps(value)[:60]}, expected a string "
                    "(or a number)")


def _read_rows(p: Path, prompt_field: str, answer_field: str, fields: Sequence[str]) -> tuple[list, list]:
    tasks, raw = [], []
    for lineno, row in read_json_lines(p, "task file"):
        missing = [k for k in (prompt_field, answer_field, *fields) if k not in row]
        if missing:
            raise DataError(f"{p}:{lineno}: missing field(s) {missing} (has {sorted(row)})")
        tasks.append({"prompt": _text(p, lineno, row, prompt_field),
                      "answer": _text(p, lineno, row, answer_field)})
        raw.append((lineno, [row[k] for k in fields]))
    return tasks, raw


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _numbers(p: Path, name: str, cells: list[tuple[int, object]]) -> np.ndarray:
    """One extra field of every line as an array [lines, ...]: int64 if all integers, else
    float32 (a JSON number has no dtype; float32 is what a training target is used as)."""
    first = cells[0][1]
    if _is_number(first):
        width, want = None, "a number (as on the first line)"
    elif isinstance(first, list) and all(_is_number(x) for x in first):
        width, want = len(first), f"a list of {len(first)} numbers (as on the first line)"
    else:
        width, want = -1, "a number or a list of numbers"
    for lineno, v in cells:
        ok = (_is_number(v) if width is None else
              isinstance(v, list) and len(v) == width and all(_is_number(x) for x in v))
        if not ok:
            raise DataError(f"{p}:{lineno}: field {name!r} is {json.dumps(v)[:60]}, expected {want}")
    values = [v for _, v in cells]
    exact = all(isinstance(x, int) for v in values for x in (v if isinstance(v, list) else [v]))
    return np.asarray(values, dtype=np.int64 if exact else np.float32)


def encode_examples(examples: list[dict], tokenizer, seq_len: int, where: str) -> list[Sample]:
    """One Sample of length seq_len + 1 per example (see module docstring)."""
    n = seq_len + 1
    rows = []
    for i, ex in enumerate(examples):
        p_ids = tokenizer.encode(ex["prompt"])
        a_ids = tokenizer.encode(ex["answer"]) + [tokenizer.eos_id]
        ids = p_ids + a_ids
        if len(ids) > n:
            raise DataError(f"{where} example {i}: {len(ids)} tokens exceed data.seq_len + 1 = {n}")
        tokens = np.full(n, tokenizer.pad_id, dtype=np.int64)
        tokens[:len(ids)] = ids
        mask = np.zeros(n, dtype=bool)
        mask[len(p_ids):len(ids)] = True
        doc = np.zeros(n, dtype=np.int64)
        doc[len(ids):] = 1  # padding is its own document
        values = {"prompt_len": len(p_ids), **ex.get("values", {})}
        rows.append(Sample(tokens=tokens, doc_ids=doc, loss_mask=mask, values=values, source=where,
                           doc_index=i))
    return rows


def attach_sidecars(rows: list[Sample], path: str, sidecars: Sequence[str], fields: Sequence[str] = ()) -> None:
    """Give each row `values[name]`, its row of per-example side-car `name` of `path`
    (`llmcore.data.example_sidecar`), as an extra jsonl field would arrive."""
    check_extra_names(sidecars, "data.sidecars")
    clash = sorted(set(sidecars) & set(fields) | set(sidecars) & {"prompt_len"})
    if clash or len(set(sidecars)) != len(sidecars):
        raise ConfigError(f"data.sidecars {list(sidecars)} names a value twice or one of data.sft_fields / "
                          f"prompt_len: {clash or list(sidecars)}")
    for name in sidecars:
        arr = read_example_sidecar(path, name, len(rows))
        for row, v in zip(rows, arr):
            row.values[name] = v


def _check_fields(fields: Sequence[str]) -> None:
    check_extra_names(fields, "data.sft_fields")
    if "prompt_len" in fields:
        raise ConfigError("data.sft_fields: 'prompt_len' is the SFT rows' own value (the prompt's length)")


class SFTLoader:
    """Shuffled (per epoch, seeded) batches of SFT rows; the PackedLoader interface."""

    def __init__(self, path: str, tokenizer, seq_len: int, global_batch_size: int, *, seed: int,
                 rank: int = 0, world_size: int = 1, transform: Callable | None = None,
                 prompt_field: str = "prompt", answer_field: str = "answer", fields: Sequence[str] = (),
                 sidecars: Sequence[str] = ()):
        if global_batch_size % world_size:
            raise ConfigError(f"global batch {global_batch_size} is not divisible by world size {world_size}")
        self.path, self.seq_len, self.seed = path, seq_len, seed
        self.global_batch_size, self.rank, self.world_size = global_batch_size, rank, world_size
        self.transform = transform
        _check_fields(fields)
        self.rows = encode_examples(read_tasks(path, prompt_field, answer_field, fields), tokenizer, seq_len, path)
        attach_sidecars(self.rows, path, sidecars, fields)
        self.samples = 0
        self._perm_epoch, self._perm = -1, None

    def _row_index(self, g: int) -> int:
        epoch, pos = divmod(g, len(self.rows))
        if self._perm_epoch != epoch:  # one permutation per epoch, a pure function of (seed, epoch)
            self._perm = np.random.default_rng([self.seed, epoch, 11]).permutation(len(self.rows))
            self._perm_epoch = epoch
        return int(self._perm[pos])

    def next_batch(self) -> dict[str, torch.Tensor]:
        rows = []
        for j in range(self.rank, self.global_batch_size, self.world_size):
            g = self.samples + j
            row = self.rows[self._row_index(g)].copy()  # a transform may write in place
            if self.transform is not None:
                row = checked(self.transform, self.transform(row, np.random.default_rng([self.seed, g, 7])),
                              self.seq_len + 1, self.path)
            rows.append(row)
        self.samples += self.global_batch_size
        return to_batch(rows)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        return self.next_batch()

    def state_dict(self) -> dict:
        return {"version": 1, "kind": "sft", "seed": self.seed, "samples": self.samples, "examples": len(self.rows)}

    def load_state_dict(self, state: dict) -> None:
        if state.get("kind") != "sft" or state.get("examples") != len(self.rows) or state.get("seed") != self.seed:
            raise DataError(f"cannot resume SFT loader on {self.path}: saved state {state} does not match "
                            f"{len(self.rows)} examples, seed {self.seed}")
        self.samples = int(state["samples"])

    def stats(self) -> dict:
        return {"samples": self.samples, "epochs": self.samples / len(self.rows)}


def sft_eval_batches(path: str, tokenizer, seq_len: int, batch_size: int, max_batches: int | None = None,
                     transform: Callable | None = None, seed: int = 0,
                     prompt_field: str = "prompt", answer_field: str = "answer",
                     fields: Sequence[str] = (), sidecars: Sequence[str] = ()) -> Iterator[dict]:
    """The examples of `path` in file order, batched; `transform` applied as in training."""
    _check_fields(fields)
    rows = encode_examples(read_tasks(path, prompt_field, answer_field, fields), tokenizer, seq_len, path)
    attach_sidecars(rows, path, sidecars, fields)
    if transform is not None:
        rows = [checked(transform, transform(r, np.random.default_rng([seed, i, 13])), seq_len + 1, path)
                for i, r in enumerate(rows)]
    for b, start in enumerate(range(0, len(rows), batch_size)):
        if max_batches is not None and b >= max_batches:
            return
        yield to_batch(rows[start:start + batch_size])
