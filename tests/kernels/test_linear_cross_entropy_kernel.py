"""Linear cross-entropy: the Triton path (interpreted on CPU) and the PyTorch path vs
F.cross_entropy(h @ w.T) in float64: loss, dh and dW for every reduction, ignored labels and
ignored ids, z-loss, label smoothing, several chunks and vocabulary blocks."""

import importlib

import pytest
import torch
import torch.nn.functional as F

import kernels
from kernel_testing import DEVICE, assert_close, compare_op
from kernels.linear_cross_entropy_reference import linear_cross_entropy_reference

# the package attribute kernels.linear_cross_entropy is the public function, not this module
lce = importlib.import_module("kernels.linear_cross_entropy")

N, D, V = 9, 41, 97
PAUSE = 7  # a control-token id passed in ignore_ids


def _reference(ignore_index=-100, ignore_ids=(), z_loss=0.0, smoothing=0.0, reduction="mean"):
    return lambda h, w, labels: linear_cross_entropy_reference(
        h, w, labels, ignore_index, ignore_ids, z_loss, smoothing, reduction)


def _inputs(n=N, d=D, vocab=V, seed=0):
    gen = torch.Generator().manual_seed(seed)
    h = torch.randn(n, d, generator=gen, dtype=torch.float64)
    w = torch.randn(vocab, d, generator=gen, dtype=torch.float64) * d ** -0.5 * 3
    labels = torch.randint(0, vocab, (n,), generator=gen)
    labels[2] = -100
    labels[5] = PAUSE
    return [h.to(DEVICE), w.to(DEVICE), labels.to(DEVICE)]


OPTIONS = [
    pytest.param({}, id="plain"),
    pytest.param({"ignore_ids": (PAUSE, 3)}, id="ignore-ids"),
    pytest.param({"ignore_ids": (PAUSE,), "z_loss": 1e-2, "smoothing": 0.1}, id="zloss-smooth"),
]
REDUCTIONS = [pytest.param(r, id=r) for r in ("mean", "sum", "none")]


def _ours(opts, reduction):
    return lambda h, w, labels: kernels.linear_cross_entropy(
        h, w, labels, ignore_ids=opts.get("ignore_ids"), z_loss=opts.get("z_loss", 0.0),
        label_smoothing=opts.get("smoothing", 0.0), reduction=reduction)


def _torch_path(opts, reduction):
    ids = torch.tensor(opts.get("ignore_ids", ()), dtype=torch.long, device=DEVICE)
    return lambda h, w, labels: lce.linear_cross_entropy_torch(
        h, w, labels, -100, ids, opts.get("z_loss", 0.0), opts.get("smoothing", 0.0), reduction)


@pytest.fixture
def small_chunks(monkeypatch):
    """Several row chunks and vocabulary blocks even at N=9, V=97."""
    import kernels.linear_cross_entropy_triton as lt

    monkeypatch.setattr(lce, "CHUNK_ELEMENTS", 4 * V)
    monkeypatch.setattr(lt, "CHUNK_ELEMENTS", 4 * V)
    monkeypatch.setattr(lt, "MAX_BLOCK_V", 32)
    monkeypatch.setattr(lt, "MIN_CHUNK_ROWS", 1)


@pytest.mark.triton
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("opts", OPTIONS)
def test_triton_matches_float64(use_triton, small_chunks, opts, reduction):
    ref_opts = {k: v for k, v in opts.items()}
    compare_op(["loss", "dh", "dW"], _ours(opts, reduction), _reference(**ref_opts,
               reduction=reduction), _inputs(), torch.float32)


@pytest.fixture
def vocab_blocks(monkeypatch):
    """The vocabulary-blocked pass whatever the budget, in blocks of 32 of V = 97 (a ragged
    last block), ignored rows included."""
    import kernels.linear_cross_entropy_triton as lt

    monkeypatch.setattr(lt, "CHUNK_ELEMENTS", 9 * 32)
    monkeypatch.setattr(lt, "ROW_STATS_ELEMENTS", 0)
    monkeypatch.setattr(lt, "VOCAB_BLOCK_MIN", 16)
    monkeypatch.setattr(lt, "ROW_PATH_MIN_ROWS", 10 ** 9)
    monkeypatch.setattr(lt, "VOCAB_PATH_MAX_IGNORED", 1.0)
    monkeypatch.setattr(lt, "VOCAB_BLOCK_MULTIPLE", 16)
    monkeypatch.setattr(lt, "MAX_BLOCK_V", 16)
    assert lt.vocab_block_size(9, 7, D, V) == 32


@pytest.mark.triton
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("opts", OPTIONS)
def test_triton_vocab_blocks_match_float64(use_triton, vocab_blocks, opts, reduction):
    compare_op(["loss", "dh", "dW"], _ours(opts, reduction), _reference(**opts,
               reduction=reduction), _block_edge_inputs(), torch.float32)


