"""Compile every Triton kernel of ``kernels/`` for a GPU target without a GPU; run as a script.

    python tests/kernels/compile_for_gpu.py SM        # e.g. 80 (A100) or 90 (H100)

Prints one line per kernel configuration and exits non-zero if any fails to compile or needs
more shared memory than the target has. Must run with TRITON_INTERPRET unset: under the
interpreter even Triton's own library functions are interpreted and cannot be compiled.
``test_triton_compile.py`` runs it in a subprocess.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

import kernels.attention.function as attn_fn  # noqa: E402
import kernels.attention.triton_bwd as attn_bwd  # noqa: E402
import kernels.attention.triton_fwd as attn_fwd  # noqa: E402
import kernels.linear_cross_entropy_triton as lce  # noqa: E402
import kernels.linear_distill_triton as kd  # noqa: E402
import kernels.rmsnorm_triton as rms  # noqa: E402
import kernels.rope_triton as rope  # noqa: E402
import kernels.swiglu_triton as swiglu  # noqa: E402

# bytes of shared memory one block may use: A100 (sm_80) and H100 (sm_90)
SHARED_LIMIT = {80: 166912, 90: 232448}
FLOAT_ARGS = {"eps", "z_loss", "smoothing", "scale", "qk_scale", "sm_scale", "alpha", "inv_t",
              "temperature"}
POINTER_DTYPES = {"rstd_ptr": "*fp32", "lse_ptr": "*fp32", "delta_ptr": "*fp32",
                  "dw_part_ptr": "*fp32", "loss_ptr": "*fp32", "weight_ptr": "*fp32",
                  "labels_ptr": "*i64", "doc_ptr": "*i64", "first_ptr": "*i32",
                  "last_ptr": "*i32", "m_ptr": "*fp32", "s_ptr": "*fp32", "target_ptr": "*fp32",
                  "total_ptr": "*fp32", "g_ptr": "*fp32", "ids_ptr": "*i64", "logq_ptr": "*fp32",
                  "kdw_ptr": "*fp32", "out_ptr": "*fp32"}
TORCH = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def compile_one(kernel, dtype, constexprs, sm, **options):
    """Compile ``kernel`` with pointer element type ``dtype``; returns its shared bytes."""
    signature = {}
    for name in kernel.arg_names:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name.endswith("_ptr"):
            signature[name] = POINTER_DTYPES.get(name, "*" + dtype)
        else:
            signature[name] = "fp32" if name in FLOAT_ARGS else "i32"
    source = ASTSource(kernel, signature=signature, constexprs=constexprs)
    return triton.compile(source, target=GPUTarget("cuda", sm, 32), options=options).metadata.shared


def jobs():
    for dtype in ("bf16", "fp32"):
        yield swiglu._swiglu_fwd_kernel, dtype, {"BLOCK": swiglu.BLOCK}, {}
        yield swiglu._swiglu_bwd_kernel, dtype, {"BLOCK": swiglu.BLOCK}, {}
        yield rms._rmsnorm_fwd_kernel, dtype, {"BLOCK_D": 8192}, {}
        yield rms._rmsnorm_bwd_kernel, dtype, {"BLOCK_D": 8192}, {}
        yield rope._rope_kernel, dtype, {"BACKWARD": True, "BLOCK_H": 32, "BLOCK_HALF": 64}, {}
        yield lce._ce_rows_kernel, dtype, {"HAS_WEIGHT": True, "COMPUTE_GRAD": True,
                                           "BLOCK_V": lce.MAX_BLOCK_V}, {}
        yield lce._lse_block_kernel, dtype, {"BLOCK_V": lce.MAX_BLOCK_V}, {}
        yield lce._grad_block_kernel, dtype, {"BLOCK_V": lce.MAX_BLOCK_V}, {}
        yield kd._kd_sparse_rows_kernel, dtype, {"HAS_KDW": True, "COMPUTE_GRAD": True,
                                                 "BLOCK_V": kd.MAX_BLOCK_V, "BLOCK_VG": 256,
                                                 "BLOCK_K": 32}, {"num_warps": kd.ROW_WARPS}
        for reverse in (False, True):
            yield kd._kd_dense_rows_kernel, dtype, {"HAS_KDW": True, "COMPUTE_GRAD": True,
                                                    "REVERSE": reverse,
                                                    "BLOCK_V": kd.MAX_BLOCK_V}, {"num_warps": kd.ROW_WARPS}
        yield kd._entropy_rows_kernel, dtype, {"BLOCK_V": kd.MAX_BLOCK_V}, {"num_warps": kd.ROW_WARPS}
    for dtype, head_dim, causal, doc in [("bf16", 128, True, False), ("bf16", 96, True, True),
                                         ("fp16", 64, False, True), ("fp32", 128, True, True)]:
        cfg = attn_fn.block_config(head_dim, TORCH[dtype])
        for kernel, tile in ((attn_fwd._attn_fwd_kernel, cfg["fwd"]),
                             (attn_bwd._attn_bwd_dkdv_kernel, cfg["bwd_kv"]),
                             (attn_bwd._attn_bwd_dq_kernel, cfg["bwd_q"])):
            # EVEN (no bounds checks) is what long training sequences compile to
            constexprs = {"CAUSAL": causal, "HAS_DOC": doc, "EVEN": head_dim != 96,
                          "DOT_DTYPE": cfg["DOT_DTYPE"], "PRECISION": cfg["PRECISION"],
                          "BLOCK_M": tile["BLOCK_M"], "BLOCK_N": tile["BLOCK_N"],
                          "BLOCK_D": cfg["BLOCK_D"]}
            options = {"num_warps": tile["num_warps"], "num_stages": tile["num_stages"]}
            yield kernel, dtype, constexprs, options
        yield attn_bwd._attn_bwd_delta_kernel, dtype, {"BLOCK_M": 64,
                                                       "BLOCK_D": cfg["BLOCK_D"]}, {}


def main(sm):
    failures = 0
    for kernel, dtype, constexprs, options in jobs():
        label = f"{kernel.__name__} {dtype} {constexprs}"
        try:
            shared = compile_one(kernel, dtype, constexprs, sm, **options)
        except Exception as exc:  # noqa: BLE001 - report every failing configuration
            failures += 1
            print(f"FAIL {label}: {type(exc).__name__}: {exc}")
            continue
        ok = shared <= SHARED_LIMIT[sm]
        failures += not ok
        print(f"{'ok' if ok else 'FAIL'} {label}: {shared} B shared (limit {SHARED_LIMIT[sm]})")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1])))
