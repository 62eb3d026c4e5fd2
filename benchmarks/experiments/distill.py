"""Distilled pretraining at small scale: test-time scaling (pass@k vs temperature) and copying.

Small-scale check of arXiv 2509.01649 (METHODS.md "Distilled pretraining"): a teacher is
trained first; then three students of the same size on the same tokens for the same steps:
`ntp` (no KD), `kd` (`recipes: [distill]`, alpha 0.9, top-32 targets from the online teacher)
and `kd_route` (the same with entropy routing, route_fraction 0.15). The paper's pattern: KD
raises pass@k for k > 1 at about equal pass@1, lowers in-context copying; routing recovers it.

Data (token documents, packed with document masking), half of each kind:
- a task with many valid answers: `= a x y z` with a one of 16 problem letters, x one of 8
  answer letters drawn from a per-problem Zipf-like distribution (weights 1/(j+1) over a
  per-problem order), y = answer letter (i + j) mod 8 and z = letter (3i + 5j + 1) mod 8 for
  a = problem i, x = letter j. Every x is valid when y and z are right: 8 valid answers per
  prompt, 128 (a, x) -> (y, z) facts to learn, a 1/64 chance per guess;
- copy documents: 8 letters drawn from 24, then the same 8 again.
The teacher ("noisy teacher", METHODS.md) trains on the same documents with each copied token
replaced by a random letter with probability `--teacher-noise`, for `--teacher-steps` steps.

Scored on the final checkpoints: pass@k (k = 1..32, n = 32 samples per prompt, all 16
prompts, three generated tokens judged by the rule) at temperatures 0.5, 1.0, 1.5 with
`llmcore.eval.pass_at_k`; the copy probe (`llmcore.eval.copy_probe`: 128 spans of 8 of the
24 letters, accuracy and probability of the copied token on the second showing).

    python -m benchmarks.experiments.distill                       # 3 seeds (record)
    python -m benchmarks.experiments.distill --seeds 0 --steps 40 --teacher-steps 40   # smoke

Writes <out>/results.json and benchmarks/results/<record>.{json,png} (default `distill`), prints the table that goes
into benchmarks/EXPERIMENTS.md. A finished run is not retrained on a rerun (the trainer resumes
its final checkpoint and has nothing left to do).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parents[1] / "results"
STUDENTS = {
    "ntp": [],
    "kd": ["recipes=[distill]", "distill.alpha=0.9", "distill.route_fraction=0"],
    "kd_route": ["recipes=[distill]", "distill.alpha=0.9", "distill.route_fraction=0.15"],
}
PROBLEMS, ANSWERS, POOL, MARK = "ABCDEFGHIJKLMNOP", "QRSTUVWX", "abcdefghijklmnopqrstuvwx", "="
KS = (1, 2, 4, 8, 16, 32)
TEMPS = (0.5, 1.0, 1.5)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/distill_study")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--docs", type=int, default=20000, help="documents per seed (half of each kind)")
    p.add_argument("--steps", type=int, default=500, help="student steps (copying emerges at ~500-800 here)")
    p.add_argument("--teacher-steps", type=int, default=1000)
    p.add_argument("--teacher-noise", type=float, default=0.2)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--samples", type=int, default=32)
    p.add_argument("--record", default="distill", help="benchmarks/results/<record>.{json,png}")
    p.add_argument("--replot", action="store_true", help="redraw the figure and table from <record>.json only")
    p.add_argument("--diagnose", action="store_true",
                   help="only add where routing acts (routed_shares of each seed's trained teacher in --out) to <record>.json")
    return p.parse_args(argv)


def build_data(root: Path, seed: int, a, ids: dict) -> tuple[Path, Path]:
    """(clean folder, noisy-copy folder) of the same documents."""
    import shutil

    from llmcore.data.writer import tokenizer_info, write_token_folder
    from llmcore.tokenizer import Tokenizer

    tok = Tokenizer.load(str(root / "tokenizer"))
    rng = np.random.default_rng(1000 + seed)
    orders = [rng.permutation(8) for _ in PROBLEMS]
    zipf = 1.0 / np.arange(1, 9)
    zipf /= zipf.sum()
    clean, noisy = [], []
    for d in range(a.docs):
        if d % 2 == 0:
            i = int(rng.integers(len(PROBLEMS)))
            j = int(orders[i][rng.choice(8, p=zipf)])
            doc = [ids["mark"], ids["problems"][i], ids["answers"][j], ids["answers"][(i + j) % 8],
                   ids["answers"][(3 * i + 5 * j + 1) % 8]]
            clean.append(doc)
            noisy.append(doc)
        else:
            span = [ids["pool"][k] for k in rng.integers(len(POOL), size=8)]
            copy = [t if rng.random() >= a.teacher_noise else ids["pool"][int(rng.integers(len(POOL)))] for t in span]
            clean.append(span + span)
            noisy.append(span + copy)
    n_val = max(50, a.docs // 50)
    out = []
    for name, docs in (("clean", clean), ("noisy", noisy)):
        folder = root / f"data_{name}_s{seed}"
        if not (folder / "manifest.json").exists():
            write_token_folder(str(folder), {"train": docs[n_val:], "val": docs[:n_val]}, tokenizer=tokenizer_info(tok),
                               overwrite=True)
            shutil.copytree(root / "tokenizer", folder / "tokenizer", dirs_exist_ok=True)
        out.append(folder)
    return out[0], out[1]


def overrides(data: Path, out: Path, seed: int, steps: int, a) -> list[str]:
    return [f"data.path={data}", f"train.out_dir={out}", "model.preset=tiny", f"model.d_model={a.d_model}",
            f"model.n_layers={a.layers}", "model.n_heads=4", "model.n_kv_heads=4", f"model.ffn_hidden={4 * a.d_model}",
            f"model.max_seq_len={a.seq_len}", f"data.seq_len={a.seq_len}", f"train.micro_batch_size={a.batch}",
            f"train.global_batch_size={a.batch}", f"train.max_steps={steps}", f"train.seed={seed}", f"optim.lr={a.lr}",
            "schedule.kind=cosine", "schedule.warmup_steps=30", "train.log_every=50", "train.progress=false",
            "train.eval_batches=4"]


def train(args: list[str]) -> None:
    from llmcore.config.load import load_run_config
    from llmcore.train.loop import Trainer

    Trainer(load_run_config(None, args)).fit()


@torch.no_grad()
def score(run: Path, ids: dict, a, seed: int) -> dict:
    import llmcore
    from llmcore.eval.copy_probe import copy_probe
    from llmcore.eval.pass_at_k import pass_at_k
    from llmcore.generate.sampling import generate

    model, _ = llmcore.load(str(run), device="cpu")
    out = {}
    for t in TEMPS:
        totals = {k: 0.0 for k in KS}
        for i, p in enumerate(ids["problems"]):
            rows = generate(model, [[ids["mark"], p]] * a.samples, 3, temperature=t, seed=seed * 7919 + i)
            right = sum(correct(i, row, ids["answers"]) for row in rows)
            for k in KS:
                totals[k] += pass_at_k(a.samples, right, k)
        out[f"T={t:g}"] = {f"pass@{k}": totals[k] / len(ids["problems"]) for k in KS}
    out["copy"] = copy_probe(model, pool=ids["pool"], span=8, n_seqs=128, seed=seed)
    return out


def correct(i: int, row: list[int], answers: list[int]) -> bool:
    """Whether generated ids (x, y, z) answer problem i."""
    if len(row) != 3 or any(t not in answers for t in row):
        return False
    j, y, z = (answers.index(t) for t in row)
    return y == (i + j) % 8 and z == (3 * i + 5 * j + 1) % 8


@torch.no_grad()
def routed_shares(teacher: Path, data: Path, ids: dict, a, windows: int = 64) -> dict:
    """Where routing acts: the share of each kind of target position that `route_mask` at
    0.15 routes for this teacher on clean training windows, with the teacher's mean entropy
    there. Kinds: `answer_yz` (the two determined answer tokens), `copy` (tokens 2..8 of the second
    showing, which copying predicts),
    `other`."""
    import llmcore
    from llmcore.data.shards import TokenShards
    from recipes.distill.routing import route_mask

    model, _ = llmcore.load(str(teacher), device="cpu")
    shards = TokenShards(str(data), "train")
    L = a.seq_len
    n = min(len(shards), windows * (L + 1))
    tok = torch.from_numpy(shards.read(0, n))
    doc = torch.from_numpy(shards.doc_ids(0, n))
    first = torch.ones(n, dtype=torch.bool)
    first[1:] = doc[1:] != doc[:-1]
    start = torch.cummax(torch.where(first, torch.arange(n), torch.zeros(n, dtype=torch.long)), 0).values
    offset = torch.arange(n) - start
    is_task = tok[start] == ids["mark"]
    kind = torch.full((n,), 2)  # other
    kind[is_task & ((offset == 3) | (offset == 4))] = 0
    kind[~is_task & (offset >= 9)] = 1  # tokens 2..8 of the second showing (the first follows nothing)
    w = windows
    x, d, k = (t[: w * (L + 1)].view(w, L + 1) for t in (tok, doc, kind))
    lp = torch.log_softmax(model.logits(model(x[:, :-1], d[:, :-1] - d[:, :1])), -1)
    ent = -(lp.exp() * lp).sum(-1)
    routed = route_mask(ent, torch.ones_like(ent, dtype=torch.bool), 0.15)
    target_kind = k[:, 1:]
    out = {}
    for i, name in enumerate(("answer_yz", "copy", "other")):
        m = target_kind == i
        out[name] = {"routed": float(routed[m].float().mean()), "entropy": float(ent[m].mean()), "positions": int(m.sum())}
    return out


def summarise(results: dict) -> dict:
    """method -> metric -> (mean, std, per-seed list) over seeds."""
    out = {}
    for method, per_seed in results.items():
        seeds = sorted(per_seed)
        flat = {}
        for s in seeds:
            r = per_seed[s]
            for t in TEMPS:
                for k in KS:
                    flat.setdefault(f"T={t:g} pass@{k}", []).append(r[f"T={t:g}"][f"pass@{k}"])
            for key in ("copy_accuracy", "copy_prob"):
                flat.setdefault(key, []).append(r["copy"][key])
        out[method] = {key: (statistics.mean(v), statistics.stdev(v) if len(v) > 1 else 0.0, v)
                       for key, v in flat.items()}
    return out


def table(summary: dict) -> str:
    cols = [f"T={t:g} pass@{k}" for t in TEMPS for k in (1, 4, 32)] + ["copy_accuracy", "copy_prob"]
    lines = ["| student | " + " | ".join(cols) + " |", "| --- |" + " ---: |" * len(cols)]
    for method, m in summary.items():
        lines.append(f"| {method} | " + " | ".join(f"{100 * m[c][0]:.1f} ± {100 * m[c][1]:.1f}" for c in cols) + " |")
    return "\n".join(lines)


def plot(summary: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    colors = {"ntp": "#636363", "kd": "#3182bd", "kd_route": "#e6550d"}
    for method, m in summary.items():
        ys = [m[f"T=1 pass@{k}"] for k in KS]
        axes[0].errorbar(KS, [y[0] for y in ys], yerr=[y[1] for y in ys], label=method, color=colors[method],
                         marker="o", capsize=3)
        for k, style in ((1, "--"), (32, "-")):
            ys = [m[f"T={t:g} pass@{k}"] for t in TEMPS]
            axes[1].errorbar(TEMPS, [y[0] for y in ys], yerr=[y[1] for y in ys], color=colors[method],
                             linestyle=style, marker="o", capsize=3, label=f"{method} pass@{k}")
    axes[0].set_xscale("log", base=2)
    axes[0].set(xlabel="k", ylabel="pass@k (T = 1)", title="pass@k at T = 1 (mean ± std over seeds)")
    axes[1].set(xlabel="temperature", ylabel="pass@k", title="pass@1 (dashed) and pass@32 (solid)")
    axes[0].legend()
    axes[1].legend(fontsize=7)
    names = list(summary)
    for i, method in enumerate(names):
        for j, key in enumerate(("copy_accuracy", "copy_prob")):
            v = summary[method][key]
            x = i + (j - 0.5) * 0.38
            axes[2].bar(x, v[0], width=0.36, color=colors[method], alpha=0.35 if j == 0 else 0.75)
            axes[2].scatter([x] * len(v[2]), v[2], color="black", zorder=3, s=10)
    axes[2].set_xticks(range(len(names)), names)
    axes[2].set(ylabel="second showing", ylim=(0, 1.05),
                title="copy probe: accuracy (light), p(copy) (dark)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv=None) -> None:
    a = parse_args(argv)
    if a.replot:
        saved = json.loads((RESULTS / f"{a.record}.json").read_text())["results"]
        summary = summarise({m: saved[m] for m in ["teacher", *STUDENTS]})
        plot({m: summary[m] for m in STUDENTS}, RESULTS / f"{a.record}.png")
        print(table(summary))
        return
    torch.set_num_threads(1)
    from recipes.tasks.path_star import train_tokenizer

    root = Path(a.out)
    root.mkdir(parents=True, exist_ok=True)
    if not (root / "tokenizer").exists():
        train_tokenizer(str(root / "tokenizer"))
    from llmcore.tokenizer import Tokenizer

    tok = Tokenizer.load(str(root / "tokenizer"))

    def one(ch):
        got = tok.encode(ch)
        assert len(got) == 1, (ch, got)
        return got[0]
    ids = {"problems": [one(c) for c in PROBLEMS], "answers": [one(c) for c in ANSWERS], "pool": [one(c) for c in POOL],
           "mark": one(MARK)}
    if a.diagnose:
        record = json.loads((RESULTS / f"{a.record}.json").read_text())
        record["routing"] = {s: routed_shares(root / f"teacher_s{s}", root / f"data_clean_s{s}", ids, a)
                             for s in a.seeds.split(",")}
        (RESULTS / f"{a.record}.json").write_text(json.dumps(record, indent=1))
        print(json.dumps(record["routing"], indent=1))
        return
    t0 = time.perf_counter()
    results: dict = {m: {} for m in STUDENTS}
    routing: dict = {}
    for seed in [int(s) for s in a.seeds.split(",")]:
        clean, noisy = build_data(root, seed, a, ids)
        teacher = root / f"teacher_s{seed}"
        train(overrides(noisy, teacher, seed, a.teacher_steps, a))
        results.setdefault("teacher", {})[seed] = score(teacher, ids, a, seed)
        routing[seed] = routed_shares(teacher, clean, ids, a)
        for method, extra in STUDENTS.items():
            run = root / f"{method}_s{seed}"
            train(overrides(clean, run, seed, a.steps, a) + extra
                  + ([f"distill.teacher={teacher}"] if extra else []))
            results[method][seed] = score(run, ids, a, seed)
        print(f"seed {seed} done at {time.perf_counter() - t0:.0f}s", flush=True)
    wall = time.perf_counter() - t0
    summary = summarise({m: results[m] for m in ["teacher", *STUDENTS]})
    record = {"args": vars(a), "wall_s": wall, "results": results, "routing": routing,
              "summary": {m: {k: v[:2] for k, v in s.items()} for m, s in summary.items()}}
    (root / "results.json").write_text(json.dumps(record, indent=1))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{a.record}.json").write_text(json.dumps(record, indent=1))
    plot({m: summary[m] for m in STUDENTS}, RESULTS / f"{a.record}.png")
    print(table(summary))
    print(f"wall time {wall:.0f}s")


if __name__ == "__main__":
    main()
