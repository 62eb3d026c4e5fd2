"""RoPE: the Triton kernel (interpreted on CPU) and the PyTorch path vs float64, in the
Hugging Face Llama rotate_half convention (checked against transformers itself)."""

import pytest
import torch

import kernels
from kernel_testing import DEVICE, compare_op
from kernels.rope import apply_rope_torch
from kernels.rope_reference import apply_rope_reference

DTYPES = [pytest.param(d, id=n) for d, n in
          [(torch.float32, "fp32"), (torch.float16, "fp16"), (torch.bfloat16, "bf16")]]


def _tables(b, t, d, per_sample, gen):
    pos = torch.arange(t, dtype=torch.float64)[None].expand(b, t)
    if per_sample:
        pos = pos + torch.randint(0, 50, (b, 1), generator=gen)
    inv_freq = 10000.0 ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    ang = pos[..., None] * inv_freq  # (B, T, D/2)
    if not per_sample:
        ang = ang[0]
    return ang.cos().to(DEVICE), ang.sin().to(DEVICE)


def _inputs(b, t, h, h_kv, d, per_sample=False, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(b, t, h, d, generator=gen, dtype=torch.float64).to(DEVICE)
    k = torch.randn(b, t, h_kv, d, generator=gen, dtype=torch.float64).to(DEVICE)
    return [q, k, *_tables(b, t, d, per_sample, gen)]


CASES = [
    pytest.param((2, 45, 4, 2, 32, False), id="B2-T45-H4-KV2-D32"),
    pytest.param((1, 9, 3, 1, 18, True), id="B1-T9-H3-KV1-D18-per-sample"),
]


@pytest.mark.triton
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_triton_matches_float64(use_triton, case, dtype):
    compare_op(["q_rot", "k_rot", "dq", "dk"], kernels.apply_rope, apply_rope_reference,
               _inputs(*case), dtype, torch_fn=apply_rope_torch, frozen=(2, 3))


@pytest.mark.triton
def test_triton_takes_views_of_a_fused_projection(use_triton):
    # q and k sliced out of one [B, T, H + 2 Hkv, D] projection are strided views
    q, k, cos, sin = _inputs(2, 11, 6, 2, 16)
    fused = torch.cat((q, k, k), dim=2)
    compare_op(["q_rot", "k_rot", "dfused"],
               lambda f, c, s: kernels.apply_rope(f[:, :, :6], f[:, :, 6:8], c, s),
               lambda f, c, s: apply_rope_reference(f[:, :, :6], f[:, :, 6:8], c, s),
               [fused, cos, sin], torch.float32, frozen=(1, 2))


def test_torch_path_matches_float64(use_torch):
    compare_op(["q_rot", "k_rot", "dq", "dk"], kernels.apply_rope, apply_rope_reference,
               _inputs(2, 45, 4, 2, 32, True), torch.float64, frozen=(2, 3))


def test_matches_transformers_llama_rotary():
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    q, k, cos, sin = _inputs(2, 13, 4, 2, 16, per_sample=True)
    full_cos, full_sin = torch.cat((cos, cos), -1), torch.cat((sin, sin), -1)  # (B, T, D)
    hf_q, hf_k = apply_rotary_pos_emb(q.transpose(1, 2), k.transpose(1, 2), full_cos, full_sin)
    ours_q, ours_k = kernels.apply_rope(q, k, cos, sin)
    torch.testing.assert_close(ours_q, hf_q.transpose(1, 2), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ours_k, hf_k.transpose(1, 2), rtol=1e-12, atol=1e-12)


def test_table_shape_is_checked():
    q, k, cos, sin = _inputs(1, 5, 2, 1, 8)
    with pytest.raises(ValueError, match=r"apply_rope: cos \(5, 8\) and sin \(5, 8\) must be"):
        kernels.apply_rope(q, k, torch.cat((cos, cos), -1), torch.cat((sin, sin), -1))


def _rotate_fused_in_place(fused, cos, sin):
    """Rotate the q (heads 0-5) and k (heads 6-7) slices of a fused projection in place;
    the v slice (heads 8-9) is left alone. Returns the whole projection."""
    f = fused.clone()  # a non-leaf, as a projection's output is
    q, k = kernels.apply_rope(f[:, :, :6], f[:, :, 6:8], cos, sin, inplace=True)
    assert q.data_ptr() == f.data_ptr() and k.data_ptr() == f[:, :, 6:8].data_ptr()
    return f


def _rotate_fused_ref(fused, cos, sin):
    q_rot, k_rot = apply_rope_reference(fused[:, :, :6], fused[:, :, 6:8], cos, sin)
    return torch.cat((q_rot, k_rot, fused[:, :, 8:]), dim=2)


@pytest.mark.parametrize("backend", [pytest.param("torch", id="torch"),
                                     pytest.param("triton", id="triton",
                                                  marks=pytest.mark.triton)])
@pytest.mark.parametrize("dtype", [pytest.param(torch.float32, id="fp32"),
                                   pytest.param(torch.bfloat16, id="bf16")])
def test_inplace_rotates_the_projection_itself(monkeypatch, backend, dtype):
    # the model's use: q and k are strided slices of fresh projections, overwritten in place;
    # values and every gradient (through the untouched v slice too) match float64
    monkeypatch.setenv("LLMCORE_KERNELS", backend)
    q, k, cos, sin = _inputs(2, 11, 6, 2, 16)
    fused = torch.cat((q, k, k), dim=2)
    compare_op(["fused", "dfused"], _rotate_fused_in_place, _rotate_fused_ref,
               [fused, cos, sin], dtype, frozen=(1, 2))


def test_inplace_equals_out_of_place_and_refuses_strided_heads():
    q, k, cos, sin = (x.float() for x in _inputs(2, 13, 4, 2, 16))
    q_rot, k_rot = kernels.apply_rope(q, k, cos, sin)
    q2, k2 = q.clone(), k.clone()
    out_q, out_k = kernels.apply_rope(q2, k2, cos, sin, inplace=True)
    assert out_q is q2 and out_k is k2
    assert torch.equal(q2, q_rot) and torch.equal(k2, k_rot)
    # every other element of a wider buffer: same shape, last-dim stride 2
    q_strided = torch.zeros(*q.shape[:-1], 2 * q.shape[-1], device=DEVICE)[..., ::2]
    with pytest.raises(ValueError, match="inplace needs q and k with a contiguous last dim"):
        kernels.apply_rope(q_strided, k, cos, sin, inplace=True)
