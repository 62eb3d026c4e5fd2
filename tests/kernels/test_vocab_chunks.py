"""The shared chunked-vocabulary driver with toy row losses written here, against the dense
float64 definition (autograd through ``h @ w.T``): per-row loss, dh and dW at odd sizes
(N=41, V=341, d=9), chunks of a few rows (a ragged last one), with and without ignored rows,
one gradient at a time, a dW shared by two calls, and a distillation-style row loss whose
per-row teacher tensors [N, k] are cut per chunk like the targets."""

import pytest
import torch
import torch.nn.functional as F
from kernel_testing import DEVICE, assert_close

from kernels.vocab_chunks import kept_rows, rows_per_chunk, vocab_chunk_pass

N, D, V, TOP_K = 41, 9, 341, 5


def _inputs(seed=0):
    gen = torch.Generator().manual_seed(seed)
    h = torch.randn(N, D, generator=gen, dtype=torch.float64)
    w = torch.randn(V, D, generator=gen, dtype=torch.float64) * D ** -0.5 * 3
    labels = torch.randint(0, V, (N,), generator=gen)
    weight = torch.rand(N, generator=gen, dtype=torch.float64) + 0.5
    keep = torch.rand(N, generator=gen) > 0.3
    return [t.to(DEVICE) for t in (h, w, labels, weight, keep)]


def _ce_rows(logits, y, weight, want_grad):
    """Plain CE per row; d_logits = weight * (softmax - onehot), in place."""
    lse = torch.logsumexp(logits, dim=-1)
    loss = lse - logits.gather(1, y[:, None]).squeeze(1)
    if not want_grad:
        return loss, None
    grad = logits.sub_(lse[:, None]).exp_()
    grad.scatter_add_(1, y[:, None], -torch.ones_like(lse)[:, None])
    return loss, grad.mul_(weight[:, None])


def _dense(h, w, keep, per_row_loss, weight):
    """(losses [N] with 0 at dropped rows, dh, dW) of sum_i weight_i * loss_i, by autograd."""
    h, w = h.clone().requires_grad_(True), w.clone().requires_grad_(True)
    losses = per_row_loss(h @ w.t()) * keep
    (losses * weight).sum().backward()
    return losses.detach(), h.grad, w.grad


def _compare(got, ref):
    for name, r, o in zip(("loss", "dh", "dW"), ref, got):
        assert_close(name, r, o, torch.float64)


@pytest.mark.parametrize("step", [pytest.param(1, id="step1"), pytest.param(7, id="step7"),
                                  pytest.param(64, id="step64-one-chunk")])
@pytest.mark.parametrize("drop", [pytest.param(False, id="all-rows"),
                                  pytest.param(True, id="kept-rows")])
def test_ce_rows_match_dense_float64(step, drop):
    h, w, labels, weight, keep = _inputs()
    keep = keep if drop else torch.ones_like(keep)
    rows = kept_rows(keep)
    assert (rows is None) == (not drop)
    got = vocab_chunk_pass(h, w, _ce_rows, (labels, weight), rows, step=step, want_dh=True,
                           want_dw=True)
    ref = _dense(h, w, keep, lambda z: F.cross_entropy(z, labels, reduction="none"), weight)
    _compare(got, ref)
    assert torch.equal(got[0][~keep], torch.zeros_like(got[0][~keep]))
    assert torch.equal(got[1][~keep], torch.zeros_like(got[1][~keep]))


@pytest.mark.parametrize("want_dh,want_dw", [(True, False), (False, True), (False, False)],
                         ids=["dh-only", "dW-only", "loss-only"])
def test_only_the_gradients_asked_for(want_dh, want_dw):
    h, w, labels, weight, keep = _inputs(1)
    calls = []

    def row_loss(logits, y, wt, want_grad):
        calls.append(want_grad)
        return _ce_rows(logits, y, wt, want_grad)

    losses, dh, dw = vocab_chunk_pass(h, w, row_loss, (labels, weight), kept_rows(keep), step=6,
                                      want_dh=want_dh, want_dw=want_dw)
    ref = _dense(h, w, keep, lambda z: F.cross_entropy(z, labels, reduction="none"), weight)
    assert_close("loss", ref[0], losses, torch.float64)
    assert (dh is not None) == want_dh and (dw is not None) == want_dw
    if want_dh:
        assert_close("dh", ref[1], dh, torch.float64)
    if want_dw:
        assert_close("dW", ref[2], dw, torch.float64)
    assert calls and all(c == (want_dh or want_dw) for c in calls)


def test_two_calls_share_one_weight_gradient():
    # future_summary's MTP and FSP groups add into one dW: the sum of both calls' gradients
    h, w, labels, weight, keep = _inputs(2)
    _, _, dw = vocab_chunk_pass(h, w, _ce_rows, (labels, weight), None, step=5, want_dh=False,
                                want_dw=True)
    h2 = h.flip(0)
    _, _, dw = vocab_chunk_pass(h2, w, _ce_rows, (labels, weight), kept_rows(keep), step=3,
                                want_dh=False, want_dw=True, dw=dw)
    ce = lambda z: F.cross_entropy(z, labels, reduction="none")
    ref = _dense(h, w, torch.ones_like(keep), ce, weight)[2] + _dense(h2, w, keep, ce, weight)[2]
    assert_close("dW", ref, dw, torch.float64)


