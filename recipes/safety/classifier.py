"""The harmfulness classifier: a scoring head on pooled hidden states of one of our
checkpoints (Safety pretraining, arXiv 2504.16980, scores documents 0-5 before routing).

Training is an ordinary run of our trainer (`llmcore safety train-classifier` builds it): the
labelled jsonl ({"text", "score"}) becomes prompt/answer rows (`data.format: sft`, the text as
the prompt, an empty answer, `score` carried by `data.sft_fields`), the trunk starts from the
given checkpoint (`train.init_from`), the next-token term is off (`train.ntp_weight: 0`) and
the `safety_classifier` recipe adds the head (an aux module, saved in `aux.safetensors`) and
its loss. Scoring (`score_documents`, `llmcore safety score`) writes a per-document side-car.

Choices the paper leaves open, made here:
- Pooling: the mean of the final hidden states over the text's tokens and its closing eos.
- The head: one linear layer to 6 logits (a class per score); the document's score is the
  expected value sum_k k p_k, so thresholds may be fractional and a max over chunks is smooth.
- Up-weighting positives: the cross-entropy of a row with score > 0 is multiplied by
  `positive_weight` (default 3); the term is divided like every loss term by the step's
  global count of loss tokens (one eos per row: the number of rows).
- The whole model is fine-tuned with the head (as the paper fine-tunes its classifier).
- Long documents: chunks of at most `chunk` tokens (each closed by eos, as in training); the
  document's score is the max over its chunks (one harmful passage makes it harmful).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from llmcore.errors import CheckpointError, DataError
from recipes.base import LossContext, Recipe, register

NAME = "safety_classifier"


def pool(h: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Mean of h (B, T, d) over the first `lengths` (B,) positions of each row -> (B, d) fp32."""
    T = h.shape[1]
    keep = torch.arange(T, device=h.device)[None, :] < lengths.clamp(1, T)[:, None]  # (B, T)
    w = keep.to(torch.float32)
    return (h.float() * w[..., None]).sum(1) / w.sum(1, keepdim=True)


def expected_score(logits: torch.Tensor) -> torch.Tensor:
    """(B, K) class logits -> (B,) expected score sum_k k p_k in [0, K - 1]."""
    k = torch.arange(logits.shape[-1], device=logits.device, dtype=torch.float32)
    return (logits.float().softmax(-1) * k).sum(-1)


@register(NAME)
class SafetyClassifier(Recipe):
    """The harmfulness scoring head and its up-weighted cross-entropy (see the module docstring)."""

    @dataclass
    class Config:
        num_scores: int = 6
        """Scores 0..num_scores - 1 (the paper's 0-5)."""
        positive_weight: float = 3.0
        """Multiplier of the loss of rows with a score > 0 (harmful text is rare)."""
        score_field: str = "score"
        """The jsonl field (listed in data.sft_fields) holding each row's score."""

    def modules(self, model_args) -> nn.Module:
        return nn.Linear(model_args.d_model, self.config.num_scores)

    def loss(self, ctx: LossContext) -> dict:
        name = self.config.score_field
        if name not in ctx.batch or "prompt_len" not in ctx.batch:
            raise DataError(f"safety_classifier needs prompt/answer rows (data.format=sft) with the score "
                            f"field {name!r} in data.sft_fields; the batch has {sorted(ctx.batch)}")
        y = ctx.batch[name].reshape(-1).long()
        if bool(((y < 0) | (y >= self.config.num_scores)).any()):
            raise DataError(f"safety_classifier: scores must be integers in 0..{self.config.num_scores - 1}, "
                            f"got {sorted(set(y.tolist()))}")
        logits = ctx.modules[self.name](pool(ctx.hidden, ctx.batch["prompt_len"] + 1))  # (B, K)
        ce = F.cross_entropy(logits.float(), y, reduction="none")  # (B,)
        w = torch.where(y > 0, self.config.positive_weight, 1.0)
        return {"ce": ((w * ce).sum(), int(y.numel()))}


class Classifier:
    """A trained classifier checkpoint for scoring: trunk, head, tokenizer, identity."""

    def __init__(self, path: str, device: str = "cpu"):
        import llmcore
        from llmcore.train.checkpoint import load_verified_weights, resolve

        self.path = str(resolve(path))
        self.model, self.tokenizer = llmcore.load(path, device=device)
        weights = load_verified_weights(resolve(path))
        head = {k.split(".")[-1]: v for k, v in weights.items() if k.startswith(f"aux.{NAME}.")}
        if set(head) != {"weight", "bias"}:
            raise CheckpointError(f"{self.path} is not a safety classifier (no aux.{NAME} head weights); "
                                  "train one with `llmcore safety train-classifier`")
        self.head = nn.Linear(head["weight"].shape[1], head["weight"].shape[0]).to(device)
        self.head.load_state_dict(head)
        self.head.eval()

    @torch.inference_mode()
    def score_ids(self, rows: list[list[int]], batch_size: int = 32) -> np.ndarray:
        """Expected scores (n,) float32 of token rows (each scored as text + eos, as trained)."""
        out = []
        device = next(self.model.parameters()).device
        eos, pad = self.tokenizer.eos_id, self.tokenizer.pad_id
        for k in range(0, len(rows), batch_size):
            part = [list(r) + [eos] for r in rows[k:k + batch_size]]
            T = max(len(r) for r in part)
            ids = torch.full((len(part), T), pad, dtype=torch.long)
            for i, r in enumerate(part):
                ids[i, :len(r)] = torch.tensor(r)  # right padding: causal attention never sees it
            lengths = torch.tensor([len(r) for r in part], device=device)
            h = self.model(ids.to(device))
            out.append(expected_score(self.head(pool(h, lengths))).cpu())
        return torch.cat(out).numpy().astype(np.float32) if out else np.zeros(0, np.float32)

    def score_texts(self, texts: list[str], chunk: int = 256, batch_size: int = 32) -> np.ndarray:
        """Document scores (n,): the max over chunks of each text (see `chunks`)."""
        return self.score_documents([self.tokenizer.encode(t) for t in texts], chunk, batch_size)

    def score_documents(self, docs: list[list[int]], chunk: int = 256, batch_size: int = 32) -> np.ndarray:
        """Document scores (n,) of token documents (a trailing eos is dropped first): the max
        over chunks of at most `chunk` - 1 tokens (the eos each chunk gets makes `chunk`)."""
        if chunk < 2:
            raise DataError(f"chunk must be >= 2 tokens, got {chunk}")
        pieces, owner = [], []
        eos = self.tokenizer.eos_id
        for i, d in enumerate(docs):
            d = list(d[:-1]) if len(d) and d[-1] == eos else list(d)
            for s in range(0, max(1, len(d)), chunk - 1):
                pieces.append(d[s:s + chunk - 1])
                owner.append(i)
        scores = self.score_ids(pieces, batch_size)
        out = np.full(len(docs), -np.inf, dtype=np.float32)
        np.maximum.at(out, np.asarray(owner, dtype=np.int64), scores)
        return out
