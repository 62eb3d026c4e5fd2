"""`sam`: sharpness-aware pretraining — SAM (Foret et al., arXiv 2010.01412) as used for LM
pretraining by Watts, Li, Goyal et al. (2026), with the ASAM variant (Kwon et al., arXiv 2102.11600).

Turned on with `recipes: [sam]` and `sam: {rho: 0.05}`. It replaces the trainer's step
(`closure(); ctx.finish_step()`) with:

1. pass 1: forward/backward of every micro-batch at w. "per-device" mode runs it under
   `no_sync`, so each data-parallel rank ascends along its own gradient (the paper's
   m-sharpness, m = one rank's batch); "global-m" mode syncs it (the only choice under ZeRO-2/3,
   whose backward reduces gradients into shards), so every rank uses the global gradient.
2. ||g||: fp32 sum of squares over the local gradients in one multi-tensor launch
   (`kernels.sam.grad_sq_norm`), summed over ranks when they hold shards. A non-finite norm
   means no perturbation (counted in `sam/skipped_nonfinite`): pass 2 then runs at w.
3. e = rho * g / (||g|| + 1e-12); w is copied exactly into a persistent buffer and w += e
   (`kernels.sam.perturb_`, one launch). Gradients are zeroed.
4. pass 2: forward/backward at w + e with normal gradient sync.
5. w is restored from the copy bit for bit (`kernels.sam.restore_`), never by subtracting e:
   bf16/fp32 rounding residue would make ranks drift apart.
6. `ctx.finish_step()`: clip to `optim.grad_clip` (1.0) and the base optimizer (AdamW) step.

Logged: `loss` is the pass-1 loss L(w) (what a baseline run logs); `sam/loss_perturbed` is
L(w + e) on the same tokens and `sam/sharpness` = L(w + e) - L(w), the sharpness proxy (in
per-device mode both are means over ranks, each rank at its own w + e); `sam/ascent_norm`,
`sam/rho`, `sam/perturbed`, `sam/skipped_nonfinite` (this step) and `sam/skipped_total`;
`sam/mode` says which mode ran, and the run's log says it once at the start. In per-device
mode the norm, and so the non-finite skip, is each rank's own; rank 0's counters are logged.

Choices the papers leave open, made here:
- every trainable parameter is perturbed (embeddings, norms, recipe aux heads included);
  parameters without a gradient are left alone;
- rho schedule: `constant`, or `linear` from `rho` to `final_rho` at the last step; both with
  an optional linear warmup from 0 (`warmup_steps`);
- `every_k`: only steps with step % k == 0 are SAM steps; the others are plain AdamW steps
  (one pass), cutting the cost to (k + 1) / k passes per step;
- ASAM (`adaptive: true`): T_w = |w| + eta with eta = 0.01 (the ASAM paper's choice),
  e = rho * T_w^2 g / ||T_w g||; ASAM's rho is typically 10x SAM's;
- ZeRO-1 (`engine.backend=deepspeed`, `zero_stage=1`) has full local gradients under
  `no_sync`, so per-device works there too; after a synced pass it holds reduced shards.
The recipe keeps no state beyond a statistics counter, so resume needs nothing from it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from kernels.sam import grad_sq_norm, perturb_, restore_
from llmcore.errors import ConfigError
from llmcore.train.metrics import log
from recipes.base import Recipe, RunContext, register

MODES = ("auto", "per-device", "global-m")
SCHEDULES = ("constant", "linear")


@register("sam")
class Sam(Recipe):
    """Two-pass sharpness-aware step; see the module docstring."""

    @dataclass
    class Config:
        rho: float = 0.05
        """Radius of the ascent step: 0.05 for 20-150M-parameter pretraining (the paper's
        default); ~1.0, or 0.1 annealed, for a 1B mid-training phase."""
        schedule: str = "constant"
        """constant | linear (from rho after warmup to final_rho at the last step)."""
        warmup_steps: int = 0
        """rho rises linearly from rho / warmup_steps to rho over the first steps (0: none)."""
        final_rho: float = 0.0
        """linear schedule: rho at the last step (train.max_steps - 1)."""
        adaptive: bool = False
        """ASAM: perturbation scaled element-wise by T_w = |w| + adaptive_eta."""
        adaptive_eta: float = 0.01
        every_k: int = 1
        """Perturb on every k-th step only (plain one-pass steps between); 1: every step."""
        mode: str = "auto"
        """auto | per-device | global-m. auto: per-device where the engine can skip gradient
        sync (single, ddp, ZeRO-1), global-m under ZeRO-2/3."""
        eps: float = 1e-12
        """Added to ||g|| in e = rho g / (||g|| + eps)."""

    def __init__(self, config=None):
        super().__init__(config or self.Config())
        c = self.config
        if c.schedule not in SCHEDULES:
            raise ConfigError(f"sam.schedule={c.schedule!r} is not one of {', '.join(SCHEDULES)}")
        if c.mode not in MODES:
            raise ConfigError(f"sam.mode={c.mode!r} is not one of {', '.join(MODES)}")
        for key in ("rho", "final_rho", "adaptive_eta", "warmup_steps"):
            if getattr(c, key) < 0:
                raise ConfigError(f"sam.{key} must be >= 0, got {getattr(c, key)}")
        if c.every_k < 1:
            raise ConfigError(f"sam.every_k must be >= 1, got {c.every_k}")
        if not c.eps > 0:
            raise ConfigError(f"sam.eps must be > 0, got {c.eps}")
        self.max_steps: int | None = None
        self.skipped_total = 0
        self._saved: list[torch.Tensor] = []
        self._logged_mode = False

    # --- schedule and mode ------------------------------------------------------------------
    def rho_at(self, step: int) -> float:
        """rho for the update made at `step` (0-based)."""
        c = self.config
        if step < c.warmup_steps:
            return c.rho * (step + 1) / c.warmup_steps
        if c.schedule == "constant":
            return c.rho
        if self.max_steps is None:
            raise ConfigError("sam.schedule=linear needs train.max_steps: run it through the Trainer")
        span = max(1, self.max_steps - 1 - c.warmup_steps)
        progress = min(1.0, (step - c.warmup_steps) / span)
        return c.rho + (c.final_rho - c.rho) * progress

    def mode(self, engine) -> str:
        """"per-device" or "global-m" for this engine (checks an explicit `sam.mode`)."""
        want = self.config.mode
        if want == "auto":
            return "global-m" if engine.sharded_grads else "per-device"
        if want == "per-device" and engine.sharded_grads:
            raise ConfigError(
                f"sam.mode=per-device needs per-device gradients, but engine.backend={engine.backend} "
                f"shards gradients during backward (ZeRO-2/3): use sam.mode=global-m (or auto)")
        return want

    # --- hooks ---------------------------------------------------------------------------
    def uses_max_steps(self) -> bool:
        return self.config.schedule != "constant"  # linear: rho reaches final_rho at max_steps - 1

    def on_train_start(self, ctx: RunContext):
        self.max_steps = ctx.config.train.max_steps
        self._log_mode(ctx.engine)

    def state_dict(self) -> dict:
        # the only state that outlives a step: the perturbation buffers are rebuilt on demand
        return {"skipped_total": self.skipped_total}

    def load_state_dict(self, state: dict) -> None:
        self.skipped_total = int(state["skipped_total"])

    def _log_mode(self, engine) -> None:
        if self._logged_mode or not engine.is_main:
            return
        self._logged_mode = True
        mode = self.mode(engine)
        why = ("each rank perturbs with its own gradient" if mode == "per-device"
               else "every rank perturbs with the global gradient")
        c = self.config
        log.info("sam: %s mode (%s; engine %s x%d), rho %g (%s), %s, every %d step(s)", mode, why,
                 engine.backend, engine.world_size, c.rho, c.schedule, "ASAM" if c.adaptive else "SAM", c.every_k)

    def optimizer_step(self, ctx, closure) -> dict:
        engine, c = ctx.engine, self.config
        rho = self.rho_at(ctx.step)
        ctx.metrics["sam/rho"] = rho
        if rho == 0 or ctx.step % c.every_k:
            stats = closure()  # a plain step: with rho = 0, bit-identical to no recipe
            ctx.finish_step()
            ctx.metrics["sam/perturbed"] = 0
            return stats
        self._log_mode(engine)
        mode = self.mode(engine)
        ctx.metrics["sam/mode"] = mode
        per_device = mode == "per-device"

        stats = closure(no_sync=per_device)  # pass 1 at w
        live = [p for _, p in engine.local_params() if p.grad is not None]
        grads = [p.grad for p in live]
        eta = c.adaptive_eta if c.adaptive else None
        with torch.no_grad():
            sq = grad_sq_norm(grads, live, eta).to(engine.device) if live else torch.zeros((), device=engine.device)
        if engine.grads_are_shards():
            engine.all_reduce_sum(sq)
        sq = float(sq)
        norm = math.sqrt(sq) if math.isfinite(sq) else float("nan")
        ctx.metrics["sam/ascent_norm"] = norm
        skipped = not math.isfinite(norm)
        perturbed = not skipped and bool(live)
        if perturbed:
            saved = self._buffers(live)
            with torch.no_grad():
                perturb_(live, grads, rho / (norm + c.eps), saved, eta)
        self.skipped_total += int(skipped)
        engine.zero_grad()
        second = closure()  # pass 2 at w + e (at w if the norm was not finite), synced
        if perturbed:
            with torch.no_grad():
                restore_(live, saved)
            ctx.metrics["sam/loss_perturbed"] = second["loss"]
            ctx.metrics["sam/sharpness"] = second["loss"] - stats["loss"]
        ctx.metrics.update({"sam/perturbed": int(perturbed), "sam/skipped_nonfinite": int(skipped),
                            "sam/skipped_total": self.skipped_total})
        ctx.finish_step()
        return stats

    def _buffers(self, live: list[torch.Tensor]) -> list[torch.Tensor]:
        """The saved-weights buffers, allocated once (one parameter-sized copy) and reused."""
        layout = [(p.shape, p.dtype, p.device) for p in live]
        if [(s.shape, s.dtype, s.device) for s in self._saved] != layout:
            self._saved = [torch.empty(p.shape, dtype=p.dtype, device=p.device) for p in live]
        return self._saved
