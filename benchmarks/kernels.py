"""Kernel microbenchmarks: each llmcore op against its baselines, in the same run.

    python -m benchmarks.kernels --op linear_cross_entropy [--device cpu|cuda] [--csv PATH]
    python -m benchmarks.kernels --op all --sweep small

Ops: attention, linear_cross_entropy, rms_norm, swiglu, rope. Implementations per op:
``llmcore`` (``kernels.<op>``: Triton on CUDA, the PyTorch path on CPU), ``eager`` (the plain
PyTorch formula), ``compile`` (``torch.compile`` of it, when it compiles), ``sdpa`` for
attention, and ``flash_attn`` / ``liger`` when those packages are installed (CUDA only).

Every (op, impl, shape) case runs forward + backward in its own fresh process, so memory
numbers cannot mix: after warm-up the peak is reset, one measured step runs, and its peak
above the inputs is reported (CUDA: ``torch.cuda.max_memory_allocated``; CPU: the kernel's
VmHWM of the process, reset through /proc/self/clear_refs, with glibc told to return freed
blocks at once so a warm-up's cached memory cannot hide a peak). Each implementation's loss
and gradient norms are compared with the ``eager`` baseline; a mismatch is flagged and its
speed ratio withheld (no speedup on a wrong answer). FLOPs: attention 4·B·H·Tq·Tk·D forward
(halved when causal, the flash-attention convention) and 2.5x that backward; linear CE
2·N·d·V per matmul (3 with gradients). The memory-bound ops report GB/s of their minimal
tensor traffic. Prints a table, writes CSV (every row: device, dtype, shape, commit, time) and,
if matplotlib is installed, a PNG beside the CSV.
"""

import argparse
import csv
import datetime
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks._record import git_commit

ROOT = Path(__file__).resolve().parents[1]
DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}

# shape sweeps per device; "small" is for a quick look and the smoke test
SWEEPS = {
    "cpu": {
        "attention": [(1, 512, 8, 2, 64), (1, 1024, 8, 2, 64), (1, 2048, 8, 2, 64)],
        "linear_cross_entropy": [(2048, 1024, 32000), (8192, 1024, 32000)],
        "rms_norm": [(8192, 1024), (8192, 4096)],
        "swiglu": [(4096, 2816), (4096, 11008)],
        "rope": [(4, 1024, 8, 2, 64), (2, 2048, 16, 4, 128)],
    },
    "cuda": {
        "attention": [(16, 1024, 16, 8, 128), (8, 2048, 16, 8, 128), (4, 4096, 16, 8, 128),
                      (2, 8192, 16, 8, 128), (1, 16384, 16, 8, 128)],
        "linear_cross_entropy": [(8192, 2048, 32000), (16384, 4096, 32000),
                                 (8192, 4096, 128256)],
        "rms_norm": [(16384, 2048), (16384, 4096), (16384, 8192)],
        "swiglu": [(16384, 5632), (16384, 14336)],
        "rope": [(8, 2048, 32, 8, 128), (4, 4096, 32, 8, 128)],
    },
    "small": {
        "attention": [(1, 64, 4, 2, 32)],
        "linear_cross_entropy": [(64, 32, 97)],
        "rms_norm": [(64, 48)],
        "swiglu": [(64, 48)],
        "rope": [(1, 16, 4, 2, 16)],
    },
}
SHAPE_NAMES = {
    "attention": "B,T,H,Hkv,D", "linear_cross_entropy": "N,d,V", "rms_norm": "N,d",
    "swiglu": "N,f", "rope": "B,T,H,Hkv,D",
}
FIELDS = ["op", "impl", "device", "dtype", "shape", "mode", "time_ms", "throughput", "unit",
          "peak_mem_mib", "x_best_baseline", "check", "commit", "timestamp"]


