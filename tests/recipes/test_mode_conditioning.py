"""Mode conditioning (arXiv 2512.01127): mode tokens in reserved slots, the prefix transform
(no loss, fields and prompt_len moved, composition with pause-finetuning in either order),
modes from a jsonl field or a per-example side-car, mode dropout, the fan-out at decoding."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from run_configs import tiny_config

from llmcore.data import Sample, to_batch
from llmcore.data.example_sidecar import read_example_sidecar, write_example_sidecar
from llmcore.data.sft import SFTLoader, encode_examples, read_tasks
from llmcore.errors import ConfigError, DataError, TokenizerError
from llmcore.recipe.recipe_set import RecipeSet
from llmcore.tokenizer import Tokenizer
from llmcore.train.loop import Trainer
from recipes.mode_conditioning import ModeConditioning, mode_token
from recipes.pause import Pause


@pytest.fixture()
def tok(prepared):
    return Tokenizer.load(str(prepared / "tokenizer"))  # fresh: reserve() lends slots in memory


def modc(tok, **kw) -> ModeConditioning:
    r = ModeConditioning(ModeConditioning.Config(**kw))
    RecipeSet([r]).bind(tok)
    return r


def row(tok, prompt="Count: 1 2", answer=" 3 4.", n=24, mode=1):
    (r,) = encode_examples([{"prompt": prompt, "answer": answer, "values": {"mode": np.int64(mode)}}], tok, n, "t")
    return r


def test_mode_tokens_take_free_reserved_slots_without_changing_the_tokenizer(tok):
    before, specials = tok.hash, dict(tok.special_ids)
    got = tok.reserve([mode_token(m) for m in range(3)])
    reserved = sorted(i for n, i in specials.items() if n.startswith("<reserved_"))
    assert list(got.values()) == reserved[:3]
    assert tok.reserve(["<mode_1>", "<mode_3>"]) == {"<mode_1>": reserved[1], "<mode_3>": reserved[3]}
    assert tok.hash == before and tok.special_ids == specials  # files and hash untouched
    assert tok.token_id("<pause>") == specials["<pause>"]  # a trained token keeps its id
    with pytest.raises(TokenizerError, match="free <reserved_i> slots"):
        tok.reserve([f"<x_{i}>" for i in range(len(reserved))])


def test_prefix_is_prepended_takes_no_loss_and_moves_prompt_len(tok):
    r = modc(tok, modes=2)
    x = row(tok, mode=1)
    p = x.values["prompt_len"]
    out = r.transform(x, np.random.default_rng(0))
    mid = tok.token_id("<mode_1>")
    assert len(out) == len(x) and out.tokens[0] == mid
    assert out.tokens[1:].tolist() == x.tokens[:-1].tolist()
    assert not out.loss_mask[0] and out.loss_mask[1:].tolist() == x.loss_mask[:-1].tolist()
    assert out.values == {"prompt_len": p + 1, "mode": 1} and out.doc_ids[0] == x.doc_ids[0]
    labels = to_batch([out])["labels"][0]
    assert mid not in labels.tolist()
    assert labels[labels != -100].tolist() == tok.encode(" 3 4.") + [tok.eos_id]  # same targets as before
    assert int(labels[p]) == tok.encode(" 3 4.")[0]  # the prompt's last token still predicts the answer


def test_prefix_moves_every_field_with_its_token(tok):
    r = modc(tok)
    x = row(tok, mode=0)
    pos = np.arange(len(x))
    x = Sample(x.tokens, x.doc_ids, x.loss_mask, fields={"pos": pos, "doc": x.doc_ids * 10 + 5},
               fills={"pos": -1, "doc": "previous"}, values=dict(x.values))
    out = r.transform(x, np.random.default_rng(0))
    assert out.fields["pos"].tolist() == [-1] + pos[:-1].tolist()
    assert out.fields["doc"].tolist() == [5] + x.fields["doc"][:-1].tolist()


@pytest.mark.parametrize("order", ["modc-first", "pause-first"])
def test_composes_with_pause_finetuning_in_either_order(tok, order):
    m = modc(tok)
    pause = Pause(Pause.Config(mode="finetune", num_tokens=3))
    pause.bind(tok)
    x = row(tok, mode=1, n=30)
    p = x.values["prompt_len"]
    fns = [m.transform, pause.transform] if order == "modc-first" else [pause.transform, m.transform]
    out = x
    for fn in fns:
        out = fn(out, np.random.default_rng(0))
    pid, mid = tok.token_id("<pause>"), tok.token_id("<mode_1>")
    answer = tok.encode(" 3 4.") + [tok.eos_id]
    assert out.tokens[:1 + p + 3 + len(answer)].tolist() == [mid] + tok.encode("Count: 1 2") + [pid] * 3 + answer
    assert out.loss_mask.nonzero()[0].tolist() == list(range(1 + p + 3, 1 + p + 3 + len(answer)))
    assert out.values["prompt_len"] == p + 1


def test_bad_modes_and_missing_field_are_named(tok):
    r = modc(tok, modes=2)
    with pytest.raises(DataError, match=r"example 0: mode=2 is not a mode in \[0, 2\)"):
        r.transform(row(tok, mode=2), np.random.default_rng(0))
    bare = encode_examples([{"prompt": "a", "answer": "b"}], tok, 8, "t")[0]
    with pytest.raises(ConfigError, match="mode_field='mode' is not a value.*data.sidecars"):
        r.transform(bare, np.random.default_rng(0))
    text = " 1 2 3 4 5 6."
    full = encode_examples([{"prompt": "Count:", "answer": text}], tok,
                           len(tok.encode("Count:" + text)), "t")[0]
    full.values["mode"] = 0
    assert full.loss_mask[-1]
    with pytest.raises(DataError, match="data.seq_len"):
        r.transform(full, np.random.default_rng(0))
    for bad, key in [({"modes": 0}, "modes"), ({"mode_dropout": 1.0}, "mode_dropout"),
                     ({"allocation": "even"}, "allocation"), ({"allocation": "weights", "weights": [1.0]}, "weights")]:
        with pytest.raises(ConfigError, match=key):
            ModeConditioning.Config(**bad)


def test_mode_dropout_drops_that_fraction_and_repeats_for_a_seed(tok):
    r = modc(tok, mode_dropout=0.3)
    x = row(tok, mode=0)
    mid = tok.token_id("<mode_0>")
    kept = [r.transform(x, np.random.default_rng([5, i])).tokens[0] == mid for i in range(2000)]
    assert 0.27 < 1 - np.mean(kept) < 0.33
    again = [r.transform(x, np.random.default_rng([5, i])).tokens[0] == mid for i in range(2000)]
    assert kept == again


def write_rows(path, n=12):
    rows = [{"prompt": f"Count: {i} {i + 1}", "answer": f" {i + 2}.", "style": i % 2} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_mode_from_a_jsonl_field_or_a_per_example_sidecar(tok, tmp_path):
    jsonl = write_rows(tmp_path / "train.jsonl")
    by_field = SFTLoader(str(jsonl), tok, 16, 12, seed=0, fields=["style"], transform=modc(tok, mode_field="style").transform)
    write_example_sidecar(str(jsonl), "clusters", np.array([1 - i % 2 for i in range(12)], dtype=np.int8),
                          made_from={"test": 1})
    by_sidecar = SFTLoader(str(jsonl), tok, 16, 12, seed=0, sidecars=["clusters"],
                           transform=modc(tok, mode_field="clusters").transform)
    a, b = by_field.next_batch(), by_sidecar.next_batch()
    m0, m1 = tok.token_id("<mode_0>"), tok.token_id("<mode_1>")
    order = a["doc_index"].tolist()
    assert a["input_ids"][:, 0].tolist() == [[m0, m1][i % 2] for i in order]
    assert b["input_ids"][:, 0].tolist() == [[m1, m0][i % 2] for i in order]  # the side-car's, not the field's
    assert torch.equal(a["input_ids"][:, 1:], b["input_ids"][:, 1:])
    assert b["clusters"].tolist() == [1 - i % 2 for i in order]


def test_example_sidecar_refuses_another_file_version_wrong_length_and_unknown_names(tmp_path):
    jsonl = write_rows(tmp_path / "train.jsonl")
    write_example_sidecar(str(jsonl), "c", np.zeros(12, dtype=np.int8))
    assert read_example_sidecar(str(jsonl), "c", 12).shape == (12,)
    with pytest.raises(DataError, match="exists"):
        write_example_sidecar(str(jsonl), "c", np.zeros(12, dtype=np.int8))
    with pytest.raises(DataError, match="11 rows for 12 examples"):
        write_example_sidecar(str(jsonl), "d", np.zeros(11, dtype=np.int8))
    with pytest.raises(DataError, match=r"'nope' .* does not exist \(available: \['c'\]\)"):
        read_example_sidecar(str(jsonl), "nope", 12)
    with pytest.raises(DataError, match="length mismatch"):
        read_example_sidecar(str(jsonl), "c", 13)
    write_rows(jsonl, n=12)  # same content: still valid
    jsonl.write_text(jsonl.read_text().replace("Count: 0", "Count: 9"))
    with pytest.raises(DataError, match="another version"):
        read_example_sidecar(str(jsonl), "c", 12)


def test_fan_out_splits_k_uniformly_or_by_weights_with_one_prefix_per_group(tok):
    ids = [10, 11, 12]
    uniform = RecipeSet([modc(tok, modes=3)])
    m = [tok.token_id(mode_token(i)) for i in range(3)]
    assert uniform.fan_out(ids, 7) == [([m[0]] + ids, 3, "mode_0"), ([m[1]] + ids, 2, "mode_1"),
                                       ([m[2]] + ids, 2, "mode_2")]
    weighted = RecipeSet([modc(tok, modes=3, allocation="weights", weights=[0.6, 0.3, 0.1])])
    assert [n for _, n, _ in weighted.fan_out(ids, 10)] == [6, 3, 1]
    assert RecipeSet([modc(tok, allocation="none")]).fan_out(ids, 5) == [(ids, 5, "none")]
    logits = torch.zeros(2, tok.vocab_size)
    for fn in uniform.logits_processors():
        logits = fn(logits, torch.zeros(2, 1, dtype=torch.long))
    assert torch.isinf(logits[:, m]).all() and torch.isfinite(logits).sum() == 2 * (tok.vocab_size - 3)


def test_training_reads_modes_and_every_row_starts_with_its_token(prepared, tmp_path):
    jsonl = write_rows(tmp_path / "train.jsonl", n=16)
    cfg = tiny_config(prepared, tmp_path / "run", "data.format=sft", f"data.path={jsonl}", f"data.val_path={jsonl}",
                      f"data.tokenizer={prepared / 'tokenizer'}", "data.seq_len=16", "data.sft_fields=[style]",
                      "model.n_layers=1", "train.max_steps=2", "train.micro_batch_size=4", "train.global_batch_size=8",
                      "recipes=[mode_conditioning]", "mode_conditioning.mode_field=style")
    trainer = Trainer(cfg)
    batch = trainer.loader.next_batch()
    tok = trainer.tokenizer
    want = [tok.token_id(mode_token(int(s))) for s in batch["style"]]
    assert batch["input_ids"][:, 0].tolist() == want
    rows = read_tasks(str(jsonl))
    assert len(rows) == 16
    assert trainer.fit()["step"] == 2
