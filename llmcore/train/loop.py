"""The training loop: set-up from a Config, then the fixed order of each step and evaluation.

Used by `llmcore train`, the pipeline, and tests and experiments that train in-process. The
step's maths live in `llmcore.train.step`, the run's data in `llmcore.train.inputs`, the
trainer's own callbacks (best checkpoint, early stop) in `llmcore.train.callbacks`; recipes
plug in through their hooks, each given a typed context (`llmcore.recipe.context`), never the
Trainer. Resumes from `train.out_dir/latest` when it exists.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import time
from pathlib import Path

import torch

from llmcore.config.batch import AUTO
from llmcore.config.schema import Config
from llmcore.engine.build import build_engine
from llmcore.engine.train_module import TrainModule
from llmcore.errors import CheckpointError, ConfigError
from llmcore.eval.loss import loss_over_batches
from llmcore.model.flops import device_peak_flops, flops_per_token
from llmcore.model.presets import resolve_model_args
from llmcore.model.transformer import Transformer
from llmcore.recipe.context import EngineView, RunContext, RunState, StepContext
from llmcore.recipe.recipe_set import RecipeSet
from llmcore.tokenizer import Tokenizer
from llmcore.train import checkpoint, config_change, inputs, leftovers, manifest
from llmcore.train.architecture import check_architecture
from llmcore.train.callbacks import BestTracker, eval_metric_key
from llmcore.train.loggers import build_trackers
from llmcore.train.losses import ntp_loss
from llmcore.train.metrics import MetricsWriter, log, progress_bar, setup_logging
from llmcore.train.nonfinite import NonFiniteGuard
from llmcore.train.optim import lr_multiplier
from llmcore.train.run_lock import RunLock, RunLockError
from llmcore.train.step import StepMaths


class Trainer:
    """Builds everything a run needs from a Config and runs `fit()`."""

    def __init__(self, cfg: Config, command: str = ""):
        """`command`: the command line that started the run (`llmcore train ...`), recorded in
        each checkpoint's state.json for the exported model card."""
        setup_logging()
        self.cfg = cfg
        self.command = command
        torch.manual_seed(cfg.train.seed)  # model init depends on it; resume overwrites weights
        self.recipes = RecipeSet.from_config(cfg)
        self.tokenizer_dir = inputs.tokenizer_dir(cfg)
        self.tokenizer = Tokenizer.load(self.tokenizer_dir)
        self.recipes.bind(self.tokenizer)  # reserves what the tokenizer lacks, or raises naming it
        self.model_args = resolve_model_args(cfg.model, self.tokenizer.vocab_size)
        if self.model_args.vocab_size < self.tokenizer.vocab_size:
            raise ConfigError(f"model.vocab_size={self.model_args.vocab_size} is smaller than the "
                              f"tokenizer's {self.tokenizer.vocab_size} ({self.tokenizer_dir})")
        if cfg.data.seq_len > self.model_args.max_seq_len:
            raise ConfigError(f"data.seq_len={cfg.data.seq_len} exceeds model.max_seq_len={self.model_args.max_seq_len}")
        model = Transformer(self.model_args)  # first: its init depends on the seed alone
        frozen = self.recipes.frozen_modules(self.model_args)  # before aux heads: one may size a head
        if cfg.train.compile:
            # ZeRO-3 gathers each block's parameters in hooks that must stay out of the graph
            model.compile_blocks(fullgraph=not (cfg.engine.backend == "deepspeed"
                                                and cfg.engine.zero_stage == 3))
        self.engine = build_engine(TrainModule(model, self.recipes.modules(self.model_args)), cfg)
        self.device = self.engine.device
        world = self.engine.world_size
        self.micro_batch = cfg.train.micro_batch_for(world)
        self._eval_cache: dict[tuple[str, int], list[dict]] = {}
        self.accum = cfg.train.global_batch_size // (self.micro_batch * world)
        if cfg.train.micro_batch_size == AUTO and self.engine.is_main:
            log.info("train.micro_batch_size=auto -> %d (global batch %d over %d processes, %d accumulation "
                     "steps, train.max_micro_batch_size %d)", self.micro_batch, cfg.train.global_batch_size,
                     world, self.accum, cfg.train.max_micro_batch_size)
        self.use_bf16 = cfg.train.precision == "bf16" or (
            cfg.train.precision == "auto" and self.device.type == "cuda" and torch.cuda.is_bf16_supported())
        self.frozen = self.engine.place_frozen(frozen, torch.bfloat16 if self.use_bf16 else torch.float32)
        self.transform = inputs.sample_transform(cfg.data.reverse, self.recipes.transform())
        self.loader = inputs.train_loader(cfg, self.tokenizer, self.engine.rank, world, self.transform)
        ids = self.recipes.ignore_ids()
        self.ignore_ids = torch.tensor(ids, dtype=torch.long, device=self.device) if ids else None
        self.maths = StepMaths(self.engine, self.recipes, ignore_ids=self.ignore_ids, z_loss=cfg.train.z_loss,
                               ntp_weight=cfg.train.ntp_weight, frozen=self.frozen, autocast=self._autocast)
        self.state = RunState()
        self.ctx = RunContext(config=cfg, tokenizer=self.tokenizer, model_args=self.model_args,
                              engine=EngineView(self.engine), frozen=self.frozen, state=self.state,
                              eval_loss=self._eval_path)
        self.best = (BestTracker(cfg.train.keep_best_on, cfg.train.early_stop_patience,
                                 cfg.train.early_stop_min_delta)
                     if cfg.train.keep_best_on else None)
        self.out_dir = Path(cfg.train.out_dir)
        self.metrics = MetricsWriter(self.out_dir / "metrics.jsonl" if self.engine.is_main else None)
        self._stop_signal: int | None = None
        self.peak_flops = device_peak_flops(self.device, cfg.train.peak_flops)
        self.flops_per_token = flops_per_token(self.model_args, cfg.data.seq_len)
        self.lock = RunLock(self.out_dir)
        self._lock_out_dir()
        try:
            self._restore()
            if self.engine.is_main:
                self.metrics.trackers = build_trackers(cfg.train.loggers, self.out_dir, self.step,
                                                       cfg.train.wandb_project, cfg.to_dict())
        except BaseException:
            self.lock.release()
            raise

    @property
    def step(self) -> int:
        """Optimizer steps completed."""
        return self.state.step

    @step.setter
    def step(self, value: int) -> None:
        self.state.step = value

    # --- set-up -------------------------------------------------------------------------------
    def _lock_out_dir(self) -> None:
        """Rank 0 locks out_dir and tidies a crash's leftovers; every rank learns whether it
        worked before any of them reads the folder (a failure on rank 0 alone would hang the
        others at the first collective)."""
        error: Exception | None = None
        if self.engine.is_main:
            try:
                self.lock.acquire()
                leftovers.tidy(self.out_dir)
            except Exception as e:  # re-raised below, after the other ranks know
                error = e
        failed = torch.tensor([int(error is not None)], device=self.device)
        self.engine.all_reduce_sum(failed)
        if error is not None:
            self.lock.release()
            raise error
        if int(failed):
            raise RunLockError(f"{self.out_dir}: rank 0 could not lock the run folder (its error says why)")

    def _verified(self, ckpt: Path, pending) -> None:
        """Wait for the manifest check of `ckpt` (raising its named error); a checkpoint
        without a manifest is refused when it holds DeepSpeed's pickles, else loaded with a warning."""
        if pending.result():
            return
        if (ckpt / "deepspeed").exists():
            raise CheckpointError(f"{ckpt} has no {manifest.MANIFEST}: its DeepSpeed files are pickles and are "
                                  "not loaded unverified (a checkpoint from an older llmcore: export-hf it and "
                                  "start a new run with train.init_from)")
        log.warning("%s has no %s (saved by an older llmcore): its files are not checksummed", ckpt,
                    manifest.MANIFEST)

    def _restore(self) -> None:
        ckpt = checkpoint.latest(self.out_dir)
        if ckpt is not None:
            self.engine.check_optimizer_files(str(ckpt))  # a missing partition: the engine's own error, all ranks
            # the checksums run while our own files (safetensors, JSON, weights-only) load, and
            # are waited for before DeepSpeed's pickles are read and before any step
            pending = manifest.verify_in_background(ckpt)
            try:
                state = checkpoint.read_state(ckpt)
                checkpoint.check_compatible(ckpt, state, self.engine.world_size, self.engine.backend)
                check_architecture(ckpt, self.model_args, self.cfg.model.preset)
                changed = config_change.check(checkpoint.saved_config(ckpt), self.cfg, str(ckpt),
                                              int(state.get("world_size", 1)), self.engine.world_size)
                if changed and self.engine.is_main:
                    log.warning("resuming %s with a changed config (train.allow_config_change): %s", ckpt,
                                "; ".join(changed))
                self.engine.load_full_state_dict(checkpoint.load_weights(ckpt))
                if self.engine.backend == "deepspeed":
                    self._verified(ckpt, pending)
                self.engine.load_optimizer(str(ckpt))
                self._verified(ckpt, pending)
            except Exception:
                self._verified(ckpt, pending)  # a corrupt file is named by its checksum, not its symptom
                raise
            if state.get("loader"):
                self.loader.load_state_dict(state["loader"])
            self.recipes.load_state_dict(state.get("recipes", {}), where=str(ckpt / "state.json"))
            if self.best is not None and state.get("best"):
                self.best.load_state_dict(state["best"])
            checkpoint.load_rng(ckpt, self.engine.rank, int(state.get("world_size", 1)))
            self.step = state["step"]
            log.info("resumed from %s at step %d", ckpt, self.step)
        elif self.cfg.train.init_from:
            src = checkpoint.resolve(self.cfg.train.init_from)
            check_architecture(src, self.model_args, self.cfg.model.preset, action="initialise")
            # Only the weight files are read (never the optimizer or DeepSpeed's pickles), so
            # only they are checked.
            weights = checkpoint.load_verified_weights(src)
            own_aux = set(self.engine.module.aux.keys())
            dropped = sorted({k.split(".")[1] for k in weights if k.startswith("aux.")} - own_aux)
            if dropped:  # heads of recipes this run does not use (an MTP pretrain, then plain SFT)
                log.info("init_from %s: not loading the aux heads of %s (not in this run's recipes)", src, dropped)
                weights = {k: v for k, v in weights.items() if not (k.startswith("aux.") and k.split(".")[1] in dropped)}
            missing, unexpected = self.engine.load_full_state_dict(weights, strict=False)
            trunk_missing = [k for k in missing if k.startswith("model.")]
            if trunk_missing or unexpected:
                raise CheckpointError(f"{src} does not match model {self.cfg.model.preset}: missing "
                                      f"{trunk_missing[:5]}, unexpected {unexpected[:5]}")
            log.info("initialised weights from %s", src)
        dropped = self.metrics.truncate_after(self.step)
        if dropped:
            log.info("%s: dropped %d rows after step %d (the resume replays those steps)",
                     self.metrics.path, dropped, self.step)

    def _autocast(self):
        if self.use_bf16:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # --- the step ------------------------------------------------------------------------------
    def train_step(self) -> dict:
        """One optimizer step; returns its metrics."""
        cfg = self.cfg
        mb = self.micro_batch
        full = self.loader.next_batch()  # this rank's share of the global batch
        micro = [self.maths.to_device({k: v[i * mb:(i + 1) * mb] for k, v in full.items()})
                 for i in range(self.accum)]
        local = torch.tensor(sum(b["n_loss_tokens"] for b in micro), dtype=torch.long, device=self.device)
        denom = int(self.engine.all_reduce_sum(local))
        lr = cfg.optim.lr * lr_multiplier(self.step, cfg.train.max_steps, cfg.schedule)
        self.engine.set_lr(lr)
        closure = self.maths.closure(micro, denom, self.step)
        ctx = StepContext(self.engine, self.step, cfg.optim.grad_clip)
        if self.recipes.stepper is not None:
            stats = self.recipes.stepper.optimizer_step(ctx, closure)
        else:
            stats = closure()
            ctx.finish_step()
        self.step += 1
        return {**stats, **ctx.metrics, "lr": lr, "loss_tokens": denom}

    # --- evaluation ----------------------------------------------------------------------------
    def eval_sets(self) -> dict[str, str]:
        """Name -> path of every evaluation set: the default `val`, then `eval.sets`."""
        return {"val": inputs.default_eval_path(self.cfg), **self.cfg.eval.sets}

    def eval_batches(self, path: str, n: int | None = None) -> list[dict]:
        """The evaluation batches of the set at `path` (the same windows at every evaluation, so
        they are read, checked and transformed once per run and kept)."""
        n = self.cfg.train.eval_batches if n is None else n
        if (path, n) not in self._eval_cache:
            self._eval_cache[path, n] = inputs.eval_set_batches(self.cfg, self.tokenizer, path, n, self.transform,
                                                                self.micro_batch)
        return self._eval_cache[path, n]

    @torch.no_grad()
    def _eval_path(self, path: str, max_batches: int | None = None) -> dict:
        """{"loss", "ppl", "tokens"} of one evaluation set, all ranks sharing its batches."""
        def score(batch: dict) -> tuple[torch.Tensor, int]:
            batch = self.maths.to_device(batch)
            with self._autocast():
                terms = self.engine.forward(batch, lambda m, h, b: {"ntp": (
                    ntp_loss(h, m.model.output_weight, b["labels"], self.ignore_ids), b["n_loss_tokens"])})
            return terms["ntp"]

        was_training = self.engine.module.training
        self.engine.module.eval()
        try:
            return loss_over_batches(score, self.eval_batches(path, max_batches), device=self.device,
                                     rank=self.engine.rank, world_size=self.engine.world_size,
                                     all_reduce=self.engine.all_reduce_sum)
        finally:
            self.engine.module.train(was_training)

    def evaluate(self, max_batches: int | None = None) -> dict:
        """Next-token loss and perplexity of every evaluation set: `val_loss`, `val_ppl`,
        `val_tokens` for the default set, `eval/<name>/loss|ppl|tokens` for each named one;
        then the recipes' `on_eval` metrics and the best-checkpoint bookkeeping."""
        out: dict = {}
        for name, path in self.eval_sets().items():
            res = self._eval_path(path, max_batches)
            if not res["tokens"]:
                log.warning("evaluation set %s (%s) has no data (val_fraction 0, or no sft val file): no %s",
                            name, path or "data.val_path", eval_metric_key(name))
                continue
            prefix = "val_" if name == "val" else f"eval/{name}/"
            out.update({prefix + "loss": res["loss"], prefix + "ppl": res["ppl"], prefix + "tokens": res["tokens"]})
        if not out:
            return {}
        out.update(self.recipes.callback("eval", self.ctx, out))
        if self.best is not None:
            self.best.on_eval(self.ctx, out)
        return out

    # --- the loop ------------------------------------------------------------------------------
    def _on_signal(self, signum, frame) -> None:
        self._stop_signal = signum
        log.warning("received signal %d: will checkpoint after this step and exit", signum)

    def _stop_requested(self) -> tuple[bool, bool]:
        """(stopped by a signal, stopped by a callback), the same on every rank."""
        flags = torch.tensor([int(self._stop_signal is not None), int(self.state.stop_reason is not None)],
                             device=self.device)
        self.engine.all_reduce_sum(flags)
        return bool(flags[0]), bool(flags[1])

    def save(self) -> Path:
        train_state = {"tokens_seen": self._tokens_seen(), "recipes": self.recipes.state_dict()}
        if self.command:
            train_state["command"] = self.command
        if self.best is not None:
            train_state["best"] = self.best.state_dict()
        return checkpoint.save(self.engine, str(self.out_dir), self.step, train_state,
                               self.cfg.to_yaml(), self.tokenizer_dir, self.cfg.train.keep_last,
                               loader_state=self.loader.state_dict())

    def _keep_if_best(self, saved: Path | None) -> Path | None:
        """After an evaluation that improved the watched set: make sure this step is saved and
        point `out_dir/best` at it. Returns the checkpoint of this step, if one was written."""
        if self.best is None or not self.best.improved:
            return saved
        saved = saved or self.save()
        if self.engine.is_main:
            checkpoint.mark_best(self.out_dir, saved)
        self.engine.barrier()
        return saved

    def _tokens_seen(self) -> int:
        return self.step * self.cfg.train.global_batch_size * self.cfg.data.seq_len

    def fit(self) -> dict:
        """Train to `train.max_steps`, until SIGTERM/SIGUSR1, or until a callback asks to stop;
        returns the final metrics."""
        cfg, is_main = self.cfg, self.engine.is_main
        self.out_dir.mkdir(parents=True, exist_ok=True)
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGUSR1)}
        self.recipes.callback("train_start", self.ctx)
        if is_main:
            log.info("model %s: %s parameters; %d steps x %d sequences x %d tokens; engine %s x%d; recipes %s",
                     cfg.model.preset, f"{self.model_args.num_params():,}", cfg.train.max_steps,
                     cfg.train.global_batch_size, cfg.data.seq_len, self.engine.backend,
                     self.engine.world_size, self.recipes.names or "none")
        # A bar only on a terminal: redirected to a file (slurm, CI) it is a wall of \r lines,
        # so there the loop logs one line every log_every steps instead.
        show_bar = is_main and cfg.train.progress and sys.stderr.isatty()
        bar = progress_bar(cfg.train.max_steps, self.step, show_bar)
        last: dict = {}
        by_signal = by_callback = False
        last_eval: tuple[int, dict] | None = None
        saved: Path | None = None
        guard = NonFiniteGuard(cfg.train.max_nonfinite_steps, str(self.out_dir))
        # One cleanup for every way out (an exception in the loop or in the final save, or a
        # normal return). Our signal handlers stay until the final checkpoint is written: a
        # second SIGTERM (torchrun forwarding slurm's, a user pressing twice) must not kill the
        # process mid-save.
        try:
            try:
                while self.step < cfg.train.max_steps:
                    t0 = time.perf_counter()
                    last = self.train_step()
                    guard.after_step(self.step, last)  # raises before this step can save or prune
                    saved = None
                    dt = time.perf_counter() - t0
                    tokens = cfg.train.global_batch_size * cfg.data.seq_len
                    last["tokens_per_s"] = tokens / dt
                    if self.peak_flops:
                        last["mfu"] = self.flops_per_token * tokens / dt / (self.peak_flops * self.engine.world_size)
                    last.update(self.recipes.callback("step_end", self.ctx, last))
                    bar.update(1)
                    bar.set_postfix(loss=f"{last['loss']:.4f}", tok_s=f"{last['tokens_per_s']:.0f}",
                                    mfu=f"{last['mfu']:.1%}" if "mfu" in last else "n/a")
                    if self.step % cfg.train.log_every == 0 or self.step == cfg.train.max_steps:
                        self.metrics.write({"step": self.step, "tokens": self._tokens_seen(), **last,
                                            "data": self.loader.stats()})
                        if not show_bar and is_main:
                            log.info("step %d loss %.4f lr %.2e tok/s %.0f", self.step, last["loss"], last["lr"],
                                     last["tokens_per_s"])
                    if cfg.train.eval_every and self.step % cfg.train.eval_every == 0 and self.step < cfg.train.max_steps:
                        ev = self.evaluate()
                        if ev:
                            last_eval = (self.step, ev)
                            self.metrics.write({"step": self.step, **ev})
                            bar.write(f"step {self.step}: val_loss {ev.get('val_loss', float('nan')):.4f}")
                            saved = self._keep_if_best(saved)
                    # no periodic save inside a run of non-finite steps: its saves would prune good checkpoints
                    periodic = cfg.train.save_every and self.step % cfg.train.save_every == 0
                    if ((periodic or self.step in cfg.train.save_at_steps)
                            and self.step < cfg.train.max_steps and saved is None and guard.run == 0):
                        saved = self.save()
                    by_signal, by_callback = self._stop_requested()
                    if by_signal or by_callback:
                        break
            finally:
                bar.close()
            return self._finish(saved, last, by_signal, by_callback, last_eval)
        finally:
            for s, h in old.items():
                signal.signal(s, h)
            self.metrics.close()
            self.lock.release()

    def _finish(self, saved: Path | None, last: dict, by_signal: bool, by_callback: bool,
                last_eval: tuple[int, dict] | None) -> dict:
        """The final save and evaluation after the loop; returns the run's result."""
        is_main = self.engine.is_main
        path = saved or self.save()
        result = {"step": self.step, "checkpoint": str(path), "stopped_by_signal": by_signal, **last}
        if by_callback:
            result["stopped_early"] = self.state.stop_reason or "a callback on another rank asked to stop"
        if not by_signal:
            if last_eval is not None and last_eval[0] == self.step:
                ev = last_eval[1]  # a callback stopped right after this step's evaluation
            else:
                ev = self.evaluate()
                self.metrics.write({"step": self.step, **ev})
                self._keep_if_best(path)
            result.update(ev)
            if self.best is not None and (self.out_dir / checkpoint.BEST).is_file():
                result["best_checkpoint"] = str(checkpoint.resolve(self.out_dir / checkpoint.BEST))
            self.recipes.callback("train_end", self.ctx, result)
        if is_main:
            log.info("%s at step %d; checkpoint %s%s", "stopped by signal" if by_signal else
                     ("stopped early" if by_callback else "finished"), self.step, path,
                     f"; val_loss {result['val_loss']:.4f}" if "val_loss" in result else "")
        return result
