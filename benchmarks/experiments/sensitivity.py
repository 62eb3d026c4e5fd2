"""Sensitivity across the checkpoints of one pretraining run (catastrophic overtraining).

Small-scale check of Springer et al., "Overtrained language models are harder to fine-tune"
(arXiv 2503.19206; METHODS.md "Sensitivity"): the loss rise under a fixed Gaussian weight
perturbation, and the forgetting of the pretraining domain after a fixed short fine-tune, both
grow with the pretraining token budget. Per pretraining seed, one small model is pretrained on
domain A (the bundled Jargon File) at a constant learning rate after a short warmup (so the
checkpoints differ in tokens, not in where they sit on a decay schedule), with checkpoints at
log-spaced steps (`train.save_at_steps`: 16, 32, ..., 4096). Every checkpoint is then measured
with `llmcore.eval.sensitivity` on the same windows of A's validation split:

- noise, law `tensor_rms` (W += sigma * rms(W) * xi) and law `init_std` (W += sigma *
  init_std(W) * xi, fixed magnitude, the paper's choice), block matrices only, noise seeds 0-4;
- fine-tune: 24 steps on domain B (generated ship's logs, `sam_forgetting.make_domain_b`) at
  constant lr 1e-3 from each checkpoint; the rise of the A loss.

    python -m benchmarks.experiments.sensitivity              # full run, 3 pretraining seeds
    python -m benchmarks.experiments.sensitivity --quick      # plumbing check
    python -m benchmarks.experiments.sensitivity --report-only

Writes <out>/results.json (every seed's rise), prints the markdown table for
benchmarks/EXPERIMENTS.md and draws benchmarks/results/sensitivity.png. Training is one
pipeline: a rerun skips finished runs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from benchmarks.experiments.sam_forgetting import BATCH, MODEL, SEQ_LEN, build_data

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"
GRIDS = {"tensor_rms": [0.05, 0.1, 0.2], "init_std": [0.5, 1.0, 2.0]}
"""Noise scales per law: init_std's sigma is relative to the init std (0.02), which trained
weights outgrow, so its grid sits higher."""


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/sensitivity")
    p.add_argument("--seeds", default="0,1,2", help="pretraining seeds (model init and data order)")
    p.add_argument("--noise-seeds", type=int, default=5)
    p.add_argument("--max-log2-step", type=int, default=12, help="checkpoints at 2^4 .. 2^this steps")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--finetune-steps", type=int, default=24)
    p.add_argument("--finetune-lr", type=float, default=1e-3)
    p.add_argument("--eval-batches", type=int, default=16, help="batches of 16 x 64 tokens per evaluation")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="a few steps of everything (plumbing check)")
    p.add_argument("--report-only", action="store_true", help="tables and plot of <out>/results.json again")
    a = p.parse_args(argv)
    if a.quick:
        a.seeds, a.max_log2_step, a.finetune_steps, a.noise_seeds, a.eval_batches = "0", 6, 2, 2, 2
        a.out = a.out + "_quick"
    return a


def pretrain_pipeline(out: Path, data_a: str, seeds: list[int], a):
    from llmcore.pipeline.spec import Pipeline, Stage

    steps = [2 ** k for k in range(4, a.max_log2_step + 1)]
    return Pipeline(out_dir=str(out), stages=[Stage(name=f"pre_s{seed}", overrides=[
        *MODEL, f"data.path={data_a}", f"data.seq_len={SEQ_LEN}", f"train.seed={seed}",
        f"train.max_steps={steps[-1]}", f"train.save_at_steps={steps[:-1]}", "train.keep_last=0",
        f"train.micro_batch_size={BATCH}", f"train.global_batch_size={BATCH}", "train.progress=false",
        "train.log_every=64", "train.eval_batches=8", f"optim.lr={a.lr}", "schedule.kind=constant",
        "schedule.warmup_steps=16"]) for seed in seeds])


def measure(run_dir: str, data_a: str, data_b: str, a) -> list[dict]:
    """Rows of `checkpoint_sensitivity` for both noise laws and the fine-tune probe."""
    from llmcore.eval.sensitivity import checkpoint_sensitivity, run_checkpoints

    ckpts = run_checkpoints(run_dir)
    common = {"seq_len": SEQ_LEN, "batch_size": BATCH, "max_batches": a.eval_batches, "device": "cpu"}
    rows = checkpoint_sensitivity(ckpts, data_a, GRIDS["tensor_rms"], a.noise_seeds, ["tensor_rms"],
                                  finetune={"data": data_b, "steps": a.finetune_steps, "lr": a.finetune_lr,
                                            "overrides": ["train.log_every=1000"]},
                                  work_dir=Path(run_dir) / "sens", **common)
    rows += checkpoint_sensitivity(ckpts, data_a, GRIDS["init_std"], a.noise_seeds, ["init_std"], **common)
    return rows


def aggregate(per_seed: dict[str, list[dict]]) -> list[dict]:
    """One row per (step, probe): the mean over pretraining seeds of each seed's rise (itself a
    mean over noise seeds), `rise_std` the sample std across pretraining seeds."""
    from llmcore.eval.sensitivity_report import probe_label

    groups: dict[tuple, list[dict]] = {}
    for rows in per_seed.values():
        for r in rows:
            groups.setdefault((r["step"], probe_label(r)), []).append(r)
    out = []
    for (step, _), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        rises = [r["rise_mean"] for r in rs]
        bases = [r["base_loss"] for r in rs]
        out.append({**{k: v for k, v in rs[0].items() if k not in ("rises", "checkpoint")},
                    "checkpoint": f"step {step}", "base_loss": statistics.fmean(bases),
                    "loss_mean": statistics.fmean(r["loss_mean"] for r in rs),
                    "rise_mean": statistics.fmean(rises), "rise_std": statistics.stdev(rises) if len(rs) > 1 else 0.0,
                    "per_seed": rises, "noise_std_mean": statistics.fmean(r.get("rise_std", 0.0) for r in rs)})
    return out


def print_tables(results: dict) -> None:
    from llmcore.eval.sensitivity_report import probe_label

    rows = results["aggregate"]
    probes = list(dict.fromkeys(probe_label(r) for r in rows))
    steps = sorted({r["step"] for r in rows})
    print(f"\npretraining seeds {results['args']['seeds']}; noise seeds {results['args']['noise_seeds']}; "
          f"wall {results['wall_s']:.0f} s\n")
    tuned = [p for p in probes if p.startswith("finetune")]
    print("| step | tokens | A val loss | " + " | ".join(f"rise, {p}" for p in probes) + " | "
          + " | ".join(f"A loss after {p}" for p in tuned) + " |")
    print("| --- " * (len(probes) + len(tuned) + 3) + "|")
    for s in steps:
        mine = {probe_label(r): r for r in rows if r["step"] == s}
        first = next(iter(mine.values()))
        base_sd = statistics.stdev(first["per_seed_base"]) if len(first.get("per_seed_base", [])) > 1 else 0.0
        cells = [str(s), f"{first['tokens']:,}", f"{first['base_loss']:.3f} ± {base_sd:.3f}"]
        cells += [f"{mine[p]['rise_mean']:.4f} ± {mine[p]['rise_std']:.4f}" if p in mine else "-" for p in probes]
        cells += [f"{mine[p]['loss_mean']:.3f}" if p in mine else "-" for p in tuned]  # mean over seeds
        print("| " + " | ".join(cells) + " |")
    print("\nper probe: Spearman rank correlation of the rise with tokens (per seed, then mean), "
          "and the step of the largest mean rise:")
    for p in probes:
        pts = sorted((r["step"], r) for r in rows if probe_label(r) == p)
        n_seeds = len(pts[0][1]["per_seed"])
        rhos = [_spearman([s for s, _ in pts], [r["per_seed"][i] for _, r in pts]) for i in range(n_seeds)]
        peak = max(pts, key=lambda t: t[1]["rise_mean"])[0]
        print(f"  {p}: rho {statistics.fmean(rhos):+.3f} (seeds {', '.join(f'{x:+.2f}' for x in rhos)}); "
              f"peak at step {peak}")


def _spearman(xs: list[float], ys: list[float]) -> float:
    def ranks(v):
        order = sorted(range(len(v)), key=lambda i: v[i])
        r = [0.0] * len(v)
        for rank, i in enumerate(order):
            r[i] = float(rank)
        return r

    rx, ry = ranks(xs), ranks(ys)
    mx, my = statistics.fmean(rx), statistics.fmean(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    return cov / (sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry)) ** 0.5


def main(argv=None) -> None:
    from llmcore.eval.sensitivity_report import plot
    from llmcore.pipeline.run import run_pipeline

    a = parse_args(argv)
    out = Path(a.out)
    if a.report_only:
        results = json.loads((out / "results.json").read_text())
    else:
        torch.set_num_threads(a.threads)
        os.environ.setdefault("LLMCORE_KERNELS", "torch")
        t0 = time.time()
        data_a, data_b = build_data(out)
        seeds = [int(s) for s in a.seeds.split(",")]
        rows = run_pipeline(pretrain_pipeline(out, data_a, seeds, a), print_summary=False)
        if rows[-1]["status"] == "stopped":
            print(f"stopped by a signal in {rows[-1]['out_dir']}: run again to resume")
            return
        print(f"[{time.time() - t0:6.0f}s] pretraining done", flush=True)
        per_seed = {}
        for seed, row in zip(seeds, rows):
            per_seed[str(seed)] = measure(row["out_dir"], data_a, data_b, a)
            print(f"[{time.time() - t0:6.0f}s] seed {seed} measured", flush=True)
        agg = aggregate(per_seed)
        for r in agg:  # each seed's own base loss, for the table's spread
            r["per_seed_base"] = [x["base_loss"] for rs in per_seed.values() for x in rs
                                  if x["step"] == r["step"] and x["probe"] == r["probe"]
                                  and x.get("law") == r.get("law") and x.get("sigma") == r.get("sigma")]
        results = {"args": vars(a), "per_seed": per_seed, "aggregate": agg, "wall_s": time.time() - t0,
                   "pretrain_s": [row.get("train_s") for row in rows]}
        (out / "results.json").write_text(json.dumps(results, indent=1))
    print_tables(results)
    if not a.quick:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "sensitivity.json").write_text(json.dumps(results, indent=1))
        png = plot(results["aggregate"], RESULTS / "sensitivity.png",
                   title=f"mean ± std over pretraining seeds {results['args']['seeds']}")
        print(f"wrote {png}")


if __name__ == "__main__":
    main()
