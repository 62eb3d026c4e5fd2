"""Gradient features for ModC's clustering: batched per-example gradients (one backward per
batch, `recipes.mode_conditioning.gradients.batched_gradients`) vs one backward per example
(`loop_gradients`), same model, data and run; throughput (examples/s) and peak memory.

Two stages are timed, each for both paths and alternated so both see the same machine:
- "gradients": the per-example gradients [B, P] of the parameter subset;
- "features": gradients plus the seeded Rademacher projection to D dims (the same batched
  projection for both paths: a loop path that projected one example at a time would
  regenerate the random matrix per example and look far worse than the backward loop itself).
Examples/s is the median over the timed repeats. Memory: CUDA, torch's peak allocated per path;
CPU, the peak resident-memory growth (sampled every ms) of a fresh child process running one
path after a one-example warm-up (the CPU allocator caches, so RSS is the honest measure there). Target: batched >= 10x the loop's examples/s.

    python -m benchmarks.modc_gradients                          # tiny preset, CPU-sized
    python -m benchmarks.modc_gradients --preset demo --batch 64 --seq-len 256 --dim 4096

Prints a table and appends rows to a CSV (default benchmarks/results/modc_gradients.csv).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import subprocess
import sys
import time

import torch

from benchmarks._record import ROOT, append_csv, git_commit


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="tiny")
    p.add_argument("--layers", type=int, default=0, help="override n_layers (0: the preset's)")
    p.add_argument("--vocab", type=int, default=512)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--answer", type=int, default=96, help="answer tokens per example (they take the loss)")
    p.add_argument("--dim", type=int, default=4096)
    p.add_argument("--params", default="layers.-1.,norm.weight")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/modc_gradients.csv"))
    p.add_argument("--child", default="", help=argparse.SUPPRESS)  # internal: one path's peak memory
    return p.parse_args(argv)


def setup(a):
    from llmcore.model.presets import get_preset
    from llmcore.model.transformer import Transformer
    from recipes.mode_conditioning.gradients import select_parameters

    torch.manual_seed(0)
    args = get_preset(a.preset)
    args = dataclasses.replace(args, vocab_size=a.vocab, max_seq_len=a.seq_len,
                               n_layers=a.layers or args.n_layers)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = Transformer(args).to(device).eval()
    ids = torch.randint(0, a.vocab, (a.batch, a.seq_len), device=device)
    labels = ids.roll(-1, 1)
    labels[:, : a.seq_len - a.answer] = -100
    batch = {"input_ids": ids, "labels": labels, "doc_ids": torch.zeros_like(ids)}
    names = select_parameters(model, [p for p in a.params.split(",") if p])
    n_params = sum(p.numel() for n, p in model.named_parameters() if n in names)
    return model, batch, names, n_params, device


def run_path(path: str, model, batch, names, projection):
    from recipes.mode_conditioning.gradients import batched_gradients, loop_gradients

    fn = batched_gradients if path == "batched" else loop_gradients
    grads = fn(model, names, batch)
    return projection(grads) if projection is not None else grads


class PeakRSS:
    """Peak resident memory above the level at entry, sampled from /proc/self/statm every
    millisecond on a thread (the process high-water mark would also count import-time peaks)."""

    def __enter__(self):
        import os
        import threading

        self._page = os.sysconf("SC_PAGE_SIZE")
        self.base = self.peak = self._now()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _now(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self._page

    def _watch(self):
        while not self._stop.wait(0.001):
            self.peak = max(self.peak, self._now())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._now())

    @property
    def grew(self) -> int:
        return self.peak - self.base


def child(a) -> None:
    """One path once in a fresh process: print its peak RSS growth in bytes."""
    from recipes.mode_conditioning.projection import RademacherProjection

    torch.set_num_threads(a.threads)
    model, batch, names, _, _ = setup(a)
    path, stage = a.child.split(":")
    proj = RademacherProjection(a.dim, 0) if stage == "features" else None
    small = {k: v[:1] for k, v in batch.items()}
    run_path(path, model, small, names, proj)  # warm-up on one example
    with PeakRSS() as rss:
        run_path(path, model, batch, names, proj)
    print(rss.grew)


def peak_bytes(a, path: str, stage: str, device) -> int:
    if device.type == "cuda":
        from recipes.mode_conditioning.projection import RademacherProjection

        model, batch, names, _, _ = setup(a)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        run_path(path, model, batch, names, RademacherProjection(a.dim, 0) if stage == "features" else None)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    argv = [sys.executable, "-m", "benchmarks.modc_gradients", "--child", f"{path}:{stage}",
            *[x for k, v in vars(a).items() if k not in ("child", "out") for x in (f"--{k.replace('_', '-')}", str(v))]]
    out = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


def main(argv=None) -> None:
    a = parse_args(argv)
    if a.child:
        child(a)
        return
    from recipes.mode_conditioning.projection import RademacherProjection

    torch.set_num_threads(a.threads)
    model, batch, names, n_params, device = setup(a)
    proj = RademacherProjection(a.dim, 0)
    # the two paths agree before anything is timed ("no speedup on a red test")
    fast, slow = run_path("batched", model, batch, names, None), run_path("loop", model, batch, names, None)
    worst = max(float((fast[n] - slow[n]).abs().max() / slow[n].abs().max().clamp_min(1e-30)) for n in names)
    assert worst < 1e-4, f"batched and loop gradients differ by {worst:.2e} relative"
    times = {(p, s): [] for p in ("batched", "loop") for s in ("gradients", "features")}
    for _ in range(a.repeats):
        for stage in ("gradients", "features"):
            for path in ("batched", "loop"):
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t = time.perf_counter()
                run_path(path, model, batch, names, proj if stage == "features" else None)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                times[(path, stage)].append(time.perf_counter() - t)
    rows = []
    dev = torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or platform.machine()
    for stage in ("gradients", "features"):
        rate = {p: a.batch / statistics.median(times[(p, stage)]) for p in ("batched", "loop")}
        for path in ("batched", "loop"):
            rows.append({"commit": git_commit(), "device": dev, "threads": a.threads, "preset": a.preset,
                         "layers": a.layers or "", "batch": a.batch, "seq_len": a.seq_len, "answer": a.answer,
                         "params": a.params, "n_params": n_params, "dim": a.dim if stage == "features" else "",
                         "stage": stage, "path": path, "examples_per_s": round(rate[path], 2),
                         "speedup": round(rate[path] / rate["loop"], 2),
                         "peak_mib": round(peak_bytes(a, path, stage, device) / 2**20, 1)})
    append_csv(a.out, rows)
    print(f"{a.preset}, {n_params:,} parameters in the subset ({a.params}), batch {a.batch} x {a.seq_len} tokens "
          f"({a.answer} with loss), D = {a.dim}, {a.threads} thread(s), {dev}, commit {git_commit()}\n")
    print("| stage | path | examples/s | speedup | peak memory MiB |\n| --- | --- | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['stage']} | {r['path']} | {r['examples_per_s']} | {r['speedup']}x | {r['peak_mib']} |")
    print(json.dumps({"csv": a.out}))


if __name__ == "__main__":
    main()
