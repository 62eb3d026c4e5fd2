"""SAM's multi-tensor ops: Triton kernels (interpreted on CPU) and the PyTorch path against
float64 references — squared norm (plain and ASAM), perturb (the saved copy is bitwise, the
edit matches p + scale * g), restore (bitwise, NaN/inf/-0 included), grouping of mixed lists —
and every kernel configuration compiled ahead of time for sm_80 / sm_90 without a GPU."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kernel_testing import DEVICE, assert_close
from kernels import sam
from kernels.sam import grad_sq_norm, perturb_, restore_
from kernels.sam_reference import perturb_reference, sq_norm_reference

DTYPES = [pytest.param(d, id=n) for d, n in
          [(torch.float32, "fp32"), (torch.float16, "fp16"), (torch.bfloat16, "bf16")]]
SHAPES = [(9,), (41, 3), (341,), (7, 11, 5)]  # odd sizes; 341 spans several chunks below


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of 64 elements walked 32 at a time: several programs per tensor and several
    blocks per program, on shapes the interpreter runs quickly."""
    import kernels.sam_triton as st

    monkeypatch.setattr(st, "CHUNK", 64)
    monkeypatch.setattr(st, "BLOCK", 32)


def _tensors(dtype, seed=0, shapes=SHAPES, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(s, generator=gen, dtype=torch.float64) * scale).to(dtype).to(DEVICE) for s in shapes]


@pytest.mark.triton
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("adaptive", [None, 0.01], ids=["sam", "asam"])
def test_triton_sq_norm_matches_float64(use_triton, small_chunks, dtype, adaptive):
    grads, params = _tensors(dtype, 0), _tensors(dtype, 1)
    got = grad_sq_norm(grads, params, adaptive_eta=adaptive)
    assert got.dtype == torch.float32 and got.dim() == 0
    ref = sq_norm_reference(grads, params, adaptive)
    # accumulated in fp32 over ~1k terms whatever the storage dtype
    assert abs(got.item() - ref.item()) <= 1e-5 * ref.item(), (got.item(), ref.item())


@pytest.mark.triton
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("adaptive", [None, 0.01], ids=["sam", "asam"])
def test_triton_perturb_saves_bits_and_moves_params(use_triton, small_chunks, dtype, adaptive):
    params, grads = _tensors(dtype, 0), _tensors(dtype, 1)
    before = [p.clone() for p in params]
    saved = [torch.empty_like(p) for p in params]  # NaN-filled by the conftest
    scale = 0.37
    perturb_(params, grads, scale, saved, adaptive_eta=adaptive)
    ref = perturb_reference(before, grads, scale, adaptive)
    torch_out = [p.clone() for p in before]
    sam.perturb_torch_(torch_out, grads, scale, [torch.empty_like(p) for p in before], adaptive)
    for i, (s, b) in enumerate(zip(saved, before)):
        assert torch.equal(s, b), f"saved[{i}] is not the exact parameter"
        assert_close(f"p[{i}]", ref[i], params[i], dtype, torch_out[i])


@pytest.mark.triton
@pytest.mark.parametrize("dtype", DTYPES)
def test_triton_restore_is_bitwise(use_triton, small_chunks, dtype):
    params, grads = _tensors(dtype, 0), _tensors(dtype, 1, scale=1e3)
    params[0][:4] = torch.tensor([float("nan"), float("inf"), -0.0, float("-inf")], dtype=dtype)
    bits = [p.clone() for p in params]
    saved = [torch.empty_like(p) for p in params]
    perturb_(params, grads, 1.0, saved)
    assert not torch.equal(params[1], bits[1])
    restore_(params, saved)
    width = torch.int32 if dtype == torch.float32 else torch.int16
    for i, (p, b) in enumerate(zip(params, bits)):
        assert torch.equal(p.view(width), b.view(width)), f"params[{i}] not restored bit for bit"


@pytest.mark.triton
def test_triton_mixed_list_groups_by_dtype_and_routes_views(use_triton, small_chunks):
    # fp32 params with bf16 grads, a bf16 param, and a non-contiguous view (PyTorch path)
    base = _tensors(torch.float32, 0, [(13, 6), (50,)])
    half = _tensors(torch.bfloat16, 2, [(21,)])
    params = [base[0].t(), base[1], half[0]]
    grads = [g.to(p.dtype) if i == 2 else g for i, (p, g) in
             enumerate(zip(params, [torch.ones(6, 13, device=DEVICE),
                                  torch.linspace(-1, 1, 50, device=DEVICE).bfloat16(),
                                  torch.ones(21, device=DEVICE)]))]
    before = [p.clone() for p in params]
    saved = [torch.empty_like(p) for p in params]
    perturb_(params, grads, 0.5, saved)
    for i, (p, b, g) in enumerate(zip(params, before, grads)):
        assert torch.equal(saved[i], b), f"saved[{i}]"
        assert_close(f"p[{i}]", b.double() + 0.5 * g.double(), p, p.dtype)
    expected = sum(g.double().pow(2).sum() for g in grads)
    assert grad_sq_norm(grads).item() == pytest.approx(expected.item(), rel=1e-6)
    restore_(params, saved)
    assert all(torch.equal(p, b) for p, b in zip(params, before))