# ----------------------------------------------------------------------------- the ops
def _ops():
    """Per op: inputs(shape, dtype, device), impls {name: fn(*inputs) -> output}, work."""
    import torch
    import torch.nn.functional as F

    import kernels
    from kernels.attention import attention_naive

    def compiled(fn):
        # compiled on first use: building torch.compile objects for unused impls costs imports
        cache = {}

        def run(*args):
            if "fn" not in cache:
                cache["fn"] = torch.compile(fn)
            return cache["fn"](*args)
        return run

    def randn(*shape, dtype, device, scale=1.0, grad=True):
        x = (torch.randn(*shape, device=device, dtype=torch.float32) * scale).to(dtype)
        return x.requires_grad_(grad)

    def attention_inputs(shape, dtype, device):
        b, t, h, h_kv, d = shape
        return (randn(b, t, h, d, dtype=dtype, device=device),
                randn(b, t, h_kv, d, dtype=dtype, device=device),
                randn(b, t, h_kv, d, dtype=dtype, device=device))

    def sdpa(q, k, v):
        rep = q.shape[2] // k.shape[2]
        qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
        kt, vt = kt.repeat_interleave(rep, 1), vt.repeat_interleave(rep, 1)
        return F.scaled_dot_product_attention(qt, kt, vt, is_causal=True).transpose(1, 2)

    def flash_attn(q, k, v):
        import flash_attn as fa

        return fa.flash_attn_func(q, k, v, causal=True)

    def lce_inputs(shape, dtype, device):
        n, d, vocab = shape
        labels = torch.randint(0, vocab, (n,), device=device)
        labels[::17] = -100  # some prompt/pad positions, as in real batches
        return (randn(n, d, dtype=dtype, device=device),
                randn(vocab, d, dtype=dtype, device=device, scale=d ** -0.5), labels)

    def lce_eager(h, w, labels):
        return F.cross_entropy((h @ w.t()).float(), labels)

    def liger_lce(h, w, labels):
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

        return LigerFusedLinearCrossEntropyLoss()(w, h, labels)

    def rms_inputs(shape, dtype, device):
        n, d = shape
        return randn(n, d, dtype=dtype, device=device), randn(d, dtype=dtype, device=device)

    def rms_eager(x, w):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-6) * w.float()).to(x.dtype)

    def liger_rms(x, w):
        from liger_kernel.ops.rms_norm import LigerRMSNormFunction

        return LigerRMSNormFunction.apply(x, w, 1e-6)

    def swiglu_inputs(shape, dtype, device):
        return (randn(*shape, dtype=dtype, device=device),
                randn(*shape, dtype=dtype, device=device))

    def liger_swiglu(g, u):
        from liger_kernel.ops.swiglu import LigerSiLUMulFunction

        return LigerSiLUMulFunction.apply(g, u)

    def rope_inputs(shape, dtype, device):
        b, t, h, h_kv, d = shape
        ang = torch.arange(t, device=device)[:, None] * 10000.0 ** (
            -torch.arange(0, d, 2, device=device) / d)
        return (randn(b, t, h, d, dtype=dtype, device=device),
                randn(b, t, h_kv, d, dtype=dtype, device=device),
                ang.cos().to(dtype), ang.sin().to(dtype))

    def rope_eager(q, k, cos, sin):
        c = torch.cat((cos, cos), -1)[None, :, None]
        s = torch.cat((sin, sin), -1)[None, :, None]

        def rot(x):
            half = x.shape[-1] // 2
            return x * c + torch.cat((-x[..., half:], x[..., :half]), -1) * s
        return rot(q), rot(k)

    def liger_rope(q, k, cos, sin):
        from liger_kernel.transformers.rope import liger_rotary_pos_emb

        c, s = torch.cat((cos, cos), -1)[None], torch.cat((sin, sin), -1)[None]
        qo, ko = liger_rotary_pos_emb(q.transpose(1, 2), k.transpose(1, 2), c, s)
        return qo.transpose(1, 2), ko.transpose(1, 2)

    def attention_flops(shape):  # causal: half of the [T, T] scores are skipped
        b, t, h, _, d = shape
        return 4 * b * h * t * t * d / 2 * 3.5

    def tensor_bytes(inputs, factor):
        return factor * sum(x.numel() * x.element_size() for x in inputs if x.is_floating_point())

    return {
        "attention": dict(
            inputs=attention_inputs, flops=attention_flops,
            impls={"llmcore": lambda q, k, v: kernels.flash_attention(q, k, v, causal=True),
                   "eager": lambda q, k, v: attention_naive(q, k, v, True),
                   "compile": compiled(lambda q, k, v: attention_naive(q, k, v, True)),
                   "sdpa": sdpa, "flash_attn": flash_attn}),
        "linear_cross_entropy": dict(
            inputs=lce_inputs, flops=lambda s: 6 * s[0] * s[1] * s[2],
            impls={"llmcore": kernels.linear_cross_entropy, "eager": lce_eager,
                   "compile": compiled(lce_eager), "liger": liger_lce}),
        # bytes: forward reads x, writes y; backward reads x and dy, writes dx
        "rms_norm": dict(
            inputs=rms_inputs, bytes=lambda ins: tensor_bytes(ins[:1], 5),
            impls={"llmcore": kernels.rms_norm, "eager": rms_eager,
                   "compile": compiled(rms_eager), "liger": liger_rms}),
        # bytes: forward reads g, u, writes out; backward reads g, u, dout, writes dg, du
        "swiglu": dict(
            inputs=swiglu_inputs, bytes=lambda ins: tensor_bytes(ins, 4),
            impls={"llmcore": kernels.swiglu, "eager": lambda g, u: F.silu(g) * u,
                   "compile": compiled(lambda g, u: F.silu(g) * u), "liger": liger_swiglu}),
        # bytes: q and k read and written forward, and again backward
        "rope": dict(
            inputs=rope_inputs, bytes=lambda ins: tensor_bytes(ins[:2], 4),
            impls={"llmcore": kernels.apply_rope, "eager": rope_eager,
                   "compile": compiled(rope_eager), "liger": liger_rope}),
    }


