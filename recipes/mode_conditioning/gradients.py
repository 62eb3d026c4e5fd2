"""Per-example gradients of log p(y | x) over a subset of a model's parameters, batched.

Used by `llmcore modes cluster` (ModC's gradient clustering, arXiv 2512.01127) and its
benchmark. One forward and ONE backward serve a whole batch, with the per-example
outer-product trick: for a linear layer y = W a, example b's gradient is
sum_t g_{b,t} a_{b,t}^T, from the layer's input a (saved by a forward hook) and the gradient
g at its output (a tensor hook); an RMSNorm gain's is sum_t g_{b,t} * x_hat_{b,t}. The batch's
examples never mix (attention is within a row, norms per token), so the backward of the
summed log-likelihood gives every example its own g. It works on every kernel backend
(Triton included), because no function transform runs through the kernels.

Choices the paper does not publish, made here:
- the objective is the summed log-likelihood of the answer tokens (labels != -100), the
  gradient of log p(y|x) itself rather than a per-token mean; `llmcore modes cluster
  --answer-tokens N` keeps only each answer's first N tokens (on Countdown the full-answer
  gradient is dominated by the arithmetic and clusters at purity ~0.57, the first 4 tokens
  recover the two search styles at purity 0.98-1.0: benchmarks/EXPERIMENTS.md);
- the default subset is the last transformer block and the final norm (`DEFAULT_PARAMS`):
  the layers closest to the output, cheap to reach with a short backward, and enough to tell
  solution styles apart; any Linear or RMSNorm weight may be named;
- optional Adam preconditioning divides each coordinate by sqrt(v_hat) + eps from the
  checkpoint's optimizer state (bias-corrected), as TRAK/LESS-style influence features do.
`loop_gradients` is the one-backward-per-example reference (tests and the benchmark).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

import kernels
from llmcore.errors import ConfigError
from llmcore.model.transformer import RMSNorm

DEFAULT_PARAMS = ("layers.-1.", "norm.weight")
"""Name prefixes of the default subset; `layers.-1.` is the last block."""


def select_parameters(model: nn.Module, prefixes: Sequence[str] = DEFAULT_PARAMS) -> list[str]:
    """Names of the model's parameters starting with any of `prefixes` (in model order);
    `layers.-i.` counts blocks from the end. ConfigError naming a prefix that matches nothing
    or a parameter that is neither a Linear nor an RMSNorm weight."""
    n_layers = len(getattr(model, "layers", []))
    names = dict(model.named_parameters())
    owners = {f"{m}.weight" if m else "weight": mod for m, mod in model.named_modules()}
    chosen: list[str] = []
    for prefix in prefixes:
        resolved = prefix
        if prefix.startswith("layers.-"):
            idx, _, rest = prefix[len("layers."):].partition(".")
            resolved = f"layers.{int(idx) % max(n_layers, 1)}." + rest
        hits = [n for n in names if n.startswith(resolved)]
        if not hits:
            raise ConfigError(f"modes cluster: parameter prefix {prefix!r} matches no parameter (e.g. "
                              f"{', '.join(list(names)[:3])}, ...)")
        for n in hits:
            if not isinstance(owners.get(n), (nn.Linear, RMSNorm)) or owners[n].weight is not names[n]:
                raise ConfigError(f"modes cluster: {n} is not a Linear or RMSNorm weight; per-example gradients "
                                  "are implemented for those only")
            if n not in chosen:
                chosen.append(n)
    return [n for n in names if n in chosen]


def answer_log_likelihood(model, batch: dict) -> torch.Tensor:
    """Sum over the batch of log p(answer | prompt): the negated summed cross-entropy of every
    target with a loss (labels != -100), through llmcore's fused kernel."""
    h = model(batch["input_ids"], batch.get("doc_ids"))  # (B, T, d)
    labels = batch["labels"]
    ce = kernels.linear_cross_entropy(h.reshape(-1, h.shape[-1]), model.output_weight, labels.reshape(-1),
                                      reduction="sum")
    return -ce


class _Only:
    """Within the block: only `names` require grad (the backward stops below them)."""

    def __init__(self, model, names):
        self.model, self.names = model, set(names)

    def __enter__(self):
        self.saved = {n: p.requires_grad for n, p in self.model.named_parameters()}
        for n, p in self.model.named_parameters():
            p.requires_grad_(n in self.names)

    def __exit__(self, *exc):
        for n, p in self.model.named_parameters():
            p.requires_grad_(self.saved[n])


