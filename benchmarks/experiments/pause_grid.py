"""The pause-token 2x2 grid on 3SUM: {standard, pause} pretraining x {standard, pause} finetuning.

Small-scale check of Goyal et al. (arXiv 2310.02226, METHODS.md "Pause tokens") on a task
where extra positions can add computation: 3SUM over digit tuples (`recipes.tasks.three_sum`,
the filler-token task of Pfau, Merrill & Bowman, arXiv 2404.15758), whose yes/no answer needs
every triple of the prompt checked. Per seed, a tiny model is pretrained with and without
pauses on 3SUM text of mixed lengths, each is fine-tuned on the task with and without M
pauses after the prompt, and greedy accuracy is scored on held-out problems. The paper's
pattern: pause-pretrain + pause-finetune is best; pause-finetuning a standard model is mixed.

Design (choices the papers leave open, made here):
- equal REAL tokens in pretraining: pause-pretraining replaces `fraction` of every window
  with pauses, so it runs proportionally more steps (`pretrain_steps`); the budget is long
  enough that the pretraining loss has flattened (the record gives its last-20% change);
- fine-tuning to convergence, not a fixed short budget: evaluation every `--eval-every` steps,
  the best validation loss kept (`train.keep_best_on: val`) and training stopped after
  `--patience` evaluations without improvement (`train.early_stop_patience`), up to
  `--finetune-steps`; the best checkpoint is scored. The same rows in the same order in every
  cell of a seed; pauses are extra positions, not extra rows;
- "standard finetuning" runs the pause recipe with num_tokens=0, so decoding bans `<pause>`
  in every cell and training is identical to no recipe;
- every contrast is read from paired per-seed differences (a seed fixes init, data order and
  pause positions) with a 95% t interval (`benchmarks.experiments.stats`).

    nice -n 5 python -m benchmarks.experiments.pause_grid                  # the CPU record, 5 seeds
    python -m benchmarks.experiments.pause_grid --scale gpu                # larger, one H100/H200
    python -m benchmarks.experiments.pause_grid --seeds 0 --pretrain-steps 60 --finetune-steps 40 --out /tmp/pg  # smoke

All runs are one pipeline file, `<out>/pipeline.yaml`, trained by `llmcore pipeline --config`
(a rerun skips finished runs and resumes an interrupted one). Writes <out>/results.json,
benchmarks/results/pause_grid.{json,png} and prints the tables of benchmarks/EXPERIMENTS.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.experiments.stats import fmt_ci, mean_std, paired

RESULTS = Path(__file__).resolve().parents[1] / "results"
CELLS = [("standard", "standard"), ("standard", "pause"), ("pause", "standard"), ("pause", "pause")]
SCALES = {
    "cpu": {"d_model": 8, "layers": 2, "heads": 2, "batch": 32, "ft_batch": 128, "pretrain_steps": 1500,
            "finetune_steps": 24000, "ft_lr": 4e-3, "patience": 15, "dims": 1, "corpus": 100000, "train": 40000,
            "eval": 1000, "threads": 1},
    # not run (no GPU lent): two-digit items, which no CPU size learned at all, for a model 16x wider
    "gpu": {"d_model": 256, "layers": 4, "heads": 4, "batch": 256, "ft_batch": 512, "pretrain_steps": 1500,
            "finetune_steps": 3000, "ft_lr": 1e-3, "patience": 10, "dims": 2, "corpus": 800000, "train": 200000,
            "eval": 2000, "threads": 8},
}


def parse_args(argv=None) -> argparse.Namespace:
    from benchmarks.experiments.pipeline_file import parse_study, study_parser

    p = study_parser(__doc__.splitlines()[0], SCALES, "runs/pause_grid", "pause_grid")
    p.add_argument("--seeds", default="0,1,2,3,4")
    p.add_argument("--items", type=int, default=6, help="items per fine-tune/test prompt")
    p.add_argument("--min-items", type=int, default=3, help="pretraining corpus: min-items..items per document")
    p.add_argument("--dims", type=int, help="digits per item")
    p.add_argument("--corpus", type=int, help="pretraining documents")
    p.add_argument("--train", type=int, help="fine-tuning rows")
    p.add_argument("--eval", type=int, help="test rows")
    p.add_argument("--d-model", type=int)
    p.add_argument("--layers", type=int)
    p.add_argument("--heads", type=int, help="attention heads (d_model / heads must be even for RoPE)")
    p.add_argument("--seq-len", type=int, default=64, help="pretraining window")
    p.add_argument("--batch", type=int, help="pretraining rows per step")
    p.add_argument("--ft-batch", type=int, help="fine-tuning rows per step (short rows: a larger batch costs little)")
    p.add_argument("--pretrain-steps", type=int, help="standard pretraining steps")
    p.add_argument("--finetune-steps", type=int, help="the most fine-tuning steps (early stopping ends sooner)")
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--patience", type=int, help="evaluations without a better val loss before stopping")
    p.add_argument("--fraction", type=float, default=0.1, help="pause.fraction of pause-pretraining")
    p.add_argument("--pauses", type=int, default=10, help="pause.num_tokens of pause-finetuning (M_ft = M_inf)")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--ft-lr", type=float)
    p.add_argument("--table", help="only print the tables of an existing results.json")
    return parse_study(p, SCALES, argv)


def build_data(root: Path, a) -> dict:
    """Tokenizer, pretraining folder, finetune/val/test jsonl (shared by every seed and cell)."""
    from llmcore.recipe.registry import all_special_tokens
    from recipes.tasks import files
    from recipes.tasks import three_sum as task

    test = task.problems(a.eval, 1, a.items, a.dims)
    held = {r["prompt"] for r in test}
    val = task.problems(500, 2, a.items, a.dims, exclude=held)
    held |= {r["prompt"] for r in val}
    train = task.problems(a.train, 3, a.items, a.dims, exclude=held)
    corpus = task.problems(a.corpus, 4, (a.min_items, a.items), a.dims, exclude=held)
    tok = task.train_tokenizer(str(root / "tokenizer"), all_special_tokens())
    files.write_pretraining_data(str(root / "pretrain_data"), tok, corpus[: len(corpus) * 19 // 20],
                                 corpus[len(corpus) * 19 // 20:])
    return {"tokenizer": str(root / "tokenizer"), "pretrain": str(root / "pretrain_data"),
            "train": task.write_jsonl(root / "train.jsonl", train), "val": task.write_jsonl(root / "val.jsonl", val),
            "test": task.write_jsonl(root / "test.jsonl", test)}


def model_overrides(a) -> list[str]:
    return ["model.preset=tiny", f"model.d_model={a.d_model}", f"model.n_layers={a.layers}", f"model.n_heads={a.heads}",
            f"model.n_kv_heads={a.heads}", f"model.ffn_hidden={a.d_model * 3}", f"model.max_seq_len={a.seq_len}",
            "train.progress=false", "train.log_every=250", "train.eval_batches=4", "train.precision=fp32"]


def pretrain_steps(kind: str, a) -> int:
    """Steps that give `kind` the same number of real tokens as `--pretrain-steps` of standard."""
    from recipes.pause import num_pauses

    if kind == "standard":
        return a.pretrain_steps
    n = a.seq_len + 1
    return round(a.pretrain_steps * n / (n - num_pauses(a.seq_len, a.fraction)))


def pretrain_overrides(kind: str, data: dict, a) -> list[str]:
    recipe = ["recipes=[pause]", "pause.mode=pretrain", f"pause.fraction={a.fraction}"] if kind == "pause" else []
    return model_overrides(a) + recipe + [
        f"data.path={data['pretrain']}", f"data.seq_len={a.seq_len}",
        f"train.max_steps={pretrain_steps(kind, a)}", f"train.micro_batch_size={a.batch}",
        f"train.global_batch_size={a.batch}", f"optim.lr={a.lr}", "schedule.warmup_steps=50", "train.keep_last=1"]


def finetune_overrides(kind: str, data: dict, a) -> list[str]:
    m = a.pauses if kind == "pause" else 0
    # prompt items*dims + 1, answer 1, eos 1, pauses; rows are seq_len + 1 long. A shorter row for
    # M = 0 changes nothing: padding comes last and attention is causal.
    seq_len = a.items * a.dims + 3 + m
    return model_overrides(a) + [
        "recipes=[pause]", "pause.mode=finetune", f"pause.num_tokens={m}", "data.format=sft",
        f"data.path={data['train']}", f"data.val_path={data['val']}", f"data.tokenizer={data['tokenizer']}",
        f"data.seq_len={seq_len}", f"train.max_steps={a.finetune_steps}", f"train.micro_batch_size={a.ft_batch}",
        f"train.global_batch_size={a.ft_batch}", f"optim.lr={a.ft_lr}", "schedule.kind=constant",
        "schedule.warmup_steps=20", f"train.eval_every={a.eval_every}", "train.eval_batches=16",
        "train.keep_best_on=val", f"train.early_stop_patience={a.patience}", "train.keep_last=1"]


def grid_pipeline(root: Path, data: dict, seeds: list[int], a):
    """Per pretraining kind, one stage swept over the seeds, then its two fine-tuning stages
    (each run `init_from` the pretraining run of its seed); runs in
    `<out>/pt_<kind>[-ft_<kind>]/train.seed=<seed>`."""
    from llmcore.pipeline.spec import Pipeline, Stage, Sweep

    stages = []
    for pt in ("standard", "pause"):
        stages.append(Stage(name=f"pt_{pt}", sweep=Sweep("train.seed", seeds), overrides=pretrain_overrides(pt, data, a)))
        stages += [Stage(name=f"pt_{pt}-ft_{ft}", init_from=f"pt_{pt}", sweep=Sweep("train.seed", seeds),
                         overrides=finetune_overrides(ft, data, a)) for ft in ("standard", "pause")]
    return Pipeline(out_dir=str(root.resolve()), stages=stages)


def best_checkpoint(run_dir: str) -> Path:
    """The run's best checkpoint (`train.keep_best_on`), else its latest."""
    from llmcore.train.checkpoint import BEST, resolve

    best = Path(run_dir) / BEST
    return resolve(best if best.exists() else run_dir)


