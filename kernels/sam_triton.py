"""Triton multi-tensor kernels of SAM's two passes: squared gradient norm, perturb with a saved
copy, and restore — each one launch over every tensor of a group.

Imported by ``kernels/sam.py`` on the first Triton call. A launch covers many tensors through
three small device tables: the address of each tensor (int64, cast to a pointer inside the
kernel, as Triton's grouped-GEMM tutorial does), its element count, and a chunk table that maps
each program to (tensor, first element). Chunks are ``CHUNK`` elements, walked ``BLOCK`` at a
time, so a 1B-parameter model needs ~20k programs and tiny norm vectors share a launch with the
embedding. Copies move raw bits (int16/int32 loads and stores): the saved copy and the restore
are bitwise exact in every float dtype, NaN payloads included. Values are computed in fp32.
"""

import torch
import triton
import triton.language as tl

from kernels._triton_utils import check_dtype

BLOCK = 1024
CHUNK = 64 * 1024
"""Elements per program. Large enough to amortise the table lookups, small enough to spread a
single big tensor over every SM. Tests lower it to exercise several chunks per tensor."""

_FLOAT = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}
_BITS = {torch.float32: tl.int32, torch.float16: tl.int16, torch.bfloat16: tl.int16}
_chunk_tables: dict = {}


@triton.jit
def _my_chunk(c, numel, chunk_tensor, chunk_start):
    """Program c's (tensor index, first element, that tensor's element count)."""
    t = tl.load(chunk_tensor + c)
    return t, tl.load(chunk_start + c), tl.load(numel + t)


