"""Seeded Rademacher random projection of per-example gradients, one row block at a time.

Used by `recipes.mode_conditioning.cluster` (ModC's gradient clustering, arXiv 2512.01127):
the paper projects per-example gradients of log p(y|x) to a few thousand dimensions with a
random sign matrix before k-means, and publishes neither the size nor the construction.

The matrix R [P, D] has i.i.d. entries +-1/sqrt(D) (so squared norms are preserved in
expectation, Johnson-Lindenstrauss). It is never allocated: the rows of each parameter are
cut into blocks of `BLOCK` rows, and each block is generated from its own seed (a hash of the
projection seed, the parameter's name and the block index), multiplied into the features and
dropped. So memory is one block, [BLOCK, D], whatever P is; the projection of a parameter
does not depend on which other parameters are projected with it or on the batch size; and the
same seed gives the same matrix on every run. The cost is regenerating R once per projected
batch, which is why callers project large batches (`project_batch` examples) at a time.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import torch

BLOCK = 1024
"""Rows of R generated at once: [BLOCK, D] fp32 is 16 MiB at D = 4096."""


def _block_seed(seed: int, name: str, block: int) -> int:
    digest = hashlib.sha256(f"{seed}:{name}:{block}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def rademacher_block(seed: int, name: str, block: int, rows: int, dim: int, device="cpu") -> torch.Tensor:
    """Rows [block * BLOCK, block * BLOCK + rows) of parameter `name`'s part of R: [rows, dim]
    of +-1/sqrt(dim), fp32, a pure function of (seed, name, block)."""
    g = torch.Generator(device=device)
    g.manual_seed(_block_seed(seed, name, block))
    signs = torch.randint(0, 2, (BLOCK, dim), generator=g, device=device, dtype=torch.float32)[:rows]
    return signs.mul_(2.0 / dim ** 0.5).sub_(1.0 / dim ** 0.5)


class RademacherProjection:
    """x -> x R for per-example vectors given as named pieces (one per parameter tensor)."""

    def __init__(self, dim: int, seed: int = 0):
        if dim < 1:
            raise ValueError(f"projection dim must be >= 1, got {dim}")
        self.dim, self.seed = dim, seed

    def __call__(self, pieces: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """pieces: name -> [B, n_name] fp32 (a parameter's flattened per-example gradients,
        all with the same B) -> [B, dim] fp32: the sum over names of piece @ R_name."""
        out = None
        for name, x in pieces.items():
            x = x.float()
            if out is None:
                out = torch.zeros(x.shape[0], self.dim, dtype=torch.float32, device=x.device)
            for b, start in enumerate(range(0, x.shape[1], BLOCK)):
                rows = min(BLOCK, x.shape[1] - start)
                out.addmm_(x[:, start:start + rows], rademacher_block(self.seed, name, b, rows, self.dim, x.device))
        if out is None:
            raise ValueError("projection: no pieces given")
        return out
