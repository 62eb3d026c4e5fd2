"""The pause recipe (arXiv 2310.02226): pretraining insertions (count, positions, trimming,
document ids, resume), loss masking through `ignore_ids`, the finetuning rewrite, decoding
(prompt pauses, `<pause>` never sampled), recipe-off bit-identity, and the CLI path."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from run_configs import tiny_config
from safetensors.torch import load_file

import llmcore
from llmcore.cli.main import main
from llmcore.config.load import load_run_config
from llmcore.data import FILL_PREVIOUS, PackedLoader, Sample, TokenShards, to_batch
from llmcore.data.sft import encode_examples
from llmcore.errors import ConfigError, DataError
from llmcore.generate.sampling import generate
from llmcore.model.args import ModelArgs
from llmcore.model.transformer import Transformer
from llmcore.recipe.recipe_set import RecipeSet
from llmcore.tokenizer import Tokenizer
from llmcore.train import checkpoint
from llmcore.train.loop import Trainer
from llmcore.train.losses import count_loss_tokens, ntp_loss
from recipes.pause import Pause, num_pauses

PAUSE = 7  # a stand-in id for the tokenizer-free tests


def window(n=65, seed=0):
    """A packed window: distinct tokens 100.., three documents, a loss mask with holes."""
    rng = np.random.default_rng(seed)
    doc = np.repeat([0, 1, 2], [20, 25, n - 45])
    mask = rng.random(n) < 0.8
    return Sample(tokens=np.arange(100, 100 + n, dtype=np.int64), doc_ids=doc, loss_mask=mask)


def recipe(mode="pretrain", **kw):
    r = Pause(Pause.Config(mode=mode, **kw))
    r.pause_id = PAUSE
    return r


@pytest.fixture(scope="module")
def tok(prepared):
    return Tokenizer.load(str(prepared / "tokenizer"))


# --- pretraining insertions --------------------------------------------------------------------

@pytest.mark.parametrize("seq_len,fraction,k", [(64, 0.1, 6), (25, 0.1, 3), (64, 0.0, 0), (10, 0.25, 3), (7, 0.5, 4)])
def test_num_pauses_rounds_to_nearest_half_up(seq_len, fraction, k):
    assert num_pauses(seq_len, fraction) == k


def test_pretrain_inserts_k_pauses_keeps_order_and_trims_to_seq_len_plus_one():
    s = window()
    n, k = 65, num_pauses(64, 0.1)
    for seed in range(20):
        out = recipe().transform(s, np.random.default_rng(seed))
        assert all(len(getattr(out, key)) == n for key in ("tokens", "doc_ids", "loss_mask"))
        pause = out.tokens == PAUSE
        assert pause.sum() == k
        # the real tokens are the window's first n - k, in order, with their own doc id and mask
        np.testing.assert_array_equal(out.tokens[~pause], s.tokens[:n - k])
        np.testing.assert_array_equal(out.doc_ids[~pause], s.doc_ids[:n - k])
        np.testing.assert_array_equal(out.loss_mask[~pause], s.loss_mask[:n - k])
        assert out.loss_mask[pause].all()
        # a pause takes the doc id of the real token before it (the first real token's if none)
        for i in np.flatnonzero(pause):
            before = [j for j in range(i) if not pause[j]]
            assert out.doc_ids[i] == (out.doc_ids[before[-1]] if before else s.doc_ids[0])
    np.testing.assert_array_equal(s.tokens, np.arange(100, 165))  # the input is untouched


def test_pause_positions_are_uniform_and_may_be_consecutive():
    n, k, draws = 65, 6, 3000
    counts, consecutive = np.zeros(n), 0
    for seed in range(draws):
        pause = recipe().transform(window(), np.random.default_rng(seed)).tokens == PAUSE
        counts += pause
        consecutive += bool((pause[1:] & pause[:-1]).any())
    freq = counts / draws
    # every slot, the first and last included, is a pause with probability k/n (sd ~0.005)
    assert np.abs(freq - k / n).max() < 0.03
    # P(some two adjacent) for a uniform 6-subset of 65 slots = 1 - C(60,6)/C(65,6) ~ 0.41
    assert 0.3 < consecutive / draws < 0.52


def test_same_rng_seed_gives_same_insertions_and_other_seeds_differ():
    a = recipe().transform(window(), np.random.default_rng([3, 17, 7]))
    b = recipe().transform(window(), np.random.default_rng([3, 17, 7]))
    c = recipe().transform(window(), np.random.default_rng([3, 18, 7]))
    assert all(np.array_equal(a.per_token()[key], b.per_token()[key]) for key in a.per_token())
    assert not np.array_equal(a.tokens, c.tokens)


def test_fraction_zero_returns_the_sample_unchanged():
    s = window()
    assert recipe(fraction=0.0).transform(s, np.random.default_rng(0)) is s


def test_loader_resume_reproduces_the_insertions(prepared, tok):
    r = Pause(Pause.Config())
    r.bind(tok)
    shards = [("d", TokenShards(str(prepared), "train"), 1.0)]

    def loader():
        return PackedLoader(shards, 32, 4, seed=5, transform=r.transform)

    ref = loader()
    batches = [ref.next_batch() for _ in range(4)]
    first = loader()
    first.next_batch(), first.next_batch()
    resumed = loader()
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
    for want in batches[2:]:
        got = resumed.next_batch()
        assert all(torch.equal(got[key], want[key]) for key in want)
    pid = tok.token_id("<pause>")
    assert all(int((torch.cat([b["input_ids"], b["labels"][:, -1:]], 1) == pid).sum()) == 4 * 3 for b in batches)


def with_fields(s):
    """`s` plus per-token fields: its positions (fill -1), a [n, 2] pair (fill 0) and a
    per-document value that an inserted token copies from the token before it."""
    pos = np.arange(len(s))
    return Sample(s.tokens, s.doc_ids, s.loss_mask, values=dict(s.values),
                  fields={"pos": pos, "pair": np.stack([pos + 1, -pos - 1], 1), "docval": s.doc_ids * 10 + 5},
                  fills={"pos": -1, "docval": FILL_PREVIOUS}, source="w", doc_index=3, doc_offset=2)


def test_pretrain_pauses_move_every_field_with_its_token():
    s = with_fields(window())
    for seed in range(20):
        out = recipe().transform(s, np.random.default_rng(seed))
        plain = recipe().transform(window(), np.random.default_rng(seed))
        np.testing.assert_array_equal(out.tokens, plain.tokens)  # fields change no token
        pause = out.tokens == PAUSE
        pos = out.fields["pos"]
        # each real token still carries its own position, pair and document value
        np.testing.assert_array_equal(out.tokens[~pause], s.tokens[pos[~pause]])
        np.testing.assert_array_equal(out.fields["pair"][~pause], s.fields["pair"][pos[~pause]])
        np.testing.assert_array_equal(out.fields["docval"], out.doc_ids * 10 + 5)
        # the pauses hold the fill values
        assert (pos[pause] == -1).all() and (out.fields["pair"][pause] == 0).all()
        assert (out.source, out.doc_index, out.doc_offset) == ("w", 3, 2)


def test_pretrain_pauses_keep_sidecar_rows_with_their_labels(prepared, tok, tmp_path):
    from llmcore.data import write_sidecar

    data = tmp_path / "data"
    shutil.copytree(prepared, data)

    def positions(shards, k):
        start, n, _, _ = shards.shard_span(k)
        return np.arange(start, start + n)

    write_sidecar(str(data), "pos", positions, kind="token", dtype=np.int64, fill=-1)
    shards = TokenShards(str(data), "train")
    r = Pause(Pause.Config())
    r.bind(tok)
    batch = PackedLoader([("d", shards, 1.0)], 32, 4, seed=5, transform=r.transform, sidecars=["pos"]).next_batch()
    pid = tok.token_id("<pause>")
    pos, labels = batch["pos"], batch["labels"]
    real = labels != pid
    assert (~real).any() and (pos[~real] == -1).all()
    assert torch.equal(labels[real], torch.from_numpy(shards.read(0, shards.num_tokens))[pos[real]])


# --- loss masking ------------------------------------------------------------------------------

def test_labels_followed_by_pause_are_ignored_and_no_others():
    r = recipe(fraction=0.2)
    samples = []
    for seed in range(3):
        s = window(seed=seed)
        s.loss_mask = np.ones(65, dtype=bool)
        samples.append(r.transform(s, np.random.default_rng(seed)))
    batch = to_batch(samples)
    labels, inputs = batch["labels"], batch["input_ids"]
    ignore = torch.tensor(r.ignore_ids())
    kept = labels != PAUSE
    pause_targets = sum(int((s.tokens[1:] == PAUSE).sum()) for s in samples)
    assert pause_targets > 0 and count_loss_tokens(labels, ignore) == int(kept.sum()) == labels.numel() - pause_targets
    # a pause position's own output (predicting the next real token) keeps its loss
    assert ((inputs == PAUSE) & kept).any()
    g = torch.Generator().manual_seed(0)
    h, w = torch.randn(3, 64, 16, generator=g), torch.randn(200, 16, generator=g)
    got = ntp_loss(h, w, labels, ignore)
    ref = F.cross_entropy((h.double() @ w.double().T)[kept], labels[kept], reduction="sum")
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-4)
    # without ignore_ids the pause targets would be scored: the ignore path is what drops them
    assert not torch.allclose(ntp_loss(h, w, labels).double(), ref, rtol=1e-3)


# --- finetuning --------------------------------------------------------------------------------

def test_finetune_puts_m_pauses_after_the_prompt_and_keeps_answer_only_loss(tok):
    (row,) = encode_examples([{"prompt": "Count: 1 2", "answer": " 3 4."}], tok, 40, "t")
    p, m = row.values["prompt_len"], 5
    r = Pause(Pause.Config(mode="finetune", num_tokens=m))
    r.bind(tok)
    pid = tok.token_id("<pause>")
    out = r.transform(row, np.random.default_rng(0))
    answer = tok.encode(" 3 4.") + [tok.eos_id]
    assert len(out.tokens) == 41 and out.values["prompt_len"] == p
    assert out.tokens[:p].tolist() == tok.encode("Count: 1 2")
    assert out.tokens[p:p + m].tolist() == [pid] * m
    assert out.tokens[p + m:p + m + len(answer)].tolist() == answer
    assert (out.tokens[p + m + len(answer):] == tok.pad_id).all()
    assert out.doc_ids[:p + m + len(answer)].tolist() == [0] * (p + m + len(answer))
    labels = to_batch([out])["labels"][0]
    ignore = torch.tensor(r.ignore_ids())
    scored = [int(x) for x in labels if x != -100 and x != pid]
    assert scored == answer and count_loss_tokens(labels, ignore) == len(answer)
    assert int(labels[p + m - 1]) == answer[0]  # the last pause predicts the answer's first token


def test_finetune_pauses_are_not_loss_targets_even_without_ignore_ids(tok):
    (row,) = encode_examples([{"prompt": "The kernel reads", "answer": " the file twice."}], tok, 37, "t")
    p, m = row.values["prompt_len"], 3
    r = Pause(Pause.Config(mode="finetune", num_tokens=m))
    r.bind(tok)
    out = r.transform(row, np.random.default_rng(0))
    answer = tok.encode(" the file twice.") + [tok.eos_id]
    pid = tok.token_id("<pause>")
    assert out.tokens[p:p + m].tolist() == [pid] * m
    # the mask itself: prompt and pauses False, answer and eos True, padding False
    expected = [False] * (p + m) + [True] * len(answer) + [False] * (38 - p - m - len(answer))
    assert out.loss_mask.tolist() == expected
    # so the answer-only loss holds without the kernel's ignore_ids
    labels = to_batch([out])["labels"][0]
    assert count_loss_tokens(labels, None) == len(answer)
    assert labels[labels != -100].tolist() == answer


def test_finetune_pauses_move_fields_and_keep_values(tok):
    (row,) = encode_examples([{"prompt": "Count: 1 2", "answer": " 3 4.", "values": {"harm": np.int64(4)}}],
                             tok, 40, "t")
    row = with_fields(row)
    p, m = row.values["prompt_len"], 5
    r = Pause(Pause.Config(mode="finetune", num_tokens=m))
    r.bind(tok)
    out = r.transform(row, np.random.default_rng(0))
    pos = out.fields["pos"]
    assert pos[:p].tolist() == list(range(p)) and (pos[p:p + m] == -1).all()
    assert pos[p + m:].tolist() == list(range(p, 41 - m))
    assert (out.fields["docval"][p:p + m] == row.fields["docval"][p - 1]).all()
    assert out.values == {"prompt_len": p, "harm": 4}
    batch = to_batch([out])
    assert batch["harm"].tolist() == [4] and torch.equal(batch["pos"][0], torch.from_numpy(pos[1:]))


def test_finetune_errors_name_the_setting(tok):
    (row,) = encode_examples([{"prompt": "Count: 1 2", "answer": " 3 4."}], tok, 16, "t")
    r = Pause(Pause.Config(mode="finetune", num_tokens=10))
    r.bind(tok)
    with pytest.raises(DataError, match="data.seq_len >= "):
        r.transform(row, np.random.default_rng(0))
    with pytest.raises(ConfigError, match="data.format=sft"):
        r.transform(window(), np.random.default_rng(0))


@pytest.mark.parametrize("override,key", [("pause.mode=both", "pause.mode"), ("pause.fraction=1.5", "pause.fraction"),
                                          ("pause.num_tokens=-1", "pause.num_tokens")])
def test_bad_options_are_config_errors_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=key):
        load_run_config(None, ["data.path=x", "recipes=[pause]", override])


# --- decoding ----------------------------------------------------------------------------------

class PauseLover(Transformer):
    """A model whose every next-token distribution puts ~all its mass on `<pause>`; it also
    records the ids of each prefill (the prompts as the model saw them)."""

    def __init__(self, args, pause_id):
        super().__init__(args)
        self.pause_id, self.prefills = pause_id, []

    def forward(self, input_ids, *a, **kw):
        if input_ids.shape[1] > 1:
            self.prefills.append(input_ids.tolist())
        return super().forward(input_ids, *a, **kw)

    def logits(self, h):
        out = super().logits(h).clone()
        out[..., self.pause_id] += 50.0
        return out


@pytest.fixture(scope="module")
def pause_lover(tok):
    torch.manual_seed(0)
    args = ModelArgs(vocab_size=tok.vocab_size, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=64,
                     max_seq_len=64)
    return PauseLover(args, tok.token_id("<pause>")).eval()


def test_pause_is_never_sampled(tok, pause_lover):
    pid = tok.token_id("<pause>")
    prompts = [tok.encode("Count: 1 2"), tok.encode("The kernel")]
    biased = generate(pause_lover, prompts, 12, temperature=1.0, seed=0)
    assert all(t == pid for row in biased for t in row)  # the bias does win without the recipe
    for mode in ("pretrain", "finetune"):
        recipes = RecipeSet([Pause(Pause.Config(mode=mode))])
        recipes.bind(tok)
        for temperature in (0.0, 1.0, 2.0):
            out = generate(pause_lover, prompts, 24, temperature=temperature, seed=1,
                           logits_processors=recipes.logits_processors())
            assert sum(len(r) for r in out) == 48 and all(t != pid for row in out for t in row)


def test_prepare_prompt_appends_m_pauses_in_finetune_mode_only(tok, pause_lover):
    from llmcore.generate.sampling import generate_text

    pid = tok.token_id("<pause>")
    ids = tok.encode("Count: 1 2")
    ft = RecipeSet([Pause(Pause.Config(mode="finetune", num_tokens=4))])
    pt = RecipeSet([Pause(Pause.Config(mode="pretrain"))])
    for r in (ft, pt):
        r.bind(tok)
    assert ft.prepare_prompt(ids) == ids + [pid] * 4
    assert pt.prepare_prompt(ids) == ids
    pause_lover.prefills.clear()
    text = generate_text(pause_lover, tok, ["Count: 1 2"], 6, temperature=0.0, recipes=ft, stop_at_eos=False)
    assert pause_lover.prefills == [[ids + [pid] * 4]] and "<pause>" not in text[0]


# --- training and the CLI ----------------------------------------------------------------------

def make_cfg(prepared, out_dir, *extra):
    return tiny_config(prepared, out_dir, "data.seq_len=64", "train.max_steps=3", "train.micro_batch_size=4",
                       "train.global_batch_size=8", "train.eval_batches=1", "optim.lr=3e-3",
                       "schedule.warmup_steps=2", *extra)


def trunk(out_dir):
    return load_file(str(checkpoint.resolve(out_dir) / "model.safetensors"))


def test_recipe_off_is_bit_identical_and_on_changes_training(prepared, tmp_path):
    Trainer(make_cfg(prepared, tmp_path / "base")).fit()
    Trainer(make_cfg(prepared, tmp_path / "off", "recipes=[pause]", "pause.fraction=0")).fit()
    on = Trainer(make_cfg(prepared, tmp_path / "on", "recipes=[pause]"))
    result = on.fit()
    base, off, paused = trunk(tmp_path / "base"), trunk(tmp_path / "off"), trunk(tmp_path / "on")
    assert all(torch.equal(base[k], off[k]) for k in base)
    assert not all(torch.equal(base[k], paused[k]) for k in base)
    # 8 windows of 65 tokens with 6 pauses each; targets are tokens 1..64, and a pause target
    # takes no loss: 5 or 6 dropped per window (5 when the window starts with a pause)
    assert 8 * 58 <= result["loss_tokens"] <= 8 * 59


def test_cli_eval_and_generate_use_the_checkpoints_pause_recipe(prepared, tmp_path, capsys):
    rows = [{"prompt": f"Count: {i} {i + 1}", "answer": f" {i + 2}."} for i in range(8)]
    jsonl = tmp_path / "tasks.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = tmp_path / "ft"
    Trainer(make_cfg(prepared, run, "data.format=sft", f"data.path={jsonl}", f"data.val_path={jsonl}",
                     f"data.tokenizer={prepared / 'tokenizer'}", "data.seq_len=24", "train.max_steps=2",
                     "recipes=[pause]", "pause.mode=finetune", "pause.num_tokens=3")).fit()
    tok = Tokenizer.load(str(prepared / "tokenizer"))
    recipes = llmcore.load_recipes(str(run))
    recipes.bind(tok)
    assert recipes.prepare_prompt([10, 11]) == [10, 11] + [tok.token_id("<pause>")] * 3
    assert main(["eval", "--checkpoint", str(run), "--tasks", str(jsonl), "--max-new-tokens", "4"]) == 0
    assert json.loads(capsys.readouterr().out)["exact_match"]["n"] == 8
    assert main(["generate", "--checkpoint", str(run), "--prompt", "Count: 3 4", "--max-new-tokens", "8"]) == 0
    assert "<pause>" not in capsys.readouterr().out


def test_validation_windows_get_the_same_pause_rewrite_as_training(prepared, tmp_path):
    from llmcore.train.loop import Trainer

    trainer = Trainer(make_cfg(prepared, tmp_path / "v", "recipes=[pause]", "pause.fraction=0.1"))
    pause = trainer.tokenizer.token_id("<pause>")
    val = trainer.eval_sets()["val"]
    first, again = trainer.eval_batches(val, 2), trainer.eval_batches(val, 2)
    ids = first[0]["input_ids"]
    assert (ids == pause).any(dim=1).all()  # every validation window carries pauses
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(first, again))  # same each time
    plain = Trainer(make_cfg(prepared, tmp_path / "p")).evaluate()["val_tokens"]
    assert trainer.evaluate()["val_tokens"] < plain  # pause targets take no loss
