"""Which scores a flash-attention block may keep: shared by the forward and both backward
kernels, so the three can never disagree on causality or document bounds.

Imported by ``triton_fwd.py`` and ``triton_bwd.py``. ``off = T_K - T_Q`` aligns the causal
mask bottom-right (query i sits at key position i + off, as in decoding with Tq < Tk).
"""

import triton
import triton.language as tl


@triton.jit
def visible(offs_m, offs_n, m_valid, n_valid, q_doc, k_doc, off,
            CAUSAL: tl.constexpr, HAS_DOC: tl.constexpr):
    """(M, N) bool: in range, not in the future (CAUSAL), same document (HAS_DOC)."""
    keep = m_valid[:, None] & n_valid[None, :]
    if CAUSAL:
        keep = keep & (offs_m[:, None] + off >= offs_n[None, :])
    if HAS_DOC:
        keep = keep & (q_doc[:, None] == k_doc[None, :])
    return keep


@triton.jit
def query_block_key_range(pid_m, row_base, offs_m, m_valid, first_ptr, last_ptr, T_K, off,
                          BLOCK_M: tl.constexpr, CAUSAL: tl.constexpr, HAS_DOC: tl.constexpr):
    """[lo, hi): the keys a block of queries can see at all. Causality caps hi; with documents
    the block needs only keys between the first and last position of its documents
    (``first``/``last`` hold them per key position; ``row_base`` = b * T_K)."""
    lo = 0
    hi = T_K
    if CAUSAL:
        hi = tl.minimum(hi, (pid_m + 1) * BLOCK_M + off)
    if HAS_DOC:
        lo = tl.min(tl.load(first_ptr + row_base + off + offs_m, mask=m_valid, other=T_K), axis=0)
        hi = tl.minimum(hi, tl.max(tl.load(last_ptr + row_base + off + offs_m, mask=m_valid,
                                           other=-1), axis=0) + 1)
    return lo, hi
