"""SAM vs AdamW pretraining, then forgetting: fine-tuning on a second domain and 4-bit weights.

Small-scale check of sharpness-aware pretraining (METHODS.md "Sharpness-aware pretraining";
Foret et al. arXiv 2010.01412, Watts, Li, Goyal et al. 2026): a SAM-pretrained model should
lose less of its pretraining-domain loss when fine-tuned on another domain (at a matched
fine-tune loss), under 4-bit round-to-nearest weights and under fixed Gaussian weight noise.

Design (choices the paper leaves open, made here):
- domain A is the bundled Jargon File, domain B generated ship's-log records (below); one BPE
  tokenizer (vocab 512) over both;
- a budget where forgetting is large and measurable: a 2-layer d_model-64 model trained for
  `--pretrain-steps` (3000 x 16 x 64 tokens = 3.3 epochs of A by default), where 4-bit RTN
  costs ~1% of the A loss, far above the seed-to-seed spread of that cost;
- tuned as the paper tunes SAM, with the same budget for AdamW: on seed 0, AdamW sweeps
  the peak LR over `--adamw-lrs` (4 runs) and SAM sweeps peak LR x rho over `--sam-lrs` x
  `--rhos` (4 runs); each optimizer's configuration with the lowest A validation loss is
  then trained on the other seeds (same init, same tokens in the same order per seed, WSD
  schedule with a 20% anneal to 0.1x for both);
- measurements with the `recipes.forgetting` harness: each checkpoint fine-tuned on B at
  `--finetune-lrs` (frontier of (B loss, A loss) over every evaluation of every run; the A
  rise at matched B losses), 4-bit RTN per output channel and per group of 32 (block matrices),
  and `tensor_rms` noise sigma 0.1 (mean over 3 noise seeds), all on the same A windows;
- every contrast is SAM minus AdamW per seed with a 95% t interval
  (`benchmarks.experiments.stats`): the seeds share init and data order.

    nice -n 5 python -m benchmarks.experiments.sam_forgetting              # the CPU record
    python -m benchmarks.experiments.sam_forgetting --scale gpu            # larger, one H100/H200
    python -m benchmarks.experiments.sam_forgetting --quick                # plumbing check
    python -m benchmarks.experiments.sam_forgetting --report-only          # tables again

Training runs are `<out>/pipeline.yaml`, trained by `llmcore pipeline --config` (twice: the
tuning runs, then the file grown by the chosen configurations' seeds and the fine-tunes; a
rerun skips what finished). Writes <out>/results.json, benchmarks/results/sam_forgetting.{json,png}
and prints the markdown tables that go into benchmarks/EXPERIMENTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import time
from pathlib import Path

import torch

from benchmarks.experiments.stats import fmt_ci, mean_std, paired

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"
CORPUS_A = ROOT / "llmcore" / "data" / "corpus" / "jargon-4.4.7.txt.gz"
SCALES = {
    "cpu": {"d_model": 64, "layers": 2, "batch": 16, "seq_len": 64, "pretrain_steps": 3000, "threads": 1},
    # domain A is only 0.93M tokens: a larger model, not many more epochs (6.6 here)
    "gpu": {"d_model": 128, "layers": 4, "batch": 16, "seq_len": 128, "pretrain_steps": 3000, "threads": 8},
}
MATCHED_B = (2.5, 2.0, 1.5, 1.2)


def parse_args(argv=None) -> argparse.Namespace:
    from benchmarks.experiments.pipeline_file import parse_study, study_parser

    p = study_parser(__doc__.splitlines()[0], SCALES, "runs/sam_forgetting", "sam_forgetting")
    p.add_argument("--seeds", default="0,1,2,3,4,5", help="the first seed also carries the LR / rho sweeps")
    p.add_argument("--d-model", type=int)
    p.add_argument("--layers", type=int)
    p.add_argument("--batch", type=int)
    p.add_argument("--seq-len", type=int)
    p.add_argument("--pretrain-steps", type=int)
    p.add_argument("--adamw-lrs", default="2e-3,4e-3,8e-3,1.6e-2")
    p.add_argument("--sam-lrs", default="4e-3,8e-3")
    p.add_argument("--rhos", default="0.05,0.1")
    p.add_argument("--finetune-lrs", default="1e-3,3e-3,1e-2")
    p.add_argument("--finetune-steps", type=int, default=40)
    p.add_argument("--eval-every", type=int, default=8)
    p.add_argument("--noise-sigma", type=float, default=0.1)
    p.add_argument("--quick", action="store_true", help="a few steps of everything (plumbing check)")
    p.add_argument("--report-only", action="store_true", help="print the tables of <out>/results.json again")
    a = parse_study(p, SCALES, argv)
    if a.quick:
        a.seeds, a.pretrain_steps, a.finetune_steps, a.eval_every = "0,1", 6, 4, 2
        a.adamw_lrs, a.sam_lrs, a.rhos, a.record = "2e-3,4e-3", "4e-3", "0.05,0.1", ""
        a.out = a.out + "_quick"
    return a


def model_overrides(a) -> list[str]:
    return ["model.preset=tiny", f"model.d_model={a.d_model}", f"model.n_layers={a.layers}", "model.n_heads=4",
            "model.n_kv_heads=2", f"model.ffn_hidden={int(2.75 * a.d_model)}", f"model.max_seq_len={a.seq_len}"]


# --- domain B: generated ship's-log records -----------------------------------------------------

_SHIPS = ["Orion", "Kestrel", "Marlin", "Valkyrie", "Osprey", "Halcyon", "Tern", "Aurora", "Petrel", "Drake"]
_PORTS = ["Valen", "Kor", "Ashby", "Merrow", "Tillan", "Brisk", "Oldhaven", "Sarn", "Quay", "Lorne"]
_CARGO = ["copper", "grain", "timber", "salt", "wool", "coal", "tin", "rope", "oil", "spice"]
_WIND = ["north", "north-east", "east", "south-east", "south", "south-west", "west", "north-west"]
_SEA = ["calm", "slight", "moderate", "rough", "heavy"]


def make_domain_b(path: Path, n_docs: int = 2500, seed: int = 0) -> Path:
    """Log entries, one document each: fixed phrasing, random ships, ports, cargo and numbers."""
    rng = random.Random(seed)
    docs = []
    for _ in range(n_docs):
        ship, port, dest = rng.choice(_SHIPS), rng.choice(_PORTS), rng.choice(_PORTS)
        lines = [(f"Day {rng.randint(1, 365)}. The {ship} left {port} at {rng.randint(0, 23):02d}:"
                 f"{rng.choice([0, 15, 30, 45]):02d} bound for {dest} with {rng.randint(10, 900)} tons of "
                 f"{rng.choice(_CARGO)}.")]
        for _ in range(rng.randint(1, 4)):
            lines.append(f"Wind {rng.choice(_WIND)} at {rng.randint(2, 40)} knots, sea {rng.choice(_SEA)}, "
                         f"course {rng.randint(0, 359):03d}, speed {rng.randint(3, 18)} knots.")
        lines.append(f"Logged by the {rng.choice(['master', 'mate', 'bosun'])}.")
        docs.append(" ".join(lines))
    path.write_text("\n\n".join(docs) + "\n")
    return path


def build_data(out: Path) -> tuple[str, str]:
    """Tokenizer (vocab 512) over both domains, then prepared folders A and B (cached)."""
    from llmcore.data.prepare import prepare
    from llmcore.recipe.registry import all_special_tokens
    from llmcore.tokenizer import Tokenizer

    data_a, data_b = out / "data_a", out / "data_b"
    if (data_a / "manifest.json").exists() and (data_b / "manifest.json").exists():
        return str(data_a), str(data_b)
    out.mkdir(parents=True, exist_ok=True)
    text_b = make_domain_b(out / "domain_b.txt")
    tok = Tokenizer.train([str(CORPUS_A), str(text_b)], str(out / "tok"), 512,
                          special_tokens=all_special_tokens(), overwrite=True, progress=False)
    for src, dst in ((CORPUS_A, data_a), (text_b, data_b)):
        prepare([str(src)], tok, str(dst), val_fraction=0.05, overwrite=True, progress=False)
        shutil.copytree(out / "tok", dst / "tokenizer")  # where `llmcore data prepare` puts it
    return str(data_a), str(data_b)


# --- runs --------------------------------------------------------------------------------------

def pretrain_stage(name: str, kind: str, data_a: str, a, *, seeds: list[int], lrs: list[float],
                   rhos: list[float] = ()):
    """Pretraining on A: a grid over train.seed x optim.lr (x sam.rho for SAM)."""
    from llmcore.pipeline.spec import Stage, Sweep

    grid = [Sweep("train.seed", seeds), Sweep("optim.lr", lrs)] + ([Sweep("sam.rho", list(rhos))] if kind == "sam" else [])
    return Stage(name=name, grid=grid, overrides=[
        *model_overrides(a), f"data.path={data_a}", f"data.seq_len={a.seq_len}",
        f"train.max_steps={a.pretrain_steps}", f"train.micro_batch_size={a.batch}",
        f"train.global_batch_size={a.batch}", "train.progress=false", "train.log_every=250",
        "train.eval_batches=8", "train.keep_last=1", "schedule.kind=wsd", "schedule.anneal_fraction=0.2",
        f"schedule.warmup_steps={max(1, a.pretrain_steps // 30)}", *(["recipes=[sam]"] if kind == "sam" else [])])


def tuning_pipeline(out: Path, data_a: str, seed0: int, a):
    from llmcore.pipeline.spec import Pipeline

    floats = lambda text: [float(x) for x in text.split(",")]
    return Pipeline(out_dir=str(out.resolve()), stages=[
        pretrain_stage("tune_adamw", "adamw", data_a, a, seeds=[seed0], lrs=floats(a.adamw_lrs)),
        pretrain_stage("tune_sam", "sam", data_a, a, seeds=[seed0], lrs=floats(a.sam_lrs), rhos=floats(a.rhos))])


def choose(rows: list[dict]) -> dict:
    """Each optimizer's tuning run with the lowest A validation loss: kind -> its params."""
    out = {}
    for kind in ("adamw", "sam"):
        runs = [r for r in rows if r["stage"] == f"tune_{kind}"]
        out[kind] = min(runs, key=lambda r: r["val_loss"])["params"]
    return out


