"""A short fine-tune of an existing checkpoint: a new run initialised from its weights.

Used by `llmcore.eval.sensitivity` (fine-tune sensitivity) and by recipes that fine-tune a
pretrained checkpoint (the SAM forgetting harness's sweep takes `from_checkpoint`). The new
run keeps the checkpoint's architecture, context length and tokenizer; its optimizer,
schedule and data order are fresh (`train.init_from` loads weights only).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from llmcore.train import checkpoint


def from_checkpoint(ckpt: str | Path) -> list[str]:
    """Dotted overrides that start a new run from checkpoint `ckpt`: its `model` section,
    `data.seq_len`, its tokenizer (`data.tokenizer`) and `train.init_from`."""
    ckpt = checkpoint.resolve(ckpt)
    raw = checkpoint.saved_config(ckpt)
    out = [f"model.{k}={v}" for k, v in (raw.get("model") or {}).items() if v is not None]
    return out + [f"data.seq_len={raw['data']['seq_len']}", f"train.init_from={ckpt}",
                  f"data.tokenizer={ckpt / 'tokenizer'}"]


def finetune(ckpt: str | Path, data: str, steps: int, lr: float, out_dir: str | Path,
             overrides: Sequence[str] = ()) -> Path:
    """Fine-tune `ckpt` for `steps` optimizer steps on prepared folder `data` at constant
    learning rate `lr` (no warmup), with the checkpoint's batch sizes and `train.seed` 0;
    `overrides` (dotted keys) come last. A rerun resumes (or, finished, re-saves) the run in
    `out_dir`, which refuses a changed config by name. Returns the final checkpoint."""
    from llmcore.config.load import load_run_config
    from llmcore.train.loop import Trainer

    src = checkpoint.resolve(ckpt)
    train = checkpoint.saved_config(src).get("train") or {}
    batch = [f"train.{k}={train[k]}" for k in ("micro_batch_size", "global_batch_size") if k in train]
    cfg = load_run_config(None, [
        *from_checkpoint(src), *batch, f"data.path={data}", f"train.max_steps={steps}", f"optim.lr={lr}",
        "schedule.kind=constant", "schedule.warmup_steps=0", "train.seed=0", f"train.out_dir={out_dir}",
        "train.eval_every=0", "train.eval_batches=1", "train.keep_last=1", "train.progress=false", *overrides])
    return Path(Trainer(cfg).fit()["checkpoint"])