@triton.jit
def _sq_norm_kernel(g_addr, p_addr, numel, chunk_tensor, chunk_start, partial, eta,
                    G_DTYPE: tl.constexpr, P_DTYPE: tl.constexpr, ADAPTIVE: tl.constexpr,
                    CHUNK: tl.constexpr, BLOCK: tl.constexpr):
    c = tl.program_id(0)
    t, start, n = _my_chunk(c, numel, chunk_tensor, chunk_start)
    g_ptr = tl.load(g_addr + t).to(tl.pointer_type(G_DTYPE))
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for i in range(0, CHUNK, BLOCK):
        offs = start + i + tl.arange(0, BLOCK)
        mask = offs < n
        g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        if ADAPTIVE:
            # ASAM: the norm of T_w g with T_w = |w| + eta
            p_ptr = tl.load(p_addr + t).to(tl.pointer_type(P_DTYPE))
            w = tl.load(p_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            g = g * (tl.abs(w) + eta)
        acc += g * g
    tl.store(partial + c, tl.sum(acc, axis=0))


@triton.jit
def _perturb_kernel(p_addr, g_addr, s_addr, numel, chunk_tensor, chunk_start, scale, eta,
                    P_DTYPE: tl.constexpr, P_BITS: tl.constexpr, G_DTYPE: tl.constexpr,
                    ADAPTIVE: tl.constexpr, CHUNK: tl.constexpr, BLOCK: tl.constexpr):
    c = tl.program_id(0)
    t, start, n = _my_chunk(c, numel, chunk_tensor, chunk_start)
    p_bits = tl.load(p_addr + t).to(tl.pointer_type(P_BITS))
    p_ptr = tl.load(p_addr + t).to(tl.pointer_type(P_DTYPE))
    s_bits = tl.load(s_addr + t).to(tl.pointer_type(P_BITS))
    g_ptr = tl.load(g_addr + t).to(tl.pointer_type(G_DTYPE))
    for i in range(0, CHUNK, BLOCK):
        offs = start + i + tl.arange(0, BLOCK)
        mask = offs < n
        bits = tl.load(p_bits + offs, mask=mask, other=0)
        tl.store(s_bits + offs, bits, mask=mask)  # the exact copy restore_ puts back
        w = bits.to(P_DTYPE, bitcast=True).to(tl.float32)
        g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        if ADAPTIVE:
            tw = tl.abs(w) + eta
            g = g * tw * tw  # ASAM: e = rho T_w^2 g / ||T_w g||
        tl.store(p_ptr + offs, (w + scale * g).to(P_DTYPE), mask=mask)


@triton.jit
def _copy_kernel(dst_addr, src_addr, numel, chunk_tensor, chunk_start,
                 BITS: tl.constexpr, CHUNK: tl.constexpr, BLOCK: tl.constexpr):
    c = tl.program_id(0)
    t, start, n = _my_chunk(c, numel, chunk_tensor, chunk_start)
    dst = tl.load(dst_addr + t).to(tl.pointer_type(BITS))
    src = tl.load(src_addr + t).to(tl.pointer_type(BITS))
    for i in range(0, CHUNK, BLOCK):
        offs = start + i + tl.arange(0, BLOCK)
        mask = offs < n
        tl.store(dst + offs, tl.load(src + offs, mask=mask, other=0), mask=mask)


# --- launchers ------------------------------------------------------------------------------

def _addresses(tensors, device) -> torch.Tensor:
    return torch.tensor([t.data_ptr() for t in tensors], dtype=torch.int64).to(device, non_blocking=True)


def _chunks(numels: tuple, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(numel [n_tensors] int64, chunk_tensor [n_chunks] int32, chunk_start [n_chunks] int64),
    cached by the sizes: parameters keep their sizes for a whole run."""
    key = (numels, CHUNK, str(device))
    if key not in _chunk_tables:
        if len(_chunk_tables) > 64:  # callers whose tensor lists keep changing: stay bounded
            _chunk_tables.clear()
        tensor_idx, starts = [], []
        for i, n in enumerate(numels):
            for s in range(0, n, CHUNK):
                tensor_idx.append(i)
                starts.append(s)
        _chunk_tables[key] = (torch.tensor(numels, dtype=torch.int64, device=device),
                              torch.tensor(tensor_idx, dtype=torch.int32, device=device),
                              torch.tensor(starts, dtype=torch.int64, device=device))
    return _chunk_tables[key]


def grad_sq_norm_triton(grads, params=None, eta=0.0) -> torch.Tensor:
    """sum_i ||g_i||^2 (or ||(|w_i| + eta) g_i||^2) over contiguous tensors of one device and
    one dtype pair: one launch writes a partial per chunk, then one deterministic sum."""
    check_dtype("grad_sq_norm", *grads, *(params or ()))
    device = grads[0].device
    numel, chunk_tensor, chunk_start = _chunks(tuple(g.numel() for g in grads), device)
    partial = torch.empty(chunk_tensor.numel(), dtype=torch.float32, device=device)
    adaptive = params is not None
    g_addr = _addresses(grads, device)
    p_addr = _addresses(params, device) if adaptive else g_addr
    p_dtype = _FLOAT[(params or grads)[0].dtype]
    if partial.numel():
        _sq_norm_kernel[(partial.numel(),)](g_addr, p_addr, numel, chunk_tensor, chunk_start, partial,
                                            float(eta), G_DTYPE=_FLOAT[grads[0].dtype], P_DTYPE=p_dtype,
                                            ADAPTIVE=adaptive, CHUNK=CHUNK, BLOCK=BLOCK)
    return partial.sum()


def perturb_triton_(params, grads, scale, saved, eta=None) -> None:
    """saved_i <- p_i (bitwise); p_i += scale * g_i (ASAM when eta is not None:
    p_i += scale * (|p_i| + eta)^2 * g_i). One launch over all tensors."""
    check_dtype("perturb_", *params, *grads)
    device = params[0].device
    numel, chunk_tensor, chunk_start = _chunks(tuple(p.numel() for p in params), device)
    if not chunk_tensor.numel():
        return
    dtype = params[0].dtype
    _perturb_kernel[(chunk_tensor.numel(),)](
        _addresses(params, device), _addresses(grads, device), _addresses(saved, device), numel,
        chunk_tensor, chunk_start, float(scale), float(eta or 0.0), P_DTYPE=_FLOAT[dtype],
        P_BITS=_BITS[dtype], G_DTYPE=_FLOAT[grads[0].dtype], ADAPTIVE=eta is not None,
        CHUNK=CHUNK, BLOCK=BLOCK)


def copy_triton_(dst, src) -> None:
    """dst_i <- src_i bit for bit, one launch over all tensors (same dtype)."""
    check_dtype("restore_", *dst)
    device = dst[0].device
    numel, chunk_tensor, chunk_start = _chunks(tuple(t.numel() for t in dst), device)
    if chunk_tensor.numel():
        _copy_kernel[(chunk_tensor.numel(),)](_addresses(dst, device), _addresses(src, device), numel,
                                              chunk_tensor, chunk_start, BITS=_BITS[dst[0].dtype],
                                              CHUNK=CHUNK, BLOCK=BLOCK)
