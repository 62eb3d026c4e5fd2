"""The induction / copy probe: random token spans shown twice; accuracy on the second showing.

Used by `llmcore eval --copy-probe` and the distillation experiment (distillation is reported
to weaken in-context copying). Each sequence is a span of `span` token ids drawn uniformly
(with replacement) from [lo, hi), then the same span again. The model predicts each token of
the second showing after the first (teacher-forced, greedy argmax): a model that copies from
its context gets them right; without the context the chance is 1 / (hi - lo). The first
token of the second showing follows nothing seen before, so it is not scored; the first
showing's accuracy (tokens 2..span) is reported beside it as the no-copy baseline.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from llmcore.errors import ConfigError


@torch.inference_mode()
def copy_probe(model, *, lo: int = 0, hi: int = 0, span: int = 16, n_seqs: int = 64, seed: int = 0,
               batch_size: int = 16, pool: Sequence[int] | None = None) -> dict:
    """{"copy_accuracy", "copy_prob", "first_accuracy", "positions"}: greedy accuracy on
    tokens 2..span of the second showing, the mean probability the model gives them there,
    the accuracy on tokens 2..span of the first showing; `positions` scored per showing.
    Ids come from [lo, hi), or uniformly from `pool` (e.g. the ids a task trains on)."""
    if pool is not None:
        pool_t = torch.as_tensor(list(pool), dtype=torch.long)
        if pool_t.numel() < 2:
            raise ConfigError(f"copy probe: pool of {pool_t.numel()} ids; give at least 2")
        lo, hi = 0, pool_t.numel()
    if not 0 <= lo < hi or span < 2 or n_seqs < 1:
        raise ConfigError(f"copy probe needs 0 <= lo < hi, span >= 2, n_seqs >= 1; got lo={lo}, hi={hi}, "
                          f"span={span}, n_seqs={n_seqs}")
    max_len = getattr(getattr(model, "args", None), "max_seq_len", None)
    if max_len is not None and 2 * span > max_len:
        raise ConfigError(f"copy probe: 2 x span = {2 * span} tokens exceed the model's max_seq_len {max_len}")
    gen = torch.Generator().manual_seed(seed)
    spans = torch.randint(lo, hi, (n_seqs, span), generator=gen)
    if pool is not None:
        spans = pool_t[spans]
    device = next(model.parameters()).device
    right = torch.zeros(2, dtype=torch.long)
    prob = 0.0
    for s in range(0, n_seqs, batch_size):
        x = spans[s:s + batch_size].to(device)
        seq = torch.cat([x, x], dim=1)  # (b, 2 span)
        logits = model.logits(model(seq)).float()  # (b, 2 span, V): prediction of the next token
        hit = logits.argmax(-1)[:, :-1] == seq[:, 1:]  # hit[:, t]: token t + 1 predicted
        p_next = torch.softmax(logits[:, span:-1], -1).gather(-1, seq[:, span + 1:, None])  # second showing
        prob += float(p_next.sum())
        right[0] += hit[:, : span - 1].sum().cpu()  # first showing, tokens 2..span
        right[1] += hit[:, span:].sum().cpu()  # second showing, tokens 2..span
    per = n_seqs * (span - 1)
    return {"copy_accuracy": float(right[1]) / per, "copy_prob": prob / per, "first_accuracy": float(right[0]) / per,
            "positions": per}
