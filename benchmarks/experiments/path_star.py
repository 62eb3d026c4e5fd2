"""Path-star graphs: NTP vs MTP vs FSP-BCE vs FSP-RevLM, with accuracy curves over training.

Small-scale check of FSP (Mahajan et al., arXiv 2510.14751, METHODS.md "Future summary
prediction") on the path-star task of Bachmann & Nagarajan (arXiv 2403.06963,
`recipes.tasks.path_star`). The paper's pattern: teacher-forced NTP learns the "Clever Hans"
shortcut (every step after the first is the child of the previous node, so the walk is right)
and stays at 1/degree on the first choice, the one token that needs the goal's arm traced
backwards; MTP degrades as paths grow; FSP-BCE solves the task.

Design (choices the papers leave open, made here):
- degree 2, path lengths 4, 5 and 6 in ONE training mixture per run (a third of the rows each),
  scored per length on held-out graphs: the walking skill is shared across lengths, so one
  mixed run reaches the Clever-Hans plateau at every length in fewer steps than three
  separate runs would, which is what lets 3 seeds x 4 methods fit the CPU budget;
- answer-only SFT (`data.format: sft`), identical model, rows, order and steps in every cell
  of a seed; only the auxiliary loss differs;
- the reverse LM of FSP-RevLM reads WHOLE sequences (graph, query and path; `data.format:
  tokens` over `prompt + answer + eos` documents, `data.reverse: true`), so reading right to
  left it learns the graph's structure as well as the paths; trained once (seed 0) on the
  training rows for the same steps, then frozen;
- `train.save_at_steps` keeps a checkpoint at `--curve` evenly spaced steps; each is scored
  by greedy decoding (exact match, first choice, valid walk) for the accuracy-vs-steps curves;
- contrasts are paired per seed (same init and row order) against NTP, with 95% t intervals
  (`benchmarks.experiments.stats`).

    nice -n 5 python -m benchmarks.experiments.path_star                  # the CPU record
    python -m benchmarks.experiments.path_star --scale gpu                 # larger, one H100/H200
    python -m benchmarks.experiments.path_star --seeds 0 --steps 60 --curve 2 --out /tmp/ps   # smoke run
    python -m benchmarks.experiments.path_star --table runs/path_star/results.json

All training runs are one pipeline file, `<out>/pipeline.yaml`, trained by `llmcore pipeline
--config <out>/pipeline.yaml` (a rerun skips finished runs and resumes an interrupted one);
scores are cached per checkpoint in `<out>/scores/`. Writes `<out>/results.json`,
`benchmarks/results/path_star.{json,png}` and prints the tables of benchmarks/EXPERIMENTS.md.
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
METHODS = {
    "ntp": [],
    "mtp": ["recipes=[future_summary]", "future_summary.kind=mtp"],
    "fsp_bce": ["recipes=[future_summary]", "future_summary.kind=fsp_bce"],
    "fsp_revlm": ["recipes=[future_summary]", "future_summary.kind=fsp_revlm"],
}
# --scale presets: the CPU record, and a larger model and budget for one H100/H200 (<= 8 min).
SCALES = {
    "cpu": {"d_model": 128, "layers": 2, "heads": 4, "batch": 64, "steps": 1500, "train": 90000, "eval": 300,
            "lengths": "4,5,6", "threads": 1},
    "gpu": {"d_model": 256, "layers": 4, "heads": 8, "batch": 256, "steps": 2500, "train": 600000, "eval": 1000,
            "lengths": "6,7,8", "threads": 8},
}


def parse_args(argv=None) -> argparse.Namespace:
    from benchmarks.experiments.pipeline_file import parse_study, study_parser

    p = study_parser(__doc__.splitlines()[0], SCALES, "runs/path_star", "path_star")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--lengths", help="path lengths (nodes on the answer path), trained mixed (cpu: 4,5,6)")
    p.add_argument("--degree", type=int, default=2)
    p.add_argument("--num-nodes", type=int, default=20, help="node names drawn from this many letters")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--train", type=int, help="training graphs over all lengths")
    p.add_argument("--eval", type=int, help="test graphs per path length")
    p.add_argument("--d-model", type=int)
    p.add_argument("--layers", type=int)
    p.add_argument("--heads", type=int)
    p.add_argument("--batch", type=int)
    p.add_argument("--steps", type=int)
    p.add_argument("--curve", type=int, default=10, help="checkpoints scored along training (evenly spaced)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--schedule", default="cosine", help="cosine | wsd (flat, then a 20%% linear anneal)")
    p.add_argument("--mtp-heads", type=int, default=2, help="MTP aux heads (x_(t+2..t+1+n))")
    p.add_argument("--tau", type=int, default=12, help="FSP-BCE horizon (12 covers a length-8 answer)")
    p.add_argument("--table", help="only print the tables of an existing results.json")
    return parse_study(p, SCALES, argv)


def build_data(root: Path, a) -> dict:
    """Mixed-length train/val jsonl, one test jsonl per length, the reverse LM's documents."""
    from recipes.tasks import files
    from recipes.tasks import path_star as ps

    tok = ps.train_tokenizer(str(root / "tokenizer"))
    data = {"tokenizer": str(root / "tokenizer"), "vocab": tok.vocab_size, "test": {}}
    train, val, longest = [], [], 0
    for length in a.lengths:
        test = ps.problems(a.eval, 1, a.degree, length, a.num_nodes)
        v = ps.problems(100, 2, a.degree, length, a.num_nodes, exclude={r["prompt"] for r in test})
        tr = ps.problems(a.train // len(a.lengths), 3, a.degree, length, a.num_nodes,
                         exclude={r["prompt"] for r in test + v})
        data["test"][length] = ps.write_jsonl(root / f"test_L{length}.jsonl", test)
        train, val = train + tr, val + v
        longest = max([longest] + [len(r["prompt"]) + len(r["answer"]) + 1 for r in tr + test])  # + eos
    order = np.random.default_rng(4).permutation(len(train))
    train = [train[i] for i in order]
    data["train"] = ps.write_jsonl(root / "train.jsonl", train)
    data["val"] = ps.write_jsonl(root / "val.jsonl", val)
    data["seq_len"] = int(-(-longest // 8) * 8)
    files.write_pretraining_data(str(root / "revlm_docs"), tok, train, val)
    data["revlm_docs"] = str(root / "revlm_docs")
    return data


def curve_steps(a) -> list[int]:
    return sorted({max(1, round(a.steps * (i + 1) / a.curve)) for i in range(a.curve)})


def overrides(data: dict, a) -> list[str]:
    return [
        "data.format=sft", f"data.path={data['train']}", f"data.val_path={data['val']}",
        f"data.tokenizer={data['tokenizer']}", f"data.seq_len={data['seq_len']}",
        "model.preset=tiny", f"model.d_model={a.d_model}", f"model.n_layers={a.layers}",
        f"model.n_heads={a.heads}", f"model.n_kv_heads={a.heads}", f"model.ffn_hidden={int(2.75 * a.d_model)}",
        f"model.vocab_size={data['vocab']}", f"model.max_seq_len={data['seq_len']}",
        f"train.max_steps={a.steps}", f"train.global_batch_size={a.batch}", f"train.micro_batch_size={a.batch}",
        "train.progress=false", "train.log_every=100", "train.eval_batches=2", "train.precision=fp32",
        f"train.save_at_steps=[{','.join(map(str, curve_steps(a)))}]", "train.keep_last=0",
        f"optim.lr={a.lr}", "optim.weight_decay=0.1", f"schedule.kind={a.schedule}",
        f"schedule.warmup_steps={max(1, a.steps // 20)}",
        f"future_summary.n_heads={a.mtp_heads}", f"future_summary.tau={a.tau}",
    ]


def _trim(opts: list[str], method: str) -> list[str]:
    # future_summary.* keys are an error when the recipe is not listed
    return opts if method != "ntp" else [o for o in opts if not o.startswith("future_summary.")]


def study_pipeline(root: Path, data: dict, seeds: list[int], methods: list[str], a):
    """The reverse LM (seed 0, when FSP-RevLM is studied), then one stage per method swept over
    the seeds; runs in `<out>/<method>/train.seed=<seed>`."""
    from llmcore.pipeline.spec import Pipeline, Stage, Sweep

    stages = []
    if "fsp_revlm" in methods:
        rev = [o for o in _trim(overrides(data, a), "ntp")
               if not o.startswith(("data.format=", "data.path=", "data.val_path=", "train.save_at_steps="))]
        stages.append(Stage(name="revlm", overrides=rev + [
            f"data.path={data['revlm_docs']}", "data.reverse=true", "train.seed=0"]))
    for method in methods:
        stages.append(Stage(name=method, sweep=Sweep("train.seed", seeds),
                            overrides=_trim(overrides(data, a), method) + METHODS[method],
                            inputs={"future_summary.revlm_checkpoint": "revlm"} if method == "fsp_revlm" else {}))
    return Pipeline(out_dir=str(root.resolve()), stages=stages)


def score_checkpoint(ckpt: Path, tests: dict, cache: Path) -> dict:
    """Greedy scores of one checkpoint per path length, cached in `cache` (JSON)."""
    if cache.exists():
        return {int(k): v for k, v in json.loads(cache.read_text()).items()}
    import llmcore
    from recipes.tasks import path_star as ps

    model, tok = llmcore.load(str(ckpt), device="cpu")
    out = {length: ps.score(model, tok, path) for length, path in tests.items()}
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(out))
    return out


def table(doc: dict) -> str:
    """Markdown: final scores per length and method (mean ± sample std, per seed), and each
    method's paired difference from NTP with its 95% interval."""
    results, a = doc["results"], doc["args"]
    methods = a["methods"].split(",")
    lines = [("| path length | method | exact match | first choice | rest right when first is | valid walk | "
             "exact match per seed | exact match − NTP, 95% CI | first choice − NTP, 95% CI |"), "| --- " * 9 + "|"]
    for length in a["lengths"]:
        base = sorted((r for r in results if r["method"] == "ntp"), key=lambda r: r["seed"])
        for m in methods:
            rs = sorted((r for r in results if r["method"] == m), key=lambda r: r["seed"])
            if not rs:
                continue
            final = [r["curve"][-1]["scores"][str(length)] for r in rs]

            def ms(key, vals=final):
                mu, sd = mean_std([v[key] for v in vals])
                return f"{mu:.3f} ± {sd:.3f}"
            contrasts = ["", ""]
            if m != "ntp" and len(base) == len(rs) and len(rs) > 1:
                ref = [r["curve"][-1]["scores"][str(length)] for r in base]
                contrasts = [fmt_ci(paired([v[k] for v in ref], [v[k] for v in final]), 1, 3)
                             for k in ("accuracy", "first_step")]
            per_seed = ", ".join(f"{v['accuracy']:.3f}" for v in final)
            # exact / first: the walk after a right first choice (1.0 at the Clever-Hans plateau)
            rest = np.mean([v["accuracy"] / v["first_step"] for v in final if v["first_step"] > 0])
            lines.append(f"| {length} | {m} | {ms('accuracy')} | {ms('first_step')} | {rest:.3f} | {ms('valid_walk')} | "
                         f"{per_seed} | {contrasts[0]} | {contrasts[1]} |")
    return "\n".join(lines)


def plot(doc: dict, path: Path) -> Path:
    """Exact match and first-choice accuracy vs training step, a panel per path length: a thin
    line per seed, a thick one for the mean; the 1/degree chance level of the first choice."""
    from llmcore.plots import pyplot

    plt = pyplot("the path-star plot")
    a, results = doc["args"], doc["results"]
    lengths, methods = a["lengths"], a["methods"].split(",")
    fig, axes = plt.subplots(2, len(lengths), figsize=(4 * len(lengths), 6.4), sharex=True, sharey=True, squeeze=False)
    for j, length in enumerate(lengths):
        for row, key in enumerate(("accuracy", "first_step")):
            ax = axes[row][j]
            for i, m in enumerate(methods):
                rs = [r for r in results if r["method"] == m]
                if not rs:
                    continue
                steps = [p["step"] for p in rs[0]["curve"]]
                ys = np.array([[p["scores"][str(length)][key] for p in r["curve"]] for r in rs])
                for y in ys:
                    ax.plot(steps, y, color=f"C{i}", lw=0.6, alpha=0.45)
                ax.plot(steps, ys.mean(0), color=f"C{i}", lw=2, label=m if j == 0 and row == 0 else None)
            if key == "first_step":
                ax.axhline(1 / a["degree"], color="grey", ls="--", lw=1)
            ax.set_title(f"path length {length}: {'exact match' if key == 'accuracy' else 'first choice'}",
                         fontsize=9)
            ax.set_ylim(-0.02, 1.02)
            if row == 1:
                ax.set_xlabel("training step")
    axes[0][0].set_ylabel("exact match (greedy)")
    axes[1][0].set_ylabel("first-choice accuracy")
    fig.legend(loc="lower center", ncol=len(methods), fontsize=8)
    fig.suptitle(f"Path-star, degree {a['degree']}: accuracy along training ({len(doc['seeds'])} seeds)", fontsize=10)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(path, dpi=110)
    return path


def main(argv=None) -> None:
    from benchmarks.experiments.pipeline_file import train_pipeline

    a = parse_args(argv)
    if a.table:
        print(table(json.loads(Path(a.table).read_text())))
        return
    a.lengths = [int(x) for x in a.lengths.split(",")]
    seeds = [int(s) for s in a.seeds.split(",")]
    methods = a.methods.split(",")
    torch.set_num_threads(a.threads)
    root = Path(a.out)
    t0 = time.time()
    data = build_data(root / "data", a)
    spec = study_pipeline(root, data, seeds, methods, a)
    fits = train_pipeline(spec, root / "pipeline.yaml", a.threads, a.jobs)
    train_s = time.time() - t0
    results = []
    for fit in fits:
        if fit["stage"] not in methods:  # the reverse LM: FSP-RevLM's tool, not a result
            continue
        run = Path(fit["out_dir"])
        curve = []
        for step in curve_steps(a):
            scores = score_checkpoint(run / f"ckpt-{step:06d}", data["test"],
                                      root / "scores" / fit["stage"] / fit["variant"] / f"{step}.json")
            curve.append({"step": step, "scores": {str(k): v for k, v in scores.items()}})
        results.append({"method": fit["stage"], "seed": fit["params"]["train.seed"], "curve": curve,
                        "val_loss": fit["val_loss"], "train_s": fit["train_s"]})
        last = curve[-1]["scores"]
        print(f"{fit['stage']} seed {fit['params']['train.seed']}: " + ", ".join(
            f"L{k} {v['accuracy']:.3f}/{v['first_step']:.3f}/{v['valid_walk']:.3f}" for k, v in last.items()),
            flush=True)
    doc = {"args": vars(a), "seeds": seeds, "results": results, "wall_s": round(time.time() - t0, 1),
           "train_wall_s": round(train_s, 1)}
    (root / "results.json").write_text(json.dumps(doc, indent=1))
    if a.record:
        shutil.copy(root / "results.json", RESULTS / f"{a.record}.json")
        print("wrote", plot(doc, RESULTS / f"{a.record}.png"))
    print(f"\n{a.train} training graphs (lengths {a.lengths} mixed), {a.steps} steps x {a.batch} rows, "
          f"d_model {a.d_model} x {a.layers} layers, seeds {seeds}; {doc['wall_s']:.0f} s wall\n")
    print(table(doc))


if __name__ == "__main__":
    main()