def full_pipeline(out: Path, data_a: str, data_b: str, seeds: list[int], chosen: dict, a):
    """The tuning stages, the chosen configurations on the other seeds, and per seed and
    optimizer a fine-tune sweep on B from that seed's pretrained checkpoint."""
    from llmcore.pipeline.spec import variant_label
    from recipes.forgetting import finetune_stage

    spec = tuning_pipeline(out, data_a, seeds[0], a)
    rest = seeds[1:]
    for kind in ("adamw", "sam"):
        p = chosen[kind]
        if rest:
            spec.stages.append(pretrain_stage(f"pre_{kind}", kind, data_a, a, seeds=rest, lrs=[p["optim.lr"]],
                                              rhos=[p["sam.rho"]] if kind == "sam" else ()))
    for seed in seeds:
        for kind in ("adamw", "sam"):
            p = {**chosen[kind], "train.seed": seed}
            source = f"tune_{kind}[{variant_label(p)}]" if seed == seeds[0] else f"pre_{kind}[{variant_label(p)}]"
            spec.stages.append(finetune_stage(
                f"ft_{kind}_s{seed}", data_b, data_a, [float(x) for x in a.finetune_lrs.split(",")],
                a.finetune_steps, a.eval_every, init_from=source, eval_batches=8,
                overrides=[*model_overrides(a), f"data.seq_len={a.seq_len}", f"train.micro_batch_size={a.batch}",
                           f"train.global_batch_size={a.batch}", "schedule.kind=constant", "schedule.warmup_steps=4"]))
    return spec


