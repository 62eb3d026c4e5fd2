"""torch.compile over the public ops: every launcher is an opaque custom op (``llmcore::*``,
``kernels/_opaque.py``) whose fake implementation must agree with the real one, and a
block-shaped step built from the ops compiles into ONE graph (``fullgraph=True``) whose loss
and gradients equal eager's, on the Triton path (interpreted on CPU) and the PyTorch path.

The compiled tests use the ``aot_eager`` backend: it runs dynamo and AOT autograd, the stages
that see the custom ops, without generating C++ (inductor adds nothing about our ops)."""

import importlib

import pytest
import torch
from torch.library import opcheck

import kernels
from kernel_testing import DEVICE

lce = importlib.import_module("kernels.linear_cross_entropy")


def _gen_randn(seed):
    gen = torch.Generator().manual_seed(seed)
    return lambda *shape: torch.randn(*shape, generator=gen).to(DEVICE)


def _op_cases():
    """(op, args) for every registered launcher, at small shapes with documents and ignores."""
    import kernels.attention.function as attn
    import kernels.rmsnorm_triton as rms
    import kernels.rope_triton as rope
    import kernels.swiglu_triton as glu

    r = _gen_randn(0)
    x, w = r(6, 16), r(16)
    _, rstd = rms.rmsnorm_fwd(x, w, 1e-6)
    q, k, v = r(1, 9, 4, 16), r(1, 9, 2, 16), r(1, 9, 2, 16)
    docs = torch.tensor([[0] * 4 + [1] * 5], device=DEVICE)
    o, lse2, first, last = attn._forward(q, k, v, True, docs, 0.25)
    h, W = r(7, 16), r(11, 16)
    labels = torch.tensor([0, 3, -100, 5, 10, 2, 1], device=DEVICE)
    cases = {
        "rmsnorm_fwd": (rms.rmsnorm_fwd, (x, w, 1e-6)),
        "rmsnorm_bwd": (rms.rmsnorm_bwd, (x, w, rstd, r(6, 16))),
        "swiglu_fwd": (glu.swiglu_fwd, (x, r(6, 16))),
        "swiglu_bwd": (glu.swiglu_bwd, (x, r(6, 16), r(6, 16))),
        "rope": (rope._rotated, (r(1, 5, 2, 8), r(1, 5, 4), r(1, 5, 4), True)),
        "rope_inplace": (rope._rotate_inplace, (r(1, 5, 2, 8), r(1, 5, 4), r(1, 5, 4))),
        "attention_fwd_docs": (attn._forward, (q, k, v, True, docs, 0.25)),
        "attention_fwd": (attn._forward, (q, k, v, False, None, 0.25)),
        "attention_bwd": (attn._backward, (q, k, v, o, lse2, r(1, 9, 4, 16), True, docs, first,
                                           last, 0.25)),
        "lce_weighted_bwd": (lce._weighted_grads, (h, W, labels, None, -100, 0.0, 0.1, r(7),
                                                   True, False, "triton")),
    }
    for reduction in ("mean", "sum", "none"):
        for backend in ("torch", "triton"):
            cases[f"lce_{reduction}_{backend}"] = (lce._loss_and_grads, (
                h, W, labels, torch.tensor([5], device=DEVICE), -100, 0.01, 0.0, reduction,
                True, True, backend))
    return cases


@pytest.mark.triton
def test_every_custom_op_passes_opcheck(use_triton):
    # schema, fake tensors vs the real outputs (shapes, dtypes, strides), declared mutation
    failed = {}
    for name, (launcher, args) in _op_cases().items():
        result = opcheck(launcher.op, args)
        bad = {test: outcome for test, outcome in result.items() if outcome != "SUCCESS"}
        if bad:
            failed[name] = bad
    assert not failed, failed


def _block_step(params, ids, labels, docs, reduction):
    """One pre-norm attention + SwiGLU block and the loss, through the public ops only."""
    emb, wq, wk, wv, wo, w_up, w_down, norm, head = params
    x = emb[ids]  # [1, T, d]
    t = ids.shape[1]
    y = kernels.rms_norm(x, norm, 1e-6)
    q = (y @ wq).view(1, t, 4, 8)
    k = (y @ wk).view(1, t, 2, 8)  # GQA: 2 kv heads for 4 query heads
    v = (y @ wv).view(1, t, 2, 8)
    angles = torch.arange(t, dtype=torch.float32, device=x.device)[:, None] * 0.1 * torch.arange(
        1, 5, dtype=torch.float32, device=x.device)
    q, k = kernels.apply_rope(q, k, angles.cos(), angles.sin(), inplace=True)
    x = x + kernels.flash_attention(q, k, v, causal=True, doc_ids=docs).reshape(1, t, 32) @ wo
    gate, up = (kernels.rms_norm(x, norm, 1e-6) @ w_up).chunk(2, dim=-1)
    x = x + kernels.swiglu(gate.contiguous(), up.contiguous()) @ w_down
    out = kernels.linear_cross_entropy(x, head, labels, ignore_ids=[5], reduction=reduction)
    if reduction == "none":  # weights per token, so the backward sees more than a sum
        return (out * torch.linspace(0.5, 1.5, t, device=x.device)).sum()
    return out


def _params():
    r = _gen_randn(1)
    shapes = [(40, 32), (32, 32), (32, 16), (32, 16), (32, 32), (32, 64), (32, 32), (32,),
              (40, 32)]
    return [(r(*s) * (0.3 if len(s) == 2 else 1.0) + (1.0 if len(s) == 1 else 0.0))
            .requires_grad_() for s in shapes]


@pytest.mark.parametrize("backend,reduction,autocast", [
    pytest.param("triton", "mean", False, id="triton-mean", marks=pytest.mark.triton),
    pytest.param("triton", "none", False, id="triton-none", marks=pytest.mark.triton),
    pytest.param("triton", "mean", True, id="triton-mean-bf16-autocast",
                 marks=pytest.mark.triton),
    pytest.param("torch", "mean", False, id="torch-mean"),
])
def test_compiled_step_is_one_graph_and_matches_eager(monkeypatch, backend, reduction, autocast):
    monkeypatch.setenv("LLMCORE_KERNELS", backend)
    gen = torch.Generator().manual_seed(2)
    ids = torch.randint(0, 40, (1, 21), generator=gen).to(DEVICE)
    labels = torch.randint(0, 40, (21,), generator=gen).to(DEVICE)
    labels[[3, 8]] = torch.tensor([-100, 5], device=DEVICE)  # ignore_index and an ignored id
    docs = torch.tensor([[0] * 9 + [1] * 12], device=DEVICE)
    params = _params()
    # bf16 autocast, as training on a GPU runs: the ops then see bf16 projections
    amp = torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=autocast)

    with amp:
        eager = _block_step(params, ids, labels, docs, reduction)
    eager.backward()
    eager_grads = [p.grad.clone() for p in params]
    for p in params:
        p.grad = None

    torch._dynamo.reset()
    step = torch.compile(_block_step, fullgraph=True, backend="aot_eager")  # a break raises
    with amp:
        compiled = step(params, ids, labels, docs, reduction)
    compiled.backward()
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)
    for i, (p, g) in enumerate(zip(params, eager_grads)):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-6, msg=f"param {i}")
    with torch.no_grad(), amp:  # evaluation: no autograd, so in-place RoPE without its Function
        torch.testing.assert_close(step(params, ids, labels, docs, reduction), eager,
                                   rtol=1e-5, atol=1e-6)
