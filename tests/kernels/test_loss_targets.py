"""The one rule for which targets take a loss (``kernels.loss_target_mask``), against masks
written out by hand, and its input forms (no ids, a list, a tensor, another shape)."""

import torch
from kernel_testing import DEVICE

import kernels

LABELS = [[5, -100, 7, 0], [3, 7, -100, 9]]


def _labels():
    return torch.tensor(LABELS, device=DEVICE)


def test_ignore_index_only():
    expect = [[True, False, True, True], [True, True, False, True]]
    assert kernels.loss_target_mask(_labels()).tolist() == expect
    assert kernels.loss_target_mask(_labels(), ignore_ids=[]).tolist() == expect


def test_ignore_ids_as_list_or_tensor():
    expect = [[False, False, False, True], [True, False, False, True]]
    assert kernels.loss_target_mask(_labels(), ignore_ids=[7, 5]).tolist() == expect
    ids = torch.tensor([[7], [5]])  # any shape, on the CPU while the labels may not be
    assert kernels.loss_target_mask(_labels(), -100, ids).tolist() == expect


def test_other_ignore_index_and_dtype():
    labels = _labels().int()
    mask = kernels.loss_target_mask(labels, ignore_index=0, ignore_ids=(9,))
    assert mask.dtype == torch.bool and mask.shape == labels.shape
    # -100 is an ordinary label once ignore_index is 0
    assert mask.tolist() == [[True, True, True, False], [True, True, True, False]]
