"""Training-step throughput and peak memory: llmcore vs transformers' LlamaForCausalLM.

Both models have the identical shape (built from one preset), the same AdamW settings, the
same random batches and dtype; each runs in its own fresh process so memory numbers do not
mix. Ours computes the loss from hidden states with the fused linear cross-entropy (no
[tokens, vocab] logits); the baseline is the plain PyTorch loop `model(ids, labels=labels)`.

    python -m benchmarks.throughput [--preset 20m] [--seq-len 256] [--batch 8] [--steps 5]
                                    [--compile]

``--compile`` compiles every decoder block of both models with ``torch.compile`` (in place, as
``train.compile`` does; llmcore's as one graph each); the warm-up step pays the compilation.

Prints a table (tokens/s, achieved TFLOP/s, MFU where the device peak is known, peak memory)
and writes a CSV (default benchmarks/results/throughput.csv). On CPU, memory is the process's
peak resident set above its size once the model is built (ru_maxrss), so optimizer state,
gradients and activations are all counted; on CUDA it is torch's peak allocated memory.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path

from benchmarks._record import append_csv, run_worker

ROOT = Path(__file__).resolve().parents[1]


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def worker(kind: str, preset: str, seq_len: int, batch: int, steps: int, dtype: str, threads: int = 0,
           compile_blocks: bool = False) -> dict:
    """Run `steps` timed training steps after one warm-up step; return the measurements."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    from llmcore.model.flops import device_peak_flops, flops_per_token
    from llmcore.model.presets import get_preset

    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    args = get_preset(preset)
    amp = torch.autocast(device.type, dtype=torch.bfloat16) if dtype == "bf16" else _null()
    if kind == "llmcore":
        from llmcore.model.transformer import Transformer
        from llmcore.train.losses import ntp_loss

        model = Transformer(args).to(device)

        def loss_fn(ids, labels):
            h = model(ids)
            return ntp_loss(h, model.output_weight, labels) / labels.numel()
    else:
        from transformers import LlamaConfig, LlamaForCausalLM

        hf_cfg = LlamaConfig(vocab_size=args.vocab_size, hidden_size=args.d_model,
                             intermediate_size=args.ffn_hidden, num_hidden_layers=args.n_layers,
                             num_attention_heads=args.n_heads, num_key_value_heads=args.n_kv_heads,
                             max_position_embeddings=args.max_seq_len, rms_norm_eps=args.norm_eps,
                             rope_theta=args.rope_theta, tie_word_embeddings=args.tie_embeddings)
        hf_cfg._attn_implementation = "sdpa"
        model = LlamaForCausalLM(hf_cfg).to(device)

        def loss_fn(ids, labels):
            # HF shifts labels itself, so it scores T-1 of our T targets: a 1/T difference.
            return model(input_ids=ids, labels=ids).loss

    if compile_blocks and kind == "llmcore":
        model.compile_blocks()
    elif compile_blocks:
        for layer in model.model.layers:  # HF's decoder layers, compiled as they allow
            layer.compile()
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True)
    gen = torch.Generator().manual_seed(1)
    batches = [torch.randint(0, args.vocab_size, (batch, seq_len + 1), generator=gen) for _ in range(steps + 1)]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated() / 2**20 if device.type == "cuda" else _rss_mb()
    times = []
    for i, seq in enumerate(batches):
        seq = seq.to(device)
        ids, labels = seq[:, :-1], seq[:, 1:]
        t0 = time.perf_counter()
        with amp:
            loss = loss_fn(ids, labels)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i > 0:
            times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else _rss_mb()
    tokens = batch * seq_len
    step_s = sorted(times)[len(times) // 2]
    fpt = flops_per_token(args, seq_len)
    peak_flops = device_peak_flops(device)
    return {
        "impl": kind, "preset": preset, "params": n_params, "device": _device_name(device),
        "dtype": dtype, "compile": compile_blocks, "batch": batch, "seq_len": seq_len, "step_s": step_s,
        "tokens_per_s": tokens / step_s, "tflops": fpt * tokens / step_s / 1e12,
        "mfu": (fpt * tokens / step_s / peak_flops) if peak_flops else None,
        "peak_mem_mb": peak - base, "final_loss": float(loss),
    }


def _device_name(device) -> str:
    import platform

    import torch
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu {platform.processor() or platform.machine()} x{torch.get_num_threads()}"


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False




def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="20m")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads per worker (0: torch's default)")
    p.add_argument("--csv", default=str(ROOT / "benchmarks" / "results" / "throughput.csv"))
    p.add_argument("--compile", action="store_true", help="torch.compile every decoder block of both models")
    p.add_argument("--worker", choices=["llmcore", "hf"], help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        print(json.dumps(worker(a.worker, a.preset, a.seq_len, a.batch, a.steps, a.dtype, a.threads, a.compile)))
        return
    rows = []
    for impl in ("llmcore", "hf"):
        rows.append(run_worker("benchmarks.throughput", impl, [
            "--preset", a.preset, "--seq-len", a.seq_len, "--batch", a.batch, "--steps", a.steps, "--dtype", a.dtype,
            "--threads", a.threads, *(["--compile"] * a.compile)]))
    ours, base = rows
    print(f"\npreset {a.preset} ({ours['params']:,} params), batch {a.batch} x seq {a.seq_len}, {a.dtype}, "
          f"{'compiled blocks, ' if a.compile else ''}{ours['device']}")
    print(f"{'impl':<10}{'tokens/s':>12}{'TFLOP/s':>10}{'MFU':>8}{'peak MB':>10}{'step s':>9}")
    for r in rows:
        mfu = f"{r['mfu']:.1%}" if r["mfu"] else "n/a"
        print(f"{r['impl']:<10}{r['tokens_per_s']:>12.0f}{r['tflops']:>10.4f}{mfu:>8}{r['peak_mem_mb']:>10.0f}{r['step_s']:>9.3f}")
    print(f"llmcore / hf: {ours['tokens_per_s'] / base['tokens_per_s']:.2f}x tokens/s, "
          f"{ours['peak_mem_mb'] / max(base['peak_mem_mb'], 1e-9):.2f}x peak memory")
    append_csv(a.csv, rows)
    print(f"wrote {a.csv}")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
