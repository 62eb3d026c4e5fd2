"""Sparse teacher targets: top-k, top-p-then-top-k and random-sampled KD, from teacher logits
computed a block of rows at a time, or from an offline cache.

Used by the `distill` recipe (online sparse targets, cached targets) and by `llmcore distill
cache` (which stores what `teacher_topk` / `teacher_samples` return). The teacher's logits for
a block of `block_rows` rows are the only [rows, vocab] tensor ever built; nothing here holds
[tokens, vocab].

Every target leaves here as (ids [N, k] long, log target probs [N, k] float32) with -inf on
padding slots, the form `kernels.linear_distill_loss` takes: the caller-side normalisation
the kernel leaves to us is done here.

- top-k renormalised: q_T(i) ∝ exp(log p(i) / T) over the k most likely ids of p (T = 1);
- top-p-then-top-k: the shortest prefix of those k whose probability under p reaches `top_p`
  (at least one id), renormalised the same way;
- sampled (Anshumann et al., arXiv 2503.16870): n ids drawn with replacement from the
  proposal q = softmax(z / T) itself, so each draw's importance weight p_T / q is 1 and the
  target is the empirical distribution count(i) / n over the distinct draws (a cache stores
  just those: distinct ids, and the counts of those drawn more than once, `count_draws` /
  `counted_targets`). E[count(i) / n]
  = q_T(i), and the forward-KL gradient w.r.t. the student logits is linear in the target
  (s_T - target), so its expectation is exactly full KD's; top-k's is not (it over-weights
  the head by 1 / mass(top-k)). A sampled cache is drawn at one temperature, recorded in it.
"""

from __future__ import annotations

import torch

TARGETS = ("dense", "topk", "top_p_topk", "sampled")


def _blocks(n: int, block_rows: int):
    for lo in range(0, n, block_rows):
        yield lo, min(n, lo + block_rows)


