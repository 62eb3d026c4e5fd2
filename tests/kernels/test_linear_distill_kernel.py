"""Linear distillation (CE + KD): the PyTorch path (float64) and the Triton path (fp32, interpreted
on CPU) against the dense float64 definition: loss, hard and soft terms, dh and dW for sparse
teachers (k = 1, 7, 32; padding, a repeated id, importance weights) and the dense online teacher
(forward and reverse KL), T in {1, 2}, alpha in {0, 0.5, 1}, with routed rows (kd_weight 0),
ignored labels and ignored ids, at odd sizes over several row chunks and sub-blocks; alpha = 0
bit-identical to linear_cross_entropy; no [N, V] tensor made; teacher_entropy; the named errors."""

import importlib

import pytest
import torch
from kernel_testing import DEVICE, assert_close
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import kernels
from kernels.linear_distill_reference import (
    linear_distill_reference,
    teacher_entropy_reference,
)

ld = importlib.import_module("kernels.linear_distill")
lce = importlib.import_module("kernels.linear_cross_entropy")

N, D, V, DT = 23, 9, 67, 5
PAUSE = 11  # an id passed in ignore_ids


def _inputs(k=7, seed=0):
    gen = torch.Generator().manual_seed(seed)
    h = torch.randn(N, D, generator=gen, dtype=torch.float64)
    w = torch.randn(V, D, generator=gen, dtype=torch.float64) * D ** -0.5 * 3
    labels = torch.randint(0, V, (N,), generator=gen)
    labels[labels == PAUSE] = 0
    labels[2], labels[5], labels[17] = -100, PAUSE, -100
    ids = torch.stack([torch.randperm(V, generator=gen)[:k] for _ in range(N)])
    logq = (torch.randn(N, k, generator=gen, dtype=torch.float64) * 2).log_softmax(-1)
    if k > 1:
        logq[4, k // 2:] = float("-inf")  # padding slots, their ids not read
        ids[4, k // 2:] = -1
        ids[6, 1] = ids[6, 0]  # a repeated id counts once per slot
    kd_weight = torch.rand(N, generator=gen, dtype=torch.float64) + 0.5
    kd_weight[[1, 8, 9]] = 0.0  # routed: CE only
    th = torch.randn(N, DT, generator=gen, dtype=torch.float64)
    tw = torch.randn(V, DT, generator=gen, dtype=torch.float64) * DT ** -0.5 * 4
    return {"h": h.to(DEVICE), "w": w.to(DEVICE), "labels": labels.to(DEVICE),
            "teacher_ids": ids.to(DEVICE), "teacher_logprobs": logq.to(DEVICE),
            "kd_weight": kd_weight.to(DEVICE), "teacher_h": th.to(DEVICE),
            "teacher_w": tw.to(DEVICE)}


def _teacher(kind, x):
    if kind == "sparse":
        return {"teacher_ids": x["teacher_ids"], "teacher_logprobs": x["teacher_logprobs"]}
    return {"teacher_h": x["teacher_h"], "teacher_w": x["teacher_w"],
            "reverse": kind == "reverse"}


def _run(fn, x, dtype, **kw):
    """(loss, hard, soft, n_tokens, dh, dW) of fn on fresh leaves h, w at dtype ((loss, dh,
    dW) for a function returning only the loss)."""
    h = x["h"].to(dtype).clone().requires_grad_(True)
    w = x["w"].to(dtype).clone().requires_grad_(True)
    cast = {k: (v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() else v)
            for k, v in kw.items()}
    out = fn(h, w, x["labels"], ignore_ids=(PAUSE,), **cast)
    out = (out,) if torch.is_tensor(out) else tuple(out)
    out[0].backward(torch.tensor(1.7, dtype=out[0].dtype, device=DEVICE))
    return (*(t.detach() for t in out), h.grad, w.grad)


def _compare(x, dtype, kind, alpha, temperature, reduction="mean", **extra):
    kw = dict(_teacher(kind, x), alpha=alpha, temperature=temperature,
              kd_weight=x["kd_weight"], reduction=reduction, **extra)
    got = _run(kernels.linear_distill_loss, x, dtype, **kw)
    ref = _run(linear_distill_reference, x, torch.float64, **kw)
    for name, r, o in zip(("loss", "hard", "soft", "n_tokens", "dh", "dW"), ref, got):
        if name == "n_tokens":
            assert int(o) == int(r) == N - 3, "the CE loss tokens are counted"
        elif name == "soft" and alpha == 0.0:
            assert float(o) == 0.0, "alpha = 0 does not read the teacher"
        else:
            assert_close(name, r, o, dtype)


@pytest.fixture
def small_chunks(monkeypatch):
    """Several row chunks (ragged last one) and row-loss sub-blocks even at N=23, V=67, and
    several vocabulary blocks in the Triton row kernels."""
    import kernels.linear_cross_entropy_triton as lt
    import kernels.linear_distill_triton as ldt

    monkeypatch.setattr(ld, "CHUNK_ELEMENTS", 5 * 2 * V)
    monkeypatch.setattr(ld, "SUB_ELEMENTS", 2 * V)
    monkeypatch.setattr(lce, "CHUNK_ELEMENTS", 5 * V)
    monkeypatch.setattr(lt, "CHUNK_ELEMENTS", 6 * 2 * V)
    monkeypatch.setattr(lt, "MIN_CHUNK_ROWS", 1)
    monkeypatch.setattr(lt, "ROW_MULTIPLE", 1)
    monkeypatch.setattr(ldt, "MAX_BLOCK_V", 16)
    monkeypatch.setattr(ldt, "MEMBERSHIP_ELEMENTS", 8 * 32)


TEACHERS = [pytest.param(("sparse", 1), id="k1"), pytest.param(("sparse", 7), id="k7"),
            pytest.param(("sparse", 32), id="k32"), pytest.param(("dense", 0), id="dense"),
            pytest.param(("reverse", 0), id="dense-reverse")]
TEMPS = [pytest.param(1.0, id="T1"), pytest.param(2.0, id="T2")]
ALPHAS = [pytest.param(a, id=f"a{a}") for a in (0.0, 0.5, 1.0)]


@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("temperature", TEMPS)
@pytest.mark.parametrize("teacher", TEACHERS)
def test_torch_path_matches_float64(use_torch, small_chunks, teacher, temperature, alpha):
    kind, k = teacher
    _compare(_inputs(k or 7), torch.float64, kind, alpha, temperature)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_torch_path_sum_z_loss_and_importance_weights(use_torch, small_chunks, reduction):
    x = _inputs(7, seed=1)
    # sampled KD: importance weights need not sum to 1; the gradient uses their sum
    x["teacher_logprobs"] = x["teacher_logprobs"] + 0.3 * torch.randn_like(x["teacher_logprobs"])
    _compare(x, torch.float64, "sparse", 0.5, 2.0, reduction=reduction, z_loss=1e-2)
    _compare(x, torch.float64, "dense", 0.7, 1.5, reduction=reduction, z_loss=1e-2)


TRITON_FAST = [("sparse", 7, 2.0, 0.5), ("sparse", 32, 1.0, 1.0), ("dense", 0, 2.0, 0.5),
               ("reverse", 0, 1.0, 0.5)]


@pytest.mark.triton
@pytest.mark.parametrize("kind,k,temperature,alpha", TRITON_FAST,
                         ids=[f"{c[0]}-k{c[1]}-T{c[2]}-a{c[3]}" for c in TRITON_FAST])
def test_triton_matches_float64(use_triton, small_chunks, kind, k, temperature, alpha):
    _compare(_inputs(k or 7), torch.float32, kind, alpha, temperature)


@pytest.mark.triton
@pytest.mark.parametrize("kind", ["sparse", "dense"])
@pytest.mark.parametrize("dtype", [pytest.param(torch.bfloat16, id="bf16"),
                                   pytest.param(torch.float16, id="fp16",
                                                marks=pytest.mark.slow)])
def test_triton_half_precision(monkeypatch, small_chunks, dtype, kind):
    # inputs rounded to the half dtype first, so the float64 reference sees what the kernel
    # sees; the bound is the shared one or twice the PyTorch path's own error at that dtype
    x = {k: v.to(dtype).double() if v.is_floating_point() else v
         for k, v in _inputs(7, seed=5).items()}
    kw = dict(_teacher(kind, x), alpha=0.5, temperature=2.0, kd_weight=x["kd_weight"])
    ref = _run(linear_distill_reference, x, torch.float64, **kw)
    monkeypatch.setenv("LLMCORE_KERNELS", "torch")
    base = _run(kernels.linear_distill_loss, x, dtype, **kw)
    monkeypatch.setenv("LLMCORE_KERNELS", "triton")
    got = _run(kernels.linear_distill_loss, x, dtype, **kw)
    assert got[4].dtype == dtype and got[0].dtype == torch.float32
    for name, i in (("loss", 0), ("hard", 1), ("soft", 2), ("dh", 4), ("dW", 5)):
        assert_close(name, ref[i], got[i], dtype, base[i])


@pytest.mark.slow
@pytest.mark.triton
@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("temperature", TEMPS)
@pytest.mark.parametrize("teacher", TEACHERS)
def test_triton_matches_float64_grid(use_triton, small_chunks, teacher, temperature, alpha):
    kind, k = teacher
    _compare(_inputs(k or 7), torch.float32, kind, alpha, temperature)
    _compare(_inputs(k or 7, seed=2), torch.float32, kind, alpha, temperature,
             reduction="sum", z_loss=1e-2)


@pytest.mark.parametrize("kind", ["sparse", "dense"])
@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=pytest.mark.triton)])
def test_a_per_row_ce_weight_replaces_one_minus_alpha_in_the_same_pass(monkeypatch, small_chunks, backend, kind):
    # routing that trains a routed row as plain pretraining: CE weight 1 and no KD there
    monkeypatch.setenv("LLMCORE_KERNELS", backend)
    x = _inputs(7, seed=4)
    ce_weight = torch.where(x["kd_weight"] == 0, 1.0, 0.4).to(x["kd_weight"])
    dtype = torch.float64 if backend == "torch" else torch.float32
    _compare(x, dtype, kind, 0.6, 2.0, z_loss=1e-2, ce_weight=ce_weight)
    _compare(x, dtype, kind, 0.6, 1.0, reduction="sum", ce_weight=ce_weight)
    # 1 - alpha on every row is the call without ce_weight
    plain = _run(kernels.linear_distill_loss, x, dtype, alpha=0.6, **_teacher(kind, x))
    same = _run(kernels.linear_distill_loss, x, dtype, alpha=0.6, ce_weight=torch.full_like(ce_weight, 0.4),
                **_teacher(kind, x))
    for name, a, b in zip(("loss", "hard", "soft", "n_tokens", "dh", "dW"), plain, same):
        assert_close(name, a, b, dtype)


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=pytest.mark.triton)])
def test_alpha_zero_is_linear_cross_entropy_bit_for_bit(monkeypatch, backend):
    monkeypatch.setenv("LLMCORE_KERNELS", backend)
    x = _inputs(7, seed=3)
    dtype = torch.float32
    for teacher in ({}, _teacher("sparse", x), _teacher("dense", x)):
        ours = _run(kernels.linear_distill_loss, x, dtype, alpha=0.0, temperature=2.0,
                    z_loss=1e-3, **teacher)
        plain = _run(kernels.linear_cross_entropy, x, dtype, z_loss=1e-3)
        assert torch.equal(ours[0], plain[0]) and torch.equal(ours[1], plain[0])
        assert torch.equal(ours[4], plain[1]), "dh"
        assert torch.equal(ours[5], plain[2]), "dW"


