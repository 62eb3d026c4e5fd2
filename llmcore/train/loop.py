"""The training loop: fixed order of a step, with recipes plugged in through their hooks.

Used by `llmcore train` and by tests and experiments that train in-process. One optimizer
step = draw all micro-batches, count the step's loss tokens globally, run the closure
(forward/backward of every micro-batch, each loss term divided once by that global count),
then either the default step (clip, optimizer step) or a recipe's `optimizer_step`.
Resumes from `train.out_dir/latest` when it exists.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import signal
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from llmcore.config.schema import Config
from llmcore.data.loader import PackedLoader, eval_batches
from llmcore.data.sft import SFTLoader, sft_eval_batches
from llmcore.data.shards import TokenShards
from llmcore.engine.build import build_engine
from llmcore.engine.train_module import TrainModule
from llmcore.errors import CheckpointError, ConfigError
from llmcore.model.flops import device_peak_flops, flops_per_token
from llmcore.model.presets import resolve_model_args
from llmcore.model.transformer import Transformer
from llmcore.recipe.context import LossContext, StepContext
from llmcore.recipe.recipe_set import RecipeSet
from llmcore.tokenizer import Tokenizer
from llmcore.train import checkpoint
from llmcore.train.losses import combine, count_loss_tokens, ntp_loss
from llmcore.train.metrics import MetricsWriter, log, progress_bar, setup_logging
from llmcore.train.optim import lr_multiplier


def _reversed_then(transform: Callable | None) -> Callable:
    """Reverse each window (a right-to-left LM, e.g. FSP-RevLM's target model), then apply
    the recipes' transform to the reversed sample."""
    def fn(sample: dict, rng) -> dict:
        sample = {k: (v[::-1].copy() if k in ("tokens", "doc_ids", "loss_mask") else v) for k, v in sample.items()}
        return transform(sample, rng) if transform is not None else sample
    return fn


def tokenizer_dir(cfg: Config) -> str:
    if cfg.data.tokenizer:
        return cfg.data.tokenizer
    root = cfg.data.path or cfg.data.sources[0].path
    return str(Path(root) / "tokenizer")


class Trainer:
    """Builds everything a run needs from a Config and runs `fit()`."""

    def __init__(self, cfg: Config):
        setup_logging()
        self.cfg = cfg
        torch.manual_seed(cfg.train.seed)  # model init depends on it; resume overwrites weights
        self.recipes = RecipeSet.from_config(cfg)
        self.tokenizer_dir = tokenizer_dir(cfg)
        self.tokenizer = Tokenizer.load(self.tokenizer_dir)
        for tok in self.recipes.special_tokens():
            self.tokenizer.token_id(tok)  # raises, naming the token, if the tokenizer lacks it
        self.recipes.bind(self.tokenizer)
        self.model_args = resolve_model_args(cfg.model, self.tokenizer.vocab_size)
        if self.model_args.vocab_size < self.tokenizer.vocab_size:
            raise ConfigError(f"model.vocab_size={self.model_args.vocab_size} is smaller than the "
                              f"tokenizer's {self.tokenizer.vocab_size} ({self.tokenizer_dir})")
        if cfg.data.seq_len > self.model_args.max_seq_len:
            raise ConfigError(f"data.seq_len={cfg.data.seq_len} exceeds model.max_seq_len={self.model_args.max_seq_len}")
        model = Transformer(self.model_args)
        if cfg.train.compile:
            # ZeRO-3 gathers each block's parameters in hooks that must stay out of the graph
            model.compile_blocks(fullgraph=not (cfg.engine.backend == "deepspeed"
                                                and cfg.engine.zero_stage == 3))
        self.engine = build_engine(TrainModule(model, self.recipes.modules(self.model_args)), cfg)
        self.device = self.engine.device
        world = self.engine.world_size
        if cfg.train.global_batch_size % (cfg.train.micro_batch_size * world):
            raise ConfigError(f"train.global_batch_size={cfg.train.global_batch_size} is not a multiple of "
                              f"micro_batch_size x world size = {cfg.train.micro_batch_size} x {world}")
        self.accum = cfg.train.global_batch_size // (cfg.train.micro_batch_size * world)
        self.loader = self._make_loader()
        ids = self.recipes.ignore_ids()
        self.ignore_ids = torch.tensor(ids, dtype=torch.long, device=self.device) if ids else None
        self.use_bf16 = cfg.train.precision == "bf16" or (
            cfg.train.precision == "auto" and self.device.type == "cuda" and torch.cuda.is_bf16_supported())
        self.step = 0
        self.out_dir = Path(cfg.train.out_dir)
        self.metrics = MetricsWriter(self.out_dir / "metrics.jsonl" if self.engine.is_main else None)
        self._stop_signal: int | None = None
        self.peak_flops = device_peak_flops(self.device, cfg.train.peak_flops)
        self.flops_per_token = flops_per_token(self.model_args, cfg.data.seq_len)
        self._restore()

    # --- set-up -------------------------------------------------------------------------------
    def _sample_transform(self) -> Callable | None:
        """The recipes' sample rewrite, after reversal for a right-to-left LM: one definition for
        training and validation, so validation scores the same kind of sequence training sees
        (e.g. windows with pauses, whose pause targets take no loss)."""
        transform = self.recipes.transform()
        return _reversed_then(transform) if self.cfg.data.reverse else transform

    def _make_loader(self):
        d, t = self.cfg.data, self.cfg.train
        common = dict(seed=t.seed, rank=self.engine.rank, world_size=self.engine.world_size,
                      transform=self._sample_transform())
        if d.format == "sft":
            return SFTLoader(d.path, self.tokenizer, d.seq_len, t.global_batch_size, prompt_field=d.prompt_field,
                             answer_field=d.answer_field, **common)
        return PackedLoader(self._sources(), d.seq_len, t.global_batch_size, **common)

    def _eval_batches(self, n: int) -> tuple[str, list[dict]]:
        d, mb, seed = self.cfg.data, self.cfg.train.micro_batch_size, self.cfg.train.seed
        transform = self._sample_transform()
        if d.format == "sft":
            if not d.val_path:
                return "data.val_path", []
            return d.val_path, list(sft_eval_batches(d.val_path, self.tokenizer, d.seq_len, mb, n,
                                                     transform=transform, seed=seed,
                                                     prompt_field=d.prompt_field, answer_field=d.answer_field))
        path = d.val_path or d.path or d.sources[0].path
        shards = TokenShards(path, "val", expected_tokenizer_hash=self.tokenizer.hash, verify=d.verify)
        per_window = None
        if transform is not None:
            index = itertools.count()  # window i gets the same rng in every evaluation
            per_window = lambda s: transform(s, np.random.default_rng([seed, next(index), 13]))  # noqa: E731
        return path, list(eval_batches(shards, d.seq_len, mb, n, transform=per_window))

    def _sources(self) -> list[tuple[str, TokenShards, float]]:
        d = self.cfg.data
        specs = [(s.name or Path(s.path).name, s.path, s.weight) for s in d.sources] or [(Path(d.path).name, d.path, 1.0)]
        return [(name, TokenShards(path, "train", expected_tokenizer_hash=self.tokenizer.hash, verify=d.verify), w)
                for name, path, w in specs]

    def _restore(self) -> None:
        ckpt = checkpoint.latest(self.out_dir)
        if ckpt is not None:
            state = checkpoint.read_state(ckpt)
            checkpoint.check_compatible(ckpt, state, self.engine.world_size, self.engine.backend)
            self.engine.load_full_state_dict(checkpoint.load_weights(ckpt))
            self.engine.load_optimizer(str(ckpt))
            if state.get("loader"):
                self.loader.load_state_dict(state["loader"])
            checkpoint.load_rng(ckpt, self.engine.rank)
            self.step = state["step"]
            log.info("resumed from %s at step %d", ckpt, self.step)
        elif self.cfg.train.init_from:
            src = checkpoint.resolve(self.cfg.train.init_from)
            weights = checkpoint.load_weights(src)
            missing, unexpected = self.engine.load_full_state_dict(weights, strict=False)
            trunk_missing = [k for k in missing if k.startswith("model.")]
            if trunk_missing or unexpected:
                raise CheckpointError(f"{src} does not match model {self.cfg.model.preset}: missing "
                                      f"{trunk_missing[:5]}, unexpected {unexpected[:5]}")
            log.info("initialised weights from %s", src)

    # --- the step ------------------------------------------------------------------------------
    def _autocast(self):
        if self.use_bf16:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _loss_fn(self, module: TrainModule, hidden: torch.Tensor, batch: dict) -> dict:
        weight = module.model.output_weight
        terms = {"ntp": (ntp_loss(hidden, weight, batch["labels"], self.ignore_ids, self.cfg.train.z_loss),
                         batch["n_loss_tokens"])}
        if self.recipes:
            ctx = LossContext(hidden, batch, weight, module.model, module.aux, self.step, self.ignore_ids)
            terms.update(self.recipes.losses(ctx))
        return terms

    def _to_device(self, batch: dict) -> dict:
        out = {k: (v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}
        out["n_loss_tokens"] = count_loss_tokens(out["labels"], self.ignore_ids)
        return out

    def _make_closure(self, micro: list[dict], denom: int) -> Callable[..., dict]:
        def closure(no_sync: bool = False) -> dict:
            """Forward/backward every micro-batch; gradients sync on the last one unless
            `no_sync` (SAM's ascent pass). Returns the step's per-term sums and counts."""
            sums: dict[str, float] = {}
            counts: dict[str, float] = {}
            for i, batch in enumerate(micro):
                last = i == len(micro) - 1
                skip_sync = (no_sync or not last) and not self.engine.sharded_grads
                with (self.engine.no_sync() if skip_sync else contextlib.nullcontext()):
                    with self._autocast():
                        terms = self.engine.forward(batch, self._loss_fn)
                        loss = combine(terms, denom)
                    self.engine.backward(loss)
                for name, (value, count) in terms.items():
                    sums[name] = sums.get(name, 0.0) + float(value.detach())
                    counts[name] = counts.get(name, 0.0) + float(count)
            return self._reduce_terms(sums, counts, denom)
        return closure

    def _reduce_terms(self, sums: dict, counts: dict, denom: int) -> dict:
        names = sorted(sums)
        t = torch.tensor([sums[n] for n in names] + [counts[n] for n in names], dtype=torch.float64, device=self.device)
        self.engine.all_reduce_sum(t)
        k = len(names)
        out = {"loss": float(t[names.index("ntp")] / max(1, denom))}
        for i, n in enumerate(names):
            if n != "ntp":
                out[f"{n}"] = float(t[i] / max(1.0, float(t[k + i])))
        return out

    def train_step(self) -> dict:
        """One optimizer step; returns its metrics."""
        cfg = self.cfg
        mb = cfg.train.micro_batch_size
        full = self.loader.next_batch()  # this rank's share of the global batch
        micro = [self._to_device({k: v[i * mb:(i + 1) * mb] for k, v in full.items()}) for i in range(self.accum)]
        local = torch.tensor(sum(b["n_loss_tokens"] for b in micro), dtype=torch.long, device=self.device)
        denom = int(self.engine.all_reduce_sum(local))
        lr = cfg.optim.lr * lr_multiplier(self.step, cfg.train.max_steps, cfg.schedule)
        self.engine.set_lr(lr)
        closure = self._make_closure(micro, denom)
        ctx = StepContext(self.engine, self.step, cfg.optim.grad_clip)
        if self.recipes.stepper is not None:
            stats = self.recipes.stepper.optimizer_step(ctx, closure)
        else:
            stats = closure()
            ctx.finish_step()
        self.step += 1
        return {**stats, **ctx.metrics, "lr": lr, "loss_tokens": denom}

    # --- evaluation ----------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, max_batches: int | None = None) -> dict:
        """Mean next-token loss and perplexity on the validation split (all ranks share it)."""
        path, batches = self._eval_batches(max_batches if max_batches is not None else self.cfg.train.eval_batches)
        if not batches:
            log.warning("%s has no validation data (val_fraction 0, or no sft val file): no val_loss", path)
            return {}
        world = self.engine.world_size
        batches = batches[: len(batches) - len(batches) % world] or batches[:1]
        total = torch.zeros(2, dtype=torch.float64, device=self.device)
        self.engine.module.eval()
        for i, batch in enumerate(batches):
            if i % world != self.engine.rank and len(batches) >= world:
                continue
            batch = self._to_device(batch)
            with self._autocast():
                terms = self.engine.forward(batch, lambda m, h, b: {"ntp": (
                    ntp_loss(h, m.model.output_weight, b["labels"], self.ignore_ids), b["n_loss_tokens"])})
            total += torch.tensor([float(terms["ntp"][0]), terms["ntp"][1]], dtype=torch.float64, device=self.device)
        self.engine.module.train()
        if len(batches) >= world:
            self.engine.all_reduce_sum(total)
        loss = float(total[0] / total[1].clamp(min=1))
        out = {"val_loss": loss, "val_ppl": math.exp(min(loss, 50.0)), "val_tokens": int(total[1])}
        out.update(self.recipes.callback("eval", trainer=self, metrics=out))
        return out

    # --- the loop ------------------------------------------------------------------------------
    def _on_signal(self, signum, frame) -> None:
        self._stop_signal = signum
        log.warning("received signal %d: will checkpoint after this step and exit", signum)

    def _stop_requested(self) -> bool:
        flag = torch.tensor(0 if self._stop_signal is None else 1, device=self.device)
        return bool(self.engine.all_reduce_sum(flag))  # every rank stops on the same step

    def save(self) -> Path:
        return checkpoint.save(self.engine, str(self.out_dir), self.step, {"tokens_seen": self._tokens_seen()},
                               self.cfg.to_yaml(), self.tokenizer_dir, self.cfg.train.keep_last,
                               loader_state=self.loader.state_dict())

    def _tokens_seen(self) -> int:
        return self.step * self.cfg.train.global_batch_size * self.cfg.data.seq_len

    def fit(self) -> dict:
        """Train to `train.max_steps` (or until SIGTERM/SIGUSR1); returns the final metrics."""
        cfg, is_main = self.cfg, self.engine.is_main
        self.out_dir.mkdir(parents=True, exist_ok=True)
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGUSR1)}
        self.recipes.callback("train_start", trainer=self)
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
        stopped = False
        try:
            while self.step < cfg.train.max_steps:
                t0 = time.perf_counter()
                last = self.train_step()
                dt = time.perf_counter() - t0
                tokens = cfg.train.global_batch_size * cfg.data.seq_len
                last["tokens_per_s"] = tokens / dt
                if self.peak_flops:
                    last["mfu"] = self.flops_per_token * tokens / dt / (self.peak_flops * self.engine.world_size)
                last.update(self.recipes.callback("step_end", trainer=self, metrics=last))
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
                        self.metrics.write({"step": self.step, **ev})
                        bar.write(f"step {self.step}: val_loss {ev['val_loss']:.4f}")
                if cfg.train.save_every and self.step % cfg.train.save_every == 0 and self.step < cfg.train.max_steps:
                    self.save()
                if self._stop_requested():
                    stopped = True
                    break
        finally:
            bar.close()
            for s, h in old.items():
                signal.signal(s, h)
        path = self.save()
        result = {"step": self.step, "checkpoint": str(path), "stopped_by_signal": stopped, **last}
        if not stopped:
            ev = self.evaluate()
            self.metrics.write({"step": self.step, **ev})
            result.update(ev)
            self.recipes.callback("train_end", trainer=self, metrics=result)
        if is_main:
            log.info("%s at step %d; checkpoint %s%s", "stopped by signal" if stopped else "finished", self.step, path,
                     f"; val_loss {result['val_loss']:.4f}" if "val_loss" in result else "")
        return result
