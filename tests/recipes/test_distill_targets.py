"""Sparse targets and routing of the `distill` recipe: top-k / top-p renormalisation, the
sampled-KD target's expected gradient equals full KD's where top-k's does not, per-window
routing against brute force and its invariance to how windows are grouped, schedules."""

from __future__ import annotations

import math

import pytest
import torch

import kernels
from llmcore.config.schema import ScheduleConfig
from recipes.distill import schedule
from recipes.distill.routing import route_mask
from recipes.distill.targets import (
    count_draws,
    counted_targets,
    sampled_targets,
    teacher_samples,
    teacher_topk,
    topk_targets,
)


def _teacher(n=5, d=12, v=41, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64) * scale, torch.randn(v, d, generator=g, dtype=torch.float64)


def test_teacher_topk_matches_dense_softmax():
    th, tw = _teacher()
    got = teacher_topk(th, tw, 7, block_rows=2)  # several row blocks
    logp = torch.log_softmax(th @ tw.T, -1)
    ref = logp.topk(7, -1)
    assert torch.equal(got["ids"], ref.indices)
    torch.testing.assert_close(got["logp"].double(), ref.values, rtol=0, atol=1e-5)
    torch.testing.assert_close(got["entropy"].double(), -(logp.exp() * logp).sum(-1), rtol=0, atol=1e-5)
    torch.testing.assert_close(got["lse"].double(), torch.logsumexp(th @ tw.T, -1), rtol=0, atol=1e-4)


@pytest.mark.parametrize("T", [1.0, 2.0])
def test_topk_and_top_p_targets_are_renormalised_tempered_prefixes(T):
    logp = torch.log(torch.tensor([[0.5, 0.3, 0.1, 0.05], [0.9, 0.05, 0.03, 0.02]], dtype=torch.float64))
    ids = torch.tensor([[3, 1, 0, 2], [2, 0, 1, 3]])
    _, lq = topk_targets(ids, logp, T)
    want = torch.softmax(logp / T, -1)
    torch.testing.assert_close(lq.exp().double(), want, rtol=0, atol=1e-6)
    _, lq = topk_targets(ids, logp, T, top_p=0.85)  # row 0 keeps 0.5+0.3+0.1, row 1 only 0.9
    assert torch.isinf(lq[0, 3]) and torch.isfinite(lq[0, :3]).all()
    assert torch.isfinite(lq[1, 0]) and torch.isinf(lq[1, 1:]).all()
    torch.testing.assert_close(lq[0, :3].exp().double(), torch.softmax(logp[0, :3] / T, -1), rtol=0, atol=1e-6)
    _, lq = topk_targets(ids, logp, T, k=2)
    assert lq.shape == (2, 2)


def test_sampled_targets_count_distinct_draws():
    draws = torch.tensor([[4, 1, 4, 4], [2, 2, 2, 2]])
    ids, lq = sampled_targets(draws)
    got = [{int(i): round(float(q), 6) for i, q in zip(r, lqr.exp()) if q > 0} for r, lqr in zip(ids, lq)]
    assert got == [{1: 0.25, 4: 0.75}, {2: 1.0}]


@pytest.mark.parametrize("V,n", [(3, 1), (5, 7), (50, 24), (4096, 24)])
def test_counts_of_draws_give_exactly_the_targets_of_the_draws(V, n):
    """A sampled cache stores distinct ids + the counts of repeated ones: read back padded (as
    its ragged side-cars read), they give the very tensors `sampled_targets` gives from the
    draws; empty rows stay empty (nothing stored, all -inf)."""
    g = torch.Generator().manual_seed(V + n)
    draws = torch.randint(0, V, (300, n), generator=g)
    has = torch.rand(300, generator=g) > 0.1
    u, r, ids, counts = count_draws(draws, has)
    assert int(u.sum()) == ids.numel() and int(r.sum()) == counts.numel() and (counts >= 2).all()
    assert (u[~has] == 0).all() and (u[has] >= 1).all() and int(u.max()) <= min(V, n) and (r <= u).all()
    off, roff = (torch.cat([torch.zeros(1, dtype=torch.long), x.cumsum(0)]) for x in (u, r))
    pid, pc = torch.zeros(300, n, dtype=torch.long), torch.zeros(300, n, dtype=torch.long)
    for i in range(300):
        pid[i, : u[i]], pc[i, : r[i]] = ids[off[i]:off[i + 1]], counts[roff[i]:roff[i + 1]]
        if has[i]:
            uniq, cnt = draws[i].unique(return_counts=True)
            want = {int(a): int(b) for a, b in zip(uniq, cnt)}
            got = {int(a): (int(pc[i, j]) if j < r[i] else 1) for j, a in enumerate(pid[i, : u[i]])}
            assert got == want and int(cnt.ge(2).sum()) == int(r[i])
    want_ids, want_lq = sampled_targets(draws)
    want_lq = torch.where(has[:, None], want_lq, torch.full_like(want_lq, float("-inf")))
    got_ids, got_lq = counted_targets(pid.to(torch.int32), pc.to(torch.uint8), u.to(torch.uint8))
    assert torch.equal(got_lq, want_lq)
    assert torch.equal(got_ids[has], want_ids[has]) and (got_ids[~has] == 0).all()


