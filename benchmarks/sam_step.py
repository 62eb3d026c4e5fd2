"""SAM step vs AdamW step on the same model in one run: step time, the share of SAM's own
weight-sized work, and peak memory.

One process builds one model and engine, then alternates timed AdamW steps
(`closure(); finish_step()`) and SAM steps (`recipes.sam.Sam.optimizer_step`: two passes) on
the same random batches, so both see the same machine state. SAM is expected at ~2x AdamW
(two forward/backward passes; clip and AdamW run once). Its own work — squared norm, perturb
with saved copy, restore: `kernels.sam` — is timed alone on the same tensors and reported as a
share of the SAM step (median; target < 3%). Step times are the median and the minimum over
the timed steps: on a shared machine the minimum is the least disturbed. Memory: SAM keeps one
parameter-sized copy of the weights; the table gives that size and the measured peak increase
(CUDA: torch peak allocated per phase; CPU: growth of the process's peak RSS from the AdamW
phase to the SAM phase, which the CPU allocator's caching makes approximate).

    python -m benchmarks.sam_step                                   # tiny preset, CPU-sized
    python -m benchmarks.sam_step --preset 150m --batch 8 --seq-len 1024 --dtype bf16   # GPU

Prints a table and appends rows to a CSV (default benchmarks/results/sam_step.csv).
"""

from __future__ import annotations

import argparse
import platform
import resource
import time
from pathlib import Path

import torch

from benchmarks._record import append_csv, git_commit

