"""Hugging Face export/import: transformers loads the exported folder offline with our logits
(fp32, 1e-4), our greedy tokens and our tokenization; import gives the weights back bit-exact;
bad checkpoints are refused with a message naming the problem and leave the output alone."""

import dataclasses
import json
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import llmcore
from llmcore.config.schema import Config, ModelConfig
from llmcore.errors import CheckpointError
from llmcore.hf.folder import export_hf, import_hf
from llmcore.model.args import ModelArgs
from llmcore.model.transformer import Transformer
from llmcore.tokenizer import Tokenizer
from tests.llmcore.hf_testing import assert_greedy_matches

os.environ["HF_HUB_OFFLINE"] = "1"  # every load below must work from the folder alone


def hf_lib():
    """transformers is a dev dependency: only the tests that load the folder with it need it."""
    return pytest.importorskip("transformers")

TEXTS = [
    "The quick brown fox.", " leading space", "  double  spaces  and trailing ", "tab\there",
    "line one\nline two\n\n  indented", "digits 3.14159 and 1,000,000 and 2024-06-01",
    "naïve café, Tōkyō 東京, ünïcödé 😀", "a <pause> special <harm>token", "<s>not bos</s>",
    "", " ", "\n", "zzqx qxzz wvvw", "CRLF line\r\nnext",
]


def _corpus(path):
    g = torch.Generator().manual_seed(0)
    words = ("the quick brown fox jumps over lazy dog alpha beta gamma delta export import "
             "café naïve 東京 ünïcödé 3.14 42 hello world").split()
    lines = []
    for i in range(300):
        idx = torch.randint(0, len(words), (int(torch.randint(3, 14, (1,), generator=g)),), generator=g)
        s = " ".join(words[j] for j in idx)
        lines.append(("  " if i % 4 == 0 else "") + s + (f" {i * 37}." if i % 3 == 0 else ""))
    path.write_text("\n".join(lines) + "\n")


def _args(vocab, tie):
    # non-default rope theta and norm eps: a config field HF misreads shows up in the logits
    return ModelArgs(vocab_size=vocab, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2,
                     ffn_hidden=96, max_seq_len=128, rope_theta=5000.0, norm_eps=1e-5,
                     tie_embeddings=tie)


def write_checkpoint(path, model, tok_dir, *, weights=None, args=None, aux=None):
    """A checkpoint folder as checkpoint.save lays it out (weights, config, tokenizer, state)."""
    path.mkdir(parents=True)
    weights = model.state_dict() if weights is None else weights
    save_file({k: v.contiguous() for k, v in weights.items()}, str(path / "model.safetensors"))
    if aux:
        save_file(aux, str(path / "aux.safetensors"))
    args = args or model.args
    fields = {f.name: getattr(args, f.name) for f in dataclasses.fields(ModelArgs)}
    (path / "config.yaml").write_text(Config(model=ModelConfig(preset="tiny", **fields)).to_yaml())
    shutil.copytree(tok_dir, path / "tokenizer")
    (path / "state.json").write_text(json.dumps({"step": 7, "world_size": 1}))
    return path


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf_tok")
    _corpus(root / "corpus.txt")
    Tokenizer.train([str(root / "corpus.txt")], str(root / "tok"), vocab_size=400,
                    special_tokens=["<pause>", "<harm>"], num_reserved=2)
    return root / "tok"


@pytest.fixture(scope="module", params=[False, True], ids=["untied", "tied"])
def exported(request, tok_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    tok = Tokenizer.load(str(tok_dir))
    torch.manual_seed(0)
    model = Transformer(_args(tok.vocab_size, request.param)).eval()
    with torch.no_grad():  # model-like, peaked logits rather than the near-uniform init
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.1)
    aux = {"probe.weight": torch.ones(1, 64)}
    ckpt = write_checkpoint(root / "ckpt", model, tok_dir, aux=aux)
    out = export_hf(str(ckpt), str(root / "hf"))
    return model, tok, ckpt, out


def test_transformers_import_keeps_our_kernels():
    # transformers probes for a top-level `kernels` (its hub-kernels package): ours must stay
    # importable, cheap, and not be mistaken for that package
    transformers = hf_lib()
    import kernels
    assert kernels.__file__.startswith(os.path.dirname(os.path.dirname(llmcore.__file__)))
    assert callable(kernels.flash_attention) and callable(kernels.linear_cross_entropy)
    is_hub_kernels = getattr(transformers.utils, "is_kernels_available", lambda: False)
    assert not is_hub_kernels()


