"""Sensitivity of checkpoints to weight noise and to a short fine-tune: the probe of
catastrophic overtraining (Springer et al., arXiv 2503.19206), whose claim is that the loss
rise under a fixed perturbation grows with the pretraining token budget.

Used by `llmcore sensitivity` and by anyone scoring a model under edited weights from Python
(`loss_increase(model, loss_fn, noised(model, 0.1))`). The noise itself (law, seeds, which
tensors, exact restore) is `llmcore.eval.perturb`; the fine-tune is `llmcore.train.finetune`;
the files are `llmcore.eval.sensitivity_report`.

Choices the paper leaves open, made here:
- the rise is the validation loss (nats/token) of the perturbed model minus the unperturbed
  one on the same windows, averaged over noise seeds 0..n-1 (mean and sample std reported);
- every checkpoint of a comparison is scored on the same windows (the first checkpoint's
  seq_len unless given);
- fine-tune sensitivity: the rise of the same loss after a fixed number of fine-tune steps on
  another prepared data set (constant learning rate, no warmup, fresh AdamW, the checkpoint's
  batch sizes, `train.seed` 0), one run per checkpoint.
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path

from torch import nn

from llmcore.errors import ConfigError, DataError
from llmcore.eval.perturb import check_noise, noised

log = logging.getLogger("llmcore.sensitivity")


def loss_increase(model: nn.Module, loss_fn: Callable[[nn.Module], float], edit) -> dict:
    """{"base", "edited", "increase"}: loss_fn(model) before and inside the `edit` context
    (e.g. `noised(model, 0.1)`), weights restored exactly afterwards."""
    base = loss_fn(model)
    with edit:
        edited = loss_fn(model)
    return {"base": base, "edited": edited, "increase": edited - base}


def noise_sensitivity(model: nn.Module, loss_fn: Callable[[nn.Module], float], sigmas: Sequence[float],
                      seeds: int, laws: Sequence[str] = ("tensor_rms",), include_embeddings: bool = False,
                      base: float | None = None, tick: Callable[[], None] = lambda: None) -> list[dict]:
    """One row per (law, sigma): {"law", "sigma", "seeds", "base_loss", "loss_mean",
    "loss_std", "rise_mean", "rise_std", "rises"} over noise seeds 0..seeds-1. `base` is
    loss_fn(model) when already known; `tick()` is called after each loss evaluation."""
    if seeds < 1:
        raise ConfigError(f"noise seeds must be >= 1, got {seeds}")
    for law in laws:
        for sigma in sigmas:
            check_noise(sigma, law)
    if base is None:
        base = loss_fn(model)
        tick()
    rows = []
    for law in laws:
        for sigma in sigmas:
            losses = []
            for seed in range(seeds):
                with noised(model, sigma, law, seed, include_embeddings):
                    losses.append(loss_fn(model))
                tick()
            rises = [x - base for x in losses]
            rows.append({"law": law, "sigma": sigma, "seeds": seeds, "base_loss": base,
                         "loss_mean": statistics.fmean(losses), "loss_std": _std(losses),
                         "rise_mean": statistics.fmean(rises), "rise_std": _std(rises), "rises": rises})
    return rows


def _std(xs: list[float]) -> float:
    return statistics.stdev(xs) if len(xs) > 1 else 0.0


def run_checkpoints(run_dir: str | Path) -> list[Path]:
    """Every complete checkpoint (`ckpt-N`) of a run folder, by step."""
    from llmcore.train import checkpoint

    run = Path(run_dir)
    if not run.is_dir():
        raise ConfigError(f"run folder not found: {run}")
    steps = checkpoint.complete_steps(run)
    if not steps:
        raise ConfigError(f"{run} has no checkpoints (no ckpt-N folder)")
    return [run / checkpoint.ckpt_name(s) for s in steps]


def checkpoint_sensitivity(checkpoints: Sequence[str | Path], data: str, sigmas: Sequence[float], seeds: int,
                           laws: Sequence[str] = ("tensor_rms",), *, seq_len: int | None = None,
                           batch_size: int = 8, max_batches: int | None = 20, include_embeddings: bool = False,
                           finetune: dict | None = None, work_dir: str | Path | None = None,
                           device: str | None = None, progress: bool = False,
                           on_checkpoint: Callable[[list[dict]], None] = lambda rows: None) -> list[dict]:
    """The loss rise of every checkpoint under every (law, sigma), and optionally after a
    fine-tune: one row per (checkpoint, probe) with "checkpoint", "step", "tokens", "probe"
    (noise | finetune) and the probe's numbers (see `noise_sensitivity`, `finetune_rise`).

    The loss is `validation_loss` on the `val` split of prepared folder `data` (windows of
    `seq_len`, `max_batches` batches of `batch_size`); `finetune` = {"data", "steps", "lr",
    "overrides"} fine-tunes each checkpoint under `work_dir/finetune/`. Everything named is
    checked before the first evaluation; `on_checkpoint(rows so far)` runs after each
    checkpoint (the CLI rewrites its table there, so an interruption keeps what was done)."""
    import llmcore
    from llmcore.data.shards import TokenShards
    from llmcore.eval.loss import validation_loss
    from llmcore.tokenizer import Tokenizer
    from llmcore.train import checkpoint
    from llmcore.train.metrics import progress_bar

    if not checkpoints:
        raise ConfigError("no checkpoints to score: give checkpoint folders or a run folder")
    ckpts = [checkpoint.resolve(c) for c in checkpoints]  # CheckpointError naming a missing one
    if not (Path(data) / "manifest.json").is_file():
        raise DataError(f"{data} is not a prepared data folder (no manifest.json); make it with "
                        "`llmcore data prepare`")
    if not sigmas:
        raise ConfigError("no noise sigmas given")
    for law in laws:
        for sigma in sigmas:
            check_noise(sigma, law)
    if finetune is not None:
        if work_dir is None:
            raise ConfigError("a fine-tune sensitivity needs a work folder for its runs")
        if not (Path(finetune["data"]) / "manifest.json").is_file():
            raise DataError(f"fine-tune data {finetune['data']} is not a prepared data folder (no manifest.json)")
    if seq_len is None:
        seq_len = (checkpoint.saved_config(ckpts[0]).get("data") or {}).get("seq_len")
        if not isinstance(seq_len, int):
            raise ConfigError(f"{ckpts[0]}/config.yaml names no data.seq_len: give the window length (--seq-len)")
    for ckpt in ckpts:  # a checkpoint made with another tokenizer than the data: refused now, by name
        checkpoint.read_state(ckpt)
        tok_hash = Tokenizer.load(str(ckpt / "tokenizer")).hash
        TokenShards(data, "val", expected_tokenizer_hash=tok_hash)
        if finetune is not None:
            TokenShards(finetune["data"], "train", expected_tokenizer_hash=tok_hash)
    per_ckpt = 1 + len(laws) * len(sigmas) * seeds + (2 if finetune else 0)
    bar = progress_bar(len(ckpts) * per_ckpt, 0, progress, desc="sensitivity")
    rows: list[dict] = []
    try:
        for i, ckpt in enumerate(ckpts):
            model, tok = llmcore.load(str(ckpt), device=device)
            shards = TokenShards(data, "val", expected_tokenizer_hash=tok.hash)

            def loss_fn(m: nn.Module, shards=shards) -> float:
                return validation_loss(m, shards, seq_len, batch_size, max_batches)["loss"]

            state = checkpoint.read_state(ckpt)
            ident = {"checkpoint": str(ckpt), "step": state["step"], "tokens": state.get("tokens_seen")}
            noise = noise_sensitivity(model, loss_fn, sigmas, seeds, laws, include_embeddings, tick=lambda: bar.update(1))
            rows += [{**ident, "probe": "noise", **r} for r in noise]
            if finetune is not None:
                out = Path(work_dir) / "finetune" / f"{i:02d}-{ckpt.parent.name}-{ckpt.name}"
                ft = finetune_rise(ckpt, out, loss_fn, noise[0]["base_loss"], device=device, **finetune)
                bar.update(2)
                rows.append({**ident, "probe": "finetune", **ft})
            bar.set_postfix(step=state["step"])
            log.info("%s (step %d): base loss %.4f; rise %s", ckpt, state["step"], noise[0]["base_loss"],
                     ", ".join(f"{r['law']} {r['sigma']:g}: {r['rise_mean']:+.4f}" for r in noise)
                     + (f", finetune: {rows[-1]['rise_mean']:+.4f}" if finetune is not None else ""))
            on_checkpoint(rows)
    finally:
        bar.close()
    return rows


def finetune_rise(ckpt: Path, out_dir: Path, loss_fn: Callable[[nn.Module], float], base: float, *,
                  data: str, steps: int, lr: float, overrides: Sequence[str] = (), device: str | None = None) -> dict:
    """{"finetune_steps", "finetune_lr", "base_loss", "loss_mean", "rise_mean"}: loss_fn of
    `ckpt` after `steps` fine-tune steps on prepared folder `data` at constant `lr`, minus
    `base` (loss_fn of `ckpt` itself). The run lives in `out_dir` (a rerun resumes it)."""
    import llmcore
    from llmcore.train.finetune import finetune

    final = finetune(ckpt, data, steps, lr, out_dir, overrides)
    model, _ = llmcore.load(str(final), device=device)
    loss = loss_fn(model)
    return {"finetune_steps": steps, "finetune_lr": lr, "base_loss": base, "loss_mean": loss,
            "rise_mean": loss - base}
