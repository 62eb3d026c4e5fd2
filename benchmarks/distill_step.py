"""Training step time: plain next-token prediction vs cached KD vs online KD, same model, one run.

Same set-up as `benchmarks.distill_cache` (bundled corpus, tokenizer of `--vocab`, a random
`--preset` teacher of the student's size), a top-k cache written first; then three short runs
of the same student config through `llmcore.train.loop.Trainer`:
- ntp: no recipe (llmcore's fused linear cross-entropy);
- cached: `recipes: [distill]` reading the top-k side-cars (no teacher forward);
- online: `recipes: [distill]` with the teacher forward in every micro-batch (top-k targets
  built a row block at a time, routing on).
Step time = seq tokens per step / the trainer's `tokens_per_s`, median over the steps after
the first two (allocator warm-up); the three runs are repeated `--rounds` times in turn and
each mode's best round is kept (on a shared machine the least disturbed one).

    python -m benchmarks.distill_step --preset tiny --steps 12

Prints the table and appends to benchmarks/results/distill_step.csv.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
from pathlib import Path

import torch

from benchmarks._record import ROOT, append_csv, git_commit
from benchmarks.distill_cache import _setup


def _run(data: Path, out: Path, preset: str, steps: int, seq_len: int, batch: int, *extra: str) -> float:
    from llmcore.config.load import load_run_config
    from llmcore.train.loop import Trainer

    cfg = load_run_config(None, [f"data.path={data}", f"train.out_dir={out}", f"model.preset={preset}",
                                 f"data.seq_len={seq_len}", f"train.micro_batch_size={batch}",
                                 f"train.global_batch_size={batch}", f"train.max_steps={steps}", "train.log_every=1",
                                 "train.progress=false", "train.eval_every=0", "schedule.warmup_steps=0", *extra])
    Trainer(cfg).fit()
    with open(out / "metrics.jsonl") as f:
        rows = [json.loads(line) for line in f]
    tps = [r["tokens_per_s"] for r in rows if "tokens_per_s" in r][2:]
    return 1000 * seq_len * batch / statistics.median(tps)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="tiny")
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--top-k", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--csv", default=str(ROOT / "benchmarks" / "results" / "distill_step.csv"))
    a = p.parse_args(argv)
    from recipes.distill.cache import sidecar_names, write_cache

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data, teacher, args = _setup(root, a.preset, a.vocab, 3000)
        write_cache(str(teacher), str(data), "kd", top_k=a.top_k, seq_len=a.seq_len, progress=False)
        common = (a.preset, a.steps, a.seq_len, a.batch)
        modes = {
            "ntp": (),
            "cached": ("recipes=[distill]", "distill.cache=kd", f"distill.top_k={a.top_k}",
                       f"data.sidecars=[{','.join(sidecar_names('kd', 'topk'))}]"),
            "online": ("recipes=[distill]", f"distill.teacher={teacher}", f"distill.top_k={a.top_k}"),
        }
        ms: dict[str, float] = {}
        for r in range(a.rounds):
            for mode, extra in modes.items():
                v = _run(data, root / f"{mode}_{r}", *common, *extra)
                ms[mode] = min(ms.get(mode, v), v)
    rows = [{"device": f"cpu {platform.machine()} x{torch.get_num_threads()}", "dtype": "float32",
             "preset": a.preset, "vocab": args.vocab_size, "seq_len": a.seq_len, "batch": a.batch,
             "mode": mode, "step_ms": round(v, 1), "vs_ntp": round(v / ms["ntp"], 3), "commit": git_commit()}
            for mode, v in ms.items()]
    for r in rows:
        print(" | ".join(f"{k}={v}" for k, v in r.items()))
    append_csv(a.csv, rows)


if __name__ == "__main__":
    main()