def score(run_dir: str, data: dict) -> dict:
    import llmcore
    from recipes.tasks import three_sum as task

    ckpt = best_checkpoint(run_dir)
    model, tok = llmcore.load(str(ckpt), device="cpu")
    return task.score(model, tok, data["test"], recipes=llmcore.load_recipes(ckpt))


def val_curve(run_dir: str) -> list[list[float]]:
    """[step, validation loss] of every evaluation of a fine-tune (answer + end-of-text tokens,
    the same tokens in every cell: pauses take no loss)."""
    from llmcore.train.metrics import read_metrics

    return [[r["step"], r["val_loss"]] for r in read_metrics(Path(run_dir) / "metrics.jsonl") if "val_loss" in r]


def plateau(run_dir: str) -> float:
    """Change of the logged training loss over the last 20% of a run's steps: the mean of the
    rows logged after 80% of the steps minus the mean of those logged in the 20% before
    (near 0 when the loss has flattened); nan with too few logged rows."""
    from llmcore.train.metrics import read_metrics

    rows = [r for r in read_metrics(Path(run_dir) / "metrics.jsonl") if "loss" in r and "step" in r]
    if not rows:
        return float("nan")
    end = max(r["step"] for r in rows)
    last = [r["loss"] for r in rows if r["step"] > 0.8 * end]
    before = [r["loss"] for r in rows if 0.6 * end < r["step"] <= 0.8 * end]
    return float(np.mean(last) - np.mean(before)) if last and before else float("nan")


