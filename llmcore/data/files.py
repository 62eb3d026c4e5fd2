"""Input files of the data pipeline: which formats we read and how their texts are streamed.

Used by ``llmcore.data.prepare`` (to pick a ``datasets`` builder per file) and by
``llmcore.tokenizer.Tokenizer.train`` (to stream training text without ``datasets``), so both
accept exactly the same inputs: plain text (``.txt``/``.text``/``.md``), JSON lines or JSON
(``.jsonl``/``.ndjson``/``.json``), each optionally ``.gz``, and ``.parquet``; or a directory
holding such files (searched recursively, in sorted order so runs are reproducible).
"""

from __future__ import annotations

import codecs
import gzip
import io
import json
import os
from typing import Iterator, Sequence

from llmcore.errors import DataError

# suffix -> datasets builder name
_SUFFIXES = {
    ".txt": "text", ".text": "text", ".md": "text",
    ".jsonl": "json", ".ndjson": "json", ".json": "json",
    ".parquet": "parquet",
}
SAMPLE_BY = ("line", "paragraph", "document")


def builder_of(path: str) -> str | None:
    """The ``datasets`` builder ("text" | "json" | "parquet") for a file name, or None."""
    name = path.lower()
    if name.endswith(".gz"):
        name = name[:-3]
        if name.endswith(".parquet"):  # parquet compresses itself; .parquet.gz is not a thing
            return None
    return _SUFFIXES.get(os.path.splitext(name)[1])


def resolve_inputs(inputs: Sequence[str] | str) -> list[tuple[str, str]]:
    """Expand files and directories into ``[(absolute path, builder), ...]`` in a stable order.

    Raises DataError naming a missing input, a file of an unknown format, or a directory
    without any readable file.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    if not inputs:
        raise DataError("no input files given")
    found: list[tuple[str, str]] = []
    for item in inputs:
        path = os.path.abspath(os.fspath(item))
        if os.path.isdir(path):
            hits = []
            for root, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for f in sorted(files):
                    kind = builder_of(f)
                    if kind and not f.startswith("."):
                        hits.append((os.path.join(root, f), kind))
            if not hits:
                raise DataError(f"input directory {path} holds no readable file "
                                f"(suffixes: {', '.join(sorted(_SUFFIXES))}, optionally .gz)")
            found.extend(hits)
        elif os.path.isfile(path):
            kind = builder_of(path)
            if kind is None:
                raise DataError(f"input file {path} has an unknown format; use one of "
                                f"{', '.join(sorted(_SUFFIXES))} (optionally .gz)")
            found.append((path, kind))
        else:
            raise DataError(f"input {path} does not exist")
    return found


def check_utf8(path: str, chunk: int = 1 << 24) -> None:
    """DataError naming the file, line and byte offset of the first invalid UTF-8 sequence
    (offsets of a ``.gz`` file count its decompressed text). Streams the file once."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    opener = gzip.open if path.lower().endswith(".gz") else open
    offset, lines = 0, 1
    with opener(path, "rb") as f:
        while True:
            block = f.read(chunk)
            try:
                decoder.decode(block, final=not block)
            except UnicodeDecodeError as e:
                # e.object is the decoder's held-back tail of the last block (an unfinished
                # character, never a newline) followed by this block
                bad = offset - (len(e.object) - len(block)) + e.start
                line = lines + e.object[:e.start].count(b"\n")
                raise DataError(f"{path}: invalid UTF-8 at line {line} (byte offset {bad}, "
                                f"{e.object[e.start:e.end]!r}: {e.reason}); inputs must be UTF-8 text "
                                "(convert it, e.g. `iconv -f latin1 -t utf-8`)") from None
            if not block:
                return
            offset += len(block)
            lines += block.count(b"\n")


def _open_text(path: str) -> io.TextIOBase:
    # newline="" keeps "\r\n" as written: the tokenizer must see the text exactly as stored.
    if path.lower().endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def _paragraphs(f: io.TextIOBase) -> Iterator[str]:
    """Blocks of text separated by blank lines, streamed (datasets' sample_by="paragraph")."""
    block: list[str] = []
    for line in f:
        if line in ("\n", "\r\n"):
            if block:
                yield "".join(block).strip("\r\n")
                block = []
        else:
            block.append(line)
    if block:
        yield "".join(block).strip("\r\n")


def iter_texts(path: str, builder: str, *, text_field: str = "text",
               sample_by: str = "paragraph") -> Iterator[str]:
    """Stream the documents of one file as strings (empty ones included).

    ``sample_by`` applies to plain text: "line", "paragraph" (blank-line separated) or
    "document" (the whole file). JSON/parquet rows are documents; ``text_field`` names the
    column. Raises DataError naming the file when the column is missing.
    """
    if sample_by not in SAMPLE_BY:
        raise DataError(f"sample_by={sample_by!r} is not one of {SAMPLE_BY}")
    try:
        yield from _iter_texts(path, builder, text_field, sample_by)
    except UnicodeDecodeError:
        check_utf8(path)  # names the line and byte
        raise


def _iter_texts(path: str, builder: str, text_field: str, sample_by: str) -> Iterator[str]:
    if builder == "text":
        with _open_text(path) as f:
            if sample_by == "line":
                for line in f:
                    yield line.rstrip("\r\n")
            elif sample_by == "paragraph":
                yield from _paragraphs(f)
            else:
                yield f.read()
    elif builder == "json":
        with _open_text(path) as f:
            first = f.read(1)
            while first.isspace():
                first = f.read(1)
            rest = f.read() if first == "[" else None
            if rest is not None:  # one JSON array of records
                rows = json.loads(first + rest)
            else:
                rows = (json.loads(ln) for ln in _prepend(first, f) if ln.strip())
            for i, row in enumerate(rows):
                if not isinstance(row, dict) or text_field not in row:
                    keys = sorted(row) if isinstance(row, dict) else type(row).__name__
                    raise DataError(f"{path}: record {i} has no field {text_field!r} (has {keys})")
                yield row[text_field] or ""
    elif builder == "parquet":
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)
        if text_field not in pf.schema_arrow.names:
            raise DataError(f"{path}: no column {text_field!r} (has {pf.schema_arrow.names})")
        for batch in pf.iter_batches(columns=[text_field]):
            for text in batch.column(0).to_pylist():
                yield text or ""
    else:
        raise DataError(f"{path}: unknown builder {builder!r}")


def _prepend(first: str, f: io.TextIOBase) -> Iterator[str]:
    """Lines of ``f`` with ``first`` (already consumed) glued back onto the first line."""
    line = f.readline()
    yield first + line
    yield from f
