"""Mode conditioning on Countdown: standard SFT vs ModC (true labels) vs ModC (gradient
clusters) vs specialists, same budget; pass@k for k = 1..64, per-problem style diversity,
cluster purity.

Small-scale check of ModC (arXiv 2512.01127, METHODS.md "Mode conditioning") on
`recipes.tasks.countdown`: every training problem comes with ONE trace, depth-first or
breadth-first at random (the style recorded per example). Same tiny model, rows and steps in
every cell; only the conditioning differs:

- `sft`: plain answer-only SFT; sampled unconditioned (64 samples per test problem);
- `modc_true`: `<mode_style>` prefix from the recorded style; 32 samples per mode;
- `modc_cluster`: prefix from `llmcore modes cluster` on the same seed's `sft` checkpoint
  (per-example gradients of log p of the first `--cluster-tokens` answer tokens over the last
  block and the final norm, Rademacher projection to `--dim`, k-means++ with 8 restarts); the
  validation file gets the nearest centroid;
- `specialists`: one model per true style on that style's rows, each for half the steps (the
  same total budget), 32 samples from each.

Scored on held-out problems by the `ast` verifier (any correct expression counts) with the
allocation-aware unbiased pass@k; diversity is, per problem, the share of its samples in its
minority style (0: collapsed onto one style, 0.5: balanced), averaged over problems. The
paper's pattern: standard training collapses each problem onto one style; ModC keeps both and
lifts pass@k for k >= 2 at similar pass@1.

    /work/heavy python -m benchmarks.experiments.modc            # 3 seeds, ~20 min at 1 thread
    python -m benchmarks.experiments.modc --seeds 0 --steps 40 --test 8 --samples 8   # a smoke run

Writes <out>/results.json, benchmarks/results/modc.{json,png} and prints the markdown table of
benchmarks/EXPERIMENTS.md. Training runs are one pipeline per phase (`llmcore.pipeline`): a
rerun skips finished runs and resumes an interrupted one; features resume by part.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

METHODS = ("sft", "modc_true", "modc_cluster", "specialists")
RESULTS = Path(__file__).resolve().parents[1] / "results"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/modc")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--max-number", type=int, default=6)
    p.add_argument("--train", type=int, default=1300)
    p.add_argument("--val", type=int, default=100)
    p.add_argument("--test", type=int, default=40)
    p.add_argument("--samples", type=int, default=64, help="samples per test problem (k up to this)")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=4e-3)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--dim", type=int, default=512, help="gradient projection size for the clusters")
    p.add_argument("--cluster-tokens", type=int, default=4,
                   help="answer tokens per example in the clustered log p(y|x) (0: all)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--table", help="only print the table of an existing results.json")
    return p.parse_args(argv)


def build_data(root: Path, a) -> dict:
    from recipes.mode_conditioning.cluster import split_file
    from recipes.tasks import countdown as cd

    tok = cd.train_tokenizer(str(root / "tokenizer"))
    test = cd.problems(a.test, 1, a.max_number)
    val = cd.problems(a.val, 2, a.max_number, exclude={r["prompt"] for r in test})
    train = cd.problems(a.train, 3, a.max_number, exclude={r["prompt"] for r in test + val})
    d = {"tokenizer": str(root / "tokenizer"), "vocab": tok.vocab_size,
         "train": cd.write_jsonl(root / "train.jsonl", train), "val": cd.write_jsonl(root / "val.jsonl", val),
         "test": cd.write_jsonl(root / "test.jsonl", test), "styles": [r["style"] for r in train]}
    d["by_style"] = split_file(d["train"], "style", str(root / "by_style"))
    longest = max(len(r["prompt"]) + len(r["answer"]) for r in train + val + test) + 2  # eos, mode token
    d["seq_len"] = int(-(-longest // 8) * 8)
    return d


def base_overrides(d: dict, a) -> list[str]:
    return ["data.format=sft", f"data.path={d['train']}", f"data.val_path={d['val']}",
            f"data.tokenizer={d['tokenizer']}", f"data.seq_len={d['seq_len']}", "model.preset=tiny",
            f"model.d_model={a.d_model}", f"model.n_layers={a.layers}", "model.n_heads=4", "model.n_kv_heads=4",
            f"model.ffn_hidden={int(2.75 * a.d_model)}", f"model.vocab_size={d['vocab']}",
            f"model.max_seq_len={d['seq_len'] + 16}", f"train.max_steps={a.steps}",
            f"train.global_batch_size={a.batch}", f"train.micro_batch_size={a.batch}", "train.progress=false",
            "train.log_every=50", "train.eval_batches=2", "train.keep_last=1", "train.precision=fp32",
            f"optim.lr={a.lr}", "optim.weight_decay=0.1", "schedule.kind=wsd",
            f"schedule.warmup_steps={max(1, a.steps // 20)}"]


MODC = ["recipes=[mode_conditioning]", "mode_conditioning.modes=2"]


def phase_one(root: Path, d: dict, seeds: list[int], a):
    """sft, modc_true and the two specialists, each swept over the seeds."""
    from llmcore.pipeline.spec import Pipeline, Stage, Sweep

    base = base_overrides(d, a)
    half = [f"train.max_steps={a.steps // 2}", f"schedule.warmup_steps={max(1, a.steps // 40)}"]
    stages = [Stage(name="sft", sweep=Sweep("train.seed", seeds), overrides=base),
              Stage(name="modc_true", sweep=Sweep("train.seed", seeds),
                    overrides=base + MODC + ["data.sft_fields=[style]", "mode_conditioning.mode_field=style"])]
    for m, path in enumerate(d["by_style"]):
        stages.append(Stage(name=f"specialist_{m}", sweep=Sweep("train.seed", seeds),
                            overrides=base + half + [f"data.path={path}"]))
    return Pipeline(out_dir=str(root), stages=stages)


def cluster(root: Path, d: dict, seed: int, a) -> dict:
    """Gradient clusters of the training rows from this seed's SFT model (+ val by centroid)."""
    from recipes.mode_conditioning.cluster import ClusterSettings, cluster_file
    from recipes.mode_conditioning.kmeans import adjusted_rand_index, purity

    s = ClusterSettings(modes=2, dim=a.dim, batch_size=32, project_batch=256, seed=seed,
                        name=cluster_name(seed, a), seq_len=d["seq_len"], answer_tokens=a.cluster_tokens)
    t = time.time()
    summary = cluster_file(str(root / "sft" / f"train.seed={seed}"), d["train"], s, assign_to=[d["val"]],
                           progress=False)
    from llmcore.data.example_sidecar import read_example_sidecar

    labels = read_example_sidecar(d["train"], s.name, len(d["styles"]))
    return {"purity": purity(labels, d["styles"]), "ari": adjusted_rand_index(labels, d["styles"]),
            "sizes": summary["sidecars"][d["train"]], "seconds": round(time.time() - t, 1)}