def weight_edits(ckpt: str, data_a: str, a) -> dict:
    from llmcore import load
    from llmcore.eval.loss import validation_loss
    from llmcore.eval.perturb import noised
    from llmcore.eval.sensitivity import loss_increase
    from recipes.forgetting import quantized

    model, _ = load(ckpt, device="cpu")

    def loss_a(m) -> float:  # the same 16 x batch windows of A's validation split every time
        return validation_loss(m, data_a, a.seq_len, a.batch, max_batches=16)["loss"]

    out = {"val_a": loss_a(model)}
    out["rtn4_channel"] = loss_increase(model, loss_a, quantized(model, 4, group_size=0))["increase"]
    out["rtn4_g32"] = loss_increase(model, loss_a, quantized(model, 4, group_size=32))["increase"]
    out["noise"] = statistics.mean(loss_increase(model, loss_a, noised(model, a.noise_sigma, seed=s))["increase"]
                                   for s in range(3))
    return out


def forgetting_at(runs: list[dict], target_b: float) -> float:
    from recipes.forgetting import frontier, pretrain_loss_at

    points = [(b, la) for r in runs for _, b, la in r["points"]]
    return pretrain_loss_at(frontier(points), target_b) - runs[0]["points"][0][2]


def _ms(xs: list[float], digits: int = 4) -> str:
    m, s = mean_std(xs)
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def main(argv=None) -> None:
    from benchmarks.experiments.pipeline_file import train_pipeline
    from llmcore.pipeline.spec import variant_label
    from recipes.forgetting import forgetting_runs

    a = parse_args(argv)
    if a.report_only:
        print_tables(json.loads((Path(a.out) / "results.json").read_text()))
        return
    torch.set_num_threads(a.threads)
    os.environ.setdefault("LLMCORE_KERNELS", "torch")
    out = Path(a.out)
    t0 = time.time()
    data_a, data_b = build_data(out)
    seeds = [int(s) for s in a.seeds.split(",")]
    path = out / "pipeline.yaml"
    rows = train_pipeline(tuning_pipeline(out, data_a, seeds[0], a), path, a.threads, a.jobs)
    chosen = choose(rows)
    print(f"chosen: {chosen}", flush=True)
    rows = train_pipeline(full_pipeline(out, data_a, data_b, seeds, chosen, a), path, a.threads, a.jobs)
    train_s = time.time() - t0
    results: dict = {"args": vars(a), "seeds": seeds, "chosen": chosen, "tuning": [], "runs": {}}
    edits = {}  # checkpoint -> its weight-edit rises: a chosen tuning run is measured once
    for r in rows:
        if r["stage"].startswith("tune_"):
            edits[r["checkpoint"]] = weight_edits(r["checkpoint"], data_a, a)
            rec = {"kind": r["stage"][5:], "params": r["params"], "val_a_train_eval": r["val_loss"],
                   **edits[r["checkpoint"]]}
            results["tuning"].append(rec)
            print(f"tuning {rec['kind']} {variant_label(r['params'])}: val_a {rec['val_a']:.4f} "
                  f"rtn4 +{rec['rtn4_channel']:.4f} noise +{rec['noise']:.4f}", flush=True)
    for seed in seeds:
        for kind in ("adamw", "sam"):
            want = {**chosen[kind], "train.seed": seed}
            (pre,) = [r for r in rows if r["stage"] in (f"tune_{kind}", f"pre_{kind}") and r["params"] == want]
            rec = dict(edits.get(pre["checkpoint"]) or weight_edits(pre["checkpoint"], data_a, a))
            rec["finetune"] = forgetting_runs([r for r in rows if r["stage"] == f"ft_{kind}_s{seed}"])
            rec["pretrain_s"] = pre["train_s"]
            results["runs"][f"{kind}_s{seed}"] = rec
            print(f"[{time.time() - t0:6.0f}s] {kind} seed {seed}: val_a {rec['val_a']:.4f} "
                  f"rtn4 +{rec['rtn4_channel']:.4f} noise +{rec['noise']:.4f} "
                  f"(pretrain {rec['pretrain_s']:.0f}s)", flush=True)
    results["wall_s"], results["train_wall_s"] = round(time.time() - t0, 1), round(train_s, 1)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    if a.record:
        shutil.copy(out / "results.json", RESULTS / f"{a.record}.json")
        print("wrote", plot(results, RESULTS / f"{a.record}.png"))
    print_tables(results)