def test_logits_and_greedy_match_transformers(exported):
    model, tok, _, out = exported
    hf = hf_lib().AutoModelForCausalLM.from_pretrained(str(out)).float().eval()
    assert type(hf).__name__ == "LlamaForCausalLM"
    ids = torch.randint(0, tok.vocab_size, (3, 41), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, theirs = model.logits(model(ids)), hf(ids).logits.float()
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=0)
    for prompt in (ids[0, :1].tolist(), ids[1, :9].tolist()):
        assert_greedy_matches(model, hf, prompt, 16, tok.eos_id)


def test_files_config_and_aux_dropped(exported):
    model, tok, _, out = exported
    names = sorted(os.listdir(out))
    assert names == sorted(["README.md", "config.json", "generation_config.json", "model.safetensors",
                            "special_tokens.json", "special_tokens_map.json", "tokenizer.json",
                            "tokenizer.model", "tokenizer_config.json"])
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"] and cfg["num_key_value_heads"] == 2
    assert cfg["tie_word_embeddings"] is model.args.tie_embeddings and cfg["rope_theta"] == 5000.0
    assert (cfg["bos_token_id"], cfg["eos_token_id"], cfg["pad_token_id"]) == (tok.bos_id, tok.eos_id, tok.pad_id)
    keys = set(load_file(str(out / "model.safetensors")))
    assert not any("probe" in k for k in keys)
    assert ("lm_head.weight" in keys) is (not model.args.tie_embeddings)
    assert not [d for d in os.listdir(out.parent) if ".tmp-" in d]


def test_tokenizer_round_trip(exported, tok_dir):
    _, tok, _, out = exported
    hf_tok = hf_lib().AutoTokenizer.from_pretrained(str(out))
    corpus = (tok_dir.parent / "corpus.txt").read_text()
    for text in TEXTS + corpus.splitlines()[:40] + [corpus]:
        ids = tok.encode(text)
        assert hf_tok.encode(text) == ids, text
        assert hf_tok.decode(ids) == tok.decode(ids) == text
    assert hf_tok.decode([tok.token_id("<pause>")]) == "<pause>"


def test_import_gives_back_identical_weights(exported, tmp_path):
    model, tok, ckpt, out = exported
    imp = import_hf(str(out), str(tmp_path / "imp"))
    original, back = load_file(str(ckpt / "model.safetensors")), load_file(str(imp / "model.safetensors"))
    assert set(original) == set(back)
    assert all(torch.equal(original[k], back[k]) for k in original)
    loaded, tok2 = llmcore.load(str(imp), device="cpu")
    assert loaded.args == model.args and tok2.hash == tok.hash
    assert json.loads((imp / "state.json").read_text())["step"] == 0


def test_import_foreign_tokenizer_folders(exported, tmp_path):
    # an HF Llama folder not made by us: no special_tokens.json (the control ids come from the
    # SentencePiece model), only a tokenizer.json (read by the tokenizers backend), or no
    # tokenizer at all (weights only, no tokenizer/)
    _, tok, _, out = exported
    src = tmp_path / "src"
    shutil.copytree(out, src)
    (src / "special_tokens.json").unlink()
    plain = Tokenizer.load(str(import_hf(str(src), str(tmp_path / "a")) / "tokenizer"))
    assert (plain.bos_id, plain.eos_id, plain.pad_id, plain.vocab_size) == (1, 2, 3, tok.vocab_size)
    assert all(plain.encode(t) == tok.encode(t) for t in TEXTS if "<" not in t)
    (src / "tokenizer.model").unlink()
    json_only = Tokenizer.load(str(import_hf(str(src), str(tmp_path / "b")) / "tokenizer"))
    assert json_only.backend == "hf-tokenizers" and (json_only.bos_id, json_only.eos_id) == (1, 2)
    assert all(json_only.encode(t) == tok.encode(t) for t in TEXTS if "<" not in t and "\u2581" not in t)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (src / name).unlink()
    assert not (import_hf(str(src), str(tmp_path / "c")) / "tokenizer").exists()


