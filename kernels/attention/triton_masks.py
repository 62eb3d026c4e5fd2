"""Which scores a flash-attention block may keep, and which blocks need the check at all:
shared by the forward and both backward kernels, so the three never disagree on causality or
document bounds.

Imported by ``triton_fwd.py`` and ``triton_bwd.py``. ``off = T_K - T_Q`` aligns the causal
mask bottom-right (query i sits at key position i + off, as in decoding with Tq < Tk).

Every kernel walks its key (or query) range in two loops: the blocks that every query of the
tile sees whole, where no mask is built (the bulk of a long causal sequence), then the blocks
on the diagonal (or any block, with documents) that go through ``visible``. The tile loads and
stores below drop their bounds checks when the launch is EVEN (every tile on the grid).
"""

import triton
import triton.language as tl


@triton.jit
def visible(offs_m, offs_n, m_valid, n_valid, q_doc, k_doc, off,
            CAUSAL: tl.constexpr, HAS_DOC: tl.constexpr, KEYS_ROWS: tl.constexpr):
    """Bool tile: in range, not in the future (CAUSAL), same document (HAS_DOC); shaped
    (M queries, N keys), or (N keys, M queries) with KEYS_ROWS (the dK/dV kernel's layout)."""
    if KEYS_ROWS:
        keep = n_valid[:, None] & m_valid[None, :]
        if CAUSAL:
            keep = keep & (offs_m[None, :] + off >= offs_n[:, None])
        if HAS_DOC:
            keep = keep & (k_doc[:, None] == q_doc[None, :])
    else:
        keep = m_valid[:, None] & n_valid[None, :]
        if CAUSAL:
            keep = keep & (offs_m[:, None] + off >= offs_n[None, :])
        if HAS_DOC:
            keep = keep & (q_doc[:, None] == k_doc[None, :])
    return keep


@triton.jit
def query_block_key_range(pid_m, row_base, offs_m, m_valid, first_ptr, last_ptr, T_K, off,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr,
                          HAS_DOC: tl.constexpr):
    """(lo, mid, hi) for a block of queries: it sees keys in [lo, hi) at all, and every key
    in [lo, mid) is visible to every query of the block (no mask needed there).

    Causality caps hi; with documents the block needs only keys between the first and last
    position of its documents (``first``/``last`` hold them per key position; ``row_base`` =
    b * T_K) and every block is masked (mid = lo). ``lo`` is a multiple of BLOCK_N."""
    lo = 0
    hi = T_K
    mid = T_K
    if CAUSAL:
        hi = tl.minimum(hi, (pid_m + 1) * BLOCK_M + off)
        # keys up to the block's first query position are seen by all its queries
        mid = tl.minimum(((pid_m * BLOCK_M + off + 1) // BLOCK_N) * BLOCK_N, hi)
    if HAS_DOC:
        lo = tl.min(tl.load(first_ptr + row_base + off + offs_m, mask=m_valid, other=T_K), axis=0)
        lo = (lo // BLOCK_N) * BLOCK_N  # on the tile grid, so whole tiles stay in bounds
        hi = tl.minimum(hi, tl.max(tl.load(last_ptr + row_base + off + offs_m, mask=m_valid,
                                           other=-1), axis=0) + 1)
        mid = lo
    return lo, mid, hi


@triton.jit
def query_block(H, GROUP, T_Q, T_K, doc_ptr, first_ptr, last_ptr, BLOCK_M: tl.constexpr,
                BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr, HAS_DOC: tl.constexpr):
    """What a program of the forward or dQ kernel owns, so the two walk identical blocks:
    (pid_bh, b, h, hk, off, offs_m, m_valid, lo, mid, hi, doc_row, q_doc). Causal programs run
    the longest rows first, so the last wave is short. ``q_doc`` is a placeholder unless
    HAS_DOC (typed like the ids, since a loop-carried value keeps its type)."""
    pid_m = tl.program_id(0)
    if CAUSAL:
        pid_m = tl.num_programs(0) - 1 - pid_m
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = pid_bh % H
    off = T_K - T_Q  # key position of query 0: causal mask aligned bottom-right
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_valid = offs_m < T_Q
    lo, mid, hi = query_block_key_range(pid_m, b * T_K, offs_m, m_valid, first_ptr, last_ptr,
                                        T_K, off, BLOCK_M, BLOCK_N, CAUSAL, HAS_DOC)
    doc_row = doc_ptr + b * T_K
    q_doc = offs_m.to(doc_ptr.dtype.element_ty)
    if HAS_DOC:
        q_doc = tl.load(doc_row + off + offs_m, mask=m_valid, other=-1)
    # h // GROUP: the kv head this query head reads (Llama order)
    return pid_bh, b, h, h // GROUP, off, offs_m, m_valid, lo, mid, hi, doc_row, q_doc


@triton.jit
def key_block_query_range(pid_n, row_base, offs_n, n_valid, first_ptr, last_ptr, T_Q, off,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr,
                          HAS_DOC: tl.constexpr):
    """(lo, mid, hi) for a block of keys: queries in [lo, hi) see some of its keys, and the
    queries in [mid, hi) see all of them. ``mid`` sits a whole number of BLOCK_M steps after
    ``lo`` so both loops step on the same grid. With documents every block is masked
    (mid = hi)."""
    lo = 0
    hi = T_Q
    mid = 0
    if CAUSAL:
        lo = tl.maximum(pid_n * BLOCK_N - off, 0)
        # the block's last key is seen by every query from this position on
        full = tl.maximum((pid_n + 1) * BLOCK_N - 1 - off, lo)
        mid = tl.minimum(lo + tl.cdiv(full - lo, BLOCK_M) * BLOCK_M, hi)
    if HAS_DOC:
        first = tl.min(tl.load(first_ptr + row_base + offs_n, mask=n_valid, other=T_Q + off),
                       axis=0)
        last = tl.max(tl.load(last_ptr + row_base + offs_n, mask=n_valid, other=-1), axis=0)
        lo = (tl.maximum(lo, first - off) // BLOCK_M) * BLOCK_M  # on the tile grid
        hi = tl.minimum(hi, last - off + 1)
        mid = hi
    return lo, mid, hi


@triton.jit
def load_tile(base, rows, stride, offs_d, row_valid, d_valid, EVEN: tl.constexpr):
    """The [rows, D] tile at base + rows * stride + d: bounds-checked (zeros outside) unless
    EVEN says every row and column of the launch is in range."""
    addr = base + rows[:, None] * stride + offs_d[None, :]
    if EVEN:
        tile = tl.load(addr)
    else:
        tile = tl.load(addr, mask=row_valid[:, None] & d_valid[None, :], other=0.0)
    return tile


@triton.jit
def store_tile(base, rows, stride, offs_d, row_valid, d_valid, value, EVEN: tl.constexpr):
    """Store ``value`` as the tile ``load_tile`` reads, bounds-checked unless EVEN."""
    addr = base + rows[:, None] * stride + offs_d[None, :]
    if EVEN:
        tl.store(addr, value)
    else:
        tl.store(addr, value, mask=row_valid[:, None] & d_valid[None, :])


@triton.jit
def load_rows(base, rows, row_valid, EVEN: tl.constexpr):
    """One value per row (a saved row statistic), bounds-checked (zeros outside) unless EVEN."""
    if EVEN:
        x = tl.load(base + rows)
    else:
        x = tl.load(base + rows, mask=row_valid, other=0.0)
    return x
