"""Continued pretraining of a Hugging Face model with its own tokenizer.json (the tokenizers
backend): a tiny Llama and a byte-level BPE built here (no hub) are imported, prepared, trained
20 steps with `recipes: [pause]`, exported, and read back by transformers with our logits
(<= 1e-4), our tokens and our greedy generations."""

from __future__ import annotations

import json
import logging
import os

import pytest
import torch
import yaml
from run_configs import tiny_config

import llmcore
from llmcore.cli.main import main
from llmcore.errors import TokenizerError
from llmcore.hf.folder import export_hf, import_hf
from llmcore.tokenizer import Tokenizer
from llmcore.tokenizer_hf import HFTokenizer
from llmcore.train import checkpoint
from llmcore.train.loop import Trainer
from llmcore.train.metrics import log
from tests.llmcore.hf_testing import assert_greedy_matches

os.environ["HF_HUB_OFFLINE"] = "1"  # every load below must work from the folders alone
tokenizers = pytest.importorskip("tokenizers")
transformers = pytest.importorskip("transformers")

TEXTS = ["The hacker reads the file.", "  indented  twice", "café 東京 😀", "a <pause> in text", "", "x\ny\n"]


def build_hf_tokenizer(corpus, folder, reserved: int = 0):
    """A byte-level BPE (GPT-2 / Llama 3 style) trained on `corpus`, saved by transformers."""
    from tokenizers import Tokenizer as RawTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    raw = RawTokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    specials = ["<|begin_of_text|>", "<|end_of_text|>"] + [f"<|reserved_special_token_{i}|>" for i in range(reserved)]
    raw.train_from_iterator(corpus.read_text().split("\n\n"), trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<|begin_of_text|>",
                                                eos_token="<|end_of_text|>")
    fast.save_pretrained(str(folder))
    return fast


