"""The flash-attn backend's plumbing, without the package: a stand-in ``flash_attn`` module with
the two functions llmcore calls, implemented with the float64 reference from the package's
documented semantics ([B, T, H, D] layout; varlen takes [total, H, D] and cumulative sequence
lengths; causal aligned bottom-right). What is tested is ours: the layouts handed over and the
cumulative lengths built from ``doc_ids``. The real package needs CUDA and has no wheel here.
"""

import sys
import types

import pytest
import torch

from kernels.attention import attention_naive
from kernels.attention.flash_attn_backend import attention_flash_attn, runs_to_cu_seqlens


def _fake_flash_attn():
    """(module, calls): a stand-in flash_attn module and the list of its calls."""
    calls = []

    def flash_attn_func(q, k, v, causal=False, softmax_scale=None):
        calls.append("dense")
        return attention_naive(q, k, v, causal, None, softmax_scale)

    def flash_attn_varlen_func(q, k, v, cu_q, cu_k, max_q, max_k, causal=False,
                               softmax_scale=None):
        calls.append("varlen")
        assert cu_q.dtype == torch.int32 and torch.equal(cu_q, cu_k)
        assert int(cu_q[-1]) == q.shape[0] and max_q == int((cu_q[1:] - cu_q[:-1]).max())
        out = torch.empty_like(q)
        for s, e in zip(cu_q[:-1].tolist(), cu_q[1:].tolist()):
            out[s:e] = attention_naive(q[None, s:e], k[None, s:e], v[None, s:e], causal, None,
                                       softmax_scale)[0]
        return out

    module = types.ModuleType("flash_attn")
    module.flash_attn_func = flash_attn_func
    module.flash_attn_varlen_func = flash_attn_varlen_func
    return module, calls


@pytest.fixture
def fake_flash_attn(monkeypatch):
    module, calls = _fake_flash_attn()
    monkeypatch.setitem(sys.modules, "flash_attn", module)
    return calls


def _qkv(b, t, h, h_kv, d, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(b, t, n, d, generator=gen, dtype=torch.float64) for n in (h, h_kv, h_kv)]


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
def test_documents_become_varlen_sequences(fake_flash_attn, causal):
    q, k, v = _qkv(2, 12, 4, 2, 8)
    doc_ids = torch.tensor([[0] * 5 + [1] * 4 + [2] * 3, [7] * 12])
    out = attention_flash_attn(q, k, v, causal, doc_ids, 0.3)
    torch.testing.assert_close(out, attention_naive(q, k, v, causal, doc_ids, 0.3))
    assert fake_flash_attn == ["varlen"]


def test_without_documents_is_one_dense_call(fake_flash_attn):
    q, k, v = _qkv(2, 9, 4, 1, 8)
    out = attention_flash_attn(q, k, v, True)
    torch.testing.assert_close(out, attention_naive(q, k, v, True))
    assert fake_flash_attn == ["dense"]


def test_cu_seqlens_split_runs_across_rows():
    # a run never continues from one row into the next, even with the same id
    cu, longest = runs_to_cu_seqlens(torch.tensor([[3, 3, 4], [4, 4, 4]]))
    assert cu.tolist() == [0, 2, 3, 6] and longest == 3


def test_documents_need_as_many_queries_as_keys(fake_flash_attn):
    q, _, _ = _qkv(1, 4, 2, 1, 8)
    _, k, v = _qkv(1, 6, 2, 1, 8)
    with pytest.raises(ValueError, match="needs Tq == Tk, got 4 and 6"):
        attention_flash_attn(q, k, v, True, torch.zeros(1, 6, dtype=torch.long))


def test_missing_package_is_named(monkeypatch):
    monkeypatch.setitem(sys.modules, "flash_attn", None)  # import raises ImportError
    q, k, v = _qkv(1, 4, 2, 1, 8)
    with pytest.raises(RuntimeError, match="flash-attn package is not installed"):
        attention_flash_attn(q, k, v)
