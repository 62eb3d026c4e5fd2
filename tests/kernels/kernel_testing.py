"""Shared helpers of the kernel tests: device, per-dtype tolerances (the one place they are
stated), forward+backward runner, and named comparisons against float64 references."""

import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# (atol, rtol) against the float64 reference, the rtol relative to the reference's largest
# magnitude. For fp16/bf16 a kernel may also err up to LOWP_FACTOR times what the PyTorch path
# itself errs at that dtype (the flash-attention test rule: the bound scales with the problem).
TOLERANCES = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (1e-5, 2e-5),
    torch.float16: (1e-3, 2e-3),
    torch.bfloat16: (8e-3, 1.6e-2),
}
LOWP_FACTOR = 2.0

DTYPE_IDS = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16",
             torch.float64: "fp64"}


def assert_close(name, ref, out, dtype, torch_out=None):
    """Fail with ``name`` and the error if ``out`` strays from the float64 ``ref``."""
    assert out.shape == ref.shape, f"{name}: shape {tuple(out.shape)} != {tuple(ref.shape)}"
    out, ref = out.double(), ref.double()
    assert torch.isfinite(out).all(), f"{name}: non-finite values in the output"
    err = (out - ref).abs().max().item() if ref.numel() else 0.0
    atol, rtol = TOLERANCES[dtype]
    bound = atol + rtol * (ref.abs().max().item() if ref.numel() else 0.0)
    if torch_out is not None and dtype in (torch.float16, torch.bfloat16):
        bound = max(bound, LOWP_FACTOR * (torch_out.double() - ref).abs().max().item())
    assert err <= bound, f"{name} ({DTYPE_IDS[dtype]}): max abs error {err:.3e} > {bound:.3e}"


def forward_backward(fn, tensors, cotangents=None, seed=0, frozen=()):
    """Run ``fn(*tensors)`` on fresh leaves and backpropagate fixed random cotangents.

    Float tensors become leaves that require grad, except the positions in ``frozen``;
    others pass through. ``cotangents`` (one per output) default to a seeded normal draw.
    Returns (outputs tuple, grads list with None where no grad is taken, cotangents used).
    """
    leaves = [t.detach().clone().requires_grad_(t.is_floating_point() and i not in frozen)
              for i, t in enumerate(tensors)]
    out = fn(*leaves)
    outs = out if isinstance(out, tuple) else (out,)
    if cotangents is None:
        gen = torch.Generator(device="cpu").manual_seed(seed)
        cotangents = [torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o.device)
                      for o in outs]
    torch.autograd.backward(outs, [c.to(o.dtype) for o, c in zip(outs, cotangents)])
    grads = [leaf.grad if leaf.requires_grad else None for leaf in leaves]
    return outs, grads, cotangents


def compare_op(names, fn, ref_fn, tensors, dtype, torch_fn=None, frozen=()):
    """Compare outputs and every gradient of ``fn`` at ``dtype`` with ``ref_fn`` in float64.

    ``tensors`` are float64 (or integer) inputs; floats are rounded to ``dtype`` first so the
    reference sees exactly the kernel's inputs. ``names`` names the outputs then the float
    inputs' gradients, e.g. ``["o", "dq", "dk", "dv"]``. ``torch_fn`` (the PyTorch path at the
    same dtype) sets the half-precision bound. Inputs at positions ``frozen`` take no grad.
    """
    low = [t.to(dtype) if t.is_floating_point() else t for t in tensors]
    ref_in = [t.double() if t.is_floating_point() else t for t in low]
    ref_outs, ref_grads, cot = forward_backward(ref_fn, ref_in, frozen=frozen)
    outs, grads, _ = forward_backward(fn, low, cot, frozen=frozen)
    expected = list(ref_outs) + [g for g in ref_grads if g is not None]
    got = list(outs) + [g for i, g in enumerate(grads) if ref_grads[i] is not None]
    base = [None] * len(got)
    if torch_fn is not None and dtype in (torch.float16, torch.bfloat16):
        b_outs, b_grads, _ = forward_backward(torch_fn, low, cot, frozen=frozen)
        base = list(b_outs) + [g for g in b_grads if g is not None]
    assert len(names) == len(expected), f"names {names} for {len(expected)} compared tensors"
    for name, r, o, b in zip(names, expected, got, base):
        assert o is not None, f"{name}: no gradient"
        assert_close(name, r, o, dtype, b)
