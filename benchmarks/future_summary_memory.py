"""Peak memory of the auxiliary future losses: NTP alone vs NTP + 4 MTP heads + FSP-BCE.

Three cases at the same shape (N tokens, vocabulary V, width d), each in a fresh process so
peaks do not mix, each one forward + backward from given hidden states (the heads' outputs are
leaf tensors here, so only the loss machinery is measured):

- ntp:   `kernels.linear_cross_entropy(h, W, labels)` -- the trunk's loss alone;
- fused: ntp + `kernels.future_summary.future_summary_loss` over 4 MTP heads and the FSP-BCE
         head in one call (chunked, no [N, V] tensor);
- naive: the dense path: per-head logits h @ W.T with `F.cross_entropy`, and the FSP target as
         a dense multi-hot [N, V] (`future_summary_reference`), NTP dense too.

On CPU memory is the process's peak resident set above its size before the inputs are
allocated (ru_maxrss), so inputs, gradients and every temporary count; on CUDA it is torch's
peak allocated memory. The issue's bar: fused <= 1.5x ntp, and far under naive.

    python -m benchmarks.future_summary_memory [--tokens 8192] [--vocab 32000] [--dim 512]

Prints the table and appends to benchmarks/results/future_summary_memory.csv.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time
from pathlib import Path

from benchmarks._record import append_csv, run_worker

ROOT = Path(__file__).resolve().parents[1]
CASES = ("ntp", "fused", "naive")


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def worker(case: str, tokens: int, vocab: int, dim: int, heads: int, tau: int) -> dict:
    """One forward + backward of `case`; returns its peak memory growth and time."""
    import torch
    import torch.nn.functional as F

    import kernels
    from kernels.future_summary import future_summary_loss
    from kernels.future_summary_reference import future_summary_reference

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated() / 2**20 if device.type == "cuda" else _rss_mb()
    gen = torch.Generator(device="cpu").manual_seed(0)

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen) * scale).to(device).requires_grad_(True)

    w = randn(vocab, dim, scale=dim ** -0.5)
    h = randn(tokens, dim)
    labels = torch.randint(0, vocab, (tokens,), generator=gen).to(device)
    if case != "ntp":
        mtp_h = randn(heads, tokens, dim)
        mtp_labels = torch.randint(0, vocab, (heads, tokens), generator=gen).to(device)
        fsp_h = randn(tokens, dim)
        bag = torch.randint(0, vocab, (tokens, tau - 1), generator=gen).to(device)
    t0 = time.perf_counter()
    if case == "ntp":
        loss = kernels.linear_cross_entropy(h, w, labels, reduction="sum")
    elif case == "fused":
        loss = kernels.linear_cross_entropy(h, w, labels, reduction="sum") + future_summary_loss(
            w, mtp_h=mtp_h, mtp_labels=mtp_labels, fsp_h=fsp_h, bag=bag)[0]
    else:
        loss = F.cross_entropy(h @ w.t(), labels, reduction="sum") + future_summary_reference(
            w, mtp_h=mtp_h, mtp_labels=mtp_labels, fsp_h=fsp_h, bag=bag)[0]
    loss.backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else _rss_mb()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"cpu {platform.processor() or platform.machine()} x{torch.get_num_threads()}"
    return {"case": case, "device": name, "dtype": "fp32", "tokens": tokens, "vocab": vocab, "dim": dim,
            "mtp_heads": heads if case != "ntp" else 0, "fsp_bag": tau - 1 if case != "ntp" else 0,
            "peak_mb": round(peak - base, 1), "fwd_bwd_s": round(seconds, 3), "loss": float(loss)}




def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=8192)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--heads", type=int, default=4, help="MTP heads")
    p.add_argument("--tau", type=int, default=12, help="FSP horizon: bags of tau - 1 ids")
    p.add_argument("--cases", default=",".join(CASES))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--csv", default=str(ROOT / "benchmarks" / "results" / "future_summary_memory.csv"))
    p.add_argument("--worker", choices=CASES, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        import torch

        torch.set_num_threads(a.threads)
        print(json.dumps(worker(a.worker, a.tokens, a.vocab, a.dim, a.heads, a.tau)))
        return
    rows = []
    for case in a.cases.split(","):
        rows.append(run_worker("benchmarks.future_summary_memory", case, [
            "--tokens", a.tokens, "--vocab", a.vocab, "--dim", a.dim, "--heads", a.heads, "--tau", a.tau,
            "--threads", a.threads]))
    ntp = next((r for r in rows if r["case"] == "ntp"), None)
    print(f"\nN={a.tokens} tokens, V={a.vocab}, d={a.dim}, fp32, {rows[0]['device']}; "
          f"aux = {a.heads} MTP heads + FSP-BCE (bags of {a.tau - 1})")
    print(f"{'case':<8}{'peak MB':>10}{'x ntp':>8}{'fwd+bwd s':>11}{'loss':>14}")
    for r in rows:
        ratio = f"{r['peak_mb'] / ntp['peak_mb']:.2f}" if ntp else "n/a"
        print(f"{r['case']:<8}{r['peak_mb']:>10.0f}{ratio:>8}{r['fwd_bwd_s']:>11.2f}{r['loss']:>14.1f}")
    append_csv(a.csv, rows)
    print(f"wrote {a.csv}")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
