"""Attention on a GPU: tile sweep of the three Triton kernels, then llmcore vs SDPA's flash
backend (and SDPA's default choice) over sequence lengths, in one process
(``triton.testing.do_bench`` medians).

    python -m benchmarks.attention_tiles --tune          # sweep tiles, then compare
    python -m benchmarks.attention_tiles                 # compare with block_config's tiles

Causal, bf16, [B, T, H, D] inputs with B = tokens // T. First a correctness check of llmcore
and SDPA-flash against an fp32 SDPA reference (relative Frobenius error of o, dq, dk, dv).
``--tune`` times each kernel's candidate tiles at one shape (forward alone; backward with the
other backward kernel's tiles held) and uses the fastest for the comparison, printing them in
``HALF_TILES`` form. FLOPs: 4·B·H·T²·D/2 forward (causal), 2.5x that backward. Writes every row
to a CSV (default ``benchmarks/results/attention_tiles_cuda.csv``).
"""

import argparse
import datetime
import sys

from benchmarks._record import ROOT, append_csv, git_commit

# (BLOCK_M, BLOCK_N, num_warps, num_stages) candidates per kernel, Hopper-sized
CANDIDATES = {
    "fwd": [(128, 64, 8, 3), (128, 64, 8, 2), (128, 128, 8, 2), (128, 128, 8, 3),
            (128, 64, 4, 3), (64, 64, 4, 3), (128, 32, 4, 3), (64, 128, 4, 2)],
    "bwd_kv": [(32, 128, 8, 3), (32, 128, 4, 3), (64, 128, 8, 2), (64, 128, 8, 3),
               (32, 64, 4, 3), (64, 64, 4, 3), (16, 128, 8, 3), (16, 64, 4, 4)],
    "bwd_q": [(128, 32, 8, 3), (128, 32, 4, 3), (64, 64, 4, 3), (128, 64, 8, 2),
              (64, 32, 4, 3), (128, 64, 8, 3)],
}


def _inputs(torch, b, t, h, h_kv, d, seed=0):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    mk = lambda heads: torch.randn(b, t, heads, d, device="cuda", dtype=torch.bfloat16,  # noqa: E731
                                   generator=gen)
    return mk(h), mk(h_kv), mk(h_kv), mk(h)


def _sdpa(torch, q, k, v, backend):
    """SDPA on [B, T, H, D] views with one backend forced: "flash", "math", or "default"
    (PyTorch's own choice; cuDNN's attention on Hopper)."""
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
    gqa = q.shape[2] != k.shape[2]
    if backend == "default":
        out = F.scaled_dot_product_attention(qt, kt, vt, is_causal=True, enable_gqa=gqa)
    else:
        which = SDPBackend.FLASH_ATTENTION if backend == "flash" else SDPBackend.MATH
        with sdpa_kernel([which]):
            out = F.scaled_dot_product_attention(qt, kt, vt, is_causal=True, enable_gqa=gqa)
    return out.transpose(1, 2)


def check(torch, kernels, b, t, h, h_kv, d):
    """Relative errors of llmcore and SDPA-flash (bf16) against SDPA-math in fp32."""
    q, k, v, do = _inputs(torch, b, t, h, h_kv, d, seed=1)
    results = {}
    for name, fn in (("ref", lambda q, k, v: _sdpa(torch, q, k, v, "math")),
                     ("llmcore", lambda q, k, v: kernels.flash_attention(q, k, v, causal=True)),
                     ("sdpa_flash", lambda q, k, v: _sdpa(torch, q, k, v, "flash"))):
        leaves = [x.detach().clone().float().requires_grad_() if name == "ref"
                  else x.detach().clone().requires_grad_() for x in (q, k, v)]
        out = fn(*leaves)
        out.backward(do.float() if name == "ref" else do)
        results[name] = [out.detach().float()] + [x.grad.float() for x in leaves]
    errs = {}
    for name in ("llmcore", "sdpa_flash"):
        errs[name] = [float((a - r).norm() / r.norm())
                      for a, r in zip(results[name], results["ref"])]
        assert all(e == e for e in errs[name]), f"{name}: nan"
    return errs


def _time(triton, fn):
    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")


def tune(torch, triton, b, t, h, h_kv, d):
    """Fastest candidate per kernel at one shape; returns (tiles, rows)."""
    from kernels.attention import function as fa
    from kernels.attention.triton_bwd import attention_bwd
    from kernels.attention.triton_fwd import attention_fwd

    q, k, v, do = _inputs(torch, b, t, h, h_kv, d)
    scale = d ** -0.5
    base = fa.block_config(d, torch.bfloat16)
    o, lse2 = attention_fwd(q, k, v, True, None, scale, base)
    best, rows = {}, []
    for kernel in ("fwd", "bwd_kv", "bwd_q"):
        timings = []
        for bm, bn, warps, stages in CANDIDATES[kernel]:
            cfg = dict(base, **best)
            cfg[kernel] = fa.tile_config(bm, bn, warps, stages)
            if kernel == "fwd":
                fn = lambda cfg=cfg: attention_fwd(q, k, v, True, None, scale, cfg)  # noqa: E731
            else:
                fn = lambda cfg=cfg: attention_bwd(q, k, v, o, lse2, do, True, None, scale,  # noqa: E731
                                                   cfg)
            try:
                ms = _time(triton, fn)
            except Exception as exc:  # noqa: BLE001 - a tile that does not fit is skipped
                print(f"  {kernel} {(bm, bn, warps, stages)}: skipped "
                      f"({type(exc).__name__}: {str(exc).splitlines()[0][:100]})")
                continue
            timings.append((ms, cfg[kernel]))
            rows.append({"kind": "tune", "kernel": kernel, "tile": f"{bm}x{bn} w{warps} s{stages}",
                         "T": t, "B": b, "ms": round(ms, 4)})
            print(f"  {kernel} {bm}x{bn} warps={warps} stages={stages}: {ms:.3f} ms", flush=True)
        best[kernel] = min(timings, key=lambda x: x[0])[1]
    return best, rows


