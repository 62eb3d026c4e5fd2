"""llmcore.data.shards.TokenShards: reading across shards, document ids, and every corruption
(truncated, bad token, wrong tokenizer, missing files) as a DataError naming the file."""

import json
import os

import numpy as np
import pytest

from llmcore.data import TokenShards, write_token_folder
from llmcore.errors import DataError

HASH = "a" * 64
VOCAB = 300


def make_docs(n, seed=0, vocab=VOCAB, eos=2):
    """n documents of 1..40 random ids in [4, vocab), each ending with eos."""
    rng = np.random.default_rng(seed)
    return [np.append(rng.integers(4, vocab, size=rng.integers(1, 40)), eos) for _ in range(n)]


@pytest.fixture
def folder(tmp_path):
    docs = make_docs(50)
    write_token_folder(str(tmp_path / "d"), {"train": docs, "val": docs[:5]},
                       tokenizer={"hash": HASH, "vocab_size": VOCAB, "eos_id": 2},
                       shard_tokens=100)
    return tmp_path / "d", docs


def test_read_crosses_shards(folder):
    path, docs = folder
    s = TokenShards(str(path), "train", expected_tokenizer_hash=HASH)
    flat = np.concatenate(docs)
    assert (s.num_tokens, s.num_docs, s.vocab_size) == (len(flat), 50, VOCAB)
    assert len(s.files) > 5 and s.manifest["dtype"] == "uint16"
    rng = np.random.default_rng(1)
    for _ in range(200):
        length = int(rng.integers(0, 250))
        start = int(rng.integers(0, len(flat) - length + 1))
        got = s.read(start, length)
        assert got.dtype == np.int64 and np.array_equal(got, flat[start:start + length])
    with pytest.raises(IndexError):
        s.read(len(flat) - 3, 4)


def test_doc_ids_at_document_boundaries(folder):
    path, docs = folder
    s = TokenShards(str(path))
    doc_of = np.concatenate([np.full(len(d), i) for i, d in enumerate(docs)])
    ends = np.cumsum([len(d) for d in docs])
    for start in [0, int(ends[0]) - 1, int(ends[0]), int(ends[10]) - 1, 17, 123]:
        got = s.doc_ids(start, 60)
        assert np.array_equal(got, doc_of[start:start + 60] - doc_of[start])
    # a window starting on a document's last token (its eos): [0, 1, 1, ...]
    assert s.doc_ids(int(ends[3]) - 1, 3).tolist()[:2] == [0, 1]


def test_truncated_shard(folder):
    path, _ = folder
    shard = path / "train" / "shard_00002.bin"
    shard.write_bytes(shard.read_bytes()[:-1])
    with pytest.raises(DataError, match=r"shard_00002\.bin has \d+ bytes.*truncated"):
        TokenShards(str(path))


def test_corrupt_token_is_found(folder):
    path, docs = folder
    s = TokenShards(str(path))
    first = json.loads((path / "manifest.json").read_text())["splits"]["train"]["shards"][0]
    start1 = first["num_tokens"]  # global offset of shard_00001
    data = bytearray((path / "train" / "shard_00001.bin").read_bytes())
    data[2 * 7:2 * 8] = np.uint16(65535).tobytes()  # token 7 of shard 1: id >= vocab
    (path / "train" / "shard_00001.bin").write_bytes(bytes(data))
    s = TokenShards(str(path))  # size check passes
    assert np.array_equal(s.read(0, start1), np.concatenate(docs)[:start1])
    with pytest.raises(DataError, match=r"shard_00001\.bin is corrupt: token 65535 at offset 7"):
        s.read(start1 - 5, 20)
    with pytest.raises(DataError, match=r"shard_00001\.bin"):
        s.check_window(0, s.num_tokens)
    with pytest.raises(DataError, match=r"shard_00001\.bin fails its sha256"):
        TokenShards(str(path), verify="full")


def test_other_tokenizer(folder):
    path, _ = folder
    with pytest.raises(DataError, match=f"made with tokenizer {HASH}, run uses {'b' * 64}"):
        TokenShards(str(path), expected_tokenizer_hash="b" * 64)


def test_missing_or_foreign_files(folder, tmp_path):
    path, _ = folder
    with pytest.raises(DataError, match="nowhere does not exist"):
        TokenShards(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"manifest\.json is missing"):
        TokenShards(str(tmp_path / "empty"))
    with pytest.raises(DataError, match="no split 'test'"):
        TokenShards(str(path), "test")
    manifest = json.loads((path / "manifest.json").read_text())
    (path / "manifest.json").write_text(json.dumps(dict(manifest, format="nanogpt-bin")))
    with pytest.raises(DataError, match="format 'nanogpt-bin', expected 'llmcore-tokens-v1'"):
        TokenShards(str(path))
    (path / "manifest.json").write_text(json.dumps(manifest))
    np.save(path / "train" / "shard_00001.docs.npy", np.array([0, 5, 3]))
    with pytest.raises(DataError, match=r"shard_00001\.docs\.npy is corrupt"):
        TokenShards(str(path))
    os.remove(path / "val" / "shard_00000.bin")
    with pytest.raises(DataError, match=r"val/shard_00000\.bin is missing"):
        TokenShards(str(path), "val")


def test_uint32_for_large_vocab(tmp_path):
    docs = make_docs(20, vocab=70_000)
    assert np.concatenate(docs).max() >= 2**16  # ids that uint16 would wrap
    m = write_token_folder(str(tmp_path / "big"), {"train": docs},
                           tokenizer={"hash": HASH, "vocab_size": 70_000})
    assert m["dtype"] == "uint32"
    shard = tmp_path / "big" / "train" / "shard_00000.bin"
    assert os.path.getsize(shard) == 4 * sum(map(len, docs))
    s = TokenShards(str(tmp_path / "big"), verify="full")
    assert np.array_equal(s.read(0, s.num_tokens), np.concatenate(docs))