CONTRASTS = [  # (label, cell a, cell b): the paired difference b - a
    ("pause-ft after standard pt (ss → sp)", ("standard", "standard"), ("standard", "pause")),
    ("pause-ft after pause pt (ps → pp)", ("pause", "standard"), ("pause", "pause")),
    ("pause pt, standard ft (ss → ps)", ("standard", "standard"), ("pause", "standard")),
    ("both vs neither (ss → pp)", ("standard", "standard"), ("pause", "pause")),
    ("pp vs sp (does pause-pretraining matter with pause-ft)", ("standard", "pause"), ("pause", "pause")),
]


def cell_scores(results: list[dict], cell, key: str = "accuracy") -> list[float]:
    return [r[key] for r in sorted(results, key=lambda r: r["seed"]) if (r["pretrain"], r["finetune"]) == cell]


def table(doc: dict) -> str:
    """Markdown: accuracy per cell (mean ± sample std, per seed, per label, steps to the best
    checkpoint), then the paired contrasts with 95% intervals."""
    results = doc["results"]
    rows = ["| pretraining | finetuning | accuracy % | per seed | accuracy on T / F | fine-tune steps (best / run) |",
            "| --- | --- | --- | --- | --- | --- |"]
    for cell in CELLS:
        acc = [100 * x for x in cell_scores(results, cell)]
        if not acc:
            continue
        m, s = mean_std(acc)
        t = 100 * np.mean(cell_scores(results, cell, "accuracy_T"))
        f = 100 * np.mean(cell_scores(results, cell, "accuracy_F"))
        best, ran = np.mean(cell_scores(results, cell, "best_step")), np.mean(cell_scores(results, cell, "steps"))
        rows.append(f"| {cell[0]} | {cell[1]} | {m:.1f} ± {s:.1f} | {', '.join(f'{x:.1f}' for x in acc)} | "
                    f"{t:.1f} / {f:.1f} | {best:.0f} / {ran:.0f} |")
    rows += ["", "| contrast (paired by seed) | difference, points, 95% CI | per seed | resolved |", "| --- | --- | --- | --- |"]
    for label, a_cell, b_cell in CONTRASTS:
        a, b = cell_scores(results, a_cell), cell_scores(results, b_cell)
        if len(a) < 2 or len(a) != len(b):
            continue
        c = paired(a, b)
        rows.append(f"| {label} | {fmt_ci(c, 100)} | {', '.join(f'{100 * d:+.1f}' for d in c['diffs'])} | "
                    f"{'yes' if c['resolved'] else 'no'} |")
    return "\n".join(rows)