def test_teacher_gets_no_gradient_and_leading_shapes_flatten(use_torch):
    x = _inputs(7, seed=4)
    th = x["teacher_h"].clone().requires_grad_(True)
    tw = x["teacher_w"].clone().requires_grad_(True)
    h = x["h"][:22].reshape(2, 11, D).clone().requires_grad_(True)
    labels = x["labels"][:22].reshape(2, 11)
    out = kernels.linear_distill_loss(h, x["w"], labels, teacher_h=th[:22].reshape(2, 11, DT),
                                      teacher_w=tw, kd_weight=x["kd_weight"][:22].reshape(2, 11))
    out.loss.backward()
    assert th.grad is None and tw.grad is None
    ref_h = x["h"][:22].clone().requires_grad_(True)
    ref = linear_distill_reference(ref_h, x["w"], x["labels"][:22], teacher_h=th[:22],
                                   teacher_w=tw, kd_weight=x["kd_weight"][:22])
    ref[0].backward()
    assert_close("loss", ref[0], out.loss.detach(), torch.float64)
    assert_close("dh", ref_h.grad, h.grad.reshape(22, D), torch.float64)


@pytest.mark.parametrize("kind", ["sparse", "dense"])
def test_without_autograd_the_loss_is_the_same(use_torch, kind):
    # evaluation: no graph, no gradient work, the same four results
    x = _inputs(7, seed=7)
    h = x["h"].clone().requires_grad_(True)
    kw = dict(_teacher(kind, x), temperature=2.0, kd_weight=x["kd_weight"])
    with_grad = kernels.linear_distill_loss(h, x["w"], x["labels"], **kw)
    with torch.no_grad():
        without = kernels.linear_distill_loss(h, x["w"], x["labels"], **kw)
    assert without.loss.grad_fn is None and with_grad.loss.grad_fn is not None
    for a, b in zip(with_grad, without):
        assert torch.equal(a.detach(), b)


