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
  target is the empirical distribution count(i) / n over the distinct draws. E[count(i) / n]
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
    wt = tw.float().T  # one fp32 copy of a half-precision head per call, not one per block
    for lo, hi in _blocks(n, block_rows):
        z = th[lo:hi].float() @ wt  # (R, V)
        top = z.topk(k, dim=-1)  # its first value is the row max: one pass fewer for the statistics
        lse[lo:hi], ent[lo:hi] = _lse_entropy(z, top.values[:, :1])
        ids[lo:hi], logp[lo:hi] = top.indices, top.values - lse[lo:hi, None]
    return {"ids": ids, "logp": logp, "lse": lse, "entropy": ent}


def _lse_entropy(z: torch.Tensor, m: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-sum-exp, entropy) of softmax(z) per row from the row max `m` [R, 1] (computed
    when not given) in two more passes over z (the one [R, V] temporary is exp(z - m)):
    H = lse - sum_i p_i z_i."""
    if m is None:
        m = z.amax(-1, keepdim=True)
    e = torch.sub(z, m).exp_()
    s = e.sum(-1)
    lse = m.squeeze(-1) + s.log()
    return lse, lse - torch.linalg.vecdot(e, z) / s


@torch.no_grad()
def teacher_samples(th: torch.Tensor, tw: torch.Tensor, n_samples: int, temperature: float = 1.0,
                    generator: torch.Generator | None = None, block_rows: int = 1024) -> dict:
    """n_samples ids per row drawn with replacement from softmax(th @ tw.T / temperature).

    Returns {"ids" [N, n_samples] long, "lse" [N] and "entropy" [N] of p at T = 1}. Draws come
    from `generator` (on th's device) so a cache write is reproducible shard by shard.
    """
    n = th.shape[0]
    ids = torch.empty(n, n_samples, dtype=torch.long, device=th.device)
    lse = torch.empty(n, dtype=torch.float32, device=th.device)
    ent = torch.empty(n, dtype=torch.float32, device=th.device)
    wt = tw.float().T
    for lo, hi in _blocks(n, block_rows):
        z = th[lo:hi].float() @ wt
        lse[lo:hi], ent[lo:hi] = _lse_entropy(z)
        q = torch.softmax(z / temperature, dim=-1)
        ids[lo:hi] = torch.multinomial(q, n_samples, replacement=True, generator=generator)
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