def _available(impl, device):
    if impl in ("flash_attn", "liger"):
        import importlib.util

        module = "flash_attn" if impl == "flash_attn" else "liger_kernel"
        return device == "cuda" and importlib.util.find_spec(module) is not None
    return True


# ----------------------------------------------------------------------- one case, in-process
def _rss_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} missing from /proc/self/status")


def run_case(spec):
    """Measure one (op, impl, shape, dtype, device); returns a dict (the worker's JSON)."""
    import torch

    torch.manual_seed(0)
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    device, dtype = spec["device"], getattr(torch, DTYPES[spec["dtype"]])
    op = _ops()[spec["op"]]
    fn = op["impls"][spec["impl"]]
    inputs = op["inputs"](tuple(spec["shape"]), dtype, device)
    leaves = [x for x in inputs if x.requires_grad]
    cuda = device == "cuda"

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def step():
        for x in leaves:
            x.grad = None
        out = fn(*inputs)
        outs = out if isinstance(out, tuple) else (out,)
        # a fixed cotangent (sum of squares / 2 would double the work of the memory ops)
        torch.autograd.backward(outs, [torch.ones_like(o) for o in outs])
        return outs

    try:
        step()  # warm-up: compilation, autotuning, lazy init
    except Exception as exc:  # noqa: BLE001 - e.g. torch.compile without a working compiler
        return {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"}
    sync()
    for x in leaves:
        x.grad = None
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current resident size
        base = _rss_kib("VmRSS") * 1024
    start = time.perf_counter()
    outs = step()
    sync()
    times = [time.perf_counter() - start]
    peak = (torch.cuda.max_memory_allocated() if cuda else _rss_kib("VmHWM") * 1024) - base
    check = [float(o.detach().double().norm()) for o in outs] + [
        float(x.grad.double().norm()) for x in leaves]
    del outs
    budget = float(spec.get("budget_s", 2.0))
    while sum(times) < budget and len(times) < 50:
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    t = statistics.median(times)
    if "flops" in op:
        throughput, unit = op["flops"](tuple(spec["shape"])) / t / 1e12, "TFLOP/s"
    else:
        throughput, unit = op["bytes"](inputs) / t / 1e9, "GB/s"
    return {"time_ms": t * 1e3, "throughput": throughput, "unit": unit,
            "peak_mem_mib": peak / 2 ** 20, "check": check}


def verify_lce(shape, dtype_name, device, threads=None):
    """Elementwise agreement of llmcore's linear CE with F.cross_entropy(h @ W.T): loss, dh, dW."""
    import torch

    torch.manual_seed(0)
    if threads:
        torch.set_num_threads(int(threads))
    dtype = getattr(torch, DTYPES[dtype_name])
    op = _ops()["linear_cross_entropy"]
    h, w, labels = op["inputs"](tuple(shape), dtype, device)
    result = {}
    for impl in ("eager", "llmcore"):
        h.grad = w.grad = None
        loss = op["impls"][impl](h, w, labels)
        loss.backward()
        result[impl] = (loss.detach().double(), h.grad.double(), w.grad.double())
        h.grad = w.grad = None
    diffs = {name: float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))
             for name, a, b in zip(("loss", "dh", "dW"), result["llmcore"], result["eager"])}
    return {"max_rel_diff": diffs}


