"""The plain float64-capable definition of ``swiglu``: gate * sigmoid(gate) * up.

Written without ``F.silu`` (which the PyTorch path uses), so the tests check that path against
the formula, not against itself.
"""

import torch

__all__ = ["swiglu_reference"]


def swiglu_reference(gate, up):
    """silu(gate) * up for gate, up of one shape, in the inputs' dtype."""
    return gate * torch.sigmoid(gate) * up