def cluster_name(seed: int, a) -> str:
    return f"clusters_t{a.cluster_tokens}_s{seed}"


def cluster_dir(a) -> str:
    return f"modc_cluster_t{a.cluster_tokens}"


def phase_two(root: Path, d: dict, seeds: list[int], a):
    from llmcore.pipeline.spec import Pipeline, Stage

    base = base_overrides(d, a)
    stages = [Stage(name=f"modc_cluster_s{s}", out_dir=f"{cluster_dir(a)}/train.seed={s}",
                    overrides=base + MODC + [f"train.seed={s}", f"data.sidecars=[{cluster_name(s, a)}]",
                                             f"mode_conditioning.mode_field={cluster_name(s, a)}"]) for s in seeds]
    return Pipeline(out_dir=str(root), stages=stages)


def evaluate(root: Path, d: dict, method: str, seed: int, a) -> dict:
    """Samples of every test problem, judged; pass@k, style diversity, per-style pass@1."""
    import llmcore
    from llmcore.data.sft import read_tasks
    from llmcore.eval.sampled import pass_at_k_curve, sample_and_judge
    from recipes.mode_conditioning.allocation import allocate
    from recipes.tasks import countdown as cd

    tasks = read_tasks(d["test"])
    common = {"max_new_tokens": d["seq_len"] - 8, "temperature": a.temperature, "seed": 1000 * seed + 7,
                  "prompts_per_batch": 8}
    if method == "specialists":
        judged = None
        for m in range(2):
            model, tok = llmcore.load(str(root / f"specialist_{m}" / f"train.seed={seed}"))
            part = sample_and_judge(model, tok, tasks, a.samples // 2, cd.verify, **common)
            for rec in part:  # one group per specialist
                rec["groups"] = {f"mode_{m}": rec["groups"]["all"]}
                rec["samples"] = {f"mode_{m}": rec["samples"]["all"]}
            judged = part if judged is None else [
                {"groups": {**x["groups"], **y["groups"]}, "samples": {**x["samples"], **y["samples"]}}
                for x, y in zip(judged, part)]
        alloc = lambda k: dict(zip(("mode_0", "mode_1"), allocate(k, [1, 1])))
    else:
        folder = cluster_dir(a) if method == "modc_cluster" else method
        ckpt = str(root / folder / f"train.seed={seed}")
        model, tok = llmcore.load(ckpt)
        recipes = llmcore.load_recipes(ckpt)
        judged = sample_and_judge(model, tok, tasks, a.samples, cd.verify, recipes=recipes, **common)
        probe = tok.encode(tasks[0]["prompt"])
        recipes.bind(tok)
        alloc = lambda k: {label: n for _, n, label in recipes.fan_out(probe, k)}
    ks = [k for k in (1, 2, 4, 8, 16, 32, 64) if k <= a.samples]
    curve = pass_at_k_curve([j["groups"] for j in judged], ks, alloc)
    minority, both, style_p1 = [], 0, {0: [], 1: []}
    for rec in judged:
        styles = [cd.style_of(text) for texts in rec["samples"].values() for text, _ in texts]
        valid = [s for s in styles if s >= 0]
        share = min(valid.count(0), valid.count(1)) / len(valid) if valid else 0.0
        minority.append(share)
        both += share >= 0.1
        for texts in rec["samples"].values():
            for text, ok in texts:
                if cd.style_of(text) >= 0:
                    style_p1[cd.style_of(text)].append(ok)
    return {"method": method, "seed": seed, "pass_at_k": {k: v["mean"] for k, v in curve["overall"].items()},
            "ci": {k: [v["lo"], v["hi"]] for k, v in curve["overall"].items()},
            "diversity": float(np.mean(minority)), "both_styles": both / len(judged),
            "dfs_share": float(np.mean([s == 0 for rec in judged for texts in rec["samples"].values()
                                        for s in [cd.style_of(t) for t, _ in texts] if s >= 0] or [0.0])),
            "acc_by_style": {("dfs", "bfs")[s]: (float(np.mean(v)) if v else None) for s, v in style_p1.items()}}


def table(results: list[dict], clusters: dict) -> str:
    def ms(vals):
        v = np.array(vals, dtype=float)
        return f"{v.mean():.3f} ± {v.std(ddof=1) if len(v) > 1 else 0.0:.3f}"
    ks = sorted({int(k) for r in results for k in r["pass_at_k"]})
    head = "| method | " + " | ".join(f"pass@{k}" for k in ks) + " | style diversity | both styles | DFS share |"
    lines = [head, "| --- |" + " --- |" * (len(ks) + 3)]
    for m in METHODS:
        rs = [r for r in results if r["method"] == m]
        if not rs:
            continue
        cells = [ms([r["pass_at_k"][k] if k in r["pass_at_k"] else r["pass_at_k"][str(k)] for r in rs]) for k in ks]
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {ms([r['diversity'] for r in rs])} | "
                     f"{ms([r['both_styles'] for r in rs])} | {ms([r['dfs_share'] for r in rs])} |")
    if clusters:
        lines.append("")
        lines.append(f"Cluster purity vs the true styles: {ms([c['purity'] for c in clusters.values()])}; "
                     f"ARI {ms([c['ari'] for c in clusters.values()])} (per seed: "
                     + ", ".join(f"{c['purity']:.3f}" for c in clusters.values()) + ")")
    return "\n".join(lines)


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    colours = {"sft": "#d95f02", "modc_true": "#1b9e77", "modc_cluster": "#7570b3", "specialists": "#e7298a"}
    for m in METHODS:
        rs = [r for r in results if r["method"] == m]
        if not rs:
            continue
        ks = sorted(int(k) for k in rs[0]["pass_at_k"])
        v = np.array([[r["pass_at_k"].get(k, r["pass_at_k"].get(str(k))) for k in ks] for r in rs])
        ax.plot(ks, v.mean(0), marker="o", color=colours[m], label=f"{m} ({len(rs)} seeds)")
        ax.fill_between(ks, v.min(0), v.max(0), color=colours[m], alpha=0.15)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("k (samples per problem)")
    ax.set_ylabel("pass@k (held-out Countdown problems)")
    ax.set_title("Mode conditioning on Countdown: mean over seeds, band = min..max")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main(argv=None) -> None:
    import recipes  # noqa: F401  (registers the recipes without an installed entry point)
    from llmcore.pipeline.run import run_pipeline

    a = parse_args(argv)
    if a.table:
        saved = json.loads(Path(a.table).read_text())
        print(table(saved["results"], saved["clusters"]))
        return
    seeds = [int(s) for s in a.seeds.split(",")]
    torch.set_num_threads(a.threads)
    root = Path(a.out)
    t0 = time.time()
    d = build_data(root / "data", a)
    rows = run_pipeline(phase_one(root, d, seeds, a), print_summary=False)
    clusters = {s: cluster(root, d, s, a) for s in seeds}
    rows += run_pipeline(phase_two(root, d, seeds, a), print_summary=False)
    if any(r["status"] == "stopped" for r in rows):
        print("stopped by a signal: run again to resume")
        return
    t_train = time.time() - t0
    results = []
    for s in seeds:
        for m in METHODS:
            results.append(evaluate(root, d, m, s, a))
            print(json.dumps(results[-1]), flush=True)
    wall = time.time() - t0
    out = {"args": vars(a), "results": results, "clusters": {str(k): v for k, v in clusters.items()},
           "wall_s": round(wall, 1), "train_and_cluster_s": round(t_train, 1)}
    (root / "results.json").write_text(json.dumps(out, indent=1))
    full = len(seeds) >= 3 and a.samples == 64
    if full:
        (RESULTS / "modc.json").write_text(json.dumps(out, indent=1))
    plot(results, (RESULTS / "modc.png") if full else root / "modc.png")
    print(f"\n{len(seeds)} seeds, {a.train} training problems (numbers 1..{a.max_number}), {a.steps} steps x "
          f"{a.batch} rows, d_model {a.d_model} x {a.layers} layers, {a.samples} samples x {a.test} test problems; "
          f"wall {wall:.0f} s (training + clustering {t_train:.0f} s)\n")
    print(table(results, out["clusters"]))


if __name__ == "__main__":
    main()