# --------------------------------------------------------------------------- the driver


def _spawn(payload, timeout):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               # return freed blocks to the OS at once, so RSS tracks live memory
               MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    try:
        done = subprocess.run([sys.executable, "-m", "benchmarks.kernels", "--worker",
                               json.dumps(payload)], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout}s"}
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"worker failed: {tail[:160]}"}
    return json.loads(lines[-1])


def _agree(check, ref, dtype):
    tol = 1e-4 if dtype == "fp32" else 3e-2
    return len(check) == len(ref) and all(
        abs(a - b) <= tol * max(abs(b), 1e-12) for a, b in zip(check, ref))


def bench_op(op, device, dtype, sweep, impls, budget, timeout, threads=None):
    """All rows of one op: every impl on every shape of the sweep."""
    rows, notes = [], []
    commit = git_commit()
    for shape in SWEEPS[sweep][op]:
        results = {}
        for impl in impls:
            if not _available(impl, device) or (impl == "sdpa" and op != "attention") or (
                    impl == "flash_attn" and op != "attention") or (
                    impl == "liger" and op == "attention"):
                continue
            res = _spawn({"op": op, "impl": impl, "shape": list(shape), "dtype": dtype,
                          "device": device, "budget_s": budget, "threads": threads}, timeout)
            if "error" in res:
                notes.append(f"{op} {impl} {shape}: skipped ({res['error']})")
                continue
            results[impl] = res
        ref = results.get("eager", {}).get("check")
        for impl, res in results.items():
            res["check"] = ("ref" if impl == "eager" else "n/a" if ref is None
                            else "ok" if _agree(res["check"], ref, dtype) else "MISMATCH")
        base_times = [r["time_ms"] for i, r in results.items()
                      if i != "llmcore" and r["check"] in ("ok", "ref")]
        best = min(base_times) if base_times else math.nan
        for impl, res in results.items():
            ratio = best / res["time_ms"] if res["check"] in ("ok", "ref") else math.nan
            rows.append({
                "op": op, "impl": impl, "device": _device_name(device), "dtype": dtype,
                "shape": "x".join(map(str, shape)), "mode": "fwd+bwd",
                "time_ms": round(res["time_ms"], 3), "throughput": round(res["throughput"], 3),
                "unit": res["unit"], "peak_mem_mib": round(res["peak_mem_mib"], 1),
                "x_best_baseline": round(ratio, 3), "check": res["check"], "commit": commit,
                "timestamp": datetime.datetime.now().isoformat(timespec="seconds"),
            })
    return rows, notes


def _device_name(device):
    if device == "cuda":
        import torch

        return torch.cuda.get_device_name()
    return f"cpu ({os.cpu_count()} cores)"


