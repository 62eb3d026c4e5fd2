"""Future-summary kernel: the Triton path (interpreted on CPU) and the PyTorch path vs the dense
float64 definition: loss, dW, dh of the MTP heads and of the FSP head, per-term sums and
counts, for several head counts, bag sizes (empty, one, many, duplicates), ignored rows and
ids, token weights and normalisations, across several row chunks and vocabulary blocks."""

import importlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from kernel_testing import DEVICE, assert_close, compare_op
from kernels.future_summary_reference import future_summary_reference

fs = importlib.import_module("kernels.future_summary")

N, D, V = 9, 41, 97
PAUSE = 7  # an id passed in ignore_ids


def _inputs(k=3, m=5, n=N, d=D, vocab=V, seed=0):
    """w, mtp_h, fsp_h (float64) and the integer targets: labels with ignored entries, bags
    padded with -1 (row 4 empty, row 1 a single id, row 6 full width, row 8 a duplicate)."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(vocab, d, generator=gen, dtype=torch.float64) * d ** -0.5 * 3
    mtp_h = torch.randn(k, n, d, generator=gen, dtype=torch.float64)
    fsp_h = torch.randn(n, d, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, vocab, (k, n), generator=gen)
    labels[0, 2] = -100
    labels[-1, 5] = PAUSE
    labels[-1, 0] = -100
    bag = torch.stack([torch.randperm(vocab, generator=gen)[:m] for _ in range(n)])
    lengths = torch.randint(0, m + 1, (n,), generator=gen)
    lengths[4], lengths[1], lengths[6] = 0, min(1, m), m
    bag = torch.where(torch.arange(m)[None, :] < lengths[:, None], bag, -1)
    if m >= 2:
        bag[8, :2] = bag[8, 0]  # a repeated id counts twice on both sides
    rows = torch.ones(n, dtype=torch.bool)
    rows[3] = False
    tw = torch.rand(vocab, generator=gen, dtype=torch.float64) * 2 + 0.5
    return [t.to(DEVICE) for t in (w, mtp_h, fsp_h)], [t.to(DEVICE) for t in (labels, bag, rows, tw)]


CASES = [
    pytest.param(dict(k=1, m=1), id="K1-M1"),
    pytest.param(dict(k=3, m=5, weighted=True, norm="weight_sum"), id="K3-M5-tfidf-wsum"),
    pytest.param(dict(k=4, m=11, norm="none", mtp_weight=[1.0, 0.5, 0.25, 0.125], fsp_weight=0.3),
                 id="K4-M11-none-weights"),
    pytest.param(dict(k=2, m=16, weighted=True, norm=13.0), id="K2-M16-tfidf-norm13"),
]


def _call(fn, case, targets):
    labels, bag, rows, tw = targets
    opts = dict(mtp_labels=labels, bag=bag, fsp_rows=rows, ignore_ids=[PAUSE],
                token_weight=tw if case.get("weighted") else None, norm=case.get("norm", "vocab"),
                mtp_weight=case.get("mtp_weight"), fsp_weight=case.get("fsp_weight", 1.0))
    return lambda w, mtp_h, fsp_h: fn(w, mtp_h=mtp_h, fsp_h=fsp_h, **opts)[0]


@pytest.fixture
def small_chunks(monkeypatch):
    """Several row chunks and vocabulary blocks at N=9, V=97."""
    import kernels.future_summary_triton as ft
    import kernels.linear_cross_entropy_triton as lt

    monkeypatch.setattr(fs, "CHUNK_ELEMENTS", 4 * V)
    monkeypatch.setattr(ft, "MAX_BLOCK_V", 32)
    monkeypatch.setattr(lt, "MAX_BLOCK_V", 32)


@pytest.mark.triton
@pytest.mark.parametrize("case", CASES)
def test_triton_matches_float64(use_triton, small_chunks, case):
    tensors, targets = _inputs(case["k"], case["m"])
    compare_op(["loss", "dW", "dh_mtp", "dh_fsp"], _call(fs.future_summary_loss, case, targets),
               _call(future_summary_reference, case, targets), tensors, torch.float32)


@pytest.mark.triton
@pytest.mark.parametrize("dtype", [pytest.param(torch.bfloat16, id="bf16"),
                                   pytest.param(torch.float16, id="fp16")])
def test_triton_half_precision(use_triton, small_chunks, dtype, monkeypatch):
    case = dict(k=2, m=5, weighted=True)
    tensors, targets = _inputs(case["k"], case["m"])

    def torch_path(*args):
        monkeypatch.setenv("LLMCORE_KERNELS", "torch")
        try:
            return _call(fs.future_summary_loss, case, targets)(*args)
        finally:
            monkeypatch.setenv("LLMCORE_KERNELS", "triton")

    compare_op(["loss", "dW", "dh_mtp", "dh_fsp"], _call(fs.future_summary_loss, case, targets),
               _call(future_summary_reference, case, targets), tensors, dtype, torch_fn=torch_path)


@pytest.mark.parametrize("case", CASES)
def test_torch_path_matches_float64(use_torch, small_chunks, case):
    tensors, targets = _inputs(case["k"], case["m"])
    compare_op(["loss", "dW", "dh_mtp", "dh_fsp"], _call(fs.future_summary_loss, case, targets),
               _call(future_summary_reference, case, targets), tensors, torch.float64)


@pytest.mark.parametrize("backend", [pytest.param("torch", id="torch"),
                                     pytest.param("triton", id="triton", marks=pytest.mark.triton)])
def test_term_sums_and_counts(monkeypatch, small_chunks, backend):
    monkeypatch.setenv("LLMCORE_KERNELS", backend)
    (w, mtp_h, fsp_h), (labels, bag, rows, tw) = _inputs(k=3, m=5)
    w, mtp_h, fsp_h = w.float(), mtp_h.float(), fsp_h.float()
    opts = dict(mtp_h=mtp_h, mtp_labels=labels, mtp_weight=[1.0, 2.0, 0.5], fsp_h=fsp_h, bag=bag,
                fsp_rows=rows, token_weight=tw, fsp_weight=0.25, ignore_ids=[PAUSE])
    loss, sums, counts = fs.future_summary_loss(w, **opts)
    ref_loss, ref_sums = future_summary_reference(w.double(), **{
        k: (v.double() if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in opts.items()})
    assert_close("loss", ref_loss, loss, torch.float32)
    assert_close("sums", ref_sums, sums, torch.float32)
    keep = (labels != -100) & (labels != PAUSE)
    assert counts.tolist() == keep.sum(1).tolist() + [int(rows.sum())]
    torch.testing.assert_close(loss, sums.sum().to(loss.dtype))


@pytest.mark.parametrize("backend", [pytest.param("torch", id="torch"),
                                     pytest.param("triton", id="triton", marks=pytest.mark.triton)])
def test_ignored_rows_take_no_gradient(monkeypatch, backend):
    monkeypatch.setenv("LLMCORE_KERNELS", backend)
    (w, mtp_h, fsp_h), (labels, bag, rows, _) = _inputs(k=3, m=5)
    mtp_h, fsp_h = mtp_h.float().requires_grad_(True), fsp_h.float().requires_grad_(True)
    loss, _, _ = fs.future_summary_loss(w.float(), mtp_h=mtp_h, mtp_labels=labels, fsp_h=fsp_h, bag=bag,
                                        fsp_rows=rows, ignore_ids=[PAUSE])
    loss.backward()
    assert torch.equal(mtp_h.grad[0, 2], torch.zeros(D, device=DEVICE))
    assert torch.equal(mtp_h.grad[-1, 5], torch.zeros(D, device=DEVICE))
    assert torch.equal(fsp_h.grad[3], torch.zeros(D, device=DEVICE))
    assert (mtp_h.grad[1].abs().sum(-1) > 0).all() and (fsp_h.grad[rows].abs().sum(-1) > 0).all()


def test_no_grad_frozen_weight_and_parts_agree(use_torch):
    (w, mtp_h, fsp_h), (labels, bag, rows, _) = _inputs()
    ref, _ = future_summary_reference(w, mtp_h=mtp_h, mtp_labels=labels, fsp_h=fsp_h, bag=bag, fsp_rows=rows)
    with torch.no_grad():
        got, _, _ = fs.future_summary_loss(w, mtp_h=mtp_h, mtp_labels=labels, fsp_h=fsp_h, bag=bag, fsp_rows=rows)
    torch.testing.assert_close(got, ref)
    # the single-kind wrappers add up to the fused call
    parts = fs.multi_token_cross_entropy(mtp_h, w, labels) + fs.future_bag_bce(fsp_h, w, bag, rows)
    torch.testing.assert_close(parts, ref)
    h = fsp_h.clone().requires_grad_(True)  # weight frozen: only dh is computed
    fs.future_bag_bce(h, w, bag, rows).backward()
    h_ref = fsp_h.clone().requires_grad_(True)
    future_summary_reference(w, fsp_h=h_ref, bag=bag, fsp_rows=rows)[0].backward()
    torch.testing.assert_close(h.grad, h_ref.grad)


def test_backward_scales_by_incoming_gradient_and_runs_once(use_torch):
    # (no torch.autograd.gradcheck: it backpropagates through one graph many times, which this
    # op refuses by design -- its backward scales the forward's gradients in place)
    (w, mtp_h, fsp_h), (labels, bag, rows, _) = _inputs()
    w1 = w.clone().requires_grad_(True)
    (3.0 * fs.future_summary_loss(w1, mtp_h=mtp_h, mtp_labels=labels, fsp_h=fsp_h, bag=bag)[0]).backward()
    w2 = w.clone().requires_grad_(True)
    (3.0 * future_summary_reference(w2, mtp_h=mtp_h, mtp_labels=labels, fsp_h=fsp_h, bag=bag)[0]).backward()
    torch.testing.assert_close(w1.grad, w2.grad)
    loss = fs.future_summary_loss(w.clone().requires_grad_(True), fsp_h=fsp_h, bag=bag)[0]
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backward ran twice"):
        loss.backward()


def test_bad_arguments_are_errors():
    (w, mtp_h, fsp_h), (labels, bag, rows, tw) = _inputs()
    with pytest.raises(ValueError, match=r"mtp_labels \(3, 8\) must be \[K, N\] = \(3, 9\)"):
        fs.future_summary_loss(w, mtp_h=mtp_h, mtp_labels=labels[:, :8])
    with pytest.raises(ValueError, match=r"bag \(8, 5\) must be \[N, M\] with N = 9"):
        fs.future_summary_loss(w, fsp_h=fsp_h, bag=bag[:8])
    with pytest.raises(ValueError, match=r"fsp_h \(9, 40\) must be \[N, d\] with d = 41"):
        fs.future_summary_loss(w, fsp_h=fsp_h[:, :40], bag=bag)
    with pytest.raises(ValueError, match=r"token_weight \(96,\) must be \[V\] = \(97,\)"):
        fs.future_summary_loss(w, fsp_h=fsp_h, bag=bag, token_weight=tw[:96])
    with pytest.raises(ValueError, match="norm='mean' must be one of"):
        fs.future_summary_loss(w, fsp_h=fsp_h, bag=bag, norm="mean")
    with pytest.raises(ValueError, match="mtp_weight has 2 entries for K = 3 heads"):
        fs.future_summary_loss(w, mtp_h=mtp_h, mtp_labels=labels, mtp_weight=[1.0, 1.0])
    with pytest.raises(ValueError, match="give mtp_h"):
        fs.future_summary_loss(w)


@pytest.mark.parametrize("backend", [pytest.param("torch", id="torch"),
                                     pytest.param("triton", id="triton", marks=pytest.mark.triton)])
def test_ids_outside_the_vocabulary_are_errors(monkeypatch, backend):
    # the Triton kernels would silently skip (bag) or misread (labels) such ids
    monkeypatch.setenv("LLMCORE_KERNELS", backend)
    (w, mtp_h, fsp_h), (labels, bag, rows, _) = _inputs()
    w = w.float()
    bad = labels.clone()
    bad[1, 4] = V
    with pytest.raises(ValueError, match=rf"mtp label {V} at position \(1, 4\) is outside the "
                                         rf"vocabulary \[0, {V}\)"):
        fs.future_summary_loss(w, mtp_h=mtp_h.float(), mtp_labels=bad)
    bad_bag = bag.clone()
    bad_bag[2, 0] = V + 3
    with pytest.raises(ValueError, match=rf"bag id {V + 3} at position \(2, 0\) is outside"):
        fs.future_summary_loss(w, fsp_h=fsp_h.float(), bag=bad_bag)
    # ignored labels and rows left out by fsp_rows may hold anything
    bad[1, 4], bad_bag[2, 0], bad_bag[3, 0] = -100, bag[2, 0], V + 3
    fs.future_summary_loss(w, mtp_h=mtp_h.float(), mtp_labels=bad, fsp_h=fsp_h.float(),
                           bag=bad_bag, fsp_rows=rows)


@pytest.mark.parametrize("backend", [pytest.param("torch", id="torch"),
                                     pytest.param("triton", id="triton", marks=pytest.mark.triton)])
def test_all_rows_ignored(monkeypatch, backend):
    monkeypatch.setenv("LLMCORE_KERNELS", backend)
    (w, mtp_h, fsp_h), (labels, bag, _, _) = _inputs()
    w, mtp_h, fsp_h = (t.float().requires_grad_(True) for t in (w, mtp_h, fsp_h))
    loss, sums, counts = fs.future_summary_loss(
        w, mtp_h=mtp_h, mtp_labels=torch.full_like(labels, -100), fsp_h=fsp_h, bag=bag,
        fsp_rows=torch.zeros(N, dtype=torch.bool, device=DEVICE))
    loss.backward()
    assert loss.item() == 0.0 and counts.tolist() == [0, 0, 0, 0] and (sums == 0).all()
    for t in (w, mtp_h, fsp_h):
        assert torch.equal(t.grad, torch.zeros_like(t))


COMPILE = textwrap.dedent("""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    import kernels.future_summary_triton as ft

    block_m = 16  # bags of tau - 1 = 11 ids
    constexprs = {"HAS_WEIGHT": True, "COMPUTE_GRAD": True, "BLOCK_M": block_m,
                  "BLOCK_V": max(16, min(ft.MAX_BLOCK_V, ft.MEMBERSHIP_ELEMENTS // block_m))}
    for sm in (80, 90):
        for dtype in ("bf16", "fp32"):
            signature = {"logits_ptr": "*" + dtype, "bag_ptr": "*i64", "weight_ptr": "*fp32",
                         "loss_ptr": "*fp32", "stride_row": "i32", "stride_bag": "i32", "V": "i32",
                         "M": "i32", "inv_norm": "fp32", "g_scale": "fp32",
                         **{k: "constexpr" for k in constexprs}}
            src = ASTSource(ft._bce_rows_kernel, signature=signature, constexprs=constexprs)
            meta = triton.compile(src, target=GPUTarget("cuda", sm, 32)).metadata
            print("ok", sm, dtype, meta.shared)
""")


@pytest.mark.triton
def test_bce_row_kernel_compiles_for_the_gpu():
    """The interpreter misses compile-only errors: compile ahead of time for sm_80 and sm_90
    (no GPU needed) in a process without TRITON_INTERPRET. The CE rows are
    linear_cross_entropy's kernel, compiled by test_triton_compile.py."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    done = subprocess.run([sys.executable, "-c", COMPILE], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.split("\n")
    assert [tuple(line.split()[:3]) for line in lines if line] == [
        ("ok", str(sm), dt) for sm in (80, 90) for dt in ("bf16", "fp32")], done.stdout
    assert all(int(line.split()[3]) <= 166912 for line in lines if line)  # an A100 block's shared memory
