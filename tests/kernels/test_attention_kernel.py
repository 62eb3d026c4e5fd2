"""Attention: the Triton flash attention (interpreted on CPU) and the SDPA path vs a float64
naive softmax, output and dq, dk, dv; GQA, ragged lengths, padded head dims, decoding with
fewer queries than keys (with documents: the last Tq rows of the full sequence), and document
masking (packed == each document alone)."""

import pytest
import torch

import kernels
from kernel_testing import DEVICE, assert_close, compare_op, forward_backward
from kernels.attention import attention_naive, attention_torch

NAMES = ["o", "dq", "dk", "dv"]


def _qkv(b, t_q, t_k, h, h_kv, d, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(b, t_q, h, d, generator=gen, dtype=torch.float64)
    k = torch.randn(b, t_k, h_kv, d, generator=gen, dtype=torch.float64)
    v = torch.randn(b, t_k, h_kv, d, generator=gen, dtype=torch.float64)
    return [x.to(DEVICE) for x in (q, k, v)]


def _docs(b, lengths):
    ids = torch.cat([torch.full((n,), i) for i, n in enumerate(lengths)])
    return ids.expand(b, -1).contiguous().to(DEVICE)


def _call(fn, causal, doc_ids=None, scale=None):
    return lambda q, k, v: fn(q, k, v, causal, doc_ids, scale)


# (B, Tq, Tk, H, Hkv, D, causal)
SHAPES = [
    pytest.param((2, 45, 45, 4, 2, 32, True), id="B2-T45-H4-KV2-D32-causal"),
    pytest.param((1, 33, 33, 3, 3, 16, False), id="B1-T33-H3-KV3-D16-full"),
    pytest.param((1, 21, 21, 2, 1, 64, True), id="B1-T21-H2-KV1-D64-causal"),
    pytest.param((1, 19, 19, 2, 1, 96, True), id="B1-T19-H2-KV1-D96-causal"),
    pytest.param((1, 17, 17, 2, 2, 128, False), id="B1-T17-H2-KV2-D128-full"),
    pytest.param((2, 7, 45, 4, 1, 32, True), id="B2-Tq7-Tk45-H4-KV1-D32-decode"),
    # lengths on the tile grid: the kernels drop their bounds checks (EVEN)
    pytest.param((1, 64, 64, 4, 2, 32, True), id="B1-T64-H4-KV2-D32-causal-even"),
    pytest.param((1, 64, 64, 2, 2, 32, False), id="B1-T64-H2-KV2-D32-full-even"),
    pytest.param((1, 32, 64, 2, 1, 32, True), id="B1-Tq32-Tk64-H2-KV1-D32-decode-even"),
]


@pytest.mark.triton
@pytest.mark.parametrize("shape", SHAPES)
def test_triton_matches_float64(use_triton, shape):
    b, t_q, t_k, h, h_kv, d, causal = shape
    compare_op(NAMES, _call(kernels.flash_attention, causal), _call(attention_naive, causal),
               _qkv(b, t_q, t_k, h, h_kv, d), torch.float32)


@pytest.mark.triton
@pytest.mark.parametrize("dtype", [pytest.param(torch.bfloat16, id="bf16"),
                                   pytest.param(torch.float16, id="fp16")])
def test_triton_half_precision(use_triton, dtype):
    compare_op(NAMES, _call(kernels.flash_attention, True), _call(attention_naive, True),
               _qkv(2, 45, 45, 4, 2, 32), dtype, torch_fn=_call(attention_torch, True))


@pytest.mark.triton
def test_triton_custom_scale_and_document_mask(use_triton):
    docs = _docs(2, [20, 13, 12])
    compare_op(NAMES, _call(kernels.flash_attention, True, docs, 0.3),
               _call(attention_naive, True, docs, 0.3), _qkv(2, 45, 45, 4, 2, 32),
               torch.float32)


@pytest.mark.triton
def test_triton_document_mask_on_the_tile_grid(use_triton):
    # T = 64 drops the bounds checks; documents start off the tile grid
    docs = _docs(1, [20, 30, 14])
    compare_op(NAMES, _call(kernels.flash_attention, True, docs),
               _call(attention_naive, True, docs), _qkv(1, 64, 64, 4, 2, 32), torch.float32)


def _packed_equals_alone(lengths, causal):
    """Attention over packed documents equals attention over each document on its own,
    outputs and gradients, and editing one document leaves the others bit-identical."""
    t = sum(lengths)
    q, k, v = _qkv(1, t, t, 4, 2, 32, seed=3)
    q, k, v = (x.float() for x in (q, k, v))
    docs = _docs(1, lengths)
    attn = _call(kernels.flash_attention, causal, docs)
    outs, grads, cot = forward_backward(attn, [q, k, v])
    start = 0
    for n in lengths:
        sl = slice(start, start + n)
        alone, alone_grads, _ = forward_backward(
            _call(kernels.flash_attention, causal), [q[:, sl], k[:, sl], v[:, sl]],
            [cot[0][:, sl]])
        for name, packed, single in zip(NAMES, [outs[0]] + grads, [alone[0]] + alone_grads):
            assert_close(f"{name}[doc {start}:{start + n}]", single.double(), packed[:, sl],
                         torch.float32)
        start += n
    # change document 0: the outputs of every other document must not move at all
    q2, k2, v2 = q.clone(), k.clone(), v.clone()
    for x in (q2, k2, v2):
        x[:, : lengths[0]] += 1.0
    moved = attn(q2, k2, v2)
    assert not torch.equal(moved[:, : lengths[0]], outs[0][:, : lengths[0]].detach())
    assert torch.equal(moved[:, lengths[0]:], outs[0][:, lengths[0]:].detach())


@pytest.mark.triton
@pytest.mark.parametrize("causal", [pytest.param(True, id="causal"),
                                    pytest.param(False, id="full")])
def test_triton_packed_documents_equal_each_document_alone(use_triton, causal):
    _packed_equals_alone([20, 13, 12], causal)


def test_torch_packed_documents_equal_each_document_alone(use_torch):
    _packed_equals_alone([20, 13, 12], True)


@pytest.mark.triton
def test_triton_and_torch_agree_on_a_reused_document_id(use_triton):
    # ids compare by value: a document id that reappears later in the row is one document
    ids = torch.tensor([[0, 0, 1, 1, 1, 0, 0, 2, 2, 0, 1, 1, 1, 1, 2, 2, 0, 0, 0, 0]],
                       device=DEVICE)
    compare_op(NAMES, _call(kernels.flash_attention, True, ids),
               _call(attention_naive, True, ids), _qkv(1, 20, 20, 2, 1, 16), torch.float32)


def _last_rows_of_full(causal, doc_ids):
    """Reference for Tq < Tk that does not rely on how a mask aligns fewer queries: attention
    of all Tk positions (zero queries in front of the real ones), keeping the last Tq rows."""
    def ref(q, k, v):
        pad = q.new_zeros(q.shape[0], k.shape[1] - q.shape[1], *q.shape[2:])
        return attention_naive(torch.cat([pad, q], dim=1), k, v, causal, doc_ids)[:, -q.shape[1]:]
    return ref


# (B, Tq, Tk, H, Hkv, D, document lengths, causal): the last Tq positions span a document
# boundary and hold other documents than the first Tq
DECODE_DOCS = [
    pytest.param((2, 9, 45, 4, 2, 32, [20, 19, 6], True), id="B2-Tq9-Tk45-H4-KV2-D32-causal"),
    pytest.param((1, 7, 37, 2, 1, 16, [11, 21, 5], False), id="B1-Tq7-Tk37-H2-KV1-D16-full"),
    pytest.param((1, 32, 64, 2, 1, 32, [40, 17, 7], True), id="B1-Tq32-Tk64-H2-KV1-D32-causal-even"),
]


@pytest.mark.parametrize("shape", DECODE_DOCS)
def test_naive_reference_takes_the_last_doc_ids_when_decoding(shape):
    b, t_q, t_k, h, h_kv, d, lengths, causal = shape
    docs = _docs(b, lengths)
    compare_op(NAMES, _call(attention_naive, causal, docs), _last_rows_of_full(causal, docs),
               _qkv(b, t_q, t_k, h, h_kv, d, seed=4), torch.float64)


@pytest.mark.triton
@pytest.mark.parametrize("shape", DECODE_DOCS)
def test_triton_decode_with_documents_matches_the_full_sequence(use_triton, shape):
    b, t_q, t_k, h, h_kv, d, lengths, causal = shape
    docs = _docs(b, lengths)
    compare_op(NAMES, _call(kernels.flash_attention, causal, docs), _last_rows_of_full(causal, docs),
               _qkv(b, t_q, t_k, h, h_kv, d, seed=4), torch.float32)


@pytest.mark.parametrize("shape", DECODE_DOCS)
def test_torch_decode_with_documents_matches_the_full_sequence(use_torch, shape):
    b, t_q, t_k, h, h_kv, d, lengths, causal = shape
    docs = _docs(b, lengths)
    compare_op(NAMES, _call(kernels.flash_attention, causal, docs), _last_rows_of_full(causal, docs),
               _qkv(b, t_q, t_k, h, h_kv, d, seed=4), torch.float64)


@pytest.mark.parametrize("shape", [pytest.param(s.values[0], id=s.id) for s in SHAPES[:2]])
def test_torch_path_matches_float64(use_torch, shape):
    b, t_q, t_k, h, h_kv, d, causal = shape
    docs = _docs(b, [t_k // 2, t_k - t_k // 2])
    for doc_ids in (None, docs):
        compare_op(NAMES, _call(kernels.flash_attention, causal, doc_ids),
                   _call(attention_naive, causal, doc_ids), _qkv(b, t_q, t_k, h, h_kv, d),
                   torch.float64)


def test_torch_path_decode_sees_the_whole_cache(use_torch):
    # one query against a 9-key cache: its causal row is all keys (bottom-right alignment)
    q, k, v = _qkv(1, 1, 9, 2, 1, 8)
    out = kernels.flash_attention(q, k, v, causal=True)
    torch.testing.assert_close(out, attention_naive(q, k, v, causal=False))


def test_gqa_head_count_is_checked():
    q, k, v = _qkv(1, 5, 5, 4, 3, 8)
    with pytest.raises(ValueError, match="n_kv_heads=3 must divide n_heads=4"):
        kernels.flash_attention(q, k, v)


def test_heads_wider_than_the_triton_kernels(monkeypatch):
    q, k, v = _qkv(1, 5, 5, 2, 1, 136)
    monkeypatch.setenv("LLMCORE_KERNELS", "triton")
    with pytest.raises(ValueError, match="Triton kernels take head dims up to 128, got 136"):
        kernels.flash_attention(q.float(), k.float(), v.float())
    # auto on a GPU would pick Triton: such heads go to PyTorch's SDPA instead
    monkeypatch.setenv("LLMCORE_KERNELS", "auto")
    monkeypatch.setattr(kernels.attention._dispatch, "_all_cuda", lambda tensors: True)

    def no_triton(*args):
        raise AssertionError("the Triton path ran")
    import kernels.attention.function as function
    monkeypatch.setattr(function, "attention_triton", no_triton)
    out = kernels.flash_attention(q.float(), k.float(), v.float())  # a dtype Triton takes
    torch.testing.assert_close(out.double(), attention_naive(q, k, v, True), rtol=1e-4,
                               atol=1e-5)


def test_integer_inputs_are_an_error(use_torch):
    q, k, v = _qkv(1, 5, 5, 2, 1, 8)
    with pytest.raises(TypeError, match="q, k, v must be floating point, got torch.int64"):
        kernels.flash_attention(q.long(), k.long(), v.long())


def test_doc_ids_shape_is_checked():
    q, k, v = _qkv(2, 5, 5, 2, 1, 8)
    with pytest.raises(ValueError, match=r"doc_ids must be \[B, Tk\] = \[2, 5\], got \(1, 5\)"):
        kernels.flash_attention(q, k, v, doc_ids=torch.zeros(1, 5, dtype=torch.long))