def print_table(rows):
    cols = ["op", "impl", "dtype", "shape", "time_ms", "throughput", "unit", "peak_mem_mib",
            "x_best_baseline", "check"]
    width = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    print("  ".join(c.ljust(width[c]) for c in cols))
    for r in rows:
        print("  ".join(str(r[c]).ljust(width[c]) for c in cols))


def write_outputs(rows, csv_path):
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {csv_path}")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib for a PNG)")
        return
    for op in sorted({r["op"] for r in rows}):
        fig, ax = plt.subplots(figsize=(7, 4))
        op_rows = [r for r in rows if r["op"] == op]
        shapes = list(dict.fromkeys(r["shape"] for r in op_rows))
        for impl in dict.fromkeys(r["impl"] for r in op_rows):
            pts = [(shapes.index(r["shape"]), r["throughput"]) for r in op_rows
                   if r["impl"] == impl]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=impl)
        ax.set_xticks(range(len(shapes)), shapes, rotation=20, fontsize=7)
        ax.set_ylabel(op_rows[0]["unit"])
        ax.set_title(f"{op} fwd+bwd, {op_rows[0]['dtype']}, {op_rows[0]['device']}")
        ax.legend()
        png = csv_path.with_name(f"{csv_path.stem}_{op}.png")
        fig.tight_layout()
        fig.savefig(png, dpi=120)
        print(f"wrote {png}")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.kernels", description=__doc__
                                     .split("\n")[0])
    parser.add_argument("--op", default="all", help=f"one of {', '.join(SHAPE_NAMES)} or all")
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None)
    parser.add_argument("--dtype", choices=list(DTYPES), default=None,
                        help="default fp32 on cpu, bf16 on cuda")
    parser.add_argument("--sweep", choices=["cpu", "cuda", "small"], default=None,
                        help="shape sweep (default: the device's)")
    parser.add_argument("--impls", default="llmcore,eager,compile,sdpa,flash_attn,liger")
    parser.add_argument("--csv", type=Path, default=None,
                        help="default benchmarks/results/kernels_<op>_<device>.csv")
    parser.add_argument("--budget", type=float, default=2.0, help="timing seconds per case")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads per case (a shared or busy machine times "
                             "steadier with 1)")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per case process")
    parser.add_argument("--verify-lce", default=None, metavar="N,d,V",
                        help="also compare llmcore's linear CE elementwise with the naive path")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker is not None:
        spec = json.loads(args.worker)
        out = verify_lce(spec["shape"], spec["dtype"], spec["device"], spec.get("threads")) \
            if spec.get("verify") \
            else run_case(spec)
        print(json.dumps(out))
        return 0

    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but no CUDA device is visible")
    dtype = args.dtype or ("bf16" if device == "cuda" else "fp32")
    sweep = args.sweep or device
    ops = list(SHAPE_NAMES) if args.op == "all" else [args.op]
    for op in ops:
        if op not in SHAPE_NAMES:
            parser.error(f"--op {op!r}: choose from {', '.join(SHAPE_NAMES)} or all")
    impls = [i.strip() for i in args.impls.split(",") if i.strip()]
    rows, notes = [], []
    for op in ops:
        print(f"# {op}: shapes ({SHAPE_NAMES[op]}) {SWEEPS[sweep][op]}", flush=True)
        op_rows, op_notes = bench_op(op, device, dtype, sweep, impls, args.budget, args.timeout,
                                     args.threads)
        rows += op_rows
        notes += op_notes
    if rows:
        print_table(rows)
    for note in notes:
        print(f"note: {note}")
    if args.verify_lce:
        shape = [int(x) for x in args.verify_lce.split(",")]
        res = _spawn({"verify": True, "shape": shape, "dtype": dtype, "device": device,
                      "threads": args.threads}, args.timeout)
        print(f"linear CE {shape} {dtype}: llmcore vs F.cross_entropy(h @ W.T), max |diff| / "
              f"max |ref|: {res.get('max_rel_diff', res)}")
    if rows:
        name = args.op if args.op != "all" else "all"
        write_outputs(rows, args.csv or ROOT / "benchmarks" / "results"
                      / f"kernels_{name}_{device}.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
