"""Training FLOPs per token and model FLOP utilisation (MFU), used by the trainer's logs.

FLOPs per token = 6·N + 12·L·d·s (Kaplan et al. / PaLM appendix B): N counts the parameters
that take part in matmuls (every weight except the input embedding lookup; the unembedding
counts even when tied), L layers, d model width, s sequence length; attention is NOT halved
for causality, as in the convention everyone reports MFU with. Peaks are dense bf16 tensor
FLOP/s from the vendors' data sheets; an unknown device gets no MFU rather than a wrong one.
"""

from __future__ import annotations

import torch

from llmcore.model.args import ModelArgs

# Dense (no sparsity) bf16 peak FLOP/s by a substring of torch.cuda.get_device_name().
PEAK_BF16_FLOPS = {
    "H200": 989e12,
    "H100 SXM": 989e12,
    "H100 80GB HBM3": 989e12,
    "H100 PCIe": 756e12,
    "H100": 756e12,  # unknown H100 variant: the lower (PCIe) figure, so MFU is never overstated
    "A100": 312e12,
    "L40S": 362e12,
    "A10G": 125e12,
    "L4": 121e12,
}


def flops_per_token(args: ModelArgs, seq_len: int) -> float:
    n = args.num_params() - args.vocab_size * args.d_model  # drop the embedding lookup
    if args.tie_embeddings:
        n += args.vocab_size * args.d_model  # ... but the tied unembedding is a matmul
    return 6 * n + 12 * args.n_layers * args.d_model * seq_len


def device_peak_flops(device: torch.device, override: float = 0.0) -> float | None:
    """Peak FLOP/s of one device, or None when unknown (then no MFU is logged)."""
    if override > 0:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, peak in PEAK_BF16_FLOPS.items():
        if key in name:
            return peak
    return None
