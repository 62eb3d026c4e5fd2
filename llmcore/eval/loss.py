"""Evaluation of a trained model: validation loss / perplexity and exact match on prompt->answer tasks.

Used by the CLI (`llmcore eval`) and by anyone scoring a checkpoint from Python
(`model, tok = llmcore.load(ckpt)`). The loss goes through `kernels.linear_cross_entropy`,
so [tokens, vocab] logits never exist, as in training; exact match decodes greedily with
`llmcore.generate`.
"""

from __future__ import annotations

import math
import os
from typing import Sequence

import torch

import kernels
from llmcore.data.loader import eval_batches
from llmcore.data.shards import TokenShards
from llmcore.errors import DataError


@torch.inference_mode()
def validation_loss(model, shards: TokenShards | str, seq_len: int, batch_size: int,
                    max_batches: int | None = None,
                    ignore_ids: Sequence[int] | None = None) -> dict:
    """Mean next-token loss over consecutive windows of a validation split.

    `shards` is a TokenShards (or a prepared data folder, whose `val` split is read); windows
    of `seq_len` (+1 for the last label) come from `llmcore.data.loader.eval_batches`.
    `ignore_ids` are target ids that take no loss (e.g. a recipe's `<pause>`), as in training.
    Returns {"loss": nats per token, "ppl": exp(loss), "tokens": number of scored targets}.
    """
    if isinstance(shards, (str, os.PathLike)):
        shards = TokenShards(str(shards), "val")
    device = next(model.parameters()).device
    weight = model.output_weight
    ignore = None if not ignore_ids else torch.tensor(list(ignore_ids), dtype=torch.long, device=device)
    total, count = 0.0, 0
    for batch in eval_batches(shards, seq_len, batch_size, max_batches):
        ids, labels = batch["input_ids"].to(device), batch["labels"].to(device)
        h = model(ids, batch["doc_ids"].to(device))  # (B, T, d)
        loss_sum = kernels.linear_cross_entropy(h.reshape(-1, h.shape[-1]), weight, labels.reshape(-1),
                                                ignore_ids=ignore, reduction="sum")
        keep = labels != -100
        if ignore is not None:
            keep &= ~torch.isin(labels, ignore)
        total += float(loss_sum.float())
        count += int(keep.sum())
    if count == 0:
        raise DataError(f"{shards.path} split {shards.split!r} has {shards.num_tokens} tokens: "
                        f"not one window of seq_len={seq_len} to evaluate")
    loss = total / count
    return {"loss": loss, "ppl": math.exp(min(loss, 80.0)), "tokens": count}