def test_sampled_kd_gradient_is_unbiased_and_topk_is_not():
    """Anshumann et al.'s claim, through the fused kernel: the mean over draws of the KD
    gradient w.r.t. the student logits equals full KD's; renormalised top-k's does not."""
    V, n_draws, M, T = 30, 8, 3000, 1.0
    g = torch.Generator().manual_seed(1)
    zt = torch.randn(V, generator=g, dtype=torch.float64) * 1.5  # teacher logits
    zs = torch.randn(V, generator=g, dtype=torch.float64)  # student logits
    w = torch.eye(V, dtype=torch.float64)  # h = logits
    labels = torch.zeros(M, dtype=torch.long)

    def grad(**teacher):
        h = zs.expand(M, V).clone().requires_grad_(True)
        out = kernels.linear_distill_loss(h, w, labels, alpha=1.0, temperature=T, reduction="sum", **teacher)
        out.loss.backward()
        return h.grad  # (M, V) per-row gradients

    dense = (torch.softmax(zs / T, -1) - torch.softmax(zt / T, -1)) * T  # d(T^2 KL)/dz
    q = torch.softmax(zt / T, -1).expand(M, V)
    draws = torch.multinomial(q, n_draws, replacement=True, generator=g)
    ids, lq = sampled_targets(draws)
    per_row = grad(teacher_ids=ids, teacher_logprobs=lq)
    mean, se = per_row.mean(0), per_row.std(0) / math.sqrt(M)
    assert ((mean - dense).abs() <= 5 * se + 1e-9).all(), (mean - dense).abs().max()
    top = torch.log_softmax(zt, -1).topk(5)
    tid, tlq = topk_targets(top.indices.expand(M, 5), top.values.expand(M, 5), T)
    biased = grad(teacher_ids=tid, teacher_logprobs=tlq).mean(0)
    assert (biased - dense).abs().max() > 20 * float(se.max())


def test_teacher_samples_draw_from_the_tempered_teacher():
    th, tw = _teacher(n=1, v=6, scale=1.0)
    g = torch.Generator().manual_seed(0)
    got = teacher_samples(th.float(), tw.float(), 20000, temperature=2.0, generator=g)
    freq = torch.bincount(got["ids"][0], minlength=6).double() / 20000
    torch.testing.assert_close(freq, torch.softmax(th @ tw.T / 2.0, -1)[0], rtol=0, atol=0.015)


def test_route_mask_drops_the_lowest_entropy_fraction_of_each_window():
    g = torch.Generator().manual_seed(0)
    ent = torch.rand(3, 40, generator=g)
    scored = torch.rand(3, 40, generator=g) > 0.2
    routed = route_mask(ent, scored, 0.15)
    for b in range(3):
        idx = scored[b].nonzero().squeeze(1)
        k = math.floor(0.15 * len(idx))
        want = set(idx[ent[b, idx].argsort()[:k]].tolist())
        assert set(routed[b].nonzero().squeeze(1).tolist()) == want
    # a window routes the same positions whatever windows share its micro-batch
    assert torch.equal(route_mask(ent[1:2], scored[1:2], 0.15)[0], routed[1])
    assert not route_mask(ent, scored, 0.0).any()


def test_schedules():
    s = ScheduleConfig(kind="cosine", warmup_steps=0, min_lr_ratio=0.0)
    assert schedule.value("constant", 0.5, 0.9, 7, 10, s) == 0.5
    assert schedule.value("linear", 0.5, 0.9, 5, 10, s) == pytest.approx(0.7)
    assert schedule.value("lr", 0.9, 0.1, 0, 10, s) == pytest.approx(0.9)
    assert schedule.value("lr", 0.9, 0.1, 5, 10, s) == pytest.approx(0.5)
