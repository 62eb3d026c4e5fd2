"""Fixtures for the kernel tests: the Triton interpreter on CPU, backend forcing, NaN memory.

``TRITON_INTERPRET`` is read when a ``@triton.jit`` kernel is defined, i.e. when a
``kernels/*_triton.py`` module is first imported, so it is set here at import time, before any
test imports one. On a CUDA machine the kernels run compiled on the GPU instead.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def nan_filled_fresh_memory():
    """torch.empty returns NaN while a test runs, so an output a kernel forgot to write fails."""
    was_on = torch.are_deterministic_algorithms_enabled()
    was_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    yield
    torch.use_deterministic_algorithms(was_on, warn_only=was_warn)


@pytest.fixture
def use_triton(monkeypatch):
    """Force the Triton backend (interpreted on CPU) for the duration of a test."""
    monkeypatch.setenv("LLMCORE_KERNELS", "triton")


@pytest.fixture
def use_torch(monkeypatch):
    """Force the PyTorch backend for the duration of a test."""
    monkeypatch.setenv("LLMCORE_KERNELS", "torch")