def contrasts(results: dict) -> dict:
    """SAM - AdamW per seed for each rise, paired, with the fine-tune target every checkpoint reached."""
    runs, seeds = results["runs"], results["seeds"]
    target = max(min(b for r in rec["finetune"] for _, b, _ in r["points"]) for rec in runs.values())
    out = {"target_b": target}
    measures = {f"ft_at_{b:.3f}": (lambda rec, b=b: forgetting_at(rec["finetune"], b)) for b in (*MATCHED_B, target)
                if b >= target}
    measures |= {k: (lambda rec, k=k: rec[k]) for k in ("val_a", "rtn4_channel", "rtn4_g32", "noise")}
    for name, fn in measures.items():
        ad = [fn(runs[f"adamw_s{s}"]) for s in seeds]
        sm = [fn(runs[f"sam_s{s}"]) for s in seeds]
        out[name] = {"adamw": ad, "sam": sm, "diff": paired(ad, sm), "ratio": [y / x for x, y in zip(ad, sm)]}
    return out


def print_tables(results: dict) -> None:
    c = contrasts(results)
    seeds = results["seeds"]
    print(f"\nseeds {seeds}; chosen {results['chosen']}; fine-tune target (B val loss every checkpoint "
          f"reached) {c['target_b']:.4f}; wall {results['wall_s']:.0f} s\n")
    print("| measure | AdamW | SAM | SAM − AdamW, 95% CI | SAM / AdamW per seed |")
    print("| --- | --- | --- | --- | --- |")
    names = {"val_a": "A val loss", "rtn4_channel": "A rise, 4-bit RTN per channel", "rtn4_g32": "A rise, 4-bit RTN g32",
             "noise": f"A rise, noise sigma {results['args']['noise_sigma']}"}
    for key, row in c.items():
        if key == "target_b":
            continue
        label = names.get(key, f"A rise at matched B loss {key[6:]}")
        print(f"| {label} | {_ms(row['adamw'])} | {_ms(row['sam'])} | {fmt_ci(row['diff'], 1, 4)} | "
              f"{', '.join(f'{x:.3f}' for x in row['ratio'])} |")
    if results.get("tuning"):
        print("\nTuning runs (seed 0): A val loss and its rises\n")
        print("| optimizer | peak LR | rho | A val loss | RTN per channel | RTN g32 | noise |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for t in results["tuning"]:
            print(f"| {t['kind']} | {t['params']['optim.lr']:g} | {t['params'].get('sam.rho', '-')} | {t['val_a']:.4f} | "
                  f"{t['rtn4_channel']:.4f} | {t['rtn4_g32']:.4f} | {t['noise']:.4f} |")


def plot(results: dict, path: Path) -> Path:
    """Left: the fine-tune frontier, A loss vs B loss along every fine-tune run (a line per
    optimizer x seed x LR). Right: each rise's SAM - AdamW difference per seed (dots) and its
    mean with the 95% interval."""
    from llmcore.plots import pyplot

    plt = pyplot("the SAM forgetting plot")
    c = contrasts(results)
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.4))
    colours = {"adamw": "#d95f02", "sam": "#1b9e77"}
    for name, run in sorted(results["runs"].items()):
        kind = name.split("_")[0]
        for ft in run["finetune"]:
            ax.plot([p[1] for p in ft["points"]], [p[2] for p in ft["points"]], marker=".", lw=0.8, alpha=0.7,
                    color=colours[kind], label=kind.upper() if kind.upper() not in ax.get_legend_handles_labels()[1] else None)
    ax.invert_xaxis()
    ax.set_xlabel("fine-tune (B) validation loss  (training goes right)")
    ax.set_ylabel("pretraining (A) validation loss")
    ax.set_title(f"Forgetting along fine-tuning ({len(results['seeds'])} seeds x {len(run['finetune'])} LRs)", fontsize=10)
    ax.legend()
    keys = [k for k in c if k not in ("target_b", "val_a")]
    for i, k in enumerate(keys):
        d = c[k]["diff"]
        scale = max(abs(m) for m in c[k]["adamw"]) or 1.0  # relative to AdamW's rise: one axis for all
        bx.scatter([i] * len(d["diffs"]), [x / scale for x in d["diffs"]], color="black", s=14, zorder=3)
        bx.errorbar(i, d["mean"] / scale, yerr=[[(d["mean"] - d["lo"]) / scale], [(d["hi"] - d["mean"]) / scale]],
                    fmt="o", color="#1b9e77", capsize=4)
    bx.axhline(0, color="grey", lw=1)
    bx.set_xticks(range(len(keys)), [k.replace("ft_at_", "FT @B ").replace("rtn4_", "RTN4 ") for k in keys],
                  rotation=30, fontsize=8)
    bx.set_ylabel("(SAM − AdamW) rise / AdamW's largest rise")
    bx.set_title("Paired difference per seed (dots), mean and 95% CI", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


if __name__ == "__main__":
    main()