def plot(doc: dict, path: Path) -> Path:
    """Left: accuracy per cell, a line per seed joining its four cells (the pairing the
    contrasts use), the mean as a bar. Right: each contrast's per-seed differences (dots),
    mean and 95% interval."""
    from llmcore.plots import pyplot

    plt = pyplot("the pause-grid plot")
    results = doc["results"]
    curves = all("val_curve" in r for r in results)
    fig, axes = plt.subplots(1, 3 if curves else 2, figsize=(17 if curves else 12, 4.2),
                             gridspec_kw={"width_ratios": [1, 1.3, 1.2] if curves else [1, 1.3]})
    ax, bx = axes[0], axes[1]
    per_seed = np.array([[100 * x for x in cell_scores(results, c)] for c in CELLS])  # [cell, seed]
    ax.bar(range(4), per_seed.mean(1), color="#9ecae1", width=0.6)
    for s in range(per_seed.shape[1]):
        ax.plot(range(4), per_seed[:, s], color="#08519c", marker="o", ms=3, lw=0.7, alpha=0.7)
    low = max(0.0, 5 * np.floor(per_seed.min() / 5) - 5)  # zoomed to the cells: their differences are points
    if low < 50:
        ax.axhline(50, color="grey", ls="--", lw=1)
    ax.set_ylim(low, 100)
    ax.set_xticks(range(4), [f"pt {p}\nft {f}" for p, f in CELLS], fontsize=8)
    ax.set_ylabel(f"accuracy, % ({doc['args']['eval']} test problems)")
    ax.set_title(f"3SUM, {doc['args']['items']} items: mean (bar), each seed (line)", fontsize=10)
    for i, (label, a_cell, b_cell) in enumerate(CONTRASTS):
        c = paired(cell_scores(results, a_cell), cell_scores(results, b_cell))
        bx.scatter([i] * c["n"], [100 * d for d in c["diffs"]], color="black", s=12, zorder=3)
        bx.errorbar(i, 100 * c["mean"], yerr=[[100 * (c["mean"] - c["lo"])], [100 * (c["hi"] - c["mean"])]],
                    fmt="o", color="#d95f02", capsize=4)
    bx.axhline(0, color="grey", lw=1)
    bx.set_xticks(range(len(CONTRASTS)), [c[0].split(" (")[0] if "(" in c[0][:4] else c[0] for c in CONTRASTS],
                  rotation=20, fontsize=7, ha="right")
    bx.set_ylabel("paired difference, accuracy points")
    bx.set_title("Contrasts: per seed (dots), mean and 95% CI", fontsize=10)
    if curves:
        _plot_curves(axes[2], results)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def _plot_curves(ax, results: list[dict]) -> None:
    """Validation loss along fine-tuning, per cell: the mean over seeds at each evaluation
    every run of the cell reached (early-stopped runs end sooner), each seed faint."""
    colors = dict(zip(CELLS, ("#1b9e77", "#d95f02", "#7570b3", "#e7298a")))
    for cell in CELLS:
        runs = [r["val_curve"] for r in results if (r["pretrain"], r["finetune"]) == cell]
        if not runs:
            continue
        for c in runs:
            ax.plot(*zip(*c), color=colors[cell], lw=0.5, alpha=0.25)
        steps = sorted(set.intersection(*({s for s, _ in c} for c in runs)))
        mean = [np.mean([dict(c)[s] for c in runs]) for s in steps]
        ax.plot(steps, mean, color=colors[cell], lw=1.6, label=f"pt {cell[0]}, ft {cell[1]}")
    ax.set_xlabel("fine-tune step")
    ax.set_ylabel("validation loss (answer + end of text)")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    ax.set_title("Fine-tuning: mean over seeds (bold), each seed (faint)", fontsize=10)