@pytest.mark.parametrize("adaptive", [None, 0.01], ids=["sam", "asam"])
def test_torch_path_matches_float64(use_torch, adaptive):
    params, grads = _tensors(torch.float64, 0), _tensors(torch.float64, 1)
    assert_close("sq_norm", sq_norm_reference(grads, params, adaptive).to(DEVICE),
                 grad_sq_norm(grads, params, adaptive).double(), torch.float32)
    before = [p.clone() for p in params]
    saved = [torch.empty_like(p) for p in params]
    perturb_(params, grads, -0.2, saved, adaptive_eta=adaptive)
    for i, r in enumerate(perturb_reference(before, grads, -0.2, adaptive)):
        assert torch.equal(saved[i], before[i])
        assert_close(f"p[{i}]", r, params[i], torch.float64)
    restore_(params, saved)
    assert all(torch.equal(p, b) for p, b in zip(params, before))


def test_non_finite_gradient_gives_non_finite_norm(use_torch):
    grads = _tensors(torch.float32, 0)
    grads[2][5] = float("inf")
    assert not torch.isfinite(grad_sq_norm(grads))


def test_mismatched_lists_are_named():
    p = [torch.zeros(3), torch.zeros(4)]
    with pytest.raises(ValueError, match="perturb_: 2 params but 1 grads"):
        perturb_(p, [torch.zeros(3)], 1.0, [torch.zeros(3), torch.zeros(4)])
    with pytest.raises(ValueError, match=r"restore_: params\[1\] \(4,\) torch.float32 does not match "
                                         r"saved\[1\] \(4,\) torch.bfloat16"):
        restore_(p, [torch.zeros(3), torch.zeros(4, dtype=torch.bfloat16)])
    with pytest.raises(ValueError, match="adaptive_eta needs params"):
        grad_sq_norm(p, adaptive_eta=0.01)


# Compiled in a fresh process: under TRITON_INTERPRET the kernels cannot be compiled.
_AOT = r"""
import sys
sys.path.insert(0, sys.argv[2])
import triton, triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
import kernels.sam_triton as st
SIG = {"g_addr": "*i64", "p_addr": "*i64", "s_addr": "*i64", "dst_addr": "*i64", "src_addr": "*i64",
       "numel": "*i64", "chunk_tensor": "*i32", "chunk_start": "*i64", "partial": "*fp32",
       "eta": "fp32", "scale": "fp32"}
sizes = {"CHUNK": st.CHUNK, "BLOCK": st.BLOCK}
jobs = []
for pd, bits in ((tl.float32, tl.int32), (tl.bfloat16, tl.int16), (tl.float16, tl.int16)):
    for gd in {pd, tl.float32}:
        for ad in (False, True):
            jobs.append((st._sq_norm_kernel, {"G_DTYPE": gd, "P_DTYPE": pd, "ADAPTIVE": ad, **sizes}))
            jobs.append((st._perturb_kernel, {"P_DTYPE": pd, "P_BITS": bits, "G_DTYPE": gd, "ADAPTIVE": ad, **sizes}))
    jobs.append((st._copy_kernel, {"BITS": bits, **sizes}))
for kernel, constexprs in jobs:
    sig = {n: "constexpr" if n in constexprs else SIG[n] for n in kernel.arg_names}
    triton.compile(ASTSource(kernel, signature=sig, constexprs=constexprs),
                   target=GPUTarget("cuda", int(sys.argv[1]), 32))
    print("ok", kernel.__name__, constexprs)
"""


@pytest.mark.triton
@pytest.mark.parametrize("sm", [pytest.param(80, id="sm80"), pytest.param(90, id="sm90")])
def test_every_sam_kernel_compiles_for_the_gpu(sm):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    root = str(Path(__file__).resolve().parents[2])
    done = subprocess.run([sys.executable, "-c", _AOT, str(sm), root], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, f"sm_{sm}:\n{done.stdout}\n{done.stderr[-3000:]}"
    assert done.stdout.count("ok ") == 23, done.stdout  # 5 fp32, 9 bf16, 9 fp16 configurations
