"""Weight edits with exact restore, and seeded Gaussian weight noise with an explicit law.

Used by `llmcore.eval.sensitivity` (`llmcore sensitivity`, the catastrophic-overtraining probe
of arXiv 2503.19206) and by recipes that score a model under edited weights (the SAM
forgetting harness quantizes through `edited_weights`).

Which parameters: the 2-D weight matrices of the transformer blocks (attention q/k/v/o, MLP
gate/up/down, every name under `layers.`); the embedding and the unembedding join with
`include_embeddings=True`; norm gains (1-D) are never touched. A tied embedding is one
parameter and is edited once.

Restore: every edit is undone by copying back a copy saved before the first change, never by
inverting the edit, so the weights afterwards are bit-identical, also when the edit or the
code inside the block raises.

Noise laws (`NOISE_LAWS`), W += std * xi with xi ~ N(0, 1) elementwise:
- `tensor_rms`: std = sigma * rms(W), rms(W) = ||W||_F / sqrt(numel), measured on the weights
  being perturbed (so sigma is the noise-to-signal ratio of each tensor);
- `init_std`: std = sigma * init_std(W), a fixed magnitude per tensor: the std llmcore's
  initialisation draws that tensor from (`Transformer.init_std`: 0.02, and 0.02 / sqrt(2L) for
  o_proj / down_proj), whatever the weights are now and wherever they came from. The paper
  scales its noise by the initialisation distribution; it leaves open which tensors, so we
  follow the list above.
xi is drawn in fp32 on the CPU from its own Generator per (seed, tensor index) (`noise_generator`),
then moved to the weight's device, so a perturbation is the same on any device and two noise
seeds do not share streams. sigma = 0 leaves every weight exactly as it was.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterator

import torch
from torch import nn

from llmcore.errors import ConfigError

NOISE_LAWS = ("tensor_rms", "init_std")



def target_weights(model: nn.Module, include_embeddings: bool = False) -> list[tuple[str, nn.Parameter]]:
    """(name, weight) of every 2-D matrix inside the blocks (+ embeddings / lm_head if asked),
    in `named_parameters` order (the tensor index of the noise seed)."""
    out = []
    for name, p in model.named_parameters():
        if p.ndim != 2:
            continue
        if name.startswith("layers.") or include_embeddings:
            out.append((name, p))
    return out


@contextlib.contextmanager
def edited_weights(model: nn.Module, edit: Callable[[int, str, torch.Tensor], torch.Tensor],
                   include_embeddings: bool = False) -> Iterator[list[str]]:
    """Inside the block each target weight W (index i, name n) is replaced by edit(i, n, W); on
    exit, normal or by an exception, the saved bits come back. Yields the edited names."""
    targets = target_weights(model, include_embeddings)
    saved = [p.detach().clone() for _, p in targets]
    try:
        with torch.no_grad():
            for i, (name, p) in enumerate(targets):
                p.copy_(edit(i, name, p.detach()))
        yield [n for n, _ in targets]
    finally:
        with torch.no_grad():
            for (_, p), s in zip(targets, saved):
                p.copy_(s)


def noise_generator(seed: int, index: int) -> torch.Generator:
    """The CPU generator of tensor `index` under noise seed `seed` (both >= 0). torch's CPU
    generator keeps only 32 bits of its seed, so (seed, index) is hashed to 32 bits instead of
    packed (`seed + index` would give seed 1's tensor 0 the stream of seed 0's tensor 1)."""
    if seed < 0 or index < 0:
        raise ConfigError(f"noise seed and tensor index must be >= 0, got seed={seed}, index={index}")
    digest = hashlib.blake2b(f"llmcore-noise/{seed}/{index}".encode(), digest_size=4).digest()
    return torch.Generator(device="cpu").manual_seed(int.from_bytes(digest, "little"))


def gaussian_noise(w: torch.Tensor, index: int, sigma: float, law: str = "tensor_rms", seed: int = 0,
                   init_std: float | None = None) -> torch.Tensor:
    """w + std * xi, xi ~ N(0, 1) from `noise_generator(seed, index)`; same shape and dtype as w.

    law `tensor_rms`: std = sigma * ||w||_F / sqrt(numel); `init_std`: std = sigma * init_std
    (required for that law). sigma = 0 returns w unchanged (a copy)."""
    check_noise(sigma, law)
    if law == "init_std" and (init_std is None or not init_std > 0):
        raise ConfigError(f"noise law init_std needs the tensor's init std (> 0), got {init_std!r}")
    if sigma == 0:
        return w.clone()
    xi = torch.randn(w.shape, generator=noise_generator(seed, index), dtype=torch.float32)
    wf = w.float()
    std = sigma * (wf.pow(2).mean().sqrt().item() if law == "tensor_rms" else init_std)
    return (wf + std * xi.to(w.device)).to(w.dtype)


def check_noise(sigma: float, law: str) -> None:
    """ConfigError naming a law that is not one of NOISE_LAWS or a sigma that is not finite and >= 0."""
    if law not in NOISE_LAWS:
        raise ConfigError(f"noise law {law!r} is not one of {', '.join(NOISE_LAWS)}")
    if not (isinstance(sigma, (int, float)) and 0 <= sigma < float("inf")):
        raise ConfigError(f"noise sigma must be a finite number >= 0, got {sigma!r}")


def init_std_of(model: nn.Module, name: str) -> float:
    """The init std of parameter `name`, from the model's own `init_std(name)` rule."""
    rule = getattr(model, "init_std", None)
    std = rule(name) if callable(rule) else None
    if std is None:
        raise ConfigError(f"noise law init_std: {type(model).__name__} states no init std for {name!r} "
                          "(llmcore's Transformer.init_std does); use law tensor_rms")
    return std


def noised(model: nn.Module, sigma: float, law: str = "tensor_rms", seed: int = 0,
           include_embeddings: bool = False):
    """Context manager: the model's target weights with seeded Gaussian noise (see
    `gaussian_noise`; law init_std reads each tensor's std from `init_std_of`)."""
    check_noise(sigma, law)

    def edit(i: int, name: str, w: torch.Tensor) -> torch.Tensor:
        std = init_std_of(model, name) if law == "init_std" else None
        return gaussian_noise(w, i, sigma, law, seed, std)

    return edited_weights(model, edit, include_embeddings)
