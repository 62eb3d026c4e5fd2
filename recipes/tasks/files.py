"""What every synthetic task writes: its JSON-lines rows, its one-piece-per-character
tokenizer and a prepared pretraining folder of `prompt + answer` documents.

The tasks (`arithmetic`, `path_star`, `countdown`, `three_sum`) differ in their problems and
scoring; these three files are the same for all of them, so they live here once.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

NUM_RESERVED = 16


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict], fields: Sequence[str] | None = None) -> str:
    """Rows as JSON lines (only `fields` of each row when given): the format of `data.format:
    sft` and `llmcore eval --tasks`. Returns the path as a string."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        f.writelines(json.dumps(row if fields is None else {k: row[k] for k in fields}) + "\n" for row in rows)
    return str(path)


def char_tokenizer(out_dir: str, chars: str, sample: Sequence[str], special_tokens: Sequence[str] = (),
                   overwrite: bool = True):
    """A tokenizer with one piece per character of `chars` and no merges: the vocabulary is
    exactly what SentencePiece needs (control tokens, `special_tokens`, reserved slots, byte
    pieces and the characters), so encode(prompt) + encode(answer) == encode(prompt + answer)
    and pretraining documents and SFT rows tokenize alike. `sample`: a few task texts to train
    on (every character of `chars` is added to them)."""
    from llmcore.tokenizer import Tokenizer

    special_tokens = list(special_tokens)
    vocab = 4 + len(special_tokens) + NUM_RESERVED + 256 + len(chars)
    with tempfile.TemporaryDirectory() as tmp:
        text = Path(tmp) / "chars.txt"
        text.write_text("\n\n".join([chars, *sample]) + "\n")
        return Tokenizer.train([str(text)], out_dir, vocab, special_tokens=special_tokens,
                               num_reserved=NUM_RESERVED, overwrite=overwrite, progress=False)


def write_pretraining_data(out_dir: str, tokenizer, train_rows: list[dict], val_rows: list[dict]) -> dict:
    """A prepared data folder (what `llmcore data prepare` makes) whose documents are
    `prompt + answer + eos`, with the tokenizer copied to `<out_dir>/tokenizer`."""
    from llmcore.data import tokenizer_info, write_token_folder

    def docs(rows):
        return [tokenizer.encode(r["prompt"] + r["answer"]) + [tokenizer.eos_id] for r in rows]

    manifest = write_token_folder(out_dir, {"train": docs(train_rows), "val": docs(val_rows)},
                                  tokenizer=tokenizer_info(tokenizer), overwrite=True)
    tokenizer.save(str(Path(out_dir) / "tokenizer"), overwrite=True)
    return manifest