def batched_gradients(model, names: Sequence[str], batch: dict,
                      precondition: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """name -> [B, numel] per-example gradients of log p(y|x), from one backward (see module)."""
    modules = dict(model.named_modules())
    store: dict[str, dict] = {}
    handles = []

    def hook(owner: str):
        def fwd(mod, inputs, output):
            store[owner] = {"x": inputs[0].detach()}

            def keep(g):
                store[owner]["g"] = g.detach()
            output.register_hook(keep)
        return fwd

    owners = {n: n[: -len(".weight")] for n in names}
    for owner in owners.values():
        handles.append(modules[owner].register_forward_hook(hook(owner)))
    try:
        with _Only(model, names):
            answer_log_likelihood(model, batch).backward()
    finally:
        for h in handles:
            h.remove()
    out = {}
    for n in names:
        mod, saved = modules[owners[n]], store[owners[n]]
        x, g = saved["x"].float(), saved["g"].float()  # (B, T, in), (B, T, out)
        if isinstance(mod, nn.Linear):
            grad = torch.einsum("bto,bti->boi", g, x)
        else:  # RMSNorm: y = x_hat * w
            x_hat = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + mod.eps)
            grad = torch.einsum("btd,btd->bd", g, x_hat)
        grad = grad.reshape(grad.shape[0], -1)
        out[n] = grad * precondition[n] if precondition is not None else grad
    for n, p in model.named_parameters():
        if n in owners:
            p.grad = None
    return out


def loop_gradients(model, names: Sequence[str], batch: dict,
                   precondition: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The same as `batched_gradients`, with one forward and backward per example (reference)."""
    params = dict(model.named_parameters())
    rows: dict[str, list] = {n: [] for n in names}
    with _Only(model, names):
        for b in range(batch["input_ids"].shape[0]):
            one = {k: v[b:b + 1] for k, v in batch.items() if torch.is_tensor(v) and v.dim() >= 1}
            for n in names:
                params[n].grad = None
            answer_log_likelihood(model, one).backward()
            for n in names:
                g = params[n].grad.reshape(-1).float()
                rows[n].append(g * precondition[n] if precondition is not None else g)
    for n in names:
        params[n].grad = None
    return {n: torch.stack(v) for n, v in rows.items()}


def adam_preconditioner(model, optimizer_state: dict, names: Sequence[str], eps: float = 1e-8) -> dict[str, torch.Tensor]:
    """name -> [numel] 1 / (sqrt(v_hat) + eps) from a torch AdamW state dict saved by llmcore's
    single/DDP engine (`optimizer.pt`), whose parameter order is the decay group (matrices)
    then the no-decay group, each in the model's order. A ConfigError when the state does not
    fit the model."""
    groups = optimizer_state.get("param_groups", [])
    state = optimizer_state.get("state", {})
    decay = [n for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [n for n, p in model.named_parameters() if p.ndim < 2]
    if len(groups) != 2 or len(groups[0]["params"]) < len(decay) or len(groups[1]["params"]) < len(no_decay):
        raise ConfigError("modes cluster --precondition: the optimizer state does not match the model "
                          f"({[len(g['params']) for g in groups]} parameters per group, the model has "
                          f"{[len(decay), len(no_decay)]})")
    index = dict(zip(decay, groups[0]["params"])) | dict(zip(no_decay, groups[1]["params"]))
    beta2 = float(groups[0].get("betas", (0.9, 0.95))[1])
    params = dict(model.named_parameters())
    out = {}
    for n in names:
        s = state.get(index[n]) or state.get(str(index[n]))
        if s is None or "exp_avg_sq" not in s:
            raise ConfigError(f"modes cluster --precondition: no Adam second moment for {n} in the optimizer state")
        v, step = s["exp_avg_sq"].float(), float(s["step"])
        if v.shape != params[n].shape:
            raise ConfigError(f"modes cluster --precondition: {n} has shape {tuple(params[n].shape)}, its Adam "
                              f"state {tuple(v.shape)}")
        v_hat = v / (1.0 - beta2 ** max(step, 1.0))
        out[n] = (1.0 / (v_hat.sqrt() + eps)).reshape(-1).to(params[n].device)
    return out
