"""Model options: `model.dropout` (0 is exactly the dropout-free model and draws no random
numbers; above 0 it acts in training only, seeded; the SDPA path keeps the kernel's masks) and
`return_layers` (the residual stream after chosen blocks, as a manual block-by-block forward)."""

import dataclasses

import pytest
import torch

import kernels
from llmcore.config.schema import ModelConfig
from llmcore.errors import ConfigError
from llmcore.model.args import ModelArgs
from llmcore.model.presets import get_preset, preset_names, resolve_model_args
from llmcore.model.transformer import Transformer, dropout_attention

ARGS = ModelArgs(vocab_size=53, d_model=32, n_layers=3, n_heads=4, n_kv_heads=2, ffn_hidden=48,
                 max_seq_len=64)


def build(**changes):
    torch.manual_seed(0)
    return Transformer(dataclasses.replace(ARGS, **changes))


def batch(B=2, T=23, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, ARGS.vocab_size, (B, T), generator=g)
    doc_ids = torch.zeros(B, T, dtype=torch.long)
    doc_ids[:, 9:] = 1
    doc_ids[1, 17:] = 2  # three documents in row 1, two in row 0
    return ids, doc_ids


def manual_forward(model, ids, doc_ids):
    """The dropout-free forward spelled out block by block: [embedding, after block 1, ...], h."""
    cos, sin = model.rope(torch.arange(ids.shape[1]))
    x = model.embed_tokens(ids)
    states = [x]
    for layer in model.layers:
        x = x + layer.self_attn(layer.input_layernorm(x), cos, sin, doc_ids)
        x = x + layer.mlp(layer.post_attention_layernorm(x))
        states.append(x)
    return states, model.norm(x)


# --- dropout -----------------------------------------------------------------------------------

def test_dropout_zero_training_step_is_the_plain_forward_and_draws_no_random_numbers():
    ids, doc = batch()
    plain = build().train()
    explicit = build(dropout=0.0).train()
    with torch.no_grad():
        _, ref = manual_forward(build().eval(), ids, doc)
    rng = torch.get_rng_state()
    h = explicit(ids, doc)
    h.float().pow(2).mean().backward()  # a training step's forward and backward
    assert torch.equal(torch.get_rng_state(), rng)
    assert torch.equal(h.detach(), ref)
    assert torch.equal(plain(ids, doc).detach(), ref)


def test_dropout_in_training_changes_outputs_and_is_seeded_reproducible():
    ids, doc = batch()
    model = build(dropout=0.2).train()
    torch.manual_seed(5)
    a = model(ids, doc)
    torch.manual_seed(5)
    b = model(ids, doc)
    torch.manual_seed(6)
    c = model(ids, doc)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.allclose(a, build().train()(ids, doc), atol=1e-3)
    a.float().pow(2).mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_dropout_never_acts_in_eval_mode():
    ids, doc = batch()
    rng = torch.get_rng_state()
    with torch.no_grad():
        assert torch.equal(build(dropout=0.5).eval()(ids, doc), build().eval()(ids, doc))
    assert torch.equal(torch.get_rng_state(), rng)


@pytest.mark.parametrize("docs", [False, True], ids=["causal", "doc-mask"])
def test_dropout_attention_at_p0_equals_the_kernel_B2_T37_H4_KV2_D16(docs):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 37, 4, 16, generator=g)
    k, v = torch.randn(2, 37, 2, 16, generator=g), torch.randn(2, 37, 2, 16, generator=g)
    doc = torch.repeat_interleave(torch.tensor([[0, 1, 2], [0, 1, 1]]), torch.tensor([11, 20, 6]), dim=1) if docs else None
    torch.testing.assert_close(dropout_attention(q, k, v, doc, 0.0),
                               kernels.flash_attention(q, k, v, causal=True, doc_ids=doc), atol=1e-5, rtol=1e-5)


def test_dropout_attention_keeps_documents_apart():
    # change document A (positions 0..10): document B's outputs must not move, dropout on
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 29, 4, 16, generator=g) for _ in range(3))
    doc = torch.tensor([[0] * 11 + [1] * 18])
    k2, v2 = k.clone(), v.clone()
    k2[:, :11] += 1.0
    v2[:, :11] -= 2.0
    torch.manual_seed(3)
    a = dropout_attention(q, k, v, doc, 0.3)
    torch.manual_seed(3)
    b = dropout_attention(q, k2, v2, doc, 0.3)
    assert torch.equal(a[:, 11:], b[:, 11:]) and not torch.equal(a[:, :11], b[:, :11])


def test_dropout_is_configured_and_validated():
    assert all(get_preset(n).dropout == 0.0 for n in preset_names())
    assert resolve_model_args(ModelConfig(preset="tiny")).dropout == 0.0
    assert resolve_model_args(ModelConfig(preset="tiny", dropout=0.1)).dropout == 0.1
    for bad in (1.0, -0.1):
        with pytest.raises(ConfigError, match="model.dropout"):
            resolve_model_args(ModelConfig(preset="tiny", dropout=bad))
    assert build(dropout=0.3).args.num_params() == ARGS.num_params()  # no parameters


# --- return_layers -----------------------------------------------------------------------------

def test_return_layers_equal_a_manual_block_by_block_forward():
    ids, doc = batch(B=3, T=19)
    model = build().eval()
    with torch.no_grad():
        states, h_ref = manual_forward(model, ids, doc)
        plain = model(ids, doc)
        h, got = model(ids, doc, return_layers=(0, 2, -1, 1, -4))
    assert torch.equal(h, plain) and torch.equal(h, h_ref)
    assert list(got) == [0, 2, -1, 1, -4]  # keyed as asked
    for i, j in ((0, 0), (1, 1), (2, 2), (-1, 3), (-4, 0)):
        assert torch.equal(got[i], states[j]), i
    assert got[-1].shape == (3, 19, ARGS.d_model)
    _, none = model(ids, return_layers=())
    assert none == {}


def test_return_layers_out_of_range_names_the_range():
    model = build().eval()
    ids, _ = batch()
    for bad in (4, -5, 1.0):
        with pytest.raises(ValueError, match=r"\[-4, 3\]"):
            model(ids, return_layers=[bad])


def test_return_layers_carry_gradients():
    ids, doc = batch()
    model = build().train()
    _, got = model(ids, doc, return_layers=[2])
    got[2].sum().backward()
    assert model.layers[0].mlp.up_proj.weight.grad is not None
    assert model.layers[2].mlp.up_proj.weight.grad is None  # block 3 is after the state
