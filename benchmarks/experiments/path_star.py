"""Path-star graphs: NTP vs MTP vs FSP-BCE vs FSP-RevLM at one model size and token budget.

Small-scale check of FSP (arXiv 2510.14751, METHODS.md "Future summary prediction") on the
path-star task of Bachmann & Nagarajan (`recipes.tasks.path_star`): degree-2 graphs at two
path lengths, answer-only SFT (`data.format: sft`) of the same tiny model for the same steps
and rows in every cell; only the auxiliary loss differs. FSP-RevLM's reverse LM is trained
once per path length (seed 0) on the same rows read right to left (`data.reverse=true`), same
model and steps, then frozen. Scored by greedy exact match on held-out graphs, plus the
accuracy of the first choice (the node after the start) and the rate of valid walks.
The paper's pattern: NTP stays near 1/degree on the first choice; FSP-BCE solves the task.

Budget: the defaults (2 layers, d_model 128, 400 steps x 64 rows, path lengths 3 and 4) are
sized for the < 25 min CPU budget of 18 runs on a shared 2-core machine; the paper's lengths
(6-8) need far longer training than that (see benchmarks/EXPERIMENTS.md).

    nice -n 5 python -m benchmarks.experiments.path_star
    python -m benchmarks.experiments.path_star --seeds 0 --steps 50 --lengths 3   # a smoke run

Writes <out>/results.json (every run) and prints the markdown table that goes into
benchmarks/EXPERIMENTS.md. All runs are one pipeline (`llmcore.pipeline`): a rerun skips the
finished runs (only re-scoring them), resumes an interrupted one, and <out>/summary.csv has every
run's final losses.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

METHODS = {
    "ntp": [],
    "mtp": ["recipes=[future_summary]", "future_summary.kind=mtp"],
    "fsp_bce": ["recipes=[future_summary]", "future_summary.kind=fsp_bce"],
    "fsp_revlm": ["recipes=[future_summary]", "future_summary.kind=fsp_revlm"],
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/path_star")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--lengths", default="3,4", help="path lengths (nodes on the answer path)")
    p.add_argument("--degree", type=int, default=2)
    p.add_argument("--num-nodes", type=int, default=20, help="node names drawn from this many letters")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--train", type=int, default=30000, help="training graphs per path length")
    p.add_argument("--eval", type=int, default=500, help="test graphs per path length")
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--schedule", default="wsd", help="cosine | wsd (flat, then a 20%% linear anneal)")
    p.add_argument("--mtp-heads", type=int, default=2, help="MTP aux heads (x_(t+2..t+1+n))")
    p.add_argument("--tau", type=int, default=12, help="FSP-BCE horizon")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--table", help="only print the table of an existing results.json")
    return p.parse_args(argv)


def build_data(root: Path, a) -> dict:
    """Per path length: train/val/test jsonl; one tokenizer for all (one piece per character)."""
    from recipes.tasks import path_star as ps

    tok = ps.train_tokenizer(str(root / "tokenizer"))
    data = {"tokenizer": str(root / "tokenizer"), "vocab": tok.vocab_size, "lengths": {}}
    for length in a.lengths:
        d = root / f"L{length}"
        test = ps.problems(a.eval, 1, a.degree, length, a.num_nodes)
        val = ps.problems(200, 2, a.degree, length, a.num_nodes, exclude={r["prompt"] for r in test})
        held = {r["prompt"] for r in test + val}
        train = ps.problems(a.train, 3, a.degree, length, a.num_nodes, exclude=held)
        longest = max(len(r["prompt"]) + len(r["answer"]) for r in train + test) + 1  # + eos
        data["lengths"][length] = {
            "train": ps.write_jsonl(d / "train.jsonl", train), "val": ps.write_jsonl(d / "val.jsonl", val),
            "test": ps.write_jsonl(d / "test.jsonl", test), "seq_len": int(-(-longest // 8) * 8)}
    return data


def overrides(data: dict, length: int, a) -> list[str]:
    d = data["lengths"][length]
    return [
        "data.format=sft", f"data.path={d['train']}", f"data.val_path={d['val']}",
        f"data.tokenizer={data['tokenizer']}", f"data.seq_len={d['seq_len']}",
        "model.preset=tiny", f"model.d_model={a.d_model}", f"model.n_layers={a.layers}",
        f"model.n_heads={a.heads}", f"model.n_kv_heads={a.heads}", f"model.ffn_hidden={int(2.75 * a.d_model)}",
        f"model.vocab_size={data['vocab']}", f"model.max_seq_len={d['seq_len']}",
        f"train.max_steps={a.steps}", f"train.global_batch_size={a.batch}", f"train.micro_batch_size={a.batch}",
        "train.progress=false", "train.log_every=50",
        "train.eval_batches=2", "train.keep_last=1", "train.precision=fp32",
        f"optim.lr={a.lr}", "optim.weight_decay=0.1", f"schedule.kind={a.schedule}",
        f"schedule.warmup_steps={max(1, a.steps // 20)}",
        f"future_summary.n_heads={a.mtp_heads}", f"future_summary.tau={a.tau}",
    ]


def study_pipeline(root: Path, data: dict, seeds: list[int], methods: list[str], a):
    """Per path length: the reverse LM (seed 0, when FSP-RevLM is studied), then one stage per
    method swept over the seeds; runs in `<out>/L<length>/<method>/train.seed=<seed>`.
    Returns (the pipeline, stage name -> (length, method))."""
    from llmcore.pipeline.spec import Pipeline, Stage, Sweep

    stages, cells = [], {}
    for length in a.lengths:
        revlm = f"L{length}-revlm"
        if "fsp_revlm" in methods:
            stages.append(Stage(name=revlm, out_dir=f"L{length}/revlm", overrides=_trim(
                overrides(data, length, a), "ntp") + ["train.seed=0", "data.reverse=true"]))
        for method in methods:
            name = f"L{length}-{method}"
            cells[name] = (length, method)
            stages.append(Stage(name=name, out_dir=f"L{length}/{method}", sweep=Sweep("train.seed", seeds),
                                overrides=_trim(overrides(data, length, a), method) + METHODS[method],
                                inputs={"future_summary.revlm_checkpoint": revlm} if method == "fsp_revlm" else {}))
    return Pipeline(out_dir=str(root), stages=stages), cells


def score(ckpt: str, test: str) -> dict:
    import llmcore
    from recipes.tasks import path_star as ps

    model, tok = llmcore.load(ckpt, device="cpu")
    return ps.score(model, tok, test)


def _trim(opts: list[str], method: str) -> list[str]:
    # future_summary.* keys are an error when the recipe is not listed
    return opts if method != "ntp" else [o for o in opts if not o.startswith("future_summary.")]


def table(results: list[dict], lengths: list[int], methods: list[str]) -> str:
    """Markdown: mean ± sample std over seeds, and the per-seed exact match."""
    lines = ["| path length | method | exact match | first choice | valid walk | exact match per seed |",
             "| --- | --- | --- | --- | --- | --- |"]
    for length in lengths:
        for m in methods:
            rs = sorted((r for r in results if r["length"] == length and r["method"] == m), key=lambda r: r["seed"])
            if not rs:
                continue

            def ms(key):
                v = np.array([r[key] for r in rs])
                return f"{v.mean():.3f} ± {v.std(ddof=1) if len(v) > 1 else 0.0:.3f}"
            per_seed = ", ".join(f"{r['accuracy']:.3f}" for r in rs)
            lines.append(f"| {length} | {m} | {ms('accuracy')} | {ms('first_step')} | {ms('valid_walk')} | "
                         f"{per_seed} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    import recipes  # noqa: F401  (registers the recipes without an installed entry point)
    from llmcore.pipeline.run import run_pipeline

    a = parse_args(argv)
    if a.table:
        saved = json.loads(Path(a.table).read_text())
        print(table(saved["results"], saved["args"]["lengths"], saved["args"]["methods"].split(",")))
        return
    a.lengths = [int(x) for x in a.lengths.split(",")]
    seeds = [int(s) for s in a.seeds.split(",")]
    methods = a.methods.split(",")
    torch.set_num_threads(a.threads)
    root = Path(a.out)
    t0 = time.time()
    data = build_data(root / "data", a)
    spec, cells = study_pipeline(root, data, seeds, methods, a)
    rows = run_pipeline(spec, print_summary=False)
    if rows[-1]["status"] == "stopped":
        print(f"stopped by a signal in {rows[-1]['out_dir']}: run again to resume")
        return
    results = []
    for fit in rows:
        if fit["stage"] not in cells:  # a reverse LM: FSP-RevLM's tool, not a result
            continue
        length, method = cells[fit["stage"]]
        t = time.time()
        res = score(fit["out_dir"], data["lengths"][length]["test"])
        row = {"length": length, "method": method, "seed": fit["params"]["train.seed"], **res,
               "val_loss": fit.get("val_loss"), "train_s": round(fit["train_s"] + time.time() - t, 1)}
        results.append(row)
        print(json.dumps(row), flush=True)
    (root / "results.json").write_text(json.dumps({"args": vars(a), "results": results}, indent=1))
    print(f"\ndegree {a.degree}, {a.train} training graphs, {a.steps} steps x {a.batch} rows, "
          f"d_model {a.d_model} x {a.layers} layers, seeds {seeds}; {time.time() - t0:.0f} s\n")
    print(table(results, a.lengths, methods))


if __name__ == "__main__":
    main()
