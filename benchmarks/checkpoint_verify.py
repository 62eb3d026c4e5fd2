"""Cost of checking a checkpoint against its manifest on resume (issue 17), on the 150m preset.

Writes a checkpoint the way `checkpoint.save` lays it out (model.safetensors, AdamW state in
optimizer.pt, RNG, state.json, manifest.json), then times, `--repeats` times each, what a resume
reads (weights and optimizer state loaded into a model and an AdamW) with and without
`manifest.verify` first. The page cache is warm for both (a resume right after a save or a
requeue on the same node); a cold read costs the same disk pass once either way.

    PYTHONPATH=. python -m benchmarks.checkpoint_verify [--preset 150m] [--repeats 5]

Prints a table and appends rows to benchmarks/results/checkpoint_verify.csv.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from benchmarks._record import ROOT, append_csv, git_commit
from llmcore.model.presets import get_preset
from llmcore.model.transformer import Transformer
from llmcore.train import checkpoint, manifest, rng_state


def write_checkpoint(ckpt: Path, model: Transformer) -> torch.optim.Optimizer:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    opt.step()  # fills exp_avg / exp_avg_sq: the optimizer state a real resume reads
    ckpt.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(ckpt / "model.safetensors"))
    torch.save(opt.state_dict(), ckpt / "optimizer.pt")
    torch.save(rng_state.capture(), ckpt / "rng-rank0.pt")
    (ckpt / "state.json").write_text(json.dumps({"step": 1, "world_size": 1}))
    manifest.write(ckpt)
    return opt


def load(ckpt: Path, model: Transformer, opt: torch.optim.Optimizer) -> None:
    weights = checkpoint.load_weights(ckpt)
    model.load_state_dict({k[len("model."):]: v for k, v in weights.items()})
    opt.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=True))
    checkpoint.load_rng(ckpt, 0, 1)


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="150m")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--dir", default=None, help="where to write the checkpoint (default: a temp folder)")
    a = ap.parse_args()
    torch.manual_seed(0)
    model = Transformer(get_preset(a.preset))
    with tempfile.TemporaryDirectory(dir=a.dir) as tmp:
        ckpt = Path(tmp) / "ckpt-000001"
        opt = write_checkpoint(ckpt, model)
        t_write = timed(lambda: manifest.write(ckpt))  # hashes + fsyncs, as a save does
        size = sum(p.stat().st_size for p in ckpt.rglob("*") if p.is_file())
        load(ckpt, model, opt)  # warm the page cache and the allocator
        plain, verify, overlapped = [], [], []

        def resume_load():  # what the trainer does: hash on a thread while our own files load
            pending = manifest.verify_in_background(ckpt)
            load(ckpt, model, opt)
            assert pending.result()

        for _ in range(a.repeats):
            plain.append(timed(lambda: load(ckpt, model, opt)))
            verify.append(timed(lambda: manifest.verify(ckpt)))
            overlapped.append(timed(resume_load))
    load_s, verify_s = statistics.median(plain), statistics.median(verify)
    both_s = statistics.median(overlapped)
    row = {"preset": a.preset, "params": sum(p.numel() for p in model.parameters()), "ckpt_bytes": size,
           "device": "cpu", "cpus": os.cpu_count(), "threads": manifest._threads(), "repeats": a.repeats,
           "load_s": round(load_s, 4), "verify_s": round(verify_s, 4),
           "verify_pct_of_load": round(100 * verify_s / load_s, 1), "manifest_write_s": round(t_write, 4),
           "overlapped_s": round(both_s, 4), "overlapped_extra_pct": round(100 * (both_s - load_s) / load_s, 1),
           "commit": git_commit()}
    print("| preset | checkpoint | CPUs (hash threads) | load | verify alone | verify / load | "
          "load + verify overlapped (resume) | resume extra | manifest at save |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    print(f"| {a.preset} | {size / 1e9:.2f} GB | {row['cpus']} ({row['threads']}) | {load_s:.3f} s | "
          f"{verify_s:.3f} s | {row['verify_pct_of_load']}% | {both_s:.3f} s | {row['overlapped_extra_pct']}% | "
          f"{t_write:.3f} s |")
    print(f"(median of {a.repeats}; load min/max {min(plain):.3f}/{max(plain):.3f} s, "
          f"verify min/max {min(verify):.3f}/{max(verify):.3f} s)")
    append_csv(ROOT / "benchmarks" / "results" / "checkpoint_verify_overlap.csv", [row])


if __name__ == "__main__":
    main()