def compare(torch, triton, kernels, seqs, tokens, h, h_kv, d, label):
    """llmcore (public op) vs SDPA flash, fwd and fwd+bwd, per sequence length."""
    rows = []
    for t in seqs:
        b = max(1, tokens // t)
        q, k, v, do = _inputs(torch, b, t, h, h_kv, d)
        flops_fwd = 4 * b * h * t * t * d / 2
        impls = {label: lambda q, k, v: kernels.flash_attention(q, k, v, causal=True),
                 "sdpa_flash": lambda q, k, v: _sdpa(torch, q, k, v, "flash"),
                 "sdpa_default": lambda q, k, v: _sdpa(torch, q, k, v, "default")}
        times = {}
        for name, fn in impls.items():
            leaves = [x.detach().clone().requires_grad_() for x in (q, k, v)]

            def fwd(fn=fn, leaves=leaves):
                with torch.no_grad():
                    return fn(*leaves)

            def fwd_bwd(fn=fn, leaves=leaves):
                for x in leaves:
                    x.grad = None
                fn(*leaves).backward(do)

            times[name] = (_time(triton, fwd), _time(triton, fwd_bwd))
        for name, (t_f, t_fb) in times.items():
            rows.append({
                "kind": "compare", "impl": name, "B": b, "T": t, "H": h, "Hkv": h_kv, "D": d,
                "fwd_ms": round(t_f, 4), "fwd_tflops": round(flops_fwd / t_f / 1e9, 1),
                "fwd_bwd_ms": round(t_fb, 4),
                "fwd_bwd_tflops": round(3.5 * flops_fwd / t_fb / 1e9, 1),
                "vs_sdpa_fwd_bwd": round(times["sdpa_flash"][1] / t_fb, 3),
            })
        print(f"  T={t}: " + ", ".join(f"{n} {tf:.3f}/{tfb:.3f} ms" for n, (tf, tfb)
                                      in times.items()), flush=True)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.attention_tiles",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--tune", action="store_true", help="sweep tiles first")
    parser.add_argument("--tune-seq", type=int, default=4096)
    parser.add_argument("--seqs", default="1024,2048,4096,8192,16384")
    parser.add_argument("--tokens", type=int, default=16384, help="B = tokens // T")
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--kv-heads", type=int, default=16)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--csv", default=str(ROOT / "benchmarks" / "results"
                                             / "attention_tiles_cuda.csv"))
    args = parser.parse_args(argv)

    import torch
    import triton

    import kernels
    from kernels.attention import function as fa

    if not torch.cuda.is_available():
        parser.error("needs a CUDA device")
    h, h_kv, d = args.heads, args.kv_heads, args.head_dim
    seqs = [int(s) for s in args.seqs.split(",")]
    stamp = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
             "triton": triton.__version__, "commit": git_commit(),
             "timestamp": datetime.datetime.now().isoformat(timespec="seconds")}
    rows = []
    for t in (1024, 1000):
        errs = check(torch, kernels, 2, t, h, h_kv, d)
        for name, e in errs.items():
            print(f"check T={t} {name}: rel err o {e[0]:.2e} dq {e[1]:.2e} dk {e[2]:.2e} "
                  f"dv {e[3]:.2e}")
            rows.append({"kind": "check", "impl": name, "T": t, "rel_err_o": e[0],
                         "rel_err_dq": e[1], "rel_err_dk": e[2], "rel_err_dv": e[3]})
    label = "llmcore"
    if args.tune:
        key = fa.half_tiles_key(d)
        print(f"tuning at T={args.tune_seq}, B={max(1, args.tokens // args.tune_seq)}")
        best, tune_rows = tune(torch, triton, max(1, args.tokens // args.tune_seq),
                               args.tune_seq, h, h_kv, d)
        rows += tune_rows
        default = fa.HALF_TILES[key]
        print(f"tuned tiles (HALF_TILES[{key}]): {best}")
        if best != default:
            rows += compare(torch, triton, kernels, seqs, args.tokens, h, h_kv, d,
                            "llmcore_default_tiles")
            fa.HALF_TILES[key] = best
            label = "llmcore_tuned"
    rows += compare(torch, triton, kernels, seqs, args.tokens, h, h_kv, d, label)
    rows = [dict(r, **stamp) for r in rows]
    print("\n| impl | B×T | fwd ms | fwd TFLOP/s | fwd+bwd ms | fwd+bwd TFLOP/s | SDPA / this |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        if r["kind"] == "compare":
            print(f"| {r['impl']} | {r['B']}×{r['T']} | {r['fwd_ms']} | {r['fwd_tflops']} | "
                  f"{r['fwd_bwd_ms']} | {r['fwd_bwd_tflops']} | {r['vs_sdpa_fwd_bwd']} |")
    for kind in ("check", "tune", "compare"):
        part = [r for r in rows if r["kind"] == kind]
        if part:
            path = append_csv(args.csv.replace(".csv", f"_{kind}.csv"), part)
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
