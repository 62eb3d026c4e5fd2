"""llmcore.data.prepare: text/jsonl/parquet -> shards, manifest, document split, atomic output."""

import gzip
import hashlib
import json
import os
from collections import Counter

import numpy as np
import pytest

from llmcore.data.prepare import prepare
from llmcore.errors import DataError
from llmcore.tokenizer import Tokenizer

CORPUS = os.path.join(os.path.dirname(__file__), "..", "..", "llmcore", "data", "corpus",
                      "jargon-4.4.7.txt.gz")


def make_docs(n, seed=0):
    """n distinct documents of pseudo-English, some of several lines (no blank lines)."""
    rng = np.random.default_rng(seed)
    words = ["".join(rng.choice(list("etaoinshrdlucmfwy"), size=rng.integers(1, 7)))
             for _ in range(150)]
    return [f"Doc {i}: " + "\n".join(" ".join(rng.choice(words, size=rng.integers(2, 10)))
                                     for _ in range(rng.integers(1, 4))) for i in range(n)]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    root = tmp_path_factory.mktemp("tok")
    (root / "train.txt").write_text("\n\n".join(make_docs(300, seed=99)))
    return Tokenizer.train([str(root / "train.txt")], str(root / "tok"), 400)


@pytest.fixture
def text_files(tmp_path):
    """60 documents over three text files (one gzipped), paragraph-separated."""
    docs = make_docs(60)
    paths = [tmp_path / "in" / "a.txt", tmp_path / "in" / "b.txt.gz", tmp_path / "in" / "c.md"]
    paths[0].parent.mkdir()
    for i, p in enumerate(paths):
        text = "\n\n".join(docs[i * 20:(i + 1) * 20]) + "\n"
        if p.suffix == ".gz":
            with gzip.open(p, "wt") as f:
                f.write(text)
        else:
            p.write_text(text)
    return [str(p) for p in paths], docs


def read_split(out, split):
    """Every document of a prepared split as a token list, in file order."""
    manifest = json.loads((out / "manifest.json").read_text())
    docs = []
    for sh in manifest["splits"][split]["shards"]:
        tokens = np.fromfile(out / sh["file"], dtype=manifest["dtype"])
        starts = np.load(out / sh["docs_file"])
        ends = list(starts[1:]) + [len(tokens)]
        docs += [tokens[s:e].tolist() for s, e in zip(starts, ends)]
    return docs


def test_manifest_shards_and_documents(tok, text_files, tmp_path):
    files, docs = text_files
    out = tmp_path / "data"
    m = prepare(files, tok, str(out), val_fraction=0.1, shard_tokens=200, progress=False)
    assert m == json.loads((out / "manifest.json").read_text())
    assert m["format"] == "llmcore-tokens-v1" and m["dtype"] == "uint16"
    assert m["tokenizer"]["hash"] == tok.hash and m["tokenizer"]["vocab_size"] == 400
    assert m["tokenizer"]["eos_id"] == 2
    assert [i["path"] for i in m["inputs"]] == [os.path.abspath(f) for f in files]
    assert m["settings"]["sample_by"] == "paragraph" and m["settings"]["val_fraction"] == 0.1
    train, val = read_split(out, "train"), read_split(out, "val")
    assert len(val) == 6 and len(train) == 54  # round(0.1 * 60) whole documents
    for split, got in (("train", train), ("val", val)):
        s = m["splits"][split]
        assert s["num_docs"] == len(got) and s["num_tokens"] == sum(map(len, got))
        for sh in s["shards"]:
            data = (out / sh["file"]).read_bytes()
            assert hashlib.sha256(data).hexdigest() == sh["sha256"]
            assert len(data) == 2 * sh["num_tokens"] <= 2 * 200  # shards respect the limit
    assert len(m["splits"]["train"]["shards"]) > 1
    # each document: its text's ids + eos, never cut by a shard; train and val partition them
    for d in train + val:
        assert d[-1] == tok.eos_id and tok.eos_id not in d[:-1]
    decoded = Counter(tok.decode(d[:-1]) for d in train + val)
    assert decoded == Counter(docs)
    assert not set(tok.decode(d) for d in train) & set(tok.decode(d) for d in val)
    assert sorted(os.listdir(tmp_path)) == ["data", "in"]  # no temp or cache folders left


