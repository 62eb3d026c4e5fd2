"""The checkpoint manifest's two digests: xxh3_128 chunks checked on every load, sha256 chunks
for a full check, and manifests of the older sha256-only format still verified."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest
import xxhash
from run_configs import tiny_config

from llmcore.cli.main import main
from llmcore.errors import CheckpointError
from llmcore.train import checkpoint, manifest
from llmcore.train.loop import Trainer

SMALL = 4096  # a chunk the size of a page (mmap offsets must be page-aligned), so files span several


@pytest.fixture
def folder(tmp_path, monkeypatch):
    """A checkpoint-like folder with a 3.5-chunk file, a nested file and an empty one."""
    monkeypatch.setattr(manifest, "CHUNK", SMALL)
    ckpt = tmp_path / "ckpt-000001"
    (ckpt / "deepspeed").mkdir(parents=True)
    (ckpt / "weights.bin").write_bytes(bytes(range(256)) * (SMALL * 7 // 512))
    (ckpt / "deepspeed" / "part.pt").write_bytes(b"partition" * 100)
    (ckpt / "empty").write_bytes(b"")
    manifest.write(ckpt)
    return ckpt


def flip_bit(path, offset):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x08
    path.write_bytes(bytes(data))


def as_v1(ckpt):
    """Rewrite the manifest as an older llmcore wrote it: sha256 chunks only."""
    body = json.loads((ckpt / manifest.MANIFEST).read_text())
    body = {"format": manifest.FORMAT_V1, "chunk_bytes": body["chunk_bytes"],
            "files": {n: {"bytes": e["bytes"], "sha256": e["sha256"]} for n, e in body["files"].items()}}
    (ckpt / manifest.MANIFEST).write_text(json.dumps(body))


def test_digests_are_the_chunks_of_each_file(folder):
    files = json.loads((folder / manifest.MANIFEST).read_text())["files"]
    assert sorted(files) == ["deepspeed/part.pt", "empty", "weights.bin"]
    data = (folder / "weights.bin").read_bytes()
    chunks = [data[i:i + SMALL] for i in range(0, len(data), SMALL)]
    assert len(chunks) == 4 and len(chunks[-1]) == SMALL // 2
    assert files["weights.bin"]["xxh3_128"] == [xxhash.xxh3_128(c).hexdigest() for c in chunks]
    assert files["weights.bin"]["sha256"] == [hashlib.sha256(c).hexdigest() for c in chunks]
    assert files["empty"] == {"bytes": 0, "xxh3_128": [xxhash.xxh3_128(b"").hexdigest()],
                              "sha256": [hashlib.sha256(b"").hexdigest()]}
    assert manifest.verify(folder) and manifest.verify(folder, full=True)


@pytest.mark.parametrize("name,offset", [("weights.bin", 2 * SMALL + 17), ("weights.bin", 7 * SMALL // 2 - 1),
                                         ("deepspeed/part.pt", 0)], ids=["middle-chunk", "last-byte", "nested"])
def test_one_bit_flip_is_refused_by_name(folder, name, offset):
    flip_bit(folder / name, offset)
    with pytest.raises(CheckpointError, match=rf"does not match its manifest\.json: {name} fails its xxh3_128 check"):
        manifest.verify(folder)
    with pytest.raises(CheckpointError, match=rf"{name} fails its xxh3_128 check.*{name} fails its sha256 check"):
        manifest.verify(folder, full=True)


def test_full_check_reads_the_sha256_chunks(folder):
    """A manifest whose sha256 list disagrees with the file (its xxh3 list intact): the fast
    check passes, the full one names the sha256 failure."""
    body = json.loads((folder / manifest.MANIFEST).read_text())
    body["files"]["weights.bin"]["sha256"][1] = hashlib.sha256(b"other").hexdigest()
    (folder / manifest.MANIFEST).write_text(json.dumps(body))
    assert manifest.verify(folder)
    with pytest.raises(CheckpointError, match=r"weights\.bin fails its sha256 check") as e:
        manifest.verify(folder, full=True)
    assert "xxh3_128" not in str(e.value)


def test_a_v1_manifest_still_verifies_with_sha256(folder):
    as_v1(folder)
    assert manifest.verify(folder) and manifest.verify(folder, full=True)
    flip_bit(folder / "weights.bin", 5)
    with pytest.raises(CheckpointError, match=r"weights\.bin fails its sha256 check"):
        manifest.verify(folder)


def test_manifest_missing_a_digest_list_is_named(folder):
    body = json.loads((folder / manifest.MANIFEST).read_text())
    del body["files"]["empty"]["xxh3_128"]
    (folder / manifest.MANIFEST).write_text(json.dumps(body))
    with pytest.raises(CheckpointError, match=r"entry 'empty' lacks `bytes` or a chunk list of `xxh3_128` and `sha256`"):
        manifest.verify(folder)


def test_resume_accepts_a_v1_checkpoint_and_the_cli_verifies(prepared, tmp_path, capsys):
    steps = ("data.seq_len=32", "train.micro_batch_size=2", "train.global_batch_size=4", "model.n_layers=2",
             "train.eval_batches=1")
    out = tmp_path / "run"
    Trainer(tiny_config(prepared, out, *steps, "train.max_steps=1")).fit()
    ckpt = checkpoint.resolve(out)
    assert main(["checkpoint", "verify", str(out), "--full"]) == 0
    assert "every file matches manifest.json (xxh3_128 and sha256)" in capsys.readouterr().out
    as_v1(ckpt)
    old = tmp_path / "old"
    shutil.copytree(ckpt, old)
    assert Trainer(tiny_config(prepared, out, *steps, "train.max_steps=2")).fit()["step"] == 2
    flip_bit(old / "optimizer.pt", 100)
    assert main(["checkpoint", "verify", str(old)]) == 2
    assert "optimizer.pt fails its sha256 check" in capsys.readouterr().err


def test_init_from_checks_only_the_weights_it_reads(prepared, tmp_path):
    """`train.init_from` reads the weight files alone: their manifest entries are checked (a flip
    is refused by name), while a corrupt optimizer file, or DeepSpeed pickles in a folder without
    a manifest, are never read and so do not stop it (the README's route for old DeepSpeed runs)."""
    steps = ("data.seq_len=32", "train.micro_batch_size=2", "train.global_batch_size=4", "model.n_layers=2",
             "train.eval_batches=1")
    src = tmp_path / "src"
    Trainer(tiny_config(prepared, src, *steps, "train.max_steps=1")).fit()
    ckpt = checkpoint.resolve(src)
    flip_bit(ckpt / "optimizer.pt", 100)
    start = [*steps, "train.max_steps=1", f"train.init_from={ckpt}"]
    assert Trainer(tiny_config(prepared, tmp_path / "a", *start)).fit()["step"] == 1
    (ckpt / "manifest.json").unlink()
    (ckpt / "deepspeed").mkdir()
    (ckpt / "deepspeed" / "mp_rank_00_model_states.pt").write_bytes(b"not a pickle we read")
    assert Trainer(tiny_config(prepared, tmp_path / "b", *start)).fit()["step"] == 1
    other = tmp_path / "other"
    Trainer(tiny_config(prepared, other, *steps, "train.max_steps=1")).fit()
    flip_bit(checkpoint.resolve(other) / "model.safetensors", 4000)
    with pytest.raises(CheckpointError, match="model.safetensors"):
        Trainer(tiny_config(prepared, tmp_path / "c", *steps, "train.max_steps=1",
                            f"train.init_from={checkpoint.resolve(other)}")).fit()
