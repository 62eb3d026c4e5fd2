"""`probe`: a trivial recipe that touches every hook and counts the calls.

It exists so tests can prove that llmcore calls each hook (tokenizer, loader, frozen and aux
modules, loss, the `ntp` term, step, callbacks, state, decoding) without any real method in the
way; no paper behind it. It takes over the optimizer step, doing exactly the default step. With
its defaults (`loss_weight: 0`, `ntp_weight: 1`, `replace_ntp: false`) training is bit-identical
to the baseline; `replace_ntp: true` computes the `ntp` term itself, exactly as llmcore does.
"""

from __future__ import annotations

from collections import Counter
import dataclasses
from dataclasses import dataclass

import torch
import torch.nn as nn

import kernels
from llmcore.data import Sample
from recipes.base import LossContext, Recipe, RunContext, StepContext, register


@register("probe")
class Probe(Recipe):
    """Counts hook calls in `self.calls`; optionally adds a small auxiliary loss."""

    TOKEN = "<probe>"
    testing_only = True  # its token is reserved only in test tokenizers

    @dataclass
    class Config:
        loss_weight: float = 0.0
        """Weight of the aux term mean(aux(h)^2); 0 keeps training identical to the baseline."""
        ignore_probe: bool = True
        """Exclude `<probe>` targets from the next-token loss."""
        ntp_weight: float = 1.0
        """Multiplier of llmcore's next-token term (through the `ntp_weight` hook)."""
        replace_ntp: bool = False
        """Return the `ntp` term from `loss` (the same fused cross-entropy llmcore computes)."""
        stop_at_step: int = 0
        """Ask the run to stop after this step (0: never), through `ctx.request_stop`."""
        echo: bool = False
        """The transform adds a per-token field `probe_echo`: a copy of the tokens."""
        check_fields: list[str] = dataclasses.field(default_factory=list)
        """Batch fields that must equal the labels wherever a label takes a loss (`probe_echo`,
        or a side-car of the token ids): mismatches are counted over every rank and logged as
        `probe/field_mismatch` (with `probe/field_checked`)."""

    def __init__(self, config=None):
        super().__init__(config or self.Config())
        self.calls: Counter = Counter()
        self.token_id = None
        self.steps_seen = 0
        """Steps this run has taken with the probe, resumed runs included (its checkpointed state)."""
        self.pruned: list[list[int]] = []  # sequences its beam selector dropped
        self.last_ctx: dict = {}
        self._field_counts = torch.zeros(2, dtype=torch.float64)  # mismatches, checked, this step
        """What the last callback's RunContext said about the run (for tests)."""

    @property
    def replaces_ntp(self) -> bool:
        return self.config.replace_ntp

    @classmethod
    def declared_special_tokens(cls) -> list[str]:
        return [cls.TOKEN]

    def bind(self, tokenizer) -> None:
        self.calls["bind"] += 1
        self.token_id = tokenizer.token_id(self.TOKEN)

    def transform(self, sample: Sample, rng) -> Sample:
        self.calls["transform"] += 1
        if self.config.echo:
            sample = sample.copy()
            sample.fields["probe_echo"] = sample.tokens.copy()
        return sample

    def ignore_ids(self) -> list[int]:
        return [self.token_id] if self.config.ignore_probe and self.token_id is not None else []

    def frozen_modules(self, model_args) -> dict:
        self.calls["frozen_modules"] += 1
        return {"probe_frozen": nn.Linear(model_args.d_model, 1, bias=False)}

    def modules(self, model_args) -> nn.Module:
        self.calls["modules"] += 1
        return nn.Linear(model_args.d_model, 1, bias=False)

    def loss(self, ctx: LossContext) -> dict:
        self.calls["loss"] += 1
        frozen = ctx.frozen["probe_frozen"]
        self.last_ctx["frozen"] = (frozen.training, frozen.weight.requires_grad, frozen.weight.dtype,
                                   frozen.weight.device.type)
        with torch.no_grad():
            self.last_ctx["frozen_out"] = frozen(ctx.hidden).float().shape  # (B, T, 1): it runs
        labels = ctx.batch["labels"]
        for name in self.config.check_fields:
            keep = kernels.loss_target_mask(labels, ignore_ids=ctx.ignore_ids)
            got = ctx.batch[name].to(labels.device).long()
            self._field_counts += torch.tensor([float((got[keep] != labels[keep]).sum()), float(keep.sum())],
                                               dtype=torch.float64)
        z = ctx.modules[self.name](ctx.hidden).float()  # (B, T, 1)
        out = {"aux": (self.config.loss_weight * z.pow(2).sum(), z.numel())}
        if self.config.replace_ntp:
            h = ctx.hidden.reshape(-1, ctx.hidden.shape[-1])
            ce = kernels.linear_cross_entropy(h, ctx.output_weight, ctx.batch["labels"].reshape(-1),
                                              ignore_ids=ctx.ignore_ids, reduction="sum")
            out["ntp"] = (ce, ctx.batch["n_loss_tokens"])
        return out

    def ntp_weight(self, step: int) -> float:
        self.calls["ntp_weight"] += 1
        return self.config.ntp_weight

    def optimizer_step(self, ctx: StepContext, closure) -> dict:
        self.calls["optimizer_step"] += 1
        stats = closure()
        ctx.finish_step()
        return stats

    def on_train_start(self, ctx: RunContext):
        self.calls["on_train_start"] += 1
        self.last_ctx.update(rank=ctx.rank, world_size=ctx.world_size, backend=ctx.engine.backend,
                             vocab_size=ctx.model_args.vocab_size, out_dir=str(ctx.out_dir))

    def on_step_end(self, ctx: RunContext, metrics: dict):
        self.calls["on_step_end"] += 1
        self.steps_seen += 1
        if self.config.stop_at_step and ctx.step >= self.config.stop_at_step:
            ctx.request_stop(f"probe: stop at step {self.config.stop_at_step}")
        out = {"probe/steps_seen": self.steps_seen, "probe/frozen_ok": self._frozen_ok(ctx)}
        if self.config.check_fields:
            counts = ctx.engine.all_reduce_sum(self._field_counts.to(ctx.device))
            out.update({"probe/field_mismatch": int(counts[0]), "probe/field_checked": int(counts[1])})
            self._field_counts = torch.zeros(2, dtype=torch.float64)
        return out

    def _frozen_ok(self, ctx: RunContext) -> int:
        """1 when the frozen module is whole, in eval mode, gradient-free, on this rank's device
        and identical on every rank (replicated, never sharded or trained): a collective."""
        m = ctx.frozen["probe_frozen"]
        w = m.weight
        ok = (not m.training and not w.requires_grad and w.grad is None and w.device.type == ctx.device.type
              and tuple(w.shape) == (1, ctx.model_args.d_model))
        total = torch.tensor([float(w.double().sum()), float(ok)], dtype=torch.float64, device=ctx.device)
        mine = float(w.double().sum())
        ctx.engine.all_reduce_sum(total)
        return int(total[1] == ctx.world_size and abs(float(total[0]) - ctx.world_size * mine) <= 1e-9 * (1 + abs(mine)))

    def on_eval(self, ctx: RunContext, metrics: dict):
        self.calls["on_eval"] += 1

    def on_train_end(self, ctx: RunContext, metrics: dict):
        self.calls["on_train_end"] += 1

    def state_dict(self) -> dict:
        self.calls["state_dict"] += 1
        return {"steps_seen": self.steps_seen}

    def load_state_dict(self, state: dict) -> None:
        self.calls["load_state_dict"] += 1
        self.steps_seen = int(state["steps_seen"])

    def logits_processors(self):
        def ban_probe(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
            self.calls["logits_processor"] += 1
            logits[..., self.token_id] = float("-inf")
            return logits
        return [ban_probe]

    def prepare_prompt(self, ids: list[int]) -> list[int]:
        self.calls["prepare_prompt"] += 1
        return ids

    def beam_selector(self):
        def drop_most_probe_prone(cands, lookahead):
            """SafeBeam in miniature: drop the one candidate whose next token is most likely
            `<probe>` (by the one-token lookahead); keep the rest as proposed."""
            self.calls["beam_selector"] += 1
            if len(cands) < 2:
                return cands
            p_probe = lookahead(cands)[:, self.token_id]  # (N,) log-probs
            worst = int(p_probe.argmax())
            self.pruned.append(cands.ids[worst].tolist())
            keep = torch.ones(len(cands), dtype=torch.bool, device=p_probe.device)
            keep[worst] = False
            return cands.select(keep)
        return drop_most_probe_prone

    def fan_out(self, prompt_ids: list[int], k: int) -> list[tuple[list[int], int, str]]:
        """Two groups, as mode conditioning splits k over two modes: the prompt as given gets
        ceil(k/2) samples, the prompt behind a `<probe>` prefix the rest."""
        self.calls["fan_out"] += 1
        return [(prompt_ids, k - k // 2, "plain"), ([self.token_id] + prompt_ids, k // 2, "probe")]



def add_command(parser) -> None:
    """probe: the probe recipe's test command (`llmcore probe echo --text X`)."""
    actions = parser.add_subparsers(dest="action", required=True)
    echo = actions.add_parser("echo", help="print the text, or fail with an LlmcoreError on --fail")
    echo.add_argument("--text", required=True)
    echo.add_argument("--fail", action="store_true")
    echo.set_defaults(fn=_echo)


def _echo(args) -> None:
    from llmcore.errors import DataError

    if args.fail:
        raise DataError(f"probe echo: asked to fail on {args.text!r}")
    print(f"probe says {args.text}")