def _block_edge_inputs():
    # targets on both edges of the blocks of 32 and the last, ragged one (96 = V - 1)
    h, w, labels = _inputs()
    labels = torch.tensor([0, 31, -100, 32, 63, PAUSE, 64, 95, 96], device=DEVICE)
    return [h, w, labels]


@pytest.mark.triton
def test_triton_vocab_blocks_half_precision(use_triton, vocab_blocks):
    opts = {"ignore_ids": (PAUSE,), "z_loss": 1e-3, "smoothing": 0.1}
    compare_op(["loss", "dh", "dW"], _ours(opts, "mean"), _reference(**opts),
               _block_edge_inputs(), torch.bfloat16, torch_fn=_torch_path(opts, "mean"))


def test_row_chunks_fill_whole_tiles_without_more_chunks_or_memory(monkeypatch):
    import kernels.linear_cross_entropy_triton as lt

    monkeypatch.setattr(lt, "CHUNK_FACTOR", 2)
    for n, d, vocab in [(15421, 4096, 32000), (7710, 2048, 32000), (7710, 4096, 128256),
                        (300, 64, 1000), (5, 8, 10)]:
        budget = max(lt.MIN_CHUNK_ROWS, lt.logits_budget(n, d) // (vocab + d))
        step = lt.chunk_size(n, d, vocab, compacting=True)
        assert step <= budget, (n, d, vocab)
        assert -(-n // step) == -(-n // budget), (n, d, vocab)  # as many chunks as before
        if step != budget:  # aligned only when the tiles allowed it
            assert step % lt.ROW_MULTIPLE == 0 and budget - step < lt.ROW_MULTIPLE
    # 1859 budget rows (2**26 logits elements): 1792 = 14 whole tiles of 128, still 9 chunks
    assert lt.chunk_size(15421, 4096, 32000, compacting=True) == 1792
    # at Liger's budget, 463 rows: 384 would take 21 chunks instead of 17, so it stays
    monkeypatch.setattr(lt, "CHUNK_FACTOR", 1)
    assert lt.chunk_size(7710, 2048, 32000, compacting=True) == 463


def test_vocab_blocks_only_where_row_chunks_would_be_small():
    import kernels.linear_cross_entropy_triton as lt

    n, d, vocab = 8192, 4096, 128256
    budget_rows = lt.CHUNK_FACTOR * n * d // vocab
    block = lt.vocab_block_size(n, n, d, vocab)
    if budget_rows >= lt.ROW_PATH_MIN_ROWS:
        assert block == 0
    else:  # all rows against blocks of the same budget, on the matmul tile grid
        assert block % lt.VOCAB_BLOCK_MULTIPLE == 0
        stats = lt.ROW_STATS_ELEMENTS
        assert n * (block + stats) <= lt.CHUNK_FACTOR * n * d
        assert lt.CHUNK_FACTOR * n * d < n * (block + stats + lt.VOCAB_BLOCK_MULTIPLE)
    # many ignored rows: row chunks, which compact them away
    assert lt.vocab_block_size(n, n // 2, d, vocab) == 0
    # a budget of several hundred rows: row chunks
    assert lt.vocab_block_size(n, n, d, 8 * d) == 0
    # blocks narrower than VOCAB_BLOCK_MIN: row chunks
    assert lt.vocab_block_size(n, n, lt.VOCAB_BLOCK_MIN // 4, vocab) == 0


@pytest.mark.triton
@pytest.mark.parametrize("dtype", [pytest.param(torch.bfloat16, id="bf16"),
                                   pytest.param(torch.float16, id="fp16")])
def test_triton_half_precision(use_triton, small_chunks, dtype):
    opts = {"ignore_ids": (PAUSE,), "z_loss": 1e-3}
    compare_op(["loss", "dh", "dW"], _ours(opts, "mean"), _reference(**opts), _inputs(), dtype,
               torch_fn=_torch_path(opts, "mean"))


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("opts", OPTIONS)
def test_torch_path_matches_float64(use_torch, small_chunks, opts, reduction):
    compare_op(["loss", "dh", "dW"], _ours(opts, reduction),
               _reference(**opts, reduction=reduction), _inputs(), torch.float64)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_torch_path_gradcheck(use_torch, small_chunks, reduction):
    # central differences on every element of h and W (float64); gradcheck itself would run the
    # backward twice through one forward, which the in-place scaling of mean/sum refuses
    h, w, labels = _inputs(n=7, d=6, vocab=11)
    labels[0] = 3

    def loss(h, w):
        out = kernels.linear_cross_entropy(h, w, labels, ignore_ids=[3], z_loss=0.1,
                                           label_smoothing=0.2, reduction=reduction)
        return out.sum() if reduction == "none" else out

    leaves = [h.clone().requires_grad_(True), w.clone().requires_grad_(True)]
    loss(*leaves).backward()
    eps = 1e-6
    for i, x in enumerate((h, w)):
        numeric = torch.zeros_like(x)
        for j in range(x.numel()):
            plus, minus = [t.clone() for t in (h, w)], [t.clone() for t in (h, w)]
            plus[i].view(-1)[j] += eps
            minus[i].view(-1)[j] -= eps
            numeric.view(-1)[j] = (loss(*plus) - loss(*minus)) / (2 * eps)
        torch.testing.assert_close(leaves[i].grad, numeric, rtol=1e-6, atol=1e-8)


def test_second_backward_through_one_forward_is_refused(use_torch):
    h, w, labels = _inputs(n=7, d=6, vocab=11)
    h.requires_grad_(True)
    loss = kernels.linear_cross_entropy(h, w, labels)
    loss.backward(retain_graph=True)
    first = h.grad.clone()
    with pytest.raises(RuntimeError, match="second backward through one forward"):
        loss.backward()
    assert torch.equal(h.grad, first)


@pytest.mark.parametrize("backend", [pytest.param("torch", id="torch"),
                                     pytest.param("triton", id="triton",
                                                  marks=pytest.mark.triton)])
def test_ignored_rows_take_no_loss_and_no_gradient(monkeypatch, backend):
    monkeypatch.setenv("LLMCORE_KERNELS", backend)
    h, w, labels = (x.float() if x.is_floating_point() else x for x in _inputs())
    h.requires_grad_(True)
    losses = kernels.linear_cross_entropy(h, w, labels, ignore_ids=[PAUSE], reduction="none")
    assert losses[2].item() == 0.0 and losses[5].item() == 0.0
    assert (losses[[0, 1, 3, 4, 6, 7, 8]] > 0).all()
    losses.sum().backward()
    assert torch.equal(h.grad[[2, 5]], torch.zeros(2, D, device=DEVICE))


@pytest.mark.parametrize("backend", [pytest.param("torch", id="torch"),
                                     pytest.param("triton", id="triton",
                                                  marks=pytest.mark.triton)])
def test_all_rows_ignored(monkeypatch, backend):
    monkeypatch.setenv("LLMCORE_KERNELS", backend)
    h, w = (x.float().requires_grad_(True) for x in _inputs()[:2])
    labels = torch.full((N,), -100, device=DEVICE)
    total = kernels.linear_cross_entropy(h, w, labels, reduction="sum")
    total.backward()
    assert total.item() == 0.0
    assert torch.equal(h.grad, torch.zeros_like(h)) and torch.equal(w.grad, torch.zeros_like(w))
    # like F.cross_entropy, a mean over no tokens is nan
    assert torch.isnan(kernels.linear_cross_entropy(h, w, labels, reduction="mean"))


def test_no_grad_and_frozen_weight_paths_agree(use_torch):
    h, w, labels = _inputs()
    ref = _reference()(h, w, labels)
    with torch.no_grad():
        torch.testing.assert_close(kernels.linear_cross_entropy(h, w, labels), ref)
    h_leaf = h.clone().requires_grad_(True)  # weight frozen: only dh is computed
    loss = kernels.linear_cross_entropy(h_leaf, w, labels)
    loss.backward()
    ref_h = h.clone().requires_grad_(True)
    _reference()(ref_h, w, labels).backward()
    torch.testing.assert_close(h_leaf.grad, ref_h.grad)


def test_leading_dims_are_flattened(use_torch):
    h, w, labels = _inputs(n=12)
    out = kernels.linear_cross_entropy(h.view(3, 4, D), w, labels.view(3, 4), reduction="none")
    assert out.shape == (3, 4)
    torch.testing.assert_close(out.view(-1), _reference(reduction="none")(h, w, labels))


def test_bad_arguments_are_errors():
    h, w, labels = _inputs()
    with pytest.raises(ValueError, match="reduction='avg' not in"):
        kernels.linear_cross_entropy(h, w, labels, reduction="avg")
    with pytest.raises(ValueError, match=r"h \(9, 41\) and w \(97, 40\) must be"):
        kernels.linear_cross_entropy(h, w[:, :40], labels)
    with pytest.raises(ValueError, match=r"labels \(8,\) do not match h \(9, 41\)"):
        kernels.linear_cross_entropy(h, w, labels[:8])


@pytest.mark.parametrize("backend", [pytest.param("torch", id="torch"),
                                     pytest.param("triton", id="triton", marks=pytest.mark.triton)])
def test_labels_are_checked(monkeypatch, backend):
    # a kept label outside [0, V) would make the Triton kernels read past the logits row
    monkeypatch.setenv("LLMCORE_KERNELS", backend)
    h, w, labels = _inputs()
    h, w = h.float(), w.float()
    for value in (V, -5):
        bad = labels.clone()
        bad[4] = value
        with pytest.raises(ValueError, match=rf"label {value} at position 4 is outside the "
                                             rf"vocabulary \[0, {V}\) and is neither "
                                             "ignore_index=-100 nor in ignore_ids"):
            kernels.linear_cross_entropy(h, w, bad)
    with pytest.raises(TypeError, match="labels must be int64 or int32, got torch.float32"):
        kernels.linear_cross_entropy(h, w, labels.float())
    # an ignored id may lie outside the vocabulary; int32 labels mean the same as int64
    bad = labels.clone()
    bad[[2, 5]] = torch.tensor([-1, V + 1], device=bad.device)
    out32 = kernels.linear_cross_entropy(h, w, bad.int(), ignore_index=-1, ignore_ids=[V + 1])
    keep = torch.ones(N, dtype=torch.bool, device=bad.device)
    keep[[2, 5]] = False
    torch.testing.assert_close(out32, F.cross_entropy(h[keep] @ w.t(), labels[keep]),
                               rtol=2e-5, atol=1e-5)


@pytest.mark.parametrize("backend,chunking", [
    pytest.param("torch", "small_chunks", id="torch"),
    pytest.param("triton", "small_chunks", id="triton-rows", marks=pytest.mark.triton),
    pytest.param("triton", "vocab_blocks", id="triton-vocab-blocks", marks=pytest.mark.triton)])
def test_bf16_hidden_states_with_fp32_weight(monkeypatch, request, backend, chunking):
    # autocast-style training: bf16 activations, fp32 master weight. The matmuls run in bf16,
    # dW comes back in fp32, and the loss in fp32 (a bf16 sum would drop digits).
    request.getfixturevalue(chunking)
    monkeypatch.setenv("LLMCORE_KERNELS", backend)
    h64, w64, labels = _inputs()
    h = h64.bfloat16().requires_grad_(True)
    w = w64.float().requires_grad_(True)
    loss = kernels.linear_cross_entropy(h, w, labels, ignore_ids=[PAUSE], reduction="sum")
    loss.backward()
    assert loss.dtype == torch.float32 and h.grad.dtype == torch.bfloat16
    assert w.grad.dtype == torch.float32
    ref_h = h.detach().double().requires_grad_(True)
    ref_w = w.detach().bfloat16().double().requires_grad_(True)  # the weight the matmul sees
    ref = _reference(ignore_ids=(PAUSE,), reduction="sum")(ref_h, ref_w, labels)
    ref.backward()
    # bound: what F.cross_entropy on bf16 logits errs at the same inputs
    h2 = h.detach().clone().requires_grad_(True)
    w2 = w.detach().bfloat16().requires_grad_(True)
    naive = _reference(ignore_ids=(PAUSE,), reduction="sum")(h2, w2, labels)
    naive.backward()
    assert_close("loss", ref, loss, torch.bfloat16, naive)
    assert_close("dh", ref_h.grad, h.grad, torch.bfloat16, h2.grad)
    assert_close("dW", ref_w.grad, w.grad, torch.bfloat16, w2.grad)


@pytest.mark.parametrize("backend", [pytest.param("torch", id="torch"),
                                     pytest.param("triton", id="triton",
                                                  marks=pytest.mark.triton)])
def test_autocast_runs_the_matmuls_in_the_autocast_dtype(monkeypatch, small_chunks, backend):
    # fp32 hidden states and weight under bf16 autocast: exactly the call with bf16 hidden
    # states (as an nn.Linear under autocast), gradients back in each input's dtype
    monkeypatch.setenv("LLMCORE_KERNELS", backend)
    h64, w64, labels = _inputs()
    h, w = h64.float().requires_grad_(True), w64.float().requires_grad_(True)
    with torch.autocast(torch.device(DEVICE).type, dtype=torch.bfloat16):
        loss = kernels.linear_cross_entropy(h, w, labels, reduction="sum")
    loss.backward()
    hb, wb = h.detach().bfloat16().requires_grad_(True), w.detach().clone().requires_grad_(True)
    expect = kernels.linear_cross_entropy(hb, wb, labels, reduction="sum")
    expect.backward()
    assert torch.equal(loss, expect)
    assert h.grad.dtype == torch.float32 and torch.equal(h.grad, hb.grad.float())
    assert torch.equal(w.grad, wb.grad)
    full = kernels.linear_cross_entropy(h.detach(), w.detach(), labels, reduction="sum")
    assert not torch.equal(loss.detach(), full), "autocast had no effect"
