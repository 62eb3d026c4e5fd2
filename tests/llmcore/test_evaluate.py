"""Evaluation: validation loss equals a full-logits cross-entropy over the same windows, and
exact match scores, strips and cuts at the first newline; bad task files name file and line."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from llmcore.data.prepare import prepare
from llmcore.data.shards import TokenShards
from llmcore.errors import DataError
from llmcore.data.sft import read_tasks
from llmcore.eval.loss import validation_loss
from llmcore.eval.tasks import exact_match, first_line
from llmcore.generate.sampling import generate_text
from llmcore.model.args import ModelArgs
from llmcore.model.transformer import Transformer
from llmcore.tokenizer import Tokenizer

WORDS = "the cat sat on a mat while dogs ran far into fields of green and gold".split()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    g = torch.Generator().manual_seed(0)
    docs = [" ".join(WORDS[i] for i in torch.randint(0, len(WORDS), (int(n),), generator=g))
            for n in torch.randint(5, 40, (120,), generator=g)]
    (root / "corpus.txt").write_text("\n\n".join(docs) + "\n")
    tok = Tokenizer.train([str(root / "corpus.txt")], str(root / "tok"), vocab_size=320, num_reserved=2)
    prepare([str(root / "corpus.txt")], tok, str(root / "data"), val_fraction=0.3, progress=False)
    torch.manual_seed(0)
    model = Transformer(ModelArgs(vocab_size=tok.vocab_size, d_model=32, n_layers=2, n_heads=4,
                                  n_kv_heads=2, ffn_hidden=64, max_seq_len=64)).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.15)
    return root, tok, model


def test_validation_loss_matches_full_logits(setup):
    root, tok, model = setup
    shards = TokenShards(str(root / "data"), "val")
    T, B = 16, 3
    n_windows = (shards.num_tokens - 1) // T
    assert n_windows >= 2 * B + 1  # at least one partial batch beyond two full ones
    out = validation_loss(model, shards, T, B)
    losses = []
    with torch.no_grad():
        for i in range(n_windows):
            w = torch.from_numpy(shards.read(i * T, T + 1))
            doc = torch.from_numpy(shards.doc_ids(i * T, T + 1))
            logits = model.logits(model(w[None, :-1], doc[None, :-1]))[0]
            losses.append(F.cross_entropy(logits, w[1:], reduction="none"))
    ref = torch.cat(losses)
    assert out["tokens"] == n_windows * T
    assert out["loss"] == pytest.approx(ref.mean().item(), rel=1e-5)
    assert out["ppl"] == pytest.approx(math.exp(ref.mean().item()), rel=1e-5)
    # max_batches stops after that many batches; a data folder path reads its val split
    two = validation_loss(model, str(root / "data"), T, B, max_batches=2)
    assert two["tokens"] == 2 * B * T
    assert two["loss"] == pytest.approx(ref[:2 * B * T].mean().item(), rel=1e-5)
    # ignored ids take no loss, as in training
    ign = int(torch.from_numpy(shards.read(1, 1))[0])
    keep = torch.cat([torch.from_numpy(shards.read(i * T + 1, T)) for i in range(n_windows)]) != ign
    masked = validation_loss(model, shards, T, B, ignore_ids=[ign])
    assert masked["tokens"] == int(keep.sum())
    assert masked["loss"] == pytest.approx(ref[keep].mean().item(), rel=1e-5)


def test_validation_loss_too_short(setup):
    root, _, model = setup
    with pytest.raises(DataError, match="not one window"):
        validation_loss(model, str(root / "data"), 10**6, 2)


def test_exact_match_scores_greedy_first_line(setup, tmp_path):
    _, tok, model = setup
    prompts = ["the cat", "dogs ran", "fields of", "a mat"]
    outs = generate_text(model, tok, prompts, 12, temperature=0.0)
    lines = [json.dumps({"q": prompts[0], "a": "  " + first_line(outs[0]) + " "}),  # stripped
             "",  # blank lines are skipped
             json.dumps({"q": prompts[1], "a": first_line(outs[1])}),
             json.dumps({"q": prompts[2], "a": first_line(outs[2]) + "x"}),  # wrong
             json.dumps({"q": prompts[3], "a": 12345})]  # wrong, not a string
    path = tmp_path / "task.jsonl"
    path.write_text("\n".join(lines) + "\n")
    res = exact_match(model, tok, str(path), max_new_tokens=12, prompt_field="q",
                      answer_field="a", batch_size=3)
    assert res["n"] == 4 and res["accuracy"] == pytest.approx(0.5)
    assert [e["correct"] for e in res["examples"]] == [True, True, False, False]
    assert res["examples"][0]["prediction"] == first_line(outs[0])


def test_task_file_errors(tmp_path):
    with pytest.raises(DataError, match="nope.jsonl does not exist"):
        read_tasks(str(tmp_path / "nope.jsonl"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "answer": "b"}\n\n{"prompt": "c"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:3: missing field\(s\) \['answer'\]"):
        read_tasks(str(bad))
    bad.write_text('{"prompt": "a", "answer": "b"}\nnot json\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: not valid JSON"):
        read_tasks(str(bad))
    bad.write_text("\n\n")
    with pytest.raises(DataError, match="holds no examples"):
        read_tasks(str(bad))
