"""`llmcore sensitivity`: the loss rise of checkpoints under seeded weight noise (and after a
short fine-tune), across checkpoints and noise scales -> table + plot.

    llmcore sensitivity --run runs/x --data runs/data --sigmas 0.02,0.05,0.1 --seeds 3 --out runs/x/sens
    llmcore sensitivity --checkpoints runs/x/ckpt-000100 runs/x/ckpt-001000 --data runs/data \\
        --law tensor_rms,init_std --finetune-data runs/data_b --finetune-steps 20 --finetune-lr 1e-3 --out DIR

Writes `DIR/sensitivity.{csv,md,json,png}` (rewritten after each checkpoint); fine-tune runs
live in `DIR/finetune/`. The maths is `llmcore.eval.sensitivity`.
"""

from __future__ import annotations

import argparse
import math
import sys

from llmcore.errors import ConfigError


def parse_sigmas(text: str) -> list[float]:
    """`0.01,0.02` -> [0.01, 0.02]; ConfigError naming an entry that is not a finite number >= 0."""
    out = []
    for item in (t.strip() for t in text.split(",")):
        try:
            value = float(item)
        except ValueError:
            raise ConfigError(f"--sigmas: {item!r} is not a number (give e.g. 0.01,0.02)") from None
        if not 0 <= value < math.inf:
            raise ConfigError(f"--sigmas: {item!r} is not a finite noise scale >= 0")
        out.append(value)
    return out


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add `llmcore sensitivity` to the top-level subparsers."""
    s = sub.add_parser("sensitivity", help="loss rise under seeded weight noise / a short fine-tune, per checkpoint")
    which = s.add_mutually_exclusive_group(required=True)
    which.add_argument("--checkpoints", nargs="+", help="checkpoint folders (or run folders: their latest)")
    which.add_argument("--run", help="a run folder: every ckpt-N in it, by step")
    s.add_argument("--data", required=True, help="prepared data folder whose val split is scored")
    s.add_argument("--sigmas", required=True, help="noise scales, e.g. 0.01,0.02,0.05")
    s.add_argument("--seeds", type=int, default=3, help="noise seeds 0..n-1 averaged per scale (default 3)")
    s.add_argument("--law", default="tensor_rms",
                   help="noise law(s), comma-separated: tensor_rms (std = sigma * rms(W)) and/or "
                        "init_std (std = sigma * the tensor's init std)")
    s.add_argument("--include-embeddings", action="store_true", help="perturb the embedding / unembedding too")
    s.add_argument("--out", required=True, help="folder for sensitivity.{csv,md,json,png}")
    s.add_argument("--seq-len", type=int, default=None, help="window length (default: the first checkpoint's)")
    s.add_argument("--batch-size", type=int, default=8)
    s.add_argument("--max-batches", type=int, default=20, help="batches scored per evaluation (0: the whole split)")
    s.add_argument("--finetune-data", help="prepared data folder to fine-tune each checkpoint on")
    s.add_argument("--finetune-steps", type=int, default=0)
    s.add_argument("--finetune-lr", type=float, default=None)
    s.add_argument("--finetune-override", action="append", default=[], metavar="KEY=VALUE",
                   help="dotted run-config override for the fine-tune runs (repeatable)")
    s.add_argument("--no-plot", action="store_true", help="tables only (no matplotlib needed)")
    s.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when available)")
    s.set_defaults(fn=run)


def run(a: argparse.Namespace) -> None:
    from pathlib import Path

    from llmcore.eval.perturb import NOISE_LAWS
    from llmcore.eval.sensitivity import checkpoint_sensitivity, run_checkpoints
    from llmcore.eval.sensitivity_report import (
        PLOT,
        plot,
        require_matplotlib,
        to_markdown,
        write_tables,
    )
    from llmcore.train.metrics import setup_logging

    sigmas = parse_sigmas(a.sigmas)
    laws = [t.strip() for t in a.law.split(",") if t.strip()]
    bad = [law for law in laws if law not in NOISE_LAWS] or ([] if laws else [a.law])
    if bad:
        raise ConfigError(f"--law: {', '.join(map(repr, bad))} is not one of {', '.join(NOISE_LAWS)}")
    for flag, value in (("--seeds", a.seeds), ("--batch-size", a.batch_size), ("--seq-len", a.seq_len or 1)):
        if value < 1:
            raise ConfigError(f"{flag} must be >= 1, got {value}")
    finetune = None
    ft_given = [f for f, v in (("--finetune-data", a.finetune_data), ("--finetune-steps", a.finetune_steps),
                               ("--finetune-lr", a.finetune_lr)) if v]
    if ft_given:
        if len(ft_given) < 3:
            raise ConfigError("a fine-tune sensitivity needs --finetune-data, --finetune-steps (> 0) and "
                              f"--finetune-lr (> 0); got only {', '.join(ft_given)}")
        finetune = {"data": a.finetune_data, "steps": a.finetune_steps, "lr": a.finetune_lr,
                    "overrides": a.finetune_override}
    if not a.no_plot:
        require_matplotlib()  # refuse before the work, not after it
    setup_logging()
    ckpts = run_checkpoints(a.run) if a.run else a.checkpoints
    out = Path(a.out)
    rows = checkpoint_sensitivity(
        ckpts, a.data, sigmas, a.seeds, laws, seq_len=a.seq_len, batch_size=a.batch_size,
        max_batches=a.max_batches or None, include_embeddings=a.include_embeddings, finetune=finetune,
        work_dir=out, device=a.device, progress=sys.stderr.isatty(), on_checkpoint=lambda r: write_tables(r, out))
    written = write_tables(rows, out)
    if not a.no_plot:
        written.append(plot(rows, out / PLOT))
    print(to_markdown(rows), end="")
    print("wrote " + ", ".join(str(p) for p in written))
