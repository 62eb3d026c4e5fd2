"""SAM vs AdamW pretraining, then forgetting: fine-tuning on a second domain and 4-bit weights.

Small-scale check of sharpness-aware pretraining (METHODS.md "Sharpness-aware pretraining";
Foret et al. arXiv 2010.01412, Watts, Li, Goyal et al. 2026). Per seed, one small model is
pretrained on domain A (the bundled Jargon File) with AdamW and once more with SAM
(`recipes: [sam]`, rho 0.05, every step) — same init, same tokens in the same order, same
WSD schedule; SAM only changes the gradient. Each checkpoint is then measured with the
`recipes.forgetting` harness (its noise is `llmcore.eval.perturb`):

- fine-tuning forgetting: fine-tuned on domain B (generated ship's-log records, below) at a
  sweep of learning rates; the frontier of (B validation loss, A validation loss) over every
  evaluation of every run gives the A loss kept at a given fine-tune loss. Reported: the rise
  of the A loss over the pretrained model's, at the lowest B loss every checkpoint reaches
  (one target for all seeds and both optimizers);
- 4-bit round-to-nearest, symmetric, per output channel and per group of 32 (block matrices;
  embeddings and norms kept): the rise of the A validation loss;
- Gaussian weight noise, law `tensor_rms` (W += sigma * rms(W) * xi, sigma 0.1; block
  matrices), mean over 3 noise seeds: the rise of the A validation loss.

    nice -n 5 python -m benchmarks.experiments.sam_forgetting              # full run, 2 seeds
    python -m benchmarks.experiments.sam_forgetting --quick                # plumbing check
    python -m benchmarks.experiments.sam_forgetting --report-only          # tables again

Writes <out>/results.json and prints the markdown tables that go into benchmarks/EXPERIMENTS.md.
Every training run is one pipeline (`llmcore.pipeline`): a rerun skips finished runs, resumes
an interrupted one, and <out>/summary.csv has every run's final losses.
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

ROOT = Path(__file__).resolve().parents[2]
CORPUS_A = ROOT / "llmcore" / "data" / "corpus" / "jargon-4.4.7.txt.gz"
MODEL = ["model.preset=tiny", "model.d_model=64", "model.n_layers=2", "model.n_heads=4", "model.n_kv_heads=2",
         "model.ffn_hidden=176", "model.max_seq_len=64"]
SEQ_LEN, BATCH = 64, 16


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/sam_forgetting")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--pretrain-steps", type=int, default=240)
    p.add_argument("--lr", type=float, default=3e-3, help="pretraining peak learning rate (both optimizers)")
    p.add_argument("--rho", type=float, default=0.05)
    p.add_argument("--finetune-lrs", default="1e-3,3e-3,1e-2")
    p.add_argument("--finetune-steps", type=int, default=40)
    p.add_argument("--eval-every", type=int, default=8)
    p.add_argument("--noise-sigma", type=float, default=0.1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="a few steps of everything (plumbing check)")
    p.add_argument("--report-only", action="store_true", help="print the tables of <out>/results.json again")
    a = p.parse_args(argv)
    if a.quick:
        a.seeds, a.pretrain_steps, a.finetune_steps, a.eval_every = "0", 6, 4, 2
        a.out = a.out + "_quick"
    return a


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
        lines = [f"Day {rng.randint(1, 365)}. The {ship} left {port} at {rng.randint(0, 23):02d}:"
                 f"{rng.choice([0, 15, 30, 45]):02d} bound for {dest} with {rng.randint(10, 900)} tons of "
                 f"{rng.choice(_CARGO)}."]
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

def study_pipeline(out: Path, data_a: str, data_b: str, seeds: list[int], a):
    """Per seed and optimizer: pretraining on A (`pre_<kind>_s<seed>`), then its fine-tune sweep
    on B (`ft_<kind>_s<seed>`, one run per learning rate, init_from the pretraining stage)."""
    from llmcore.pipeline.spec import Pipeline, Stage
    from recipes.forgetting import finetune_stage

    stages = []
    for seed in seeds:
        for kind in ("adamw", "sam"):
            sam = ["recipes=[sam]", f"sam.rho={a.rho}"] if kind == "sam" else []
            stages.append(Stage(name=f"pre_{kind}_s{seed}", overrides=[
                *MODEL, f"data.path={data_a}", f"data.seq_len={SEQ_LEN}", f"train.seed={seed}",
                f"train.max_steps={a.pretrain_steps}", f"train.micro_batch_size={BATCH}",
                f"train.global_batch_size={BATCH}", "train.progress=false", "train.log_every=20",
                "train.eval_batches=8", "train.keep_last=1", f"optim.lr={a.lr}", "schedule.kind=wsd",
                "schedule.anneal_fraction=0.2", f"schedule.warmup_steps={max(1, a.pretrain_steps // 12)}", *sam]))
            stages.append(finetune_stage(
                f"ft_{kind}_s{seed}", data_b, data_a, [float(x) for x in a.finetune_lrs.split(",")],
                a.finetune_steps, a.eval_every, init_from=f"pre_{kind}_s{seed}", eval_batches=8,
                overrides=[*MODEL, f"data.seq_len={SEQ_LEN}", f"train.micro_batch_size={BATCH}",
                           f"train.global_batch_size={BATCH}", "schedule.kind=constant", "schedule.warmup_steps=4"]))
    return Pipeline(out_dir=str(out), stages=stages)


def weight_edits(ckpt: str, data_a: str, a) -> dict:
    from llmcore import load
    from llmcore.eval.loss import validation_loss
    from llmcore.eval.perturb import noised
    from llmcore.eval.sensitivity import loss_increase
    from recipes.forgetting import quantized

    model, _ = load(ckpt, device="cpu")

    def loss_a(m) -> float:  # the same 16 x 16 windows of A's validation split every time
        return validation_loss(m, data_a, SEQ_LEN, BATCH, max_batches=16)["loss"]

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


def _ms(xs: list[float]) -> str:
    if len(xs) < 2:
        return f"{xs[0]:.4f}"
    return f"{statistics.mean(xs):.4f} ± {statistics.stdev(xs):.4f}"


def main(argv=None) -> None:
    from llmcore.pipeline.run import run_pipeline
    from recipes.forgetting import forgetting_runs

    a = parse_args(argv)
    if a.report_only:
        results = json.loads((Path(a.out) / "results.json").read_text())
        print_tables(results, [int(s) for s in results["args"]["seeds"].split(",")])
        return
    torch.set_num_threads(a.threads)
    os.environ.setdefault("LLMCORE_KERNELS", "torch")
    out = Path(a.out)
    t0 = time.time()
    data_a, data_b = build_data(out)
    seeds = [int(s) for s in a.seeds.split(",")]
    # every training run is one pipeline: a rerun skips what finished and resumes what did not
    rows = run_pipeline(study_pipeline(out, data_a, data_b, seeds, a), print_summary=False)
    if rows[-1]["status"] == "stopped":
        print(f"stopped by a signal in {rows[-1]['out_dir']}: run again to resume")
        return
    results: dict = {"args": vars(a), "runs": {}}
    for seed in seeds:
        for kind in ("adamw", "sam"):
            (pre,) = [r for r in rows if r["stage"] == f"pre_{kind}_s{seed}"]
            rec = weight_edits(pre["out_dir"], data_a, a)
            rec["finetune"] = forgetting_runs([r for r in rows if r["stage"] == f"ft_{kind}_s{seed}"])
            rec["pretrain_s"] = pre["train_s"]
            results["runs"][f"{kind}_s{seed}"] = rec
            print(f"[{time.time() - t0:6.0f}s] {kind} seed {seed}: val_a {rec['val_a']:.4f} "
                  f"rtn4 +{rec['rtn4_channel']:.4f} noise +{rec['noise']:.4f} "
                  f"(pretrain {rec['pretrain_s']:.0f}s)", flush=True)
    results["wall_s"] = time.time() - t0
    (out / "results.json").write_text(json.dumps(results, indent=1))
    print_tables(results, seeds)


def print_tables(results: dict, seeds: list[int]) -> None:
    runs = results["runs"]
    # one fine-tune target for the main table: the lowest B loss that every checkpoint reached
    target = max(min(b for r in rec["finetune"] for _, b, _ in r["points"]) for rec in runs.values())
    for rec in runs.values():
        rec["forgetting_at_target"] = forgetting_at(rec["finetune"], target)

    def col(kind, key):
        return [runs[f"{kind}_s{s}"][key] for s in seeds]

    print(f"\nseeds {seeds}; fine-tune target (B val loss reached by every checkpoint): "
          f"{target:.4f}; wall {results['wall_s']:.0f} s\n")
    print("| pretraining | A val loss | A rise at matched B loss | A rise, 4-bit RTN per-channel "
          "| A rise, 4-bit RTN g32 | A rise, noise sigma 0.1 |")
    print("| --- | --- | --- | --- | --- | --- |")
    for kind in ("adamw", "sam"):
        print(f"| {kind} | {_ms(col(kind, 'val_a'))} | {_ms(col(kind, 'forgetting_at_target'))} | "
              f"{_ms(col(kind, 'rtn4_channel'))} | {_ms(col(kind, 'rtn4_g32'))} | {_ms(col(kind, 'noise'))} |")
    print("\nA rise at other matched B losses (frontier over all fine-tune runs of a checkpoint):\n")
    print("| B val loss | AdamW A rise | SAM A rise | SAM / AdamW |")
    print("| --- | --- | --- | --- |")
    for b in (2.5, 2.0, 1.5, 1.2, target):
        ad = [forgetting_at(runs[f"adamw_s{s}"]["finetune"], b) for s in seeds]
        sm = [forgetting_at(runs[f"sam_s{s}"]["finetune"], b) for s in seeds]
        print(f"| {b:.3f} | {_ms(ad)} | {_ms(sm)} | {_ms([x / y for x, y in zip(sm, ad)])} |")
    print("\nper seed (SAM / AdamW ratio of each rise):")
    for s in seeds:
        ad, sm = runs[f"adamw_s{s}"], runs[f"sam_s{s}"]
        print(f"  seed {s}: fine-tune {sm['forgetting_at_target'] / ad['forgetting_at_target']:.3f}, "
              f"rtn4 channel {sm['rtn4_channel'] / ad['rtn4_channel']:.3f}, "
              f"rtn4 g32 {sm['rtn4_g32'] / ad['rtn4_g32']:.3f}, noise {sm['noise'] / ad['noise']:.3f}")


if __name__ == "__main__":
    main()
