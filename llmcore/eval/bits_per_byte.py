"""Bits per byte of raw text, scored the way lm-evaluation-harness scores a
`loglikelihood_rolling` task (wikitext-style), so `llmcore eval --text` and `lm_eval --model hf`
on the exported folder give the same number.

Used by the CLI (`llmcore eval --checkpoint C --text docs.jsonl`). Per document: the text is
tokenized without bos/eos, a prefix token (bos, as the harness's HF model uses when the
tokenizer has one) is put in front, and every text token is scored with rolling windows of the
model's context: the first window predicts the first `L` tokens, each next one the next `L`
with the tokens before them as context (the last window taking as much context as fits, so
every window's input is `L` long). bits/byte = total NLL (nats) / (UTF-8 bytes x ln 2), over
all documents together; also word and byte perplexity, as the harness reports them.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch

from llmcore.data.files import check_utf8
from llmcore.data.jsonl import read_json_lines
from llmcore.errors import DataError


def read_documents(path: str | Path, text_field: str = "text") -> list[str]:
    """Documents of a .jsonl (one object per line, its `text_field`) or a text file (the whole
    file is one document). DataError naming the line for a malformed row."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} does not exist")
    if path.suffix == ".jsonl":
        return _jsonl_documents(path, text_field)
    try:
        return [path.read_bytes().decode("utf-8")]
    except UnicodeDecodeError:
        check_utf8(str(path))  # names the line and byte
        raise


def _jsonl_documents(path: Path, text_field: str) -> list[str]:
    docs = []
    for n, row in read_json_lines(path, "document file"):
        if not isinstance(row.get(text_field), str):
            raise DataError(f"{path}:{n} has no string field {text_field!r}")
        docs.append(row[text_field])
    return docs


def rolling_windows(n_tokens: int, length: int) -> list[tuple[int, int, int]]:
    """(input start, input end, targets in this window) over the sequence [prefix] + tokens,
    whose positions 1..n_tokens are the targets: disjoint targets, each window's input `length`
    long where the sequence allows."""
    out, done = [], 0
    while done < n_tokens:
        end = min(done + length, n_tokens)
        out.append((max(0, end - length), end, end - done))
        done = end
    return out


@torch.inference_mode()
def bits_per_byte(model, tokenizer, documents: list[str], max_length: int | None = None) -> dict:
    """{"bits_per_byte", "byte_perplexity", "word_perplexity", "nll", "bytes", "words",
    "tokens", "documents"} of `documents` under `model` (see the module docstring)."""
    length = max_length or model.args.max_seq_len
    prefix = tokenizer.bos_id
    device = next(model.parameters()).device
    nll, tokens = 0.0, 0
    for doc in documents:
        ids = tokenizer.encode(doc)
        seq = torch.tensor([prefix] + ids, dtype=torch.long, device=device)
        for start, end, n_pred in rolling_windows(len(ids), length):
            window = seq[start:end + 1]  # input seq[start:end], targets seq[start+1:end+1]
            logits = model.logits(model(window[None, :-1]))[0, -n_pred:].double()  # (n_pred, V)
            targets = window[-n_pred:]
            nll -= float(torch.log_softmax(logits, -1).gather(1, targets[:, None]).sum())
            tokens += n_pred
    n_bytes = sum(len(d.encode("utf-8")) for d in documents)
    n_words = sum(len(re.split(r"\s+", d)) for d in documents)
    return {"bits_per_byte": nll / max(n_bytes, 1) / math.log(2), "byte_perplexity": math.exp(nll / max(n_bytes, 1)),
            "word_perplexity": math.exp(nll / max(n_words, 1)), "nll": nll, "bytes": n_bytes, "words": n_words,
            "tokens": tokens, "documents": len(documents)}
