"""Side-cars beside token shards: a position side-car proves the batch field sits with each
label across shard boundaries, mixture sources and resume; per-document rows per token;
provenance checked against the raw shard files; the resumable writer; every named error."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from llmcore.data import (PackedLoader, Sidecar, SidecarWriter, TokenShards, eval_batches, write_sidecar,
                          write_token_folder)
from llmcore.errors import ConfigError, DataError

HASH = "e" * 64
VOCAB, EOS, T, B = 300, 2, 16, 8
CARS = ["pos", "topk", "docno"]


def make_docs(n, seed):
    """n documents of 1..40 random ids in [4, VOCAB), each ending with eos."""
    rng = np.random.default_rng(seed)
    return [np.append(rng.integers(4, VOCAB, size=rng.integers(1, 40)), EOS) for _ in range(n)]


def pos_of(shards, k):
    """Token side-car: every token's position in its split's stream."""
    start, n, _, _ = shards.shard_span(k)
    return np.arange(start, start + n)


def topk_of(shards, k):
    """Token side-car of width 3 (a top-k cache's shape), computed from the shard's tokens."""
    start, n, _, _ = shards.shard_span(k)
    return shards.read(start, n)[:, None] * 3 + np.arange(3)


def docno_of(shards, k):
    """Document side-car: 3 * (document ordinal in the split) + 1."""
    _, _, first, n = shards.shard_span(k)
    return np.arange(first, first + n) * 3 + 1


def folder(root, name, n_docs, seed, docs=None, tok_hash=HASH, cars=True):
    path = str(root / name)
    docs = docs if docs is not None else make_docs(n_docs, seed)
    write_token_folder(path, {"train": docs, "val": docs[: n_docs // 4]},
                       tokenizer={"hash": tok_hash, "vocab_size": VOCAB}, shard_tokens=200)
    if cars:
        write_sidecar(path, "pos", pos_of, kind="token", dtype=np.uint32)
        write_sidecar(path, "topk", topk_of, kind="token", dtype=np.uint16, shape=(3,), made_from={"k": 3})
        write_sidecar(path, "docno", docno_of, kind="doc", dtype=np.int32)
    return path


@pytest.fixture
def data(tmp_path):
    return folder(tmp_path, "a", 100, seed=1), folder(tmp_path, "b", 40, seed=2)


def check_rows(batch, shards_by_index):
    """Every field row sits with the label it is shifted to; returns how many windows cross a
    shard boundary."""
    crossing = 0
    for b in range(batch["input_ids"].shape[0]):
        s = shards_by_index[int(batch["source_index"][b])]
        pos = batch["pos"][b]
        start = int(pos[0]) - 1  # window start: pos is aligned with labels, tokens 1..T
        assert torch.equal(pos, torch.arange(start + 1, start + T + 1))
        assert torch.equal(batch["labels"][b], torch.from_numpy(s.read(start + 1, T)))
        assert torch.equal(batch["topk"][b], batch["labels"][b][:, None] * 3 + torch.arange(3))
        assert torch.equal(batch["docno"][b], torch.from_numpy(s.doc_index(start + 1, T) * 3 + 1).int())
        starts = [s.shard_span(k)[0] for k in range(len(s.files))]
        crossing += any(start < x <= start + T for x in starts)
    return crossing


def test_fields_sit_with_their_labels_across_shards_sources_and_resume(data):
    a, b = (TokenShards(p) for p in data)

    def make():
        return PackedLoader([("a", a, 1.0), ("b", b, 2.0)], T, B, seed=3, sidecars=CARS)

    loader = make()
    batches = [loader.next_batch() for _ in range(12)]
    assert batches[0]["topk"].shape == (B, T, 3) and batches[0]["topk"].dtype == torch.int64
    assert batches[0]["docno"].dtype == torch.int32 and batches[0]["pos"].dtype == torch.int64
    assert sum(check_rows(x, [a, b]) for x in batches) >= 3  # some windows span two shard files
    assert {int(i) for x in batches for i in x["source_index"]} == {0, 1}
    first = make()
    for _ in range(5):
        first.next_batch()
    state = json.loads(json.dumps(first.state_dict()))
    plain = PackedLoader([("a", a, 1.0), ("b", b, 2.0)], T, B, seed=3)
    for _ in range(5):
        plain.next_batch()
    assert state == json.loads(json.dumps(plain.state_dict()))  # side-cars add no loader state
    resumed = make()
    resumed.load_state_dict(state)
    for want in batches[5:]:
        got = resumed.next_batch()
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)


def test_provenance_points_at_the_raw_shard(data):
    a, b = (TokenShards(p) for p in data)
    loader = PackedLoader([("a", a, 1.0), ("b", b, 1.0)], T, 32, seed=0, sidecars=["pos"])
    batch = loader.next_batch()
    mid_doc = 0
    for r in range(32):
        path = data[int(batch["source_index"][r])]
        manifest = json.loads(Path(path, "manifest.json").read_text())
        d, off = int(batch["doc_index"][r]), int(batch["doc_offset"][r])
        base = tokens_before = 0
        for entry in manifest["splits"]["train"]["shards"]:  # find document d by hand
            if d < base + entry["num_docs"]:
                break
            base += entry["num_docs"]
            tokens_before += entry["num_tokens"]
        raw = np.fromfile(os.path.join(path, entry["file"]), dtype=manifest["dtype"])
        starts = np.load(os.path.join(path, entry["docs_file"]))
        doc_start = int(starts[d - base])
        doc_end = int(starts[d - base + 1]) if d - base + 1 < len(starts) else len(raw)
        assert 0 <= off < doc_end - doc_start
        assert int(raw[doc_start + off]) == int(batch["input_ids"][r, 0])
        assert tokens_before + doc_start + off == int(batch["pos"][r, 0]) - 1
        mid_doc += off > 0
    assert mid_doc > 0


def test_eval_batches_read_the_same_rows(data):
    val = TokenShards(data[0], "val")
    batches = list(eval_batches(val, T, 3, sidecars=CARS))
    pos = torch.cat([x["pos"] for x in batches])
    n = pos.shape[0]
    assert torch.equal(pos, torch.arange(1, n * T + 1).reshape(n, T))  # windows i*T .. i*T + T
    assert all(check_rows(x, [val]) >= 0 for x in batches)


def tree(path):
    """{relative file name: bytes} of every file under ``path``."""
    return {str(f.relative_to(path)): f.read_bytes() for f in Path(path).rglob("*") if f.is_file()}


def test_interrupted_write_resumes_and_ends_with_identical_files(tmp_path):
    done = folder(tmp_path, "done", 60, seed=4, cars=False)
    shutil.copytree(done, tmp_path / "cut")
    cut = str(tmp_path / "cut")
    write_sidecar(done, "topk", topk_of, kind="token", dtype=np.uint16, shape=(3,))
    calls = []

    def flaky(shards, k):
        calls.append((shards.split, k))
        if (shards.split, k) == ("train", 2):
            raise KeyboardInterrupt  # the job is killed while computing shard 2
        return topk_of(shards, k)

    with pytest.raises(KeyboardInterrupt):
        write_sidecar(cut, "topk", flaky, kind="token", dtype=np.uint16, shape=(3,))
    n_train = len(TokenShards(cut).files)
    with pytest.raises(DataError, match=rf"side-car 'topk'.*incomplete: shards \[2, 3.*of {n_train} not written"):
        Sidecar(TokenShards(cut), "topk")
    calls.clear()
    write_sidecar(cut, "topk", lambda s, k: calls.append((s.split, k)) or topk_of(s, k),
                  kind="token", dtype=np.uint16, shape=(3,))
    assert [k for s, k in calls if s == "train"] == list(range(2, n_train))  # shards 0, 1 skipped
    assert [s for s, _ in calls].count("val") == len(TokenShards(cut, "val").files)
    assert tree(os.path.join(cut, "sidecars")) == tree(os.path.join(done, "sidecars"))
    calls.clear()
    write_sidecar(cut, "topk", lambda s, k: calls.append(k), kind="token", dtype=np.uint16, shape=(3,))
    assert calls == []  # complete: nothing to do
    with pytest.raises(DataError, match=r"exists with other settings dtype: 'uint16' there, 'int32' asked"):
        write_sidecar(cut, "topk", topk_of, kind="token", dtype=np.int32, shape=(3,))
    with pytest.raises(DataError, match=r"exists with other settings made_from"):
        write_sidecar(cut, "topk", topk_of, kind="token", dtype=np.uint16, shape=(3,), made_from={"k": 5})
    write_sidecar(cut, "topk", topk_of, kind="token", dtype=np.int32, shape=(3,), overwrite=True)
    assert Sidecar(TokenShards(cut), "topk").dtype == np.int32


def test_writer_refuses_wrong_arrays(tmp_path):
    path = folder(tmp_path, "w", 30, seed=5, cars=False)
    w = SidecarWriter(path, "harm", kind="doc", dtype=np.float16)
    shards = TokenShards(path)
    with pytest.raises(DataError, match=r"side-car 'harm', shard train/shard_00000.bin: array of shape \[5\].*"
                                        r"length mismatch"):
        w.write("train", 0, np.zeros(5))
    assert w.pending("train") == list(range(len(shards.files))) and not w.complete
    t = SidecarWriter(path, "ids", kind="token", dtype=np.uint16)
    with pytest.raises(DataError, match="do not fit uint16"):
        t.write("train", 0, pos_of(shards, 0) - 1)  # -1 would wrap
    with pytest.raises(ConfigError, match="collides with the batch key 'labels'"):
        SidecarWriter(path, "labels", kind="token", dtype=np.int32)


def test_reader_errors_name_the_sidecar_the_shard_and_the_fault(data, tmp_path):
    path = data[0]
    shards = TokenShards(path)
    with pytest.raises(DataError, match=r"side-car 'nope' does not exist .*available: \['docno', 'pos', 'topk'\]"):
        PackedLoader([("a", shards, 1.0)], T, B, seed=0, sidecars=["nope"])
    with pytest.raises(ConfigError, match="collides with the batch key 'doc_ids'"):
        PackedLoader([("a", shards, 1.0)], T, B, seed=0, sidecars=["doc_ids"])
    with pytest.raises(DataError, match="twice"):
        PackedLoader([("a", shards, 1.0)], T, B, seed=0, sidecars=["pos", "pos"])
    car = os.path.join(path, "sidecars", "pos", "train")

    # made from different shards: same layout, one token of the first document changed
    docs = make_docs(100, seed=1)
    docs[0] = docs[0].copy()
    docs[0][0] = 5 if docs[0][0] != 5 else 6
    other = folder(tmp_path, "other", 100, seed=1, docs=docs, cars=False)
    shutil.copytree(os.path.join(path, "sidecars"), os.path.join(other, "sidecars"))
    with pytest.raises(DataError, match=r"side-car 'pos' .*shard train/shard_00000.bin: made from different shards"):
        Sidecar(TokenShards(other), "pos")
    retok = folder(tmp_path, "tok", 100, seed=1, tok_hash="f" * 64, cars=False)
    shutil.copytree(os.path.join(path, "sidecars"), os.path.join(retok, "sidecars"))
    with pytest.raises(DataError, match=f"side-car 'pos' of .* was made from data of tokenizer {HASH}"):
        Sidecar(TokenShards(retok), "pos")

    # checksum: same size, one flipped byte -- found with verify=full only
    f0 = Path(car, "shard_00000.npy")
    flipped = bytearray(f0.read_bytes())
    flipped[-1] ^= 1
    f0.write_bytes(bytes(flipped))
    Sidecar(shards, "pos")
    with pytest.raises(DataError, match=r"side-car 'pos' .*shard train/shard_00000.bin: .*fails its sha256"):
        Sidecar(TokenShards(path, verify="full"), "pos")

    # length mismatch: a well-formed file one row short
    np.save(os.path.join(car, "shard_00001.npy"), pos_of(shards, 1)[:-1].astype(np.uint32))
    with pytest.raises(DataError, match=r"side-car 'pos' .*shard train/shard_00001.bin: .* rows, the shard has "
                                        r"\d+ tokens: length mismatch"):
        Sidecar(shards, "pos")
    np.save(os.path.join(car, "shard_00001.npy"), pos_of(shards, 1).astype(np.uint32))

    # truncated: bytes cut off the end
    f2 = Path(car, "shard_00002.npy")
    raw = f2.read_bytes()
    f2.write_bytes(raw[:-3])
    with pytest.raises(DataError, match=r"side-car 'pos' .*shard train/shard_00002.bin: .*truncated"):
        Sidecar(shards, "pos")
    f2.write_bytes(raw[:40])  # not even a whole header
    with pytest.raises(DataError, match=r"shard_00002.bin: .*no readable .npy header"):
        PackedLoader([("a", shards, 1.0)], T, B, seed=0, sidecars=["pos"])
    f2.write_bytes(raw)
    Sidecar(shards, "pos")


def test_sources_must_agree_on_a_sidecars_layout(data):
    a, b = (TokenShards(p) for p in data)
    write_sidecar(data[1], "pos", pos_of, kind="token", dtype=np.int64, overwrite=True)
    with pytest.raises(DataError, match=r"side-car 'pos' differs between sources 'a' \(token, uint32.*'b' "
                                        r"\(token, int64"):
        PackedLoader([("a", a, 1.0), ("b", b, 1.0)], T, B, seed=0, sidecars=["pos"])
    # a side-car written for the train split only cannot serve validation windows
    write_sidecar(data[0], "train_only", docno_of, kind="doc", dtype=np.int32, splits=["train"])
    with pytest.raises(DataError, match=r"side-car 'train_only' of .* has no split 'val' \(has \['train'\]\)"):
        list(eval_batches(TokenShards(data[0], "val"), T, 4, sidecars=["train_only"]))


def ragged_len_of(shards, k):
    """Row lengths of the ragged side-cars below: token id % 4 (0..3 values per token)."""
    start, n, _, _ = shards.shard_span(k)
    return (shards.read(start, n) % 4).astype(np.uint8)


def ragged_of(shards, k, scale=3):
    """Flat values of a ragged side-car of width 3: row j holds tok * scale + i for i < tok % 4."""
    start, n, _, _ = shards.shard_span(k)
    tok = shards.read(start, n)
    return np.concatenate([tok[j] * scale + np.arange(tok[j] % 4) for j in range(n)]).astype(np.int64)


def ragged_folder(tmp_path, name="r"):
    path = folder(tmp_path, name, 100, seed=1, cars=False)
    write_sidecar(path, "n", ragged_len_of, kind="token", dtype=np.uint8)
    for car, scale, dtype in (("vals", 3, np.uint16), ("half", 1, np.uint8)):
        write_sidecar(path, car, lambda s, k, sc=scale: ragged_of(s, k, sc) % 256 if sc == 1 else ragged_of(s, k),
                      kind="token", dtype=dtype, shape=(3,), fill=7, layout="ragged", lengths="n")
    return path


def test_ragged_sidecar_reads_back_padded_rows_with_their_labels_across_shards_and_resume(tmp_path):
    path = ragged_folder(tmp_path)
    meta = json.loads(Path(path, "sidecars", "vals", "sidecar.json").read_text())
    assert meta["layout"] == "ragged" and meta["lengths"] == "n" and meta["shape"] == [3]
    assert "layout" not in json.loads(Path(path, "sidecars", "n", "sidecar.json").read_text())  # dense as before
    shards = TokenShards(path)
    entry = meta["splits"]["train"]["shards"][1]
    assert entry["values"] == int(ragged_len_of(shards, 1).sum()) < 3 * shards.shard_span(1)[1]

    def make():
        return PackedLoader([("a", shards, 1.0)], T, B, seed=3, sidecars=["vals", "half"])

    loader = make()
    batches = [loader.next_batch() for _ in range(8)]
    for x in batches:
        lab = x["labels"]
        used = torch.arange(3) < (lab % 4)[..., None]
        want = torch.where(used, lab[..., None] * 3 + torch.arange(3), torch.full_like(used, 7, dtype=torch.long))
        assert x["vals"].shape == (B, T, 3) and torch.equal(x["vals"], want)
        assert torch.equal(x["half"], torch.where(used, (lab[..., None] + torch.arange(3)) % 256, want))
    # every window read directly, crossing shard boundaries included, equals the row-by-row reference
    car = Sidecar(shards, "vals")
    for start in [0, *(shards.shard_span(k)[0] - 5 for k in range(1, len(shards.files)))]:
        got = car.read(start, 11)
        tok = shards.read(start, 11)
        ref = np.full((11, 3), 7)
        for j, t in enumerate(tok):
            ref[j, : t % 4] = t * 3 + np.arange(t % 4)
        assert np.array_equal(got, ref), start
    resumed = make()
    first = make()
    for _ in range(3):
        first.next_batch()
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
    for want in batches[3:]:
        assert torch.equal(resumed.next_batch()["vals"], want["vals"])


def test_ragged_sidecar_errors_name_the_fault(tmp_path):
    path = folder(tmp_path, "e", 60, seed=2, cars=False)
    shards = TokenShards(path)
    with pytest.raises(ValueError, match="ragged layout needs lengths"):
        SidecarWriter(path, "vals", kind="token", dtype=np.uint16, shape=(3,), fill=0, layout="ragged")
    with pytest.raises(ValueError, match="kind 'token' with shape \\[width\\]"):
        SidecarWriter(path, "vals", kind="doc", dtype=np.uint16, shape=(3,), fill=0, layout="ragged", lengths="n")
    w = SidecarWriter(path, "vals", kind="token", dtype=np.uint16, shape=(3,), fill=0, layout="ragged", lengths="n")
    with pytest.raises(DataError, match="its lengths side-car 'n' has no shard 0 of split 'train' yet"):
        w.write("train", 0, ragged_of(shards, 0))
    n = SidecarWriter(path, "n", kind="token", dtype=np.uint8)
    for k in range(len(shards.files)):
        n.write("train", k, ragged_len_of(shards, k))
    with pytest.raises(DataError, match=r"side-car 'vals', shard train/shard_00000.bin: flat values of shape "
                                        r"\[\d+\], its lengths 'n' add up to \[\d+\]: length mismatch"):
        w.write("train", 0, ragged_of(shards, 0)[:-1])
    for k in range(len(shards.files)):
        w.write("train", k, ragged_of(shards, k))
    assert w.pending("train") == []
    Sidecar(shards, "vals")
    # lengths rewritten afterwards (other values): the reader refuses, the writer has the shard pending again
    n.write("train", 1, np.minimum(ragged_len_of(shards, 1) + 1, 3).astype(np.uint8))
    with pytest.raises(DataError, match=r"side-car 'vals' .*shard train/shard_00001.bin: written against lengths 'n' "
                                        r"of sha256 \w+, that side-car's shard now has sha256 \w+: made from other"):
        Sidecar(shards, "vals")
    assert w.pending("train") == [1]
    wide = SidecarWriter(path, "wide", kind="token", dtype=np.uint16, shape=(2,), fill=0, layout="ragged",
                         lengths="n")
    with pytest.raises(DataError, match="hold a row of 3 values, the width is 2"):
        wide.write("train", 1, np.zeros(int(np.minimum(ragged_len_of(shards, 1) + 1, 3).sum())))
    with pytest.raises(DataError, match=r"exists with other settings lengths: 'n' there, 'm' asked"):
        SidecarWriter(path, "vals", kind="token", dtype=np.uint16, shape=(3,), fill=0, layout="ragged", lengths="m")