class _LargestTensor(TorchDispatchMode):
    """Records the most elements of any tensor an op returns while active."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("kind", ["sparse", "dense", "reverse"])
def test_no_tokens_by_vocab_tensor_for_student_or_teacher(use_torch, small_chunks, kind):
    # every tensor made in forward and backward is at most a logits chunk or a weight-sized
    # one, far under [N, V] (23 x 67 = 1541 elements; chunks here are <= 670)
    x = _inputs(7, seed=8)
    h = x["h"].clone().requires_grad_(True)
    w = x["w"].clone().requires_grad_(True)
    with _LargestTensor() as seen:
        out = kernels.linear_distill_loss(h, w, x["labels"], temperature=2.0,
                                          kd_weight=x["kd_weight"], **_teacher(kind, x))
        out.loss.backward()
    assert seen.largest <= max(5 * 2 * V, V * D) < N * V, seen.largest


def test_uint16_ids_of_a_cache_are_taken_as_they_are(use_torch):
    x = _inputs(7, seed=6)
    wide = kernels.linear_distill_loss(x["h"], x["w"], x["labels"], **_teacher("sparse", x))
    ids = torch.where(x["teacher_ids"] < 0, 0, x["teacher_ids"]).to(torch.uint16)
    narrow = kernels.linear_distill_loss(x["h"], x["w"], x["labels"], teacher_ids=ids,
                                         teacher_logprobs=x["teacher_logprobs"])
    assert torch.equal(wide.loss, narrow.loss) and torch.equal(wide.soft, narrow.soft)


def test_mean_over_no_tokens_is_nan_and_sum_is_zero(use_torch):
    x = _inputs(7)
    labels = torch.full_like(x["labels"], -100)
    for reduction, check in (("mean", torch.isnan), ("sum", lambda t: t == 0)):
        out = kernels.linear_distill_loss(x["h"], x["w"], labels, reduction=reduction,
                                          **_teacher("sparse", x))
        assert check(out.loss) and int(out.n_tokens) == 0


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=pytest.mark.triton)])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_teacher_entropy_matches_float64(monkeypatch, small_chunks, backend, temperature):
    monkeypatch.setenv("LLMCORE_KERNELS", backend)
    x = _inputs()
    dtype = torch.float64 if backend == "torch" else torch.float32
    th = x["teacher_h"].reshape(1, N, DT).to(dtype)
    ent, lse = kernels.teacher_entropy(th, x["teacher_w"].to(dtype), temperature)
    ref_ent, ref_lse = teacher_entropy_reference(x["teacher_h"], x["teacher_w"], temperature)
    assert ent.shape == lse.shape == (1, N)
    assert_close("entropy", ref_ent, ent.reshape(N), dtype)
    assert_close("lse", ref_lse, lse.reshape(N), dtype)


def _with(base, **changes):
    out = dict(base)
    out.update(changes)
    return out


def _edited(t, at, value):
    t = t.clone()
    t[at] = value
    return t


# (id, keyword arguments built from the inputs, error, message)
ERRORS = [
    ("sparse-reverse", lambda x: _with(_teacher("sparse", x), reverse=True), ValueError,
     "reverse=True needs the dense teacher"),
    ("padded-teacher-vocab", lambda x: _with(_teacher("dense", x), teacher_w=torch.cat(
        [x["teacher_w"], x["teacher_w"][:1]])), ValueError,
     "teacher_w has 68 vocabulary rows, the student's w 67"),
    ("teacher-rows", lambda x: _with(_teacher("dense", x), teacher_h=x["teacher_h"][:22]),
     ValueError, r"teacher_h \(22, 5\) has 22 rows, h has 23"),
    ("teacher-width", lambda x: _with(_teacher("dense", x), teacher_w=x["teacher_w"][:, :4]),
     ValueError, r"teacher_h \(23, 5\) and teacher_w \(67, 4\) must be"),
    ("ids-vs-logprobs", lambda x: _with(_teacher("sparse", x),
                                        teacher_ids=x["teacher_ids"][:, :6]),
     ValueError, r"teacher_ids \(23, 6\) and teacher_logprobs \(23, 7\)"),
    ("ids-rows", lambda x: {"teacher_ids": x["teacher_ids"][:22],
                            "teacher_logprobs": x["teacher_logprobs"][:22]},
     ValueError, r"teacher_ids \(22, 7\) does not match the 23 rows"),
    ("kd-weight-rows", lambda x: _with(_teacher("sparse", x), kd_weight=x["kd_weight"][:22]),
     ValueError, r"kd_weight \(22,\) does not match the 23 rows"),
    ("ce-weight-rows", lambda x: _with(_teacher("sparse", x), ce_weight=x["kd_weight"][:22]),
     ValueError, r"ce_weight \(22,\) does not match the 23 rows"),
    ("ce-weight-at-alpha-0", lambda x: _with(_teacher("sparse", x), alpha=0.0, ce_weight=x["kd_weight"]),
     ValueError, "ce_weight needs alpha > 0"),
    ("integer-ce-weight", lambda x: _with(_teacher("sparse", x), ce_weight=x["labels"]),
     TypeError, "ce_weight must be floating point"),
    ("two-teachers", lambda x: _with(_teacher("sparse", x), teacher_h=x["teacher_h"],
                                     teacher_w=x["teacher_w"]),
     ValueError, "either a sparse teacher .* or a dense one"),
    ("half-a-teacher", lambda x: {"teacher_ids": x["teacher_ids"]}, ValueError,
     "needs both teacher_ids and teacher_logprobs"),
    ("no-teacher", lambda x: {}, ValueError, "alpha=0.5 needs a teacher"),
    ("id-outside-vocab", lambda x: _with(_teacher("sparse", x), teacher_ids=_edited(
        x["teacher_ids"], (3, 0), V)), ValueError,
     r"teacher id 67 at position \(3, 0\) is outside the vocabulary \[0, 67\)"),
    ("nan-logprob", lambda x: _with(_teacher("sparse", x), teacher_logprobs=_edited(
        x["teacher_logprobs"], (0, 0), float("nan"))), ValueError, "teacher_logprobs hold nan"),
    ("alpha", lambda x: _with(_teacher("sparse", x), alpha=1.5), ValueError,
     r"alpha=1.5 must be in \[0, 1\]"),
    ("temperature", lambda x: _with(_teacher("sparse", x), temperature=0.0), ValueError,
     "temperature=0.0 must be > 0"),
    ("reduction", lambda x: _with(_teacher("sparse", x), reduction="none"), ValueError,
     "reduction='none' not in"),
    ("partitioned-teacher-weight", lambda x: _with(_teacher("dense", x),
                                                   teacher_w=torch.empty(0, dtype=torch.float64)),
     ValueError, r"teacher_w \(0,\) is empty: under ZeRO-3 gather the output weight"),
    ("float-ids", lambda x: _with(_teacher("sparse", x), teacher_ids=x["teacher_ids"].double()),
     TypeError, "teacher_ids must be an integer tensor"),
]


@pytest.mark.parametrize("build,error,match", [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_bad_input_is_a_named_error(use_torch, build, error, match):
    x = _inputs()
    with pytest.raises(error, match=match):
        kernels.linear_distill_loss(x["h"], x["w"], x["labels"], **build(x))


def test_shape_mismatch_of_h_and_labels_is_named(use_torch):
    x = _inputs()
    with pytest.raises(ValueError, match=r"h \(23, 10\) and w \(67, 9\) must be"):
        kernels.linear_distill_loss(torch.zeros(N, D + 1, dtype=torch.float64), x["w"],
                                    x["labels"], **_teacher("sparse", x))
    with pytest.raises(ValueError, match=r"labels \(22,\) do not match h \(23, 9\)"):
        kernels.linear_distill_loss(x["h"], x["w"], x["labels"][:22], **_teacher("sparse", x))
    with pytest.raises(ValueError, match=r"entropy: teacher_h \(23, 5\) and teacher_w"):
        kernels.teacher_entropy(x["teacher_h"], x["teacher_w"][:, :4])
