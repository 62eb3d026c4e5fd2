"""`future_summary`: auxiliary future-prediction heads on the trunk, dropped at export.

Paper: "Beyond Multi-Token Prediction: Pretraining LLMs with Future Summaries" (Mahajan et al.,
arXiv 2510.14751); baselines MTP (Gloeckle et al., arXiv 2404.19737) and DeepSeek-V3's
sequential MTP (arXiv 2412.19437). Loss = NTP + `weight` x one auxiliary term:

- `kind: mtp`: `n_heads` heads, head k predicts x_{t+1+k} (so n_heads=3 with the trunk's NTP
  is Gloeckle's n=4); term = weight * sum_k CE_k.
- `kind: ds_mtp`: `n_heads` sequential modules (depth k reads depth k-1 and Emb(x_{t+k}) and
  predicts x_{t+k+1}); term = weight / D * sum_k CE_k (DeepSeek-V3's lambda: 0.3, then 0.1).
- `kind: fsp_bce`: one head predicting the multi-hot bag {x_{t+2..t+tau}} with
  sum_i w_i softplus(z_i) - sum_{i in bag} w_i z_i, normalised by `norm`.
- `kind: fsp_revlm`: one head + a projection to the width of a frozen right-to-left LM
  (`revlm_checkpoint`, trained with `data.reverse=true`); target = its hidden state before
  it predicts x_{t+1} from x_{>=t+2}, computed online; term = weight * mean over dims of
  the squared error.

Every head is one `llmcore.model.transformer.Block` + RMSNorm on the trunk's final hidden states and
unembeds through the trunk's shared output weight; the CE and BCE terms of all heads go through
one call of `kernels.future_summary.future_summary_loss` (no [tokens, vocab] tensor).

Choices the paper leaves open, made here: heads read the trunk's final-norm hidden states;
head init = the trunk's; targets never cross a document end (an MTP target may enter the next
document on its last hop, exactly like the trunk's NTP target); bags exclude control tokens
(`ignore_ids`) and are built from the window's inputs (x_T is not in any bag); FSP positions
are those with an NTP loss whose horizon is fully inside the window or ends with its document
(`full_horizon`); tf-idf weights are smoothed idf (see tfidf.py); the RevLM loss is averaged
over its width so it is O(1) like the CE terms. `weight: 0` builds no heads: training is
bit-identical to not listing the recipe. Logged terms (`future_summary/x2`, `.../bce`,
`.../mse`) are the weighted pieces of the loss per scored position (so ds_mtp's include 1/D).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kernels import loss_target_mask
from kernels.future_summary import NORMS, future_summary_loss
from llmcore.errors import ConfigError
from recipes.base import Recipe, RunContext, register
from recipes.future_summary import targets
from recipes.future_summary.heads import FutureHeads

KINDS = ("mtp", "ds_mtp", "fsp_bce", "fsp_revlm")


@register("future_summary")
class FutureSummary(Recipe):
    """MTP, DeepSeek-V3 MTP, FSP-BCE and FSP-RevLM auxiliary losses."""

    @dataclass
    class Config:
        kind: str = "fsp_bce"
        """mtp | ds_mtp | fsp_bce | fsp_revlm."""
        weight: float = 1.0
        """Factor on the auxiliary term; 0 turns the recipe off (no heads, identical training)."""
        n_heads: int = 3
        """mtp: aux heads (offsets 2..n_heads+1); ds_mtp: sequential depth D. Unused by FSP."""
        tau: int = 12
        """FSP-BCE horizon: the bag is x_{t+2..t+tau} (the paper uses 12 or 100)."""
        norm: str = "vocab"
        """FSP-BCE per-row normalisation: vocab (divide by V) | weight_sum | none."""
        tfidf: bool = False
        """FSP-BCE token weights = smoothed idf of the training data (else 1)."""
        full_horizon: bool = True
        """FSP-BCE: skip positions whose horizon is cut by the window end (not by a document end)."""
        revlm_checkpoint: str = ""
        """FSP-RevLM: checkpoint (or run dir) of the frozen right-to-left LM."""

    def __init__(self, config=None):
        super().__init__(config or self.Config())
        c = self.config
        if c.kind not in KINDS:
            raise ConfigError(f"future_summary.kind={c.kind!r} is not one of {', '.join(KINDS)}")
        if c.weight < 0:
            raise ConfigError(f"future_summary.weight={c.weight} must be >= 0")
        if c.n_heads < 1:
            raise ConfigError(f"future_summary.n_heads={c.n_heads} must be >= 1")
        if c.tau < 2:
            raise ConfigError(f"future_summary.tau={c.tau} must be >= 2 (the bag is x_(t+2..t+tau))")
        if c.norm not in NORMS:
            raise ConfigError(f"future_summary.norm={c.norm!r} is not one of {NORMS}")
        if c.kind == "fsp_revlm" and c.weight > 0 and not c.revlm_checkpoint:
            raise ConfigError("future_summary.kind=fsp_revlm needs future_summary.revlm_checkpoint "
                              "(a run trained with data.reverse=true)")
        self.tokenizer = None
        self.revlm = None  # a frozen module (see frozen_modules)
        self.idf = None

    @property
    def on(self) -> bool:
        return self.config.weight > 0

    def bind(self, tokenizer) -> None:
        self.tokenizer = tokenizer

    def frozen_modules(self, model_args) -> dict:
        """FSP-RevLM's reverse LM: frozen, placed by the engine (device, dtype, eval mode),
        never optimised or written into the run's checkpoints (the config names its path)."""
        if not (self.on and self.config.kind == "fsp_revlm"):
            return {}
        from recipes.future_summary.revlm import load_reverse_lm

        self.revlm = load_reverse_lm(self.config.revlm_checkpoint, self.tokenizer)
        return {"revlm": self.revlm}

    def modules(self, model_args):
        if not self.on:
            return None
        c = self.config
        if c.kind == "fsp_revlm":
            return FutureHeads(model_args, c.kind, 1, out_dim=self.revlm.args.d_model)
        n = c.n_heads if c.kind in ("mtp", "ds_mtp") else 1
        return FutureHeads(model_args, c.kind, n)

    def on_train_start(self, ctx: RunContext) -> dict:
        if self.on and self.config.kind == "fsp_bce" and self.config.tfidf:
            from recipes.future_summary.tfidf import idf_weights

            d = ctx.config.data
            if d.format != "tokens":
                raise ConfigError("future_summary.tfidf needs prepared token data (data.format: tokens), "
                                  f"got data.format={d.format!r}")
            paths = [s.path for s in d.sources] or [d.path]
            self.idf = torch.from_numpy(idf_weights(paths, ctx.model_args.vocab_size))
        return {}

    def loss(self, ctx) -> dict:
        if not self.on:
            return {}
        c = self.config
        heads = ctx.modules[self.name]
        batch, h, model = ctx.batch, ctx.hidden, ctx.model
        ids, labels, doc = batch["input_ids"], batch["labels"], batch.get("doc_ids")
        B, T = ids.shape
        cos, sin = model.rope(torch.arange(T, device=h.device))
        attn_doc = doc if model.args.doc_mask else None
        if c.kind in ("mtp", "ds_mtp"):
            if c.kind == "mtp":
                outs, w = heads.parallel(h, cos, sin, attn_doc), c.weight
            else:
                outs, w = heads.sequential(h, ids, model.embed_tokens, cos, sin, attn_doc), c.weight / c.n_heads
            tgt = torch.stack([targets.shifted_labels(labels, doc, k + 2) for k in range(c.n_heads)])
            loss, sums, counts = future_summary_loss(
                ctx.output_weight, mtp_h=outs.reshape(c.n_heads, B * T, -1), mtp_labels=tgt.reshape(c.n_heads, -1),
                mtp_weight=w, ignore_ids=ctx.ignore_ids)
            return _pieces([f"x{k + 2}" for k in range(c.n_heads)], loss, sums, counts)
        out = heads.parallel(h, cos, sin, attn_doc)[0]  # (B, T, d)
        rows = loss_target_mask(labels, ignore_ids=ctx.ignore_ids)  # the rows NTP scores
        if c.kind == "fsp_bce":
            bag, complete = targets.future_bag(ids, doc, c.tau, ctx.ignore_ids)
            if c.full_horizon:
                rows &= complete
            idf = None
            if self.idf is not None:
                idf = self.idf = self.idf.to(h.device)
            loss, sums, counts = future_summary_loss(
                ctx.output_weight, fsp_h=out.reshape(B * T, -1), bag=bag.reshape(B * T, -1),
                fsp_rows=rows.reshape(-1), token_weight=idf, fsp_weight=c.weight, norm=c.norm)
            return _pieces(["bce"], loss, sums, counts)
        return {"mse": self._revlm_loss(heads, ctx.frozen["revlm"], out, ids, doc, rows)}

    def _revlm_loss(self, heads, revlm, out, ids, doc, rows):
        """weight * sum over rows of the mean squared error to the reverse LM's state."""
        rev_ids, rev_doc = targets.revlm_inputs(ids, doc)
        with torch.no_grad():
            g, have = targets.revlm_targets(revlm(rev_ids, rev_doc), doc)
        rows = rows & have
        err = (heads.proj(out).float() - g.float()).pow(2).mean(dim=-1)  # (B, T)
        return (self.config.weight * (err * rows).sum(), int(rows.sum()))


def _pieces(names, loss, sums, counts) -> dict:
    """Named terms whose values add up to `loss` and carry its gradient once: the first term
    is loss minus the others' (detached) sums, so every term logs its own sum / count."""
    rest = sums[1:].sum().to(loss.dtype) if len(names) > 1 else 0.0
    out = {names[0]: (loss - rest, int(counts[0]))}
    for i in range(1, len(names)):
        out[names[i]] = (sums[i].to(loss.dtype), int(counts[i]))
    return out
