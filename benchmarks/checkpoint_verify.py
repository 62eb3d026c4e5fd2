"""Cost of checking a checkpoint against its manifest on resume (issue 17), on the 150m preset.

Writes a checkpoint the way `checkpoint.save` lays it out (model.safetensors, AdamW state in
optimizer.pt, RNG, state.json, manifest.json), then times, `--repeats` times each, what a resume
reads (weights and optimizer state loaded into a model and an AdamW) alone, and with the
manifest check running on a thread beside it as the trainer does: ours (xxh3_128 chunks, the
v2 manifest) and the baseline (sha256 chunks, the same files with a v1 manifest), each with
1 hash thread and with `manifest._threads()`. The page cache is warm for all (a resume right
after a save or a requeue on the same node); a cold read costs the same disk pass once either way.

    PYTHONPATH=. python -m benchmarks.checkpoint_verify [--preset 150m] [--repeats 5]

Prints a table and appends rows to benchmarks/results/checkpoint_verify_xxh3.csv.
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


def v1_manifest(body: dict) -> dict:
    """The same manifest as an older llmcore wrote it: sha256 chunks only (the baseline)."""
    return {"format": manifest.FORMAT_V1, "chunk_bytes": body["chunk_bytes"],
            "files": {n: {"bytes": e["bytes"], "sha256": e["sha256"]} for n, e in body["files"].items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="150m")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--dir", default=None, help="where to write the checkpoint (default: a temp folder)")
    a = ap.parse_args()
    torch.manual_seed(0)
    model = Transformer(get_preset(a.preset))
    many = manifest._threads()
    rows = []
    with tempfile.TemporaryDirectory(dir=a.dir) as tmp:
        ckpt = Path(tmp) / "ckpt-000001"
        opt = write_checkpoint(ckpt, model)
        t_write = timed(lambda: manifest.write(ckpt))  # both digests + fsyncs, as a save does
        v2 = (ckpt / manifest.MANIFEST).read_text()
        v1 = json.dumps(v1_manifest(json.loads(v2)))
        size = sum(p.stat().st_size for p in ckpt.rglob("*") if p.is_file())
        load(ckpt, model, opt)  # warm the page cache and the allocator
        plain = [timed(lambda: load(ckpt, model, opt)) for _ in range(a.repeats)]

        def resume_load(threads):  # what the trainer does: hash on a thread while our own files load
            pending = manifest.verify_in_background(ckpt, threads=threads)
            load(ckpt, model, opt)
            assert pending.result()

        for digest, text in (("xxh3_128 (v2, ours)", v2), ("sha256 (v1, baseline)", v1)):
            (ckpt / manifest.MANIFEST).write_text(text)
            for threads in sorted({1, many}):
                alone, overlapped = [], []
                for _ in range(a.repeats):  # interleaved with plain loads: the shared machine drifts
                    plain.append(timed(lambda: load(ckpt, model, opt)))
                    alone.append(timed(lambda t=threads: manifest.verify(ckpt, threads=t)))
                    overlapped.append(timed(lambda t=threads: resume_load(t)))
                rows.append({"digest": digest, "threads": threads, "verify_s": statistics.median(alone),
                             "resume_s": statistics.median(overlapped),
                             "resume_min_max": f"{min(overlapped):.3f}/{max(overlapped):.3f}"})
        (ckpt / manifest.MANIFEST).write_text(v2)
        t_full = timed(lambda: manifest.verify(ckpt, full=True))
    load_s = statistics.median(plain)
    load_avg = os.getloadavg()[0]  # other jobs on the machine take the core the hash thread overlaps on
    print(f"{a.preset}: checkpoint {size / 1e9:.2f} GB, {os.cpu_count()} CPUs, median of {a.repeats} "
          f"(load: of {len(plain)}, min/max {min(plain):.3f}/{max(plain):.3f} s); load alone {load_s:.3f} s; "
          f"manifest at save (both digests + fsync) {t_write:.3f} s; full verify (both digests) {t_full:.3f} s; "
          f"1-min load average at the end {load_avg:.2f}")
    print("| digest | hash threads | verify alone | verify / load | load + verify overlapped (resume) | "
          "resume min/max | resume extra over load |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    out = []
    for r in rows:
        extra = 100 * (r["resume_s"] - load_s) / load_s
        print(f"| {r['digest']} | {r['threads']} | {r['verify_s']:.3f} s | {100 * r['verify_s'] / load_s:.0f}% | "
              f"{r['resume_s']:.3f} s | {r['resume_min_max']} s | {extra:+.1f}% |")
        out.append({"preset": a.preset, "params": sum(p.numel() for p in model.parameters()), "ckpt_bytes": size,
                    "device": "cpu", "cpus": os.cpu_count(), "digest": r["digest"], "threads": r["threads"],
                    "repeats": a.repeats, "load_s": round(load_s, 4), "verify_s": round(r["verify_s"], 4),
                    "resume_s": round(r["resume_s"], 4), "resume_extra_pct": round(extra, 1),
                    "manifest_write_s": round(t_write, 4), "full_verify_s": round(t_full, 4),
                    "load_avg_1min": round(load_avg, 2),
                    "commit": git_commit()})
    append_csv(ROOT / "benchmarks" / "results" / "checkpoint_verify_xxh3.csv", out)


if __name__ == "__main__":
    main()
