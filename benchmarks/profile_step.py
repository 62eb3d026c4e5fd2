"""Where a training step's GPU time goes: torch.profiler over a few llmcore (or HF Llama)
steps, printed as the top kernels by device time.

    python -m benchmarks.profile_step [--impl llmcore|hf] [--preset 150m] [--seq-len 2048]
        [--batch 8] [--rows 25]

Same model construction, batches and bf16 autocast as ``benchmarks/throughput.py`` (its
``worker`` builds the step); the table is ``key_averages()`` sorted by self device time.
"""

import argparse
import sys


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile_step",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--impl", choices=["llmcore", "hf"], default="llmcore")
    parser.add_argument("--preset", default="150m")
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rows", type=int, default=25)
    args = parser.parse_args(argv)

    import torch
    from torch.profiler import ProfilerActivity, profile

    from benchmarks.throughput import worker

    if not torch.cuda.is_available():
        parser.error("needs a CUDA device")
    worker(args.impl, args.preset, args.seq_len, args.batch, 2, "bf16")  # compile and warm up
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        worker(args.impl, args.preset, args.seq_len, args.batch, 3, "bf16")
    print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=args.rows,
                                    max_name_column_width=60))
    return 0


if __name__ == "__main__":
    sys.exit(main())