@pytest.fixture(scope="module")
def hf_model(corpus_file, tmp_path_factory):
    """A tiny LlamaForCausalLM (untied, GQA) with the BPE above: the 'existing HF model'."""
    folder = tmp_path_factory.mktemp("hf_src")
    fast = build_hf_tokenizer(corpus_file, folder)
    config = transformers.LlamaConfig(
        vocab_size=len(fast), hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, rope_theta=10000.0, rms_norm_eps=1e-5,
        tie_word_embeddings=False, bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(str(folder), safe_serialization=True)
    return folder, len(fast)


def test_reserved_tokens_take_recipe_tokens_without_growing(corpus_file, tmp_path):
    build_hf_tokenizer(corpus_file, tmp_path, reserved=3)
    plain = HFTokenizer.from_hf_folder(str(tmp_path))
    tok = HFTokenizer.from_hf_folder(str(tmp_path), ["<pause>", "<harm>"])
    assert tok.vocab_size == plain.vocab_size and tok.appended == []
    reserved0 = plain._tok.token_to_id("<|reserved_special_token_0|>")
    assert tok.token_id("<pause>") == reserved0 and tok.token_id("<harm>") == reserved0 + 1
    assert tok.encode("a<pause>b") == tok.encode("a") + [reserved0] + tok.encode("b")
    again = Tokenizer.load(tok.save(str(tmp_path / "saved")))
    assert again.hash == tok.hash and again.token_id("<pause>") == reserved0
    (tmp_path / "saved" / "tokenizer.json").write_text(tok.hf_json.replace("<pause>", "<paused>"))
    with pytest.raises(TokenizerError, match="do not match their recorded hash"):
        Tokenizer.load(str(tmp_path / "saved"))


def test_import_train_pause_export_round_trip(hf_model, corpus_file, tmp_path, monkeypatch, caplog):
    src, hf_vocab = hf_model
    monkeypatch.setattr(log, "propagate", True)
    ckpt, data, run, out = (tmp_path / n for n in ("ckpt", "data", "run", "export"))
    with caplog.at_level(logging.WARNING):
        import_hf(str(src), str(ckpt))
    tok = Tokenizer.load(str(ckpt / "tokenizer"))
    assert tok.backend == "hf-tokenizers" and tok.token_id("<pause>") == hf_vocab  # appended: no reserved slot
    assert f"resized the embedding and lm_head of {src} from {hf_vocab} to {tok.vocab_size} rows" in caplog.text

    assert main(["data", "prepare", "--input", str(corpus_file), "--tokenizer", str(src), "--out", str(data),
                 "--val-fraction", "0.05"]) == 0
    assert Tokenizer.load(str(data / "tokenizer")).hash == tok.hash  # same placement from the same folder
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(src))
    for text in TEXTS[:3]:  # the data is tokenized exactly as the HF tokenizer does
        assert tok.encode(text) == hf_tok.encode(text, add_special_tokens=False)

    model_section = yaml.safe_load((ckpt / "config.yaml").read_text())["model"]
    fields = [f"model.{k}={v}" for k, v in model_section.items() if v is not None]
    result = Trainer(tiny_config(data, run, *fields, f"train.init_from={ckpt}", "recipes=[pause]", "data.seq_len=32",
                                 "train.global_batch_size=4", "train.max_steps=20", "train.log_every=1",
                                 "optim.lr=3e-3", "schedule.warmup_steps=2", "train.eval_batches=2")).fit()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 20 and sum(losses[-3:]) / 3 < sum(losses[:3]) / 3  # it learns
    assert result["step"] == 20

    export_hf(str(run), str(out))
    ours, ours_tok = llmcore.load(str(run))
    theirs = transformers.AutoModelForCausalLM.from_pretrained(str(out)).float().eval()
    ids = torch.randint(0, ours_tok.vocab_size, (2, 29), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(theirs(ids).logits.float(), ours.logits(ours(ids)), atol=1e-4, rtol=0)
    exported_tok = transformers.AutoTokenizer.from_pretrained(str(out))
    assert exported_tok.convert_tokens_to_ids("<pause>") == tok.token_id("<pause>")
    for text in TEXTS:
        assert exported_tok.encode(text, add_special_tokens=False) == ours_tok.encode(text), text
    prompt = ours_tok.encode("The hacker")
    mine = assert_greedy_matches(ours, theirs, prompt, 8, ours_tok.eos_id)
    assert ours_tok.decode(prompt + mine).startswith("The hacker")
    back = import_hf(str(out), str(tmp_path / "again"))  # the exported folder imports as it was trained
    assert Tokenizer.load(str(back / "tokenizer")).hash == tok.hash
    assert checkpoint.read_state(checkpoint.resolve(back))["step"] == 0


def test_config_dependent_recipe_tokens_take_free_reserved_slots_of_an_hf_tokenizer(corpus_file, tmp_path):
    """`RecipeSet.bind` reserves a recipe's config-dependent tokens (`<mode_0..C-1>`) on either
    backend: here the slots an HF tokenizer's recipe tokens left free, files and hash unchanged."""
    from llmcore.recipe.recipe_set import RecipeSet
    from recipes.mode_conditioning import ModeConditioning

    build_hf_tokenizer(corpus_file, tmp_path, reserved=4)
    tok = HFTokenizer.from_hf_folder(str(tmp_path), ["<pause>", "<harm>"])
    before = tok.hash
    slot = tok._tok.token_to_id
    RecipeSet([ModeConditioning(ModeConditioning.Config(modes=2))]).bind(tok)
    assert [tok.token_id(f"<mode_{m}>") for m in range(2)] == [slot(f"<|reserved_special_token_{i}|>")
                                                                for i in (2, 3)]
    assert tok.hash == before and tok.token_id("<pause>") == slot("<pause>")
    with pytest.raises(TokenizerError, match="free <reserved_i> slots"):
        RecipeSet([ModeConditioning(ModeConditioning.Config(modes=3))]).bind(tok)