class _Blocks:
    """Row blocks of the teacher's logits z = th @ tw.T, in two [block_rows, V] buffers
    reused by every block: z and exp(z - max). A fresh [1024, 4096] fp32 tensor per block
    costs half the matmul again on a CPU (its pages are faulted in anew each time)."""

    def __init__(self, th: torch.Tensor, tw: torch.Tensor, block_rows: int):
        self.th, self.wt = th, tw.float().T  # one fp32 copy of a half-precision head per call
        rows = min(th.shape[0], block_rows)
        self.z = torch.empty(rows, tw.shape[0], dtype=torch.float32, device=th.device)
        self.e = torch.empty_like(self.z)
        self.block_rows = block_rows

    def __iter__(self):
        for lo, hi in _blocks(self.th.shape[0], self.block_rows):
            yield lo, hi, torch.matmul(self.th[lo:hi].float(), self.wt, out=self.z[: hi - lo])  # (R, V)

    def lse_entropy(self, z: torch.Tensor, m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(log-sum-exp [R], entropy [R] of softmax(z), e = exp(z - m) [R, V]) from the row max
        `m` [R, 1] in two more passes over z: H = lse - sum_i p_i z_i."""
        e = torch.sub(z, m, out=self.e[: z.shape[0]]).exp_()
        s = e.sum(-1)
        lse = m.squeeze(-1) + s.log()
        return lse, lse - torch.linalg.vecdot(e, z) / s, e


@torch.no_grad()
def teacher_topk(th: torch.Tensor, tw: torch.Tensor, k: int, block_rows: int = 1024) -> dict:
    """Top-k of the teacher's distribution p = softmax(th @ tw.T) per row, at T = 1.

    th [N, d_t], tw [V, d_t]. Returns {"ids" [N, k] long (most likely first), "logp" [N, k]
    float32 (log p, normalised over the whole vocabulary), "lse" [N] (log-sum-exp of the
    logits), "entropy" [N] (of p, nats)}.
    """
    n = th.shape[0]
    ids = torch.empty(n, k, dtype=torch.long, device=th.device)
    logp = torch.empty(n, k, dtype=torch.float32, device=th.device)
    lse = torch.empty(n, dtype=torch.float32, device=th.device)
    ent = torch.empty(n, dtype=torch.float32, device=th.device)
    blocks = _Blocks(th, tw, block_rows)
    for lo, hi, z in blocks:
        top = z.topk(k, dim=-1)  # its first value is the row max: one pass fewer for the statistics
        lse[lo:hi], ent[lo:hi], _ = blocks.lse_entropy(z, top.values[:, :1])
        ids[lo:hi], logp[lo:hi] = top.indices, top.values - lse[lo:hi, None]
    return {"ids": ids, "logp": logp, "lse": lse, "entropy": ent}


@torch.no_grad()
def teacher_samples(th: torch.Tensor, tw: torch.Tensor, n_samples: int, temperature: float = 1.0,
                    generator: torch.Generator | None = None, block_rows: int = 1024) -> dict:
    """n_samples ids per row drawn with replacement from softmax(th @ tw.T / temperature).

    Returns {"ids" [N, n_samples] long, "lse" [N] and "entropy" [N] of p at T = 1}. Draws come
    from `generator` (on th's device) so a cache write is reproducible shard by shard. The
    draws are made from the unnormalised weights exp((z - max) / T) (`torch.multinomial`
    normalises them itself): at T = 1 that is the exp the statistics already computed, so
    sampling costs no softmax of its own.
    """
    n = th.shape[0]
    ids = torch.empty(n, n_samples, dtype=torch.long, device=th.device)
    lse = torch.empty(n, dtype=torch.float32, device=th.device)
    ent = torch.empty(n, dtype=torch.float32, device=th.device)
    blocks = _Blocks(th, tw, block_rows)
    for lo, hi, z in blocks:
        m = z.amax(-1, keepdim=True)
        lse[lo:hi], ent[lo:hi], e = blocks.lse_entropy(z, m)
        if temperature != 1.0:
            e = torch.sub(z, m, out=e).div_(temperature).exp_()
        ids[lo:hi] = torch.multinomial(e, n_samples, replacement=True, generator=generator)
    return {"ids": ids, "lse": lse, "entropy": ent}


def topk_targets(ids: torch.Tensor, logp: torch.Tensor, temperature: float = 1.0,
                 top_p: float | None = None, k: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Renormalised top-k (or top-p-then-top-k) targets from cached or online top-k entries.

    ids / logp [N, K]: the teacher's most likely ids first and their log p at T = 1 (-inf on
    padding). `k` keeps the first k of the K (k <= K); `top_p` then keeps the shortest prefix
    whose mass under p reaches top_p. The kept entries get log q_T = log softmax(log p / T)
    over the kept set; the rest -inf. Returns (ids [N, k], log q_T [N, k] float32).
    """
    if k is not None:
        ids, logp = ids[:, :k], logp[:, :k]
    logp = logp.float()
    if top_p is not None and top_p < 1.0:
        p = logp.exp()
        before = p.cumsum(-1) - p  # mass of the more likely entries
        keep = before < top_p  # the first entry always: its `before` is 0
        logp = logp.masked_fill(~keep, float("-inf"))
    return ids, _log_normalise(logp / temperature)


def sampled_targets(draws: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Distinct ids of each row's draws with log(count / n): the unbiased sampled-KD target.

    draws [N, n] long (with repeats). Returns (ids [N, n], log target [N, n]) where each
    distinct id appears once (slots of repeats become padding: id 0, -inf).
    """
    n = draws.shape[1]
    srt, _ = draws.sort(dim=-1)
    first = torch.ones_like(srt, dtype=torch.bool)
    first[:, 1:] = srt[:, 1:] != srt[:, :-1]
    # count of each run of equal ids, stored on the run's first slot
    run = first.long().cumsum(-1) - 1  # (N, n) run index of every slot
    counts = torch.zeros_like(srt, dtype=torch.float32).scatter_add_(1, run, torch.ones_like(srt, dtype=torch.float32))
    cnt = counts.gather(1, run)
    logq = torch.where(first, (cnt / n).log(), torch.full_like(cnt, float("-inf")))
    return torch.where(first, srt, torch.zeros_like(srt)), logq


def count_draws(draws: torch.Tensor, has_row: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
    """Each row's draws as its distinct ids and the counts of the repeated ones: what a sampled
    cache stores (an id drawn once needs no count, and most distinct ids of a flat teacher are).

    draws [N, n] long; has_row [N] bool (False: an empty row, e.g. the stream's first token,
    whatever its draws hold). Returns (distinct [N] long: distinct ids per row, 0 for an empty
    row; repeated [N] long: how many of them were drawn more than once; ids [sum distinct]
    long, per row the repeated ids then the others, each group ascending, rows in order;
    counts [sum repeated] long, >= 2, those of the repeated ids in that order).
    `counted_targets` of the rows read back equals `sampled_targets(draws)` exactly.
    """
    srt, _ = draws.sort(dim=-1)
    first = torch.ones_like(srt, dtype=torch.bool)
    first[:, 1:] = srt[:, 1:] != srt[:, :-1]
    if has_row is not None:
        first &= has_row[:, None]
    slot = first.nonzero()  # (U, 2): row, position of each run's first draw, row-major
    row, pos = slot[:, 0], slot[:, 1]
    # a run ends where the next run of its row starts, or at n: counts from consecutive starts
    nxt = torch.full_like(pos, draws.shape[1])
    nxt[:-1] = torch.where(row[1:] == row[:-1], pos[1:], nxt[:-1])
    counts, ids = nxt - pos, srt[first]
    once = counts == 1
    order = torch.sort(row * 2 + once.long(), stable=True).indices  # repeated first, ascending ids kept
    repeated = torch.zeros(draws.shape[0], dtype=torch.long, device=draws.device).index_add_(
        0, row, (~once).long())
    return first.sum(-1), repeated, ids[order], counts[order][~once[order]]


def counted_targets(ids: torch.Tensor, counts: torch.Tensor, distinct: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The sampled-KD target from a cache's rows, laid out exactly as `sampled_targets` lays
    out the draws they came from (bit-identical tensors).

    ids [N, n]: each row's distinct ids (repeated ones first, as `count_draws` stores them),
    then padding; counts [N, n]: the repeated ids' counts, then 0 (as ragged side-cars read
    back); distinct [N]: how many ids the row has. Ids past the repeated ones count 1. Sorted
    by id, each distinct id goes to the slot its run of equal draws started at in the sorted
    draws (the sum of the counts before it), with log(count / n); every other slot is padding
    (id 0, -inf).
    """
    n = ids.shape[1]
    j = torch.arange(n, device=ids.device)
    c = counts.long()
    c = torch.where(c > 0, c, (j < distinct.long()[:, None]).long())  # (N, n): 1 for a single draw, 0 padding
    key = torch.where(c > 0, ids.long(), torch.full_like(c, torch.iinfo(torch.long).max))
    key, order = key.sort(dim=-1)  # distinct ids ascending, padding last
    c = c.gather(1, order)
    slot = torch.where(c > 0, c.cumsum(-1) - c, torch.full_like(c, n))  # padding -> a spare column
    out_ids = torch.zeros(ids.shape[0], n + 1, dtype=torch.long, device=ids.device)
    out_ids.scatter_(1, slot, torch.where(c > 0, key, torch.zeros_like(c)))
    logq = torch.full((ids.shape[0], n + 1), float("-inf"), dtype=torch.float32, device=ids.device)
    logq.scatter_(1, slot, (c.float() / n).log())
    return out_ids[:, :n], logq[:, :n]


def topk_mass(logp: torch.Tensor) -> torch.Tensor:
    """[N] probability mass of the teacher (T = 1) its cached top-k entries cover."""
    return logp.float().exp().sum(-1)


def _log_normalise(x: torch.Tensor) -> torch.Tensor:
    """log softmax over the last dim that leaves an all -inf row all -inf (no NaN)."""
    m = x.amax(-1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    s = (x - m).exp().sum(-1, keepdim=True)
    out = x - m - s.clamp(min=1e-30).log()
    return torch.where(torch.isfinite(x), out, torch.full_like(out, float("-inf")))


def quantise_logp(logp: torch.Tensor) -> torch.Tensor:
    """Cached log-probs as float16: ~3 significant digits; a probability below exp(-65504)
    (never in a top-k of a real vocabulary) would saturate, and -inf stays -inf."""
    return logp.to(torch.float16)

