"""Linear cross-entropy on a GPU: llmcore's chunk budget sweep, then llmcore vs Liger-Kernel
and the naive path, time and peak memory, in one process.

    python -m benchmarks.linear_ce_chunks [--factors 1,2,4] [--shapes 8192x4096x128256,...]

bf16 h [N, d] and W [V, d] (both take gradients), labels with every 17th ignored. Each case:
median fwd+bwd time (``triton.testing.do_bench``), the peak memory one step adds on top of its
inputs (``max_memory_allocated``, grads cleared first, so the grads themselves count), and the
relative error of loss, dh, dW against the naive ``F.cross_entropy((h @ W.T).float())``.
``factor`` caps llmcore's logits at factor × N × d elements (Liger's rule is 1×); the default
is ``CHUNK_FACTOR`` in ``kernels/linear_cross_entropy_triton.py``. Where that budget would cut
row chunks below ``ROW_PATH_MIN_ROWS`` llmcore takes vocabulary blocks instead; the ``_rows``
rows force row chunks at the same budget, the ``_vocab`` rows vocabulary blocks (however
narrow) and the ``_unaligned`` rows row chunks of the budget's exact size, for comparison. Writes the rows to
``benchmarks/results/linear_ce_chunks_cuda.csv``.
"""

import argparse
import datetime
import importlib.metadata
import sys

from benchmarks._record import ROOT, append_csv, git_commit

SHAPES = "8192x4096x128256,16384x4096x32000,8192x2048x32000"


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.linear_ce_chunks",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", default=SHAPES, help="NxdxV,...")
    parser.add_argument("--factors", default="1,2,4", help="llmcore chunk factors to time")
    parser.add_argument("--warps", default="8", help="row-kernel num_warps to time (at the default budget)")
    parser.add_argument("--csv", default=str(ROOT / "benchmarks" / "results"
                                             / "linear_ce_chunks_cuda.csv"))
    args = parser.parse_args(argv)

    import torch
    import torch.nn.functional as F
    import triton

    import kernels
    import kernels.linear_cross_entropy_triton as lt

    if not torch.cuda.is_available():
        parser.error("needs a CUDA device")
    try:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

        liger = LigerFusedLinearCrossEntropyLoss()
        liger_version = importlib.metadata.version("liger-kernel")
    except ImportError:
        liger, liger_version = None, "missing"
    defaults = {name: getattr(lt, name) for name in ("CHUNK_FACTOR", "ROW_PATH_MIN_ROWS",
                                                     "VOCAB_BLOCK_MIN", "ROW_MULTIPLE",
                                                     "ROW_WARPS")}
    stamp = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
             "triton": triton.__version__, "liger": liger_version, "commit": git_commit(),
             "timestamp": datetime.datetime.now().isoformat(timespec="seconds")}
    rows = []
    for shape in args.shapes.split(","):
        n, d, vocab = (int(x) for x in shape.split("x"))
        gen = torch.Generator(device="cuda").manual_seed(0)
        h = torch.randn(n, d, device="cuda", generator=gen).to(torch.bfloat16).requires_grad_()
        w = (torch.randn(vocab, d, device="cuda", generator=gen) * d ** -0.5).to(
            torch.bfloat16).requires_grad_()
        labels = torch.randint(0, vocab, (n,), device="cuda", generator=gen)
        labels[::17] = -100

        impls = {"naive": lambda: F.cross_entropy((h @ w.t()).float(), labels)}
        for factor in (int(f) for f in args.factors.split(",")):
            impls[f"llmcore_f{factor}"] = {"CHUNK_FACTOR": factor}
            # the same budget in row chunks only, for comparison
            impls[f"llmcore_f{factor}_rows"] = {"CHUNK_FACTOR": factor, "ROW_PATH_MIN_ROWS": 0}
            # ... and in vocabulary blocks however narrow, where the default takes rows
            impls[f"llmcore_f{factor}_vocab"] = {"CHUNK_FACTOR": factor,
                                                "ROW_PATH_MIN_ROWS": 1 << 62,
                                                "VOCAB_BLOCK_MIN": lt.VOCAB_BLOCK_MULTIPLE}
            # ... and with row chunks of exactly the budget, not rounded to whole tiles
            impls[f"llmcore_f{factor}_unaligned"] = {"CHUNK_FACTOR": factor, "ROW_MULTIPLE": 1}
        for warps in (int(x) for x in args.warps.split(",")):
            if warps != defaults["ROW_WARPS"]:
                impls[f"llmcore_w{warps}"] = {"ROW_WARPS": warps}
        if liger is not None:
            impls["liger"] = lambda: liger(w, h, labels)

        def run(spec):
            if callable(spec):
                return spec()
            for name, value in defaults.items():
                setattr(lt, name, spec.get(name, value))
            return kernels.linear_cross_entropy(h, w, labels)

        def step(spec):
            h.grad = w.grad = None
            loss = run(spec)
            loss.backward()
            return loss

        ref = None
        for name, spec in impls.items():
            step(spec)  # warm-up and compile
            h.grad = w.grad = None
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            loss = step(spec)
            torch.cuda.synchronize()
            peak = (torch.cuda.max_memory_allocated() - base) / 2 ** 20
            got = (loss.detach().float(), h.grad.float(), w.grad.float())
            if ref is None:
                ref = got
            errs = [float((a - r).norm() / r.norm()) for a, r in zip(got, ref)]
            ms = triton.testing.do_bench(lambda spec=spec: step(spec), warmup=5, rep=500,
                                         return_mode="median")
            rows.append(dict({"shape": shape, "impl": name, "ms": round(ms, 3),
                              "tflops": round(6 * n * d * vocab / ms / 1e9, 1),
                              "peak_mib": round(peak, 1), "rel_err_loss": errs[0],
                              "rel_err_dh": errs[1], "rel_err_dw": errs[2]}, **stamp))
            print(f"  {shape} {name}: {ms:.3f} ms, peak +{peak:.0f} MiB, err loss "
                  f"{errs[0]:.1e} dh {errs[1]:.1e} dW {errs[2]:.1e}", flush=True)
        for name, value in defaults.items():
            setattr(lt, name, value)
        del h, w, labels, ref
        torch.cuda.empty_cache()
    liger_ms = {r["shape"]: r["ms"] for r in rows if r["impl"] == "liger"}
    print("\n| N×d×V | impl | fwd+bwd ms | TFLOP/s | peak MiB | err dh | err dW | Liger ms / this |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        ratio = f"{liger_ms[r['shape']] / r['ms']:.2f}" if r["shape"] in liger_ms else ""
        print(f"| {r['shape']} | {r['impl']} | {r['ms']} | {r['tflops']} | {r['peak_mib']} | "
              f"{r['rel_err_dh']:.1e} | {r['rel_err_dw']:.1e} | {ratio} |")
    print(f"wrote {append_csv(args.csv, rows)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
