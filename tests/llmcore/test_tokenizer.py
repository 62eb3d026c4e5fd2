"""llmcore.tokenizer: training, fixed special-token ids, exact round trips, files and errors."""

import gzip
import json
import os
import pickle

import numpy as np
import pytest

from llmcore.errors import TokenizerError
from llmcore.tokenizer import Tokenizer

CORPUS = os.path.join(os.path.dirname(__file__), "..", "..", "llmcore", "data", "corpus",
                      "jargon-4.4.7.txt.gz")


def write_corpus(path, n_docs=300, seed=0):
    """Paragraphs of pseudo-English (blank-line separated) with digits, commas and newlines."""
    rng = np.random.default_rng(seed)
    words = ["".join(rng.choice(list("etaoinshrdlucmfwyp"), size=rng.integers(1, 8)))
             for _ in range(200)]
    docs = []
    for _ in range(n_docs):
        lines = [" ".join(rng.choice(words, size=rng.integers(3, 12)))
                 + rng.choice([".", ",", " 1984.", "!"]) for _ in range(rng.integers(1, 4))]
        docs.append("\n".join(lines).capitalize())
    with open(path, "w") as f:
        f.write("\n\n".join(docs) + "\n")
    return docs


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "docs.txt"
    write_corpus(path)
    return str(path)


@pytest.fixture(scope="module")
def tok(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("tok") / "tok"
    return Tokenizer.train([corpus], str(out), 400, ["<pause>", "<harm>"], num_reserved=3)


def test_special_ids_fixed_and_recorded(tok):
    assert (tok.unk_id, tok.bos_id, tok.eos_id, tok.pad_id) == (0, 1, 2, 3)
    want = {"<pause>": 4, "<harm>": 5, "<reserved_0>": 6, "<reserved_1>": 7, "<reserved_2>": 8}
    assert tok.special_ids == want
    assert tok.vocab_size == 400
    with open(os.path.join(tok.path, "special_tokens.json")) as f:
        meta = json.load(f)
    assert meta == {"unk": 0, "bos": 1, "eos": 2, "pad": 3, **want, "vocab_size": 400,
                    "hash": tok.hash}
    assert tok.token_id("<harm>") == 5 and tok.token_id("eos") == 2
    # specials are matched in text and decode to their names; bos/eos/pad decode to nothing
    assert tok.encode("<pause>") == [4]
    assert tok.decode([1, 4, 2, 3, 5]) == "<pause><harm>"
    assert tok.encode("hi", bos=True, eos=True)[0] == 1 and tok.encode("hi", eos=True)[-1] == 2


@pytest.mark.parametrize("text", [
    "… naïve 日本 🙂\n\ttabs  double  spaces",
    "  leading and trailing  ",
    "a\n\n\nb\r\nc\x00d",
    "literal \u2581 marks\u2581\u2581 and <s></s><pad> as text",
    "1234567890 3.14159",
    "",
])
def test_round_trip_exact(tok, text):
    ids = tok.encode(text)
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text
    assert tok.encode_batch([text, "x"], eos=True) == [ids + [2], tok.encode("x") + [2]]


def test_round_trip_bundled_corpus(tmp_path):
    tok = Tokenizer.train([CORPUS], str(tmp_path / "tok"), 1000, ["<pause>"])
    with gzip.open(CORPUS, "rt", encoding="utf-8", newline="") as f:
        text = f.read()[:200_000]
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert len(ids) < len(text) / 2  # it learned merges, not just bytes


def test_deterministic_for_seed(corpus, tmp_path):
    kw = dict(vocab_size=400, special_tokens=["<pause>"], input_sentence_size=150)
    a = Tokenizer.train([corpus], str(tmp_path / "a"), seed=1, **kw)
    b = Tokenizer.train([corpus], str(tmp_path / "b"), seed=1, **kw)
    c = Tokenizer.train([corpus], str(tmp_path / "c"), seed=2, **kw)
    assert a.hash == b.hash and a.model_bytes == b.model_bytes
    assert c.hash != a.hash  # the seed picks the sampled sentences


def test_load_save_and_pickle(tok, tmp_path):
    loaded = Tokenizer.load(tok.path)
    assert loaded.hash == tok.hash and loaded.special_ids == tok.special_ids
    copy = pickle.loads(pickle.dumps(tok))
    text = "pickled tokenizers encode the same"
    assert copy.encode(text) == tok.encode(text) and copy.hash == tok.hash
    tok.save(str(tmp_path / "copy"))
    assert Tokenizer.load(str(tmp_path / "copy")).hash == tok.hash


@pytest.mark.parametrize("missing", ["tokenizer.model", "special_tokens.json"])
def test_load_names_missing_file(tok, tmp_path, missing):
    tok.save(str(tmp_path / "t"))
    os.remove(tmp_path / "t" / missing)
    with pytest.raises(TokenizerError, match=missing):
        Tokenizer.load(str(tmp_path / "t"))


def test_load_rejects_changed_ids(tok, tmp_path):
    tok.save(str(tmp_path / "t"))
    path = tmp_path / "t" / "special_tokens.json"
    meta = json.loads(path.read_text())
    meta["<pause>"], meta["<harm>"] = 5, 4
    path.write_text(json.dumps(meta))
    with pytest.raises(TokenizerError, match="<pause>.*id 5"):
        Tokenizer.load(str(tmp_path / "t"))


def test_unknown_token_lists_available(tok):
    with pytest.raises(TokenizerError, match=r"no special token '<mode_0>'.*<pause>"):
        tok.token_id("<mode_0>")


def test_refuses_non_empty_out_dir(corpus, tmp_path):
    out = tmp_path / "tok"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(TokenizerError, match="not empty"):
        Tokenizer.train([corpus], str(out), 400)
    assert (out / "keep.txt").read_text() == "mine"
    tok = Tokenizer.train([corpus], str(out), 400, overwrite=True)
    assert sorted(os.listdir(out)) == ["special_tokens.json", "tokenizer.model"]
    assert Tokenizer.load(str(out)).hash == tok.hash
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p or ".old-" in p]


def test_bad_inputs(corpus, tmp_path):
    with pytest.raises(TokenizerError, match="vocab_size=50"):
        Tokenizer.train([corpus], str(tmp_path / "t"), 50)
    with pytest.raises(TokenizerError, match="listed twice"):
        Tokenizer.train([corpus], str(tmp_path / "t"), 400, ["<a>", "<a>"])
    from llmcore.errors import DataError
    with pytest.raises(DataError, match="nope.txt"):
        Tokenizer.train([str(tmp_path / "nope.txt")], str(tmp_path / "t"), 400)
    assert not os.path.exists(tmp_path / "t")


def test_train_on_jsonl(tmp_path):
    rows = [{"text": f"record number {i} says hello\nwith a second line", "id": i}
            for i in range(200)]
    with gzip.open(tmp_path / "d.jsonl.gz", "wt") as f:
        f.write("\n".join(json.dumps(r) for r in rows))
    tok = Tokenizer.train([str(tmp_path)], str(tmp_path / "tok"), 360)
    assert tok.decode(tok.encode(rows[7]["text"])) == rows[7]["text"]
    assert len(tok.encode("record number")) <= 3  # learned from the jsonl text