def _distill_rows(logits, y, teacher_ids, teacher_logp, alpha, want_grad):
    """A third loss through the unchanged driver: CE + alpha * KL(teacher || student) over the
    teacher's top-k ids per row (teacher probabilities renormalised over the k)."""
    lse = torch.logsumexp(logits, dim=-1)
    logp = logits.gather(1, teacher_ids) - lse[:, None]  # student log-probs at the top-k ids
    pt = teacher_logp.softmax(dim=-1)
    kl = (pt * (pt.log() - logp)).sum(dim=-1)
    loss = lse - logits.gather(1, y[:, None]).squeeze(1) + alpha * kl
    if not want_grad:
        return loss, None
    grad = logits.sub_(lse[:, None]).exp_().mul_(1.0 + alpha)  # the k teacher probs sum to 1
    grad.scatter_add_(1, y[:, None], -torch.ones_like(lse)[:, None])
    grad.scatter_add_(1, teacher_ids, -alpha * pt)
    return loss, grad


def test_a_distillation_row_loss_plugs_in():
    h, w, labels, _, keep = _inputs(3)
    gen = torch.Generator().manual_seed(4)
    ids = torch.stack([torch.randperm(V, generator=gen)[:TOP_K] for _ in range(N)]).to(DEVICE)
    teacher = torch.randn(N, TOP_K, generator=gen, dtype=torch.float64).to(DEVICE)
    alpha = 0.7

    def row_loss(logits, y, t_ids, t_logp, want_grad):
        return _distill_rows(logits, y, t_ids, t_logp, alpha, want_grad)

    got = vocab_chunk_pass(h, w, row_loss, (labels, ids, teacher), kept_rows(keep), step=4,
                           want_dh=True, want_dw=True)

    def dense_loss(z):
        logp = z.log_softmax(dim=-1)
        pt = teacher.softmax(dim=-1)
        kl = (pt * (pt.log() - logp.gather(1, ids))).sum(dim=-1)
        return F.cross_entropy(z, labels, reduction="none") + alpha * kl

    _compare(got, _dense(h, w, keep, dense_loss, torch.ones(N, dtype=torch.float64,
                                                           device=DEVICE)))


def test_none_row_data_passes_through_and_no_rows_is_zero():
    h, w, labels, _, _ = _inputs(5)
    seen = []

    def row_loss(logits, y, nothing, want_grad):
        seen.append(nothing)
        return _ce_rows(logits, y, torch.ones_like(y, dtype=logits.dtype), want_grad)

    vocab_chunk_pass(h, w, row_loss, (labels, None), None, step=10, want_dh=True, want_dw=True)
    assert seen == [None] * 5  # ceil(41 / 10) chunks
    empty = torch.zeros(0, dtype=torch.long, device=DEVICE)
    losses, dh, dw = vocab_chunk_pass(h, w, row_loss, (labels, None), empty, step=10,
                                      want_dh=True, want_dw=True)
    assert len(seen) == 5, "no rows: the row loss is never called"
    for name, t in (("loss", losses), ("dh", dh), ("dW", dw)):
        assert torch.equal(t, torch.zeros_like(t)), name


def test_rows_per_chunk():
    assert rows_per_chunk(N, 7 * V, V) == 7
    assert rows_per_chunk(N, 3, V) == 1  # at least one row
    assert rows_per_chunk(N, 7 * V, V, min_rows=16) == 16
    # 1000 rows in chunks of a 300-row budget: 256 (two tiles of 128) still takes 4 chunks
    assert rows_per_chunk(1000, 300 * 10, 10, multiple=128) == 256
    # ... but 300 = 2 * 150: tiles of 128 would take 3 chunks instead of 2, so 150 stays
    assert rows_per_chunk(300, 150 * 10, 10, multiple=128) == 150


def test_a_frozen_teacher_head_is_chunked_beside_the_student():
    # the dense-teacher pair: its logits chunk comes to the row loss with the student's, no
    # gradient is taken for it, and two loss columns per row come back
    h, w, labels, weight, keep = _inputs(6)
    gen = torch.Generator().manual_seed(7)
    th = torch.randn(N, 4, generator=gen, dtype=torch.float64).to(DEVICE)
    tw = torch.randn(V, 4, generator=gen, dtype=torch.float64).to(DEVICE)
    seen = []

    def row_loss(logits, t_logits, y, wt, want_grad):
        seen.append(t_logits.shape[0])
        pt = t_logits.softmax(dim=-1)
        kl = (pt * (pt.log() - logits.log_softmax(dim=-1))).sum(dim=-1)
        ce, grad = _ce_rows(logits.clone(), y, wt, want_grad)
        grad = grad + wt[:, None] * (logits.softmax(dim=-1) - pt)
        return torch.stack([ce, kl], dim=1), grad

    terms, dh, dw = vocab_chunk_pass(h, w, row_loss, (labels, weight), kept_rows(keep), step=4,
                                     want_dh=True, want_dw=True, teacher=(th, tw),
                                     loss_columns=2)
    assert seen == [4] * (int(keep.sum()) // 4) + ([int(keep.sum()) % 4] if keep.sum() % 4 else [])

    def dense_loss(z):
        pt = (th @ tw.t()).softmax(dim=-1)
        return (F.cross_entropy(z, labels, reduction="none")
                + (pt * (pt.log() - z.log_softmax(dim=-1))).sum(dim=-1))

    ref = _dense(h, w, keep, dense_loss, weight)
    assert_close("loss", ref[0], terms.sum(dim=1), torch.float64)
    assert_close("dh", ref[1], dh, torch.float64)
    assert_close("dW", ref[2], dw, torch.float64)
    assert torch.equal(terms[~keep], torch.zeros_like(terms[~keep]))
