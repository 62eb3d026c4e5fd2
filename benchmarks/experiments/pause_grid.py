"""The pause-token 2x2 grid: {standard, pause} pretraining x {standard, pause} finetuning.

Small-scale check of Goyal et al. (arXiv 2310.02226, METHODS.md "Pause tokens"): on
multi-digit addition written most-significant digit first (`recipes.tasks.arithmetic`), train
a tiny model per seed with and without pause-pretraining, fine-tune each on the task with and
without M pauses after the prompt, and score greedy exact match on held-out problems.
The paper's pattern: pause-pretrain + pause-finetune is best; pause-finetuning a standard model
is no better than the baseline.

Budget matching: pause-pretraining replaces a fraction of every window with pauses, so it runs
proportionally more steps to see the same number of REAL tokens as standard pretraining.
Finetuning sees the same rows for the same steps in every cell (pauses are extra positions).
"Standard finetuning" runs the pause recipe with num_tokens=0 in every cell so that decoding
bans `<pause>` everywhere; training is then identical to no recipe at all.

    nice -n 5 python -m benchmarks.experiments.pause_grid            # full grid, 3 seeds
    python -m benchmarks.experiments.pause_grid --seeds 0 --pretrain-steps 100 --finetune-steps 50  # smoke run

Writes <out>/results.json (every cell, seed, accuracy and per-digit accuracy) and prints the
markdown table that goes into benchmarks/EXPERIMENTS.md. The 6 runs per seed are one pipeline
(`llmcore.pipeline`): runs already in <out> resume, a finished one is skipped and only re-scored,
and <out>/summary.csv has every run's final losses. Use a fresh --out for a new record.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

CELLS = [("standard", "standard"), ("standard", "pause"), ("pause", "standard"), ("pause", "pause")]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/pause_grid")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--digits", type=int, default=7, help="operand width of the finetune/eval task")
    p.add_argument("--chain", type=float, default=0.5, help="probability a digit pair sums to 9")
    p.add_argument("--corpus", type=int, default=200000, help="pretraining documents (widths 1..digits)")
    p.add_argument("--train", type=int, default=50000, help="finetuning rows (one epoch at the defaults)")
    p.add_argument("--eval", type=int, default=1000, help="test rows")
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--seq-len", type=int, default=64, help="pretraining window")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--pretrain-steps", type=int, default=1500, help="standard pretraining steps")
    p.add_argument("--finetune-steps", type=int, default=1500)
    p.add_argument("--fraction", type=float, default=0.1, help="pause.fraction of pause-pretraining")
    p.add_argument("--pauses", type=int, default=10, help="pause.num_tokens of pause-finetuning (M_ft = M_inf)")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--ft-lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args(argv)


def build_data(root: Path, a) -> dict:
    """Tokenizer, pretraining folder, finetune/test jsonl (shared by every seed and cell)."""
    from llmcore.recipe.registry import all_special_tokens
    from recipes.tasks import arithmetic as task

    test = task.problems(a.eval, 1, a.digits, a.chain)
    held = {r["prompt"] for r in test}
    train = task.problems(a.train, 3, a.digits, a.chain, exclude=held)
    val = task.problems(200, 2, a.digits, a.chain, exclude=held | {r["prompt"] for r in train})
    corpus = task.problems(a.corpus, 4, (1, a.digits), a.chain, exclude=held)
    tok = task.train_tokenizer(str(root / "tokenizer"), all_special_tokens())
    task.write_pretraining_data(str(root / "pretrain_data"), tok, corpus[: len(corpus) * 19 // 20],
                                corpus[len(corpus) * 19 // 20:])
    return {"tokenizer": str(root / "tokenizer"), "pretrain": str(root / "pretrain_data"),
            "train": task.write_jsonl(root / "train.jsonl", train), "val": task.write_jsonl(root / "val.jsonl", val),
            "test": task.write_jsonl(root / "test.jsonl", test)}


def model_overrides(a) -> list[str]:
    return ["model.preset=tiny", f"model.d_model={a.d_model}", f"model.n_layers={a.layers}", "model.n_heads=4",
            "model.n_kv_heads=4", f"model.ffn_hidden={a.d_model * 3}", f"model.max_seq_len={a.seq_len}",
            "train.progress=false", "train.log_every=50", "train.eval_batches=4", "train.precision=fp32"]


def pretrain_steps(kind: str, a) -> int:
    """Steps that give `kind` the same number of real tokens as `--pretrain-steps` of standard."""
    from recipes.pause import num_pauses

    if kind == "standard":
        return a.pretrain_steps
    n = a.seq_len + 1
    return int(round(a.pretrain_steps * n / (n - num_pauses(a.seq_len, a.fraction))))


def pretrain_overrides(kind: str, seed: int, data: dict, a) -> list[str]:
    recipe = ["recipes=[pause]", "pause.mode=pretrain", f"pause.fraction={a.fraction}"] if kind == "pause" else []
    return model_overrides(a) + recipe + [
        f"data.path={data['pretrain']}", f"data.seq_len={a.seq_len}", f"train.seed={seed}",
        f"train.max_steps={pretrain_steps(kind, a)}", f"train.micro_batch_size={a.batch}",
        f"train.global_batch_size={a.batch}", f"optim.lr={a.lr}", "schedule.warmup_steps=50"]


def finetune_overrides(kind: str, seed: int, data: dict, a) -> list[str]:
    m = a.pauses if kind == "pause" else 0
    # prompt 2d+2, answer d+1, eos 1, pauses; rows are seq_len + 1 long, so one slot to spare. A
    # shorter row for M = 0 changes nothing: padding comes last and attention is causal.
    seq_len = 3 * a.digits + 4 + m
    return model_overrides(a) + [
        "recipes=[pause]", "pause.mode=finetune", f"pause.num_tokens={m}", "data.format=sft",
        f"data.path={data['train']}", f"data.val_path={data['val']}", f"data.tokenizer={data['tokenizer']}",
        f"data.seq_len={seq_len}", f"train.seed={seed}", f"train.max_steps={a.finetune_steps}",
        f"train.micro_batch_size={a.batch}", f"train.global_batch_size={a.batch}", f"optim.lr={a.ft_lr}",
        "schedule.warmup_steps=20"]


def grid_pipeline(root: Path, data: dict, seeds: list[int], a):
    """Per seed, the two pretraining stages, each followed by its two finetuning stages
    (`init_from` the pretraining stage); run folders `<out>/s<seed>-pt_<kind>[-ft_<kind>]`."""
    from llmcore.pipeline.spec import Pipeline, Stage

    stages = []
    for seed in seeds:
        for pt in ("standard", "pause"):
            stages.append(Stage(name=f"s{seed}-pt_{pt}", overrides=pretrain_overrides(pt, seed, data, a)))
            stages += [Stage(name=f"s{seed}-pt_{pt}-ft_{ft}", init_from=f"s{seed}-pt_{pt}",
                             overrides=finetune_overrides(ft, seed, data, a)) for ft in ("standard", "pause")]
    return Pipeline(out_dir=str(root), stages=stages)


def score(ckpt: str, data: dict) -> dict:
    import llmcore
    from recipes.tasks import arithmetic as task

    model, tok = llmcore.load(ckpt, device="cpu")
    return task.score(model, tok, data["test"], recipes=llmcore.load_recipes(ckpt))


def table(results: list[dict]) -> str:
    """The markdown record: exact match mean ± sample std, per seed, and the seed-mean accuracy of
    the first (carry-out), second, a middle and the last (units) answer digit."""
    width = len(results[0]["digit_accuracy"])
    digits = sorted({0, 1, width // 2 - 1, width - 1})
    rows = ["| pretraining | finetuning | exact match | per seed | "
            + " | ".join(f"digit {d + 1}" for d in digits) + " |", "| --- " * (4 + len(digits)) + "|"]
    for pt, ft in CELLS:
        cell = [r for r in results if (r["pretrain"], r["finetune"]) == (pt, ft)]
        if not cell:
            continue
        acc = 100 * np.array([r["accuracy"] for r in cell])
        per_digit = 100 * np.mean([r["digit_accuracy"] for r in cell], axis=0)
        std = acc.std(ddof=1) if len(acc) > 1 else 0.0
        rows.append(f"| {pt} | {ft} | {acc.mean():.1f} ± {std:.1f} | {', '.join(f'{x:.1f}' for x in acc)} | "
                    + " | ".join(f"{per_digit[d]:.1f}" for d in digits) + " |")
    return "\n".join(rows)


def main(argv=None) -> None:
    from llmcore.pipeline.run import run_pipeline

    a = parse_args(argv)
    torch.set_num_threads(a.threads)
    root = Path(a.out)
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    data = build_data(root, a)
    seeds = [int(s) for s in a.seeds.split(",")]
    ran = run_pipeline(grid_pipeline(root, data, seeds, a), print_summary=False)
    if ran[-1]["status"] == "stopped":
        print(f"stopped by a signal in {ran[-1]['out_dir']}: run again to resume")
        return
    rows = {r["stage"]: r for r in ran}
    results = []
    for seed in seeds:
        for pt in ("standard", "pause"):
            base = rows[f"s{seed}-pt_{pt}"]
            print(f"seed {seed} pretrain {pt}: {pretrain_steps(pt, a)} steps, {base['train_s']:.0f}s", flush=True)
            for ft in ("standard", "pause"):
                t = time.perf_counter()
                run = rows[f"s{seed}-pt_{pt}-ft_{ft}"]
                res = {"seed": seed, "pretrain": pt, "finetune": ft, **score(run["out_dir"], data)}
                results.append(res)
                print(f"seed {seed} {pt}-pretrain {ft}-finetune: exact match {res['accuracy']:.3f} "
                      f"digits {res['digit_accuracy']} ({run['train_s'] + time.perf_counter() - t:.0f}s)",
                      flush=True)
    wall = time.perf_counter() - t0
    (root / "results.json").write_text(json.dumps({"args": vars(a), "wall_s": wall, "results": results}, indent=1))
    print(table(results))
    print(f"wall time {wall:.0f}s ({os.cpu_count()} CPUs, torch threads {a.threads})")


if __name__ == "__main__":
    main()