def main(argv=None) -> None:
    from benchmarks.experiments.pipeline_file import train_pipeline

    a = parse_args(argv)
    if a.table:
        print(table(json.loads(Path(a.table).read_text())))
        return
    torch.set_num_threads(a.threads)
    root = Path(a.out)
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    data = build_data(root / "data", a)
    seeds = [int(s) for s in a.seeds.split(",")]
    fits = train_pipeline(grid_pipeline(root, data, seeds, a), root / "pipeline.yaml", a.threads, a.jobs)
    train_s = time.perf_counter() - t0
    rows = {(r["stage"], r["params"]["train.seed"]): r for r in fits}
    results, pretraining = [], []
    for seed in seeds:
        for pt in ("standard", "pause"):
            base = rows[(f"pt_{pt}", seed)]
            pretraining.append({"seed": seed, "pretrain": pt, "steps": int(base["step"]), "val_loss": base["val_loss"],
                                "loss_change_last_20pct": plateau(base["out_dir"])})
            for ft in ("standard", "pause"):
                run = rows[(f"pt_{pt}-ft_{ft}", seed)]
                best_step = int(best_checkpoint(run["out_dir"]).name.split("-")[-1])
                res = {"seed": seed, "pretrain": pt, "finetune": ft, "steps": int(run["step"]), "best_step": best_step,
                       "val_curve": val_curve(run["out_dir"]),
                       **score(run["out_dir"], data)}
                results.append(res)
                print(f"seed {seed} {pt}-pretrain {ft}-finetune: accuracy {res['accuracy']:.3f} "
                      f"(T {res['accuracy_T']:.3f}, F {res['accuracy_F']:.3f}; best step {best_step} of {res['steps']})",
                      flush=True)
    doc = {"args": vars(a), "seeds": seeds, "results": results, "pretraining": pretraining,
           "wall_s": round(time.perf_counter() - t0, 1), "train_wall_s": round(train_s, 1)}
    (root / "results.json").write_text(json.dumps(doc, indent=1))
    if a.record:
        shutil.copy(root / "results.json", RESULTS / f"{a.record}.json")
        print("wrote", plot(doc, RESULTS / f"{a.record}.png"))
    print(table(doc))
    for p in pretraining:
        print(f"pretraining {p['pretrain']} seed {p['seed']}: {p['steps']} steps, val {p['val_loss']:.4f}, "
              f"loss change over the last 20% {p['loss_change_last_20pct']:+.4f}")
    print(f"wall time {doc['wall_s']:.0f}s (torch threads {a.threads})")


if __name__ == "__main__":
    main()
