"""SFT data (prompt/answer jsonl): answer-only loss, rank split, resume, errors; SFT training."""

import json

import numpy as np
import pytest
import torch

from llmcore.data.sft import SFTLoader, read_tasks
from llmcore.errors import ConfigError, DataError
from llmcore.tokenizer import Tokenizer


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def task_rows(n, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        a, b = rng.integers(0, 10, 2)
        rows.append({"prompt": f"Count: {a} plus {b} =", "answer": f" {a + b}"})
    return rows


@pytest.fixture(scope="module")
def tok(prepared):
    return Tokenizer.load(str(prepared / "tokenizer"))


def test_loss_only_on_answer_and_eos(tmp_path, tok):
    path = write_jsonl(tmp_path / "t.jsonl", [{"prompt": "The hacker", "answer": " reads the file."}])
    batch = SFTLoader(str(path), tok, 32, 1, seed=0).next_batch()
    p, a = tok.encode("The hacker"), tok.encode(" reads the file.")
    labels = batch["labels"][0]
    supervised = labels[labels != -100].tolist()
    assert supervised == a + [tok.eos_id]
    assert batch["input_ids"][0, :len(p)].tolist() == p
    assert (labels[: len(p) - 1] == -100).all()


def test_ranks_split_global_batch_and_resume(tmp_path, tok):
    path = str(write_jsonl(tmp_path / "t.jsonl", task_rows(10)))
    full = SFTLoader(path, tok, 24, 4, seed=3)
    r0, r1 = (SFTLoader(path, tok, 24, 4, seed=3, rank=r, world_size=2) for r in (0, 1))
    for _ in range(4):  # crosses an epoch (10 examples, 4 per step)
        g, a, b = full.next_batch(), r0.next_batch(), r1.next_batch()
        assert torch.equal(g["input_ids"][0::2], a["input_ids"]) and torch.equal(g["input_ids"][1::2], b["input_ids"])
    state = full.state_dict()
    again = SFTLoader(path, tok, 24, 4, seed=3)
    again.load_state_dict(json.loads(json.dumps(state)))
    assert torch.equal(again.next_batch()["labels"], full.next_batch()["labels"])


def test_errors_name_file_and_line(tmp_path, tok):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "answer": "b"}\n{"prompt": "a"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: missing field"):
        read_tasks(str(bad))
    with pytest.raises(DataError, match="does not exist"):
        read_tasks(str(tmp_path / "missing.jsonl"))
    long = write_jsonl(tmp_path / "long.jsonl", [{"prompt": "x " * 100, "answer": "y"}])
    with pytest.raises(DataError, match="exceed data.seq_len"):
        SFTLoader(str(long), tok, 16, 1, seed=0)


def test_sft_training_learns_the_task(prepared, tmp_path):
    from llmcore.config.load import load_run_config
    from llmcore.train.loop import Trainer

    train = write_jsonl(tmp_path / "train.jsonl", task_rows(400))
    val = write_jsonl(tmp_path / "val.jsonl", task_rows(40, seed=1))
    cfg = load_run_config(None, [
        "data.format=sft", f"data.path={train}", f"data.val_path={val}", f"data.tokenizer={prepared / 'tokenizer'}",
        "data.seq_len=24", f"train.out_dir={tmp_path / 'run'}", "train.max_steps=60", "train.micro_batch_size=16",
        "train.global_batch_size=16", "train.progress=false", "optim.lr=3e-3", "schedule.warmup_steps=5"])
    trainer = Trainer(cfg)
    before = trainer.evaluate()["val_loss"]
    after = trainer.fit()["val_loss"]
    assert after < 0.5 * before
    with pytest.raises(ConfigError, match="needs data.tokenizer"):
        load_run_config(None, ["data.format=sft", f"data.path={train}"])


def test_reverse_windows(prepared, tmp_path):
    from llmcore.config.load import load_run_config
    from llmcore.train.loop import Trainer

    args = [f"data.path={prepared}", "data.seq_len=32", f"train.out_dir={tmp_path}/r", "train.progress=false"]
    fwd = Trainer(load_run_config(None, args)).loader.next_batch()
    rev = Trainer(load_run_config(None, args + ["data.reverse=true"])).loader.next_batch()
    # Reversed window r = tokens[::-1]: inputs r[:-1] are the forward labels flipped.
    assert torch.equal(rev["input_ids"], fwd["labels"].flip(1))
    assert torch.equal(rev["labels"], fwd["input_ids"].flip(1))


def test_extra_fields_reach_the_batch(tmp_path, tok):
    from llmcore.data.sft import sft_eval_batches

    rows = [{"prompt": f"Count: {i}", "answer": f" {i + 1}", "harm": i, "w": i / 4, "vec": [i, i + 0.5]}
            for i in range(6)]
    path = str(write_jsonl(tmp_path / "x.jsonl", rows))
    fields = ["harm", "w", "vec"]
    batch = SFTLoader(path, tok, 16, 6, seed=1, fields=fields).next_batch()
    assert batch["harm"].dtype == torch.int64 and batch["harm"].shape == (6,)
    assert batch["w"].dtype == torch.float32 and batch["vec"].shape == (6, 2)
    # doc_index is the example's ordinal in the file: each row carries its own line's values
    i = batch["doc_index"]
    assert sorted(i.tolist()) == list(range(6)) and (batch["source_index"] == 0).all()
    assert torch.equal(batch["harm"], i) and torch.equal(batch["w"], i.float() / 4)
    assert torch.equal(batch["vec"], torch.stack([i.float(), i.float() + 0.5], 1))
    for r in range(6):
        p = tok.encode(rows[int(i[r])]["prompt"])
        assert batch["input_ids"][r, :len(p)].tolist() == p and int(batch["prompt_len"][r]) == len(p)
    half = SFTLoader(path, tok, 16, 6, seed=1, rank=1, world_size=2, fields=fields).next_batch()
    assert all(torch.equal(half[k], batch[k][1::2]) for k in batch)
    (ev,) = sft_eval_batches(path, tok, 16, 8, fields=fields)
    assert ev["harm"].tolist() == list(range(6)) and ev["doc_index"].tolist() == list(range(6))


def test_extra_field_errors_name_file_line_and_field(tmp_path, tok):
    good = {"prompt": "a", "answer": "b", "harm": 1, "vec": [1, 2]}
    cases = [({"prompt": "a", "answer": "b", "vec": [1, 2]}, r"x.jsonl:4: missing field\(s\) \['harm'\]"),
             (dict(good, harm="high"), r"x.jsonl:4: field 'harm' is \"high\", expected a number"),
             (dict(good, harm=True), r"x.jsonl:4: field 'harm' is true, expected a number"),
             (dict(good, vec=[1, 2, 3]), r"x.jsonl:4: field 'vec' is \[1, 2, 3\], expected a list of 2 numbers")]
    for bad, match in cases:
        path = write_jsonl(tmp_path / "x.jsonl", [good, good])
        path.write_text(path.read_text() + "\n" + json.dumps(bad) + "\n")  # blank line 3 is skipped, still counted
        with pytest.raises(DataError, match=match):
            SFTLoader(str(path), tok, 16, 1, seed=0, fields=["harm", "vec"])
    path = write_jsonl(tmp_path / "y.jsonl", [good])
    with pytest.raises(ConfigError, match=r"data.sft_fields: field name 'labels' collides"):
        SFTLoader(str(path), tok, 16, 1, seed=0, fields=["labels"])
    with pytest.raises(ConfigError, match="prompt_len"):
        SFTLoader(str(path), tok, 16, 1, seed=0, fields=["prompt_len"])
