"""Evaluation of a trained model: validation loss / perplexity and exact match on prompt->answer tasks.

Used by the CLI (`llmcore eval`) and by anyone scoring a checkpoint from Python
(`model, tok = llmcore.load(ckpt)`). The loss goes through `kernels.linear_cross_entropy`,
so [tokens, vocab] logits never exist, as in training; exact match decodes greedily with
`llmcore.generate`.
"""

from __future__ import annotations

import math
import os
from typing import Callable, Sequence

import torch

import kernels
from llmcore.data.loader import eval_batches
from llmcore.data.shards import TokenShards
from llmcore.errors import ConfigError, DataError


def loss_over_batches(score: Callable[[dict], tuple[torch.Tensor, int]], batches: Sequence[dict], *,
                      device: torch.device, rank: int = 0, world_size: int = 1,
                      all_reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict:
    """The one evaluation loop: mean next-token loss over `batches`.

    `score(batch) -> (summed loss, number of scored targets)` for one batch. With several
    ranks the batches are dealt round-robin (rank r scores batches r, r + W, ...) after
    trimming to a multiple of the world size, and the sums are all-reduced; when there are
    fewer batches than ranks every rank scores all of them (no reduction needed). Returns
    {"loss": nats per target, "ppl", "tokens"}; "tokens" is 0 when nothing was scored.
    """
    batches = list(batches)
    shared = world_size > 1 and len(batches) >= world_size
    if shared:
        batches = batches[: len(batches) - len(batches) % world_size]
    total = torch.zeros(2, dtype=torch.float64, device=device)
    for i, batch in enumerate(batches):
        if shared and i % world_size != rank:
            continue
        value, count = score(batch)
        total += torch.tensor([float(value), float(count)], dtype=torch.float64, device=device)
    if shared and all_reduce is not None:
        all_reduce(total)
    loss = float(total[0] / total[1].clamp(min=1))
    return {"loss": loss, "ppl": math.exp(min(loss, 80.0)), "tokens": int(total[1])}


@torch.inference_mode()
def validation_loss(model, shards: TokenShards | str, seq_len: int, batch_size: int,
                    max_batches: int | None = None,
                    ignore_ids: Sequence[int] | None = None) -> dict:
    """Mean next-token loss over consecutive windows of a validation split, on one process.

    `shards` is a TokenShards (or a prepared data folder, whose `val` split is read); windows
    of `seq_len` (+1 for the last label) come from `llmcore.data.loader.eval_batches`.
    `ignore_ids` are target ids that take no loss (e.g. a recipe's `<pause>`), as in training.
    Returns {"loss": nats per token, "ppl": exp(loss), "tokens": number of scored targets}.
    A `seq_len` beyond the model's `max_seq_len` is a ConfigError.
    """
    if isinstance(shards, (str, os.PathLike)):
        shards = TokenShards(str(shards), "val")
    if shards.num_tokens - 1 < seq_len:
        raise _no_window(shards, seq_len)
    limit = getattr(getattr(model, "args", None), "max_seq_len", None)
    if limit is not None and seq_len > limit:
        raise ConfigError(f"seq_len={seq_len} exceeds the model's max_seq_len={limit} (positions it was "
                          f"never trained on); use --seq-len {limit} or less")
    device = next(model.parameters()).device
    ignore = None if not ignore_ids else torch.tensor(list(ignore_ids), dtype=torch.long, device=device)

    def score(batch: dict) -> tuple[torch.Tensor, int]:
        labels = batch["labels"].to(device)
        h = model(batch["input_ids"].to(device), batch["doc_ids"].to(device))  # (B, T, d)
        loss_sum = kernels.linear_cross_entropy(h.reshape(-1, h.shape[-1]), model.output_weight,
                                                labels.reshape(-1), ignore_ids=ignore, reduction="sum")
        return loss_sum.float(), int(kernels.loss_target_mask(labels, ignore_ids=ignore).sum())

    out = loss_over_batches(score, eval_batches(shards, seq_len, batch_size, max_batches), device=device)
    if out["tokens"] == 0:
        raise _no_window(shards, seq_len)
    return out


def _no_window(shards: TokenShards, seq_len: int) -> DataError:
    return DataError(f"{shards.path} split {shards.split!r} has {shards.num_tokens} tokens: "
                     f"not one window of seq_len={seq_len} to evaluate")
