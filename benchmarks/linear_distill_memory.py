"""Peak memory and time of the fused distillation loss against our fused NTP cross-entropy alone.

Cases at one shape (N tokens, width d, vocabulary V), each in a fresh process so peaks do not
mix, each a forward + backward from given leaf tensors (h and W take gradients):

- ntp:          `kernels.linear_cross_entropy(h, W, labels)` -- plain training's loss;
- kd_sparse_T1: `kernels.linear_distill_loss` with a cached top-k teacher (k ids + log-probs
                per row), alpha 0.5, T = 1, 15% of the rows routed (kd_weight 0);
- kd_sparse_T2: the same at T = 2 (the student's softmax at two temperatures);
- kd_dense:     the online teacher (its hidden states [N, d_t] and output weight [V, d_t],
                inputs that count in the peak), its logits chunked beside the student's;
- naive_sparse: the dense path: [N, V] logits and log-softmaxes kept for autograd
                (`linear_distill_reference` at fp32), the same sparse teacher;
- naive_dense:  the same with the dense teacher (not in the default set: ~8 GB).

On CPU memory is the growth of the process's peak resident set (ru_maxrss) from before the
inputs are allocated, so inputs, gradients and every temporary count; on CUDA it is torch's
peak allocated memory above the empty state. Time: one untimed warm-up step, then the mean of
``--repeats`` timed steps. The issue's bars (same run): kd_sparse peak <= 1.1x ntp, time <=
1.3x ntp.

    python -m benchmarks.linear_distill_memory [--tokens 8192] [--dim 1024] [--vocab 32000]
        [--top-k 32] [--teacher-dim 1024] [--cases ...] [--threads 1]

Prints the table and appends to benchmarks/results/linear_distill_memory.csv. With
``--row-losses`` it instead times, in this process, one chunk's matmul and each row loss on it
(linear CE's, the sparse KD at T = 1 and 2, the dense KD), the parts whose sum sets the ratios
above, which the end-to-end times on a shared machine blur.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time
from pathlib import Path

from benchmarks._record import append_csv, git_commit, run_worker

ROOT = Path(__file__).resolve().parents[1]
CASES = ("ntp", "kd_sparse_T1", "kd_sparse_T2", "kd_dense", "naive_sparse", "naive_dense")
DEFAULT_CASES = CASES[:-1]
ALPHA, ROUTED = 0.5, 0.15


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def worker(case, tokens, dim, vocab, top_k, teacher_dim, repeats) -> dict:
    """Warm-up plus ``repeats`` forward + backward steps of ``case``: peak growth and time."""
    import torch

    import kernels
    from kernels.linear_distill_reference import linear_distill_reference

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated() / 2**20 if device.type == "cuda" else _rss_mb()
    gen = torch.Generator(device="cpu").manual_seed(0)

    def randn(*shape, scale=1.0, grad=False):
        return (torch.randn(*shape, generator=gen) * scale).to(device).requires_grad_(grad)

    w = randn(vocab, dim, scale=dim ** -0.5, grad=True)
    h = randn(tokens, dim, grad=True)
    labels = torch.randint(0, vocab, (tokens,), generator=gen).to(device)
    kd_weight = (torch.rand(tokens, generator=gen) >= ROUTED).float().to(device)
    teacher = {}
    if "sparse" in case:
        teacher = {"teacher_ids": torch.randint(0, vocab, (tokens, top_k), generator=gen).to(device),
                   "teacher_logprobs": (randn(tokens, top_k) * 2).log_softmax(-1)}
    elif "dense" in case:
        teacher = {"teacher_h": randn(tokens, teacher_dim),
                   "teacher_w": randn(vocab, teacher_dim, scale=teacher_dim ** -0.5)}
    temperature = 2.0 if case.endswith("T2") else 1.0

    def step():
        h.grad = w.grad = None
        if case == "ntp":
            loss = kernels.linear_cross_entropy(h, w, labels, reduction="sum")
        else:
            fn = linear_distill_reference if case.startswith("naive") else kernels.linear_distill_loss
            loss = fn(h, w, labels, alpha=ALPHA, temperature=temperature, kd_weight=kd_weight,
                      reduction="sum", **teacher)[0]
        loss.backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return float(loss)

    step()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        loss = step()
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else _rss_mb()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"cpu {platform.processor() or platform.machine()} x{torch.get_num_threads()}"
    return {"case": case, "device": name, "dtype": "fp32", "tokens": tokens, "dim": dim,
            "vocab": vocab, "top_k": top_k if "sparse" in case else 0,
            "teacher_dim": teacher_dim if "dense" in case else 0, "temperature": temperature,
            "peak_mb": round(peak - base, 1), "fwd_bwd_s": round(sum(times) / len(times), 3),
            "repeats": repeats, "loss": loss}


def row_losses(rows, dim, vocab, top_k, threads, repeats) -> list[dict]:
    """Best-of-``repeats`` seconds of one [rows, vocab] chunk's logits matmul and of each row
    loss (with its gradient) on it."""
    import torch

    import kernels.linear_distill as ld
    from kernels.linear_cross_entropy import ce_row_loss_torch

    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(rows, vocab, generator=gen)
    t_logits = torch.randn(rows, vocab, generator=gen)
    y = torch.randint(0, vocab, (rows,), generator=gen)
    ids = torch.randint(0, vocab, (rows, top_k), generator=gen)
    logq = torch.randn(rows, top_k, generator=gen).log_softmax(-1)
    h, w = torch.randn(rows, dim, generator=gen), torch.randn(vocab, dim, generator=gen)
    buf, t_buf = logits.clone(), t_logits.clone()
    opts = {"alpha": ALPHA, "z_loss": 0.0, "reverse": False, "scale": 1.0, "want_grad": True}
    parts = {
        "matmul (one of 3 per chunk)": lambda: torch.matmul(h, w.t(), out=buf),
        "ce_row_loss": lambda: ce_row_loss_torch(buf.copy_(logits), y, None, True),
        "kd_sparse_T1": lambda: ld.distill_row_loss_torch(buf.copy_(logits), y, ids, logq, None,
                                                          temperature=1.0, dense=False, **opts),
        "kd_sparse_T2": lambda: ld.distill_row_loss_torch(buf.copy_(logits), y, ids, logq, None,
                                                          temperature=2.0, dense=False, **opts),
        "kd_dense_T1": lambda: ld.distill_row_loss_torch(buf.copy_(logits), t_buf.copy_(t_logits),
                                                         y, None, temperature=1.0, dense=True,
                                                         **opts),
        "copy (included above)": lambda: buf.copy_(logits),
    }
    out = []
    for name, fn in parts.items():
        fn()
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t0)
        out.append({"part": name, "rows": rows, "dim": dim, "vocab": vocab, "top_k": top_k,
                    "threads": threads, "seconds": round(best, 4), "commit": git_commit()})
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=8192)
    p.add_argument("--dim", type=int, default=1024)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--top-k", type=int, default=32)
    p.add_argument("--teacher-dim", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--cases", default=",".join(DEFAULT_CASES), help=f"any of {', '.join(CASES)}")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--csv", default=str(ROOT / "benchmarks" / "results" / "linear_distill_memory.csv"))
    p.add_argument("--row-losses", type=int, metavar="ROWS", default=0,
                   help="time one chunk of ROWS rows: its matmul and each row loss")
    p.add_argument("--worker", choices=CASES, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.row_losses:
        parts = row_losses(a.row_losses, a.dim, a.vocab, a.top_k, a.threads, max(a.repeats, 3))
        for r in parts:
            print(f"{r['part']:<30}{r['seconds']:>9.4f} s")
        csv = Path(a.csv).with_name("linear_distill_row_losses.csv")
        append_csv(csv, parts)
        print(f"wrote {csv}")
        return
    shape = (a.tokens, a.dim, a.vocab, a.top_k, a.teacher_dim, a.repeats)
    if a.worker:
        import torch

        torch.set_num_threads(a.threads)
        print(json.dumps(worker(a.worker, *shape)))
        return
    cases = a.cases.split(",")
    unknown = sorted(set(cases) - set(CASES))
    if unknown:
        p.error(f"unknown cases {unknown}; choose from {', '.join(CASES)}")
    rows = []
    for case in cases:
        print(f"running {case} ...", flush=True)
        rows.append(run_worker("benchmarks.linear_distill_memory", case, [
            "--tokens", a.tokens, "--dim", a.dim, "--vocab", a.vocab, "--top-k", a.top_k,
            "--teacher-dim", a.teacher_dim, "--repeats", a.repeats, "--threads", a.threads]))
    ntp = next((r for r in rows if r["case"] == "ntp"), None)
    print(f"\nN={a.tokens} tokens, d={a.dim}, V={a.vocab}, k={a.top_k}, teacher d_t={a.teacher_dim}, "
          f"alpha={ALPHA}, {ROUTED:.0%} routed, fp32, {rows[0]['device']}")
    print(f"{'case':<14}{'peak MB':>10}{'x ntp':>8}{'fwd+bwd s':>11}{'x ntp':>8}{'loss':>16}")
    for r in rows:
        mem = f"{r['peak_mb'] / ntp['peak_mb']:.2f}" if ntp else "n/a"
        sec = f"{r['fwd_bwd_s'] / ntp['fwd_bwd_s']:.2f}" if ntp else "n/a"
        print(f"{r['case']:<14}{r['peak_mb']:>10.0f}{mem:>8}{r['fwd_bwd_s']:>11.2f}{sec:>8}"
              f"{r['loss']:>16.1f}")
    append_csv(a.csv, rows)
    print(f"wrote {a.csv}")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