def test_split_deterministic_for_seed(tok, text_files, tmp_path):
    files, _ = text_files
    runs = [prepare(files, tok, str(tmp_path / f"d{i}"), val_fraction=0.2, seed=s,
                    progress=False)["splits"] for i, s in enumerate([5, 5, 6])]
    assert runs[0] == runs[1]
    assert runs[0]["val"]["shards"][0]["sha256"] != runs[2]["val"]["shards"][0]["sha256"]


def test_num_proc_gives_identical_shards(tok, text_files, tmp_path):
    files, _ = text_files
    one = prepare(files, tok, str(tmp_path / "p1"), progress=False)
    two = prepare(files, tok, str(tmp_path / "p2"), num_proc=2, progress=False)
    assert one["splits"] == two["splits"]
    assert one["splits"]["val"]["num_docs"] == 1  # 1% of 60 rounds to 0: at least one


def test_jsonl_parquet_directory_and_empty_docs(tok, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    rows = [{"body": t, "n": i} for i, t in enumerate(["first record", "", "  \n", "third one"])]
    with gzip.open(src / "a.jsonl.gz", "wt") as f:
        f.write("\n".join(json.dumps(r) for r in rows) + "\n")
    pq.write_table(pa.table({"body": ["parquet row", "another row"]}), src / "sub" / "b.parquet")
    (src / "notes.csv").write_text("ignored: unknown suffix in a directory")
    m = prepare([str(src)], tok, str(tmp_path / "out"), text_field="body", val_fraction=0.0,
                progress=False)
    got = [tok.decode(d[:-1]) for d in read_split(tmp_path / "out", "train")]
    assert got == ["first record", "third one", "parquet row", "another row"]
    assert m["skipped_empty_docs"] == 2 and m["splits"]["val"]["num_docs"] == 0
    with pytest.raises(DataError, match="no field 'text'"):
        prepare([str(src / "a.jsonl.gz")], tok, str(tmp_path / "bad"), progress=False)
    assert not os.path.exists(tmp_path / "bad")
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]  # failure left nothing behind


@pytest.mark.parametrize("sample_by,expected", [
    ("line", ["one", "two", "three", "four"]),
    ("paragraph", ["one\ntwo", "three\nfour"]),
    ("document", ["one\ntwo\n\nthree\nfour\n"]),
])
def test_sample_by(tok, tmp_path, sample_by, expected):
    (tmp_path / "t.txt").write_text("one\ntwo\n\nthree\nfour\n")
    prepare([str(tmp_path / "t.txt")], tok, str(tmp_path / "o"), sample_by=sample_by,
            val_fraction=0.0, progress=False)
    assert [tok.decode(d) for d in read_split(tmp_path / "o", "train")] == expected


def test_errors_and_no_overwrite(tok, text_files, tmp_path):
    files, _ = text_files
    with pytest.raises(DataError, match="missing.txt does not exist"):
        prepare(files + [str(tmp_path / "missing.txt")], tok, str(tmp_path / "x"), progress=False)
    with pytest.raises(DataError, match="unknown format"):
        prepare([str(tmp_path / "in")] + [__file__], tok, str(tmp_path / "x"), progress=False)
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious").write_text("keep")
    with pytest.raises(DataError, match="exists"):
        prepare(files, tok, str(out), progress=False)
    assert os.listdir(out) == ["precious"]
    prepare(files, tok.path, str(out), overwrite=True, progress=False)  # tokenizer by path
    assert sorted(os.listdir(out)) == ["manifest.json", "train", "val"]


def test_bundled_corpus(tmp_path):
    tok = Tokenizer.train([CORPUS], str(tmp_path / "tok"), 1000)
    m = prepare([CORPUS], tok, str(tmp_path / "jargon"), progress=False)
    train, val = m["splits"]["train"], m["splits"]["val"]
    assert train["num_docs"] > 10_000 and val["num_docs"] == round(0.01 * (train["num_docs"]
                                                                           + val["num_docs"]))
    assert 300_000 < train["num_tokens"] < 1_000_000
    first = read_split(tmp_path / "jargon", "train")[0]
    assert tok.decode(first) == "                                The Jargon File"