def test_sharded_export_loads(exported, tmp_path):
    model, _, ckpt, _ = exported
    out = export_hf(str(ckpt), str(tmp_path / "sharded"), max_shard_size="40KB")
    index = json.loads((out / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 2 and not (out / "model.safetensors").exists()
    assert all(os.path.getsize(out / f) < 40_000 + 2_000 for f in files if len(load_file(str(out / f))) > 1)
    hf = hf_lib().AutoModelForCausalLM.from_pretrained(str(out)).float().eval()
    ids = torch.randint(0, model.args.vocab_size, (2, 13))
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, model.logits(model(ids)), atol=1e-4, rtol=0)
    back = load_file(str(import_hf(str(out), str(tmp_path / "imp")) / "model.safetensors"))
    assert all(torch.equal(v, back[k]) for k, v in model.state_dict().items())


def test_export_bf16(exported, tmp_path):
    model, _, ckpt, _ = exported
    out = export_hf(str(ckpt), str(tmp_path / "bf16"), dtype="bfloat16")
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"
    w = load_file(str(out / "model.safetensors"))
    assert all(v.dtype == torch.bfloat16 for v in w.values())
    assert torch.equal(w["model.norm.weight"], model.norm.weight.detach().bfloat16())


# --- refusals -------------------------------------------------------------------------------

@pytest.fixture()
def small(tok_dir):
    tok = Tokenizer.load(str(tok_dir))
    torch.manual_seed(0)
    return Transformer(_args(tok.vocab_size, True))


def _refused(ckpt, out, match):
    before = sorted(os.listdir(out)) if out.exists() else None
    with pytest.raises(CheckpointError, match=match):
        export_hf(str(ckpt), str(out))
    assert (sorted(os.listdir(out)) if out.exists() else None) == before
    assert not [d for d in os.listdir(out.parent) if ".tmp-" in d]


def test_export_refuses_unknown_keys(small, tok_dir, tmp_path):
    weights = dict(small.state_dict(), **{"layers.0.mlp.extra.weight": torch.zeros(2, 2)})
    ckpt = write_checkpoint(tmp_path / "c", small, tok_dir, weights=weights)
    _refused(ckpt, tmp_path / "hf", r"unknown keys \['layers\.0\.mlp\.extra\.weight'\]")


def test_export_refuses_head_dim_mismatch(small, tok_dir, tmp_path):
    # the config claims 8 heads (head_dim 8) but the weights were made with 4 (head_dim 16)
    ckpt = write_checkpoint(tmp_path / "c", small, tok_dir,
                            args=dataclasses.replace(small.args, n_heads=8))
    _refused(ckpt, tmp_path / "hf", r"shape mismatch .*k_proj.*\(head_dim 8 = d_model 64 / n_heads 8\)")


def test_export_refuses_lm_head_with_tied_config(small, tok_dir, tmp_path):
    weights = dict(small.state_dict(), **{"lm_head.weight": small.embed_tokens.weight.detach().clone()})
    ckpt = write_checkpoint(tmp_path / "c", small, tok_dir, weights=weights)
    _refused(ckpt, tmp_path / "hf", "lm_head.weight with tied embeddings")


def test_export_refuses_nonempty_out_unless_overwrite(small, tok_dir, tmp_path):
    ckpt = write_checkpoint(tmp_path / "c", small, tok_dir)
    out = tmp_path / "hf"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    _refused(ckpt, out, "exists and is not empty")
    assert (out / "keep.txt").read_text() == "mine"
    export_hf(str(ckpt), str(out), overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "config.json").is_file()


def test_export_refuses_missing_weights(small, tok_dir, tmp_path):
    ckpt = write_checkpoint(tmp_path / "c", small, tok_dir)
    (ckpt / "model.safetensors").unlink()
    _refused(ckpt, tmp_path / "hf", "model.safetensors is missing")


def test_import_refusals(exported, tmp_path):
    _, _, _, out = exported
    src = tmp_path / "src"
    shutil.copytree(out, src)
    target = tmp_path / "imp"

    def refused(match):
        with pytest.raises(CheckpointError, match=match):
            import_hf(str(src), str(target))
        assert not target.exists()

    cfg = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps(dict(cfg, model_type="gpt2", architectures=["GPT2LMHeadModel"])))
    refused("model_type 'gpt2'.*not a Llama model")
    (src / "config.json").write_text(json.dumps(dict(cfg, rope_parameters=None, rope_scaling={
        "rope_type": "llama3", "factor": 8.0})))
    refused("rope type='llama3' is not supported")
    (src / "config.json").write_text(json.dumps(dict(cfg, head_dim=32)))
    refused("head_dim 32")
    # a sharded folder with one shard gone
    shard_dir = export_hf(str(exported[2]), str(tmp_path / "sh"), max_shard_size="40KB")
    victim = sorted(p for p in os.listdir(shard_dir) if p.startswith("model-"))[1]
    os.remove(shard_dir / victim)
    with pytest.raises(CheckpointError, match=f"weight shard .*{victim} .* is missing"):
        import_hf(str(shard_dir), str(target))
    assert not target.exists()
