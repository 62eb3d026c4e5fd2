"""The offline distillation cache: bytes per token on disk and write throughput against the
teacher's plain forward, in one run on one machine.

Builds a tokenizer (vocab `--vocab`) and a prepared folder from the bundled jargon corpus, a
teacher of `--preset`: randomly initialised, or trained `--teacher-steps` steps on the same
training split (speed does not depend on training; a sampled cache's bytes do: a peaked
teacher repeats ids, a random one is near uniform), then, `--rounds` times in turn, keeping
the best of each:
- plain: the teacher's forward + full logits (`model.logits(model(x))`) over the same windows
  the cache reads (`--seq-len`, `--batch-windows` per forward), tokens per second;
- cache: `recipes.distill.cache.write_cache` end to end (forward, chunked softmax statistics,
  top-k or sampling, float16 quantisation, .npy files, checksums, manifests), tokens per second;
- bytes per token: every side-car file of the cache over the tokens it covers (headers included);
  for a sampled cache also the teacher's mean entropy and the distribution of distinct ids
  per token (u, of which r drawn more than once: 10 + 2u + r bytes), on the training split and
  (not timed) the held-out val split.
Targets: <= 136 B/token at top-32 and <= 40 sampled (V <= 65536); throughput >= 0.9x plain.

    python -m benchmarks.distill_cache --preset tiny --top-k 32
    python -m benchmarks.distill_cache --preset tiny --sample 24 --teacher-steps 300

Prints the table and appends to benchmarks/results/distill_cache.csv.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import torch

from benchmarks._record import ROOT, append_csv, git_commit


def _setup(root: Path, preset: str, vocab: int, max_docs: int, teacher_steps: int = 0, seq_len: int = 256,
           teacher_lr: float = 3e-3):
    import gzip

    import llmcore
    from llmcore.config.schema import ModelConfig
    from llmcore.data.prepare import prepare
    from llmcore.model.presets import resolve_model_args
    from llmcore.model.transformer import Transformer
    from llmcore.tokenizer import Tokenizer

    corpus = next((ROOT / "llmcore" / "data" / "corpus").glob("*.gz"))
    with gzip.open(corpus, "rt", errors="replace") as f:
        text = f.read().split("\n\n")[:max_docs]
    src = root / "corpus.txt"
    src.write_text("\n\n".join(text))
    tok = Tokenizer.train([str(src)], str(root / "tok"), vocab)
    prepare([str(src)], tok, str(root / "data"), val_fraction=0.02, progress=False)
    shutil.copytree(root / "tok", root / "data" / "tokenizer")
    torch.manual_seed(0)
    args = resolve_model_args(ModelConfig(preset=preset), tok.vocab_size)
    if teacher_steps:
        from llmcore.config.load import load_run_config
        from llmcore.train.loop import Trainer

        Trainer(load_run_config(None, [f"data.path={root / 'data'}", f"train.out_dir={root / 'teacher'}",
                                       f"model.preset={preset}", f"train.max_steps={teacher_steps}",
                                       f"data.seq_len={seq_len}", "train.micro_batch_size=8",
                                       "train.global_batch_size=8", "train.progress=false", "train.seed=0",
                                       f"optim.lr={teacher_lr}"])).fit()
    else:
        llmcore.save(Transformer(args), tok, str(root / "teacher"))
    return root / "data", root / "teacher", args


def _sampled_stats(data: Path, split: str = "train") -> dict:
    """Mean teacher entropy and the distinct ids per token (u) of cache `kd` of a split of `data`."""
    import numpy as np

    from llmcore.data.shards import TokenShards
    from llmcore.data.sidecar import Sidecar

    shards = TokenShards(str(data), split)
    u, r = (Sidecar(shards, f"kd_{p}").read(0, len(shards)).astype(np.int64)[1:] for p in ("n", "nrep"))  # row 0: no teacher
    ent = Sidecar(shards, "kd_entropy").read(0, len(shards))[1:]
    q = np.percentile(u, [10, 50, 90])
    hist = np.bincount(u)
    print(f"{split}: distinct ids per token: " + " ".join(f"{i}:{c / len(u):.3f}" for i, c in enumerate(hist) if c))
    pre = "" if split == "train" else f"{split}_"
    return {f"{pre}teacher_entropy": round(float(ent.mean()), 3), f"{pre}unique_mean": round(float(u.mean()), 2),
            f"{pre}repeated_mean": round(float(r.mean()), 2),
            f"{pre}unique_p10_p50_p90_max": f"{q[0]:.0f}/{q[1]:.0f}/{q[2]:.0f}/{u.max()}"}


@torch.no_grad()
def _plain_forward(teacher: Path, data: Path, seq_len: int, batch_windows: int) -> tuple[int, float]:
    import llmcore
    from llmcore.data.shards import TokenShards

    model, _ = llmcore.load(str(teacher), device="cpu")
    shards = TokenShards(str(data), "train")
    n = len(shards)
    t0, tokens = time.perf_counter(), 0
    starts = list(range(0, n - seq_len, seq_len))
    for lo in range(0, len(starts), batch_windows):
        group = starts[lo:lo + batch_windows]
        ids = torch.stack([torch.from_numpy(shards.read(a, seq_len)) for a in group])
        doc = torch.stack([torch.from_numpy(shards.doc_ids(a, seq_len)) for a in group])
        model.logits(model(ids, doc))
        tokens += ids.numel()
    return tokens, time.perf_counter() - t0


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="tiny")
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--sample", type=int, default=None)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch-windows", type=int, default=8)
    p.add_argument("--max-docs", type=int, default=3000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--teacher-steps", type=int, default=0, help="train the teacher this many steps first (0: random)")
    p.add_argument("--teacher-lr", type=float, default=3e-3)
    p.add_argument("--csv", default=str(ROOT / "benchmarks" / "results" / "distill_cache.csv"))
    a = p.parse_args(argv)
    if a.top_k is None and a.sample is None:
        a.top_k = 32
    from recipes.distill.cache import write_cache

    with tempfile.TemporaryDirectory() as tmp:
        data, teacher, args = _setup(Path(tmp), a.preset, a.vocab, a.max_docs, a.teacher_steps, a.seq_len,
                                     a.teacher_lr)
        _plain_forward(teacher, data, a.seq_len, a.batch_windows)  # warm-up
        best_plain, best_cache = 0.0, 0.0
        for _ in range(a.rounds):  # in turn, best of each: the least disturbed on a shared machine
            plain_tok, plain_s = _plain_forward(teacher, data, a.seq_len, a.batch_windows)
            best_plain = max(best_plain, plain_tok / plain_s)
            info = write_cache(str(teacher), str(data), "kd", top_k=a.top_k, sample=a.sample, seq_len=a.seq_len,
                               batch_windows=a.batch_windows, splits=["train"], progress=False, overwrite=True)
            best_cache = max(best_cache, info["tokens"] / info["seconds"])
        files = list((data / "sidecars").glob("kd_*/**/*.npy"))  # C_n too (read through C_ids / C_count)
        disk = sum(os.path.getsize(f) for f in files)
        stats = _sampled_stats(data) if a.sample else {}
        if a.sample:  # held out from a trained teacher: not timed, for the bytes only
            val = write_cache(str(teacher), str(data), "kd", sample=a.sample, seq_len=a.seq_len, splits=["val"],
                              progress=False)
            stats.update(_sampled_stats(data, "val"), val_bytes_per_token=val["bytes_per_token"])
    row = {"device": f"cpu {platform.machine()} x{torch.get_num_threads()}", "dtype": "float32",
           "preset": a.preset, "teacher_steps": a.teacher_steps, "vocab": args.vocab_size, "mode": f"top-{a.top_k}" if a.top_k else f"sample-{a.sample}",
           "seq_len": a.seq_len, "tokens": info["tokens"], "bytes_per_token_rows": info["bytes_per_token"],
           "bytes_per_token_disk": round(disk / info["tokens"], 2),
           "plain_tok_s": round(best_plain), "cache_tok_s": round(best_cache), "ratio": round(best_cache / best_plain, 3),
           **stats, "commit": git_commit()}
    print(" | ".join(f"{k}={v}" for k, v in row.items()))
    append_csv(a.csv, [row])


if __name__ == "__main__":
    main()