ROOT = Path(__file__).resolve().parents[1]


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _peak_mb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _device_name(device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu {platform.machine()} x{torch.get_num_threads()}"




def build(preset: str, dtype: str):
    """(engine, make_closure(micro-batches) -> closure, model args): the preset with AdamW from
    llmcore's config defaults."""
    from llmcore.config.schema import Config
    from llmcore.engine.base import Engine
    from llmcore.engine.train_module import TrainModule
    from llmcore.model.presets import get_preset
    from llmcore.model.transformer import Transformer
    from llmcore.train.losses import ntp_loss

    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    args = get_preset(preset)
    engine = Engine(TrainModule(Transformer(args)), Config(), device)
    bf16 = dtype == "bf16"

    def make_closure(micro: list[torch.Tensor]):
        def closure(no_sync: bool = False) -> dict:
            total = 0.0
            for seq in micro:
                ids, labels = seq[:, :-1], seq[:, 1:]
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                    h = engine.module.model(ids)  # (B, T, d)
                    loss = ntp_loss(h, engine.module.model.output_weight, labels) / (labels.numel() * len(micro))
                engine.backward(loss)
                total += float(loss.detach())
            return {"loss": total}
        return closure

    return engine, make_closure, args


def time_sam_ops(engine, reps: int) -> tuple[float, str]:
    """Median seconds of SAM's own work on the live tensors: norm + perturb + restore."""
    from kernels import _dispatch
    from kernels.sam import grad_sq_norm, perturb_, restore_

    params = [p for _, p in engine.local_params()]
    grads = [torch.randn_like(p) * 1e-3 for p in params]
    saved = [torch.empty_like(p) for p in params]
    times = []
    for _ in range(reps + 1):
        _sync(engine.device)
        t0 = time.perf_counter()
        with torch.no_grad():
            norm = float(grad_sq_norm(grads).sqrt())  # the step syncs here too (finite check)
            perturb_(params, grads, 0.05 / (norm + 1e-12), saved)
            restore_(params, saved)
        _sync(engine.device)
        times.append(time.perf_counter() - t0)
    return sorted(times[1:])[reps // 2], _dispatch.backend("perturb_", *params)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="tiny")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--accum", type=int, default=1, help="micro-batches per step")
    p.add_argument("--steps", type=int, default=6, help="timed steps of each kind (after one warm-up each)")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--csv", default=str(ROOT / "benchmarks" / "results" / "sam_step.csv"))
    a = p.parse_args()

    from llmcore.recipe.context import StepContext
    from recipes.sam import Sam

    engine, make_closure, args = build(a.preset, a.dtype)
    device = engine.device
    sam = Sam(Sam.Config(rho=0.05))
    gen = torch.Generator().manual_seed(1)
    n_batches = 2 * (a.steps + 1)
    data = [[torch.randint(0, args.vocab_size, (a.batch, a.seq_len + 1), generator=gen).to(device)
             for _ in range(a.accum)] for _ in range(n_batches)]

    def adamw_step(i):
        ctx = StepContext(engine, i, 1.0)
        make_closure(data[i])()
        ctx.finish_step()

    def sam_step(i):
        ctx = StepContext(engine, 0, 1.0)  # step 0: every_k never skips
        sam.optimizer_step(ctx, make_closure(data[i]))
        assert ctx.metrics["sam/perturbed"] == 1

    times = {"adamw": [], "sam": []}
    peaks = {}
    # AdamW phase first (its peak is the baseline), then SAM, then interleaved timing
    for kind, fn in (("adamw", adamw_step), ("sam", sam_step)):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        fn(0)  # warm-up (allocates optimizer state on the first AdamW step)
        _sync(device)
        peaks[kind] = _peak_mb(device)
    for i in range(1, a.steps + 1):
        for kind, fn in (("adamw", adamw_step), ("sam", sam_step)):
            _sync(device)
            t0 = time.perf_counter()
            fn(2 * i + (kind == "sam"))
            _sync(device)
            times[kind].append(time.perf_counter() - t0)
    ops_s, ops_backend = time_sam_ops(engine, a.steps)

    med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    best = {k: min(v) for k, v in times.items()}  # least disturbed by other processes
    n_params = sum(p.numel() for _, p in engine.local_params())
    copy_mb = sum(p.numel() * p.element_size() for _, p in engine.local_params()) / 2**20
    common = {"preset": a.preset, "params": n_params, "device": _device_name(device), "dtype": a.dtype,
              "batch": a.batch, "seq_len": a.seq_len, "accum": a.accum, "commit": git_commit()}
    rows = [
        common | {"impl": "adamw", "step_s": med["adamw"], "min_step_s": best["adamw"], "ratio": 1.0,
                  "min_ratio": 1.0, "sam_ops_s": "", "sam_ops_share": "",
                  "ops_backend": "", "peak_mb": peaks["adamw"], "mem_delta_mb": 0.0, "param_copy_mb": ""},
        common | {"impl": "sam", "step_s": med["sam"], "min_step_s": best["sam"], "ratio": med["sam"] / med["adamw"],
                  "min_ratio": best["sam"] / best["adamw"], "sam_ops_s": ops_s,
                  "sam_ops_share": ops_s / med["sam"], "ops_backend": ops_backend, "peak_mb": peaks["sam"],
                  "mem_delta_mb": peaks["sam"] - peaks["adamw"], "param_copy_mb": copy_mb},
    ]
    print(f"\npreset {a.preset} ({n_params:,} params), batch {a.batch} x seq {a.seq_len} x accum {a.accum}, "
          f"{a.dtype}, {common['device']}, median of {a.steps} steps")
    print(f"{'step':<7}{'median s':>10}{'x AdamW':>9}{'min s':>9}{'x AdamW':>9}{'SAM ops s':>11}{'ops share':>11}"
          f"{'peak MB':>10}{'+MB':>9}{'copy MB':>9}")
    for r in rows:
        ops = f"{r['sam_ops_s']:.4f}" if r["sam_ops_s"] != "" else "-"
        share = f"{r['sam_ops_share']:.2%}" if r["sam_ops_share"] != "" else "-"
        copy = f"{r['param_copy_mb']:.1f}" if r["param_copy_mb"] != "" else "-"
        print(f"{r['impl']:<7}{r['step_s']:>10.4f}{r['ratio']:>9.2f}{r['min_step_s']:>9.4f}{r['min_ratio']:>9.2f}"
              f"{ops:>11}{share:>11}{r['peak_mb']:>10.1f}{r['mem_delta_mb']:>9.1f}{copy:>9}")
    print(f"SAM ops backend: {ops_backend}; SAM step - 2 x AdamW step = "
          f"{med['sam'] - 2 * med['adamw']:+.4f} s (clip + AdamW run once per SAM step)")
    print(f"wrote {append_csv(a.csv, rows)}")


if __name__ == "__main__":
    main()
