"""`llmcore distill cache`: write an offline teacher cache beside a prepared folder's shards.

Added to `llmcore` through the `llmcore.commands` entry point `distill` (`recipes.distill:
add_command`). The work is `recipes.distill.cache.write_cache`: resumable shard by shard,
with a progress bar; rerunning finishes an interrupted cache and refuses another teacher,
other settings or changed shards, naming both.
"""

from __future__ import annotations


def add_cache_command(parser) -> None:
    actions = parser.add_subparsers(dest="action", required=True)
    c = actions.add_parser("cache", help="top-k or sampled teacher targets as side-cars of a prepared folder")
    c.add_argument("--teacher", required=True, help="teacher checkpoint, run dir or HF Llama folder")
    c.add_argument("--data", required=True, help="prepared data folder (the cache goes into its sidecars/)")
    c.add_argument("--out", required=True,
                   help="cache name C: side-cars C_ids, C_logp (top-k) or C_n, C_nrep, C_count (sampled), C_lse, C_entropy")
    kind = c.add_mutually_exclusive_group()
    kind.add_argument("--top-k", type=int, default=None, help="ids per token, renormalised at training (default 32)")
    kind.add_argument("--sample", type=int, default=None, help="ids drawn per token from the teacher (sampled KD)")
    c.add_argument("--temperature", type=float, default=1.0, help="--sample only: the draws' temperature")
    c.add_argument("--seq-len", type=int, default=None, help="teacher window (default its max_seq_len)")
    c.add_argument("--batch-windows", type=int, default=8, help="windows per teacher forward")
    c.add_argument("--seed", type=int, default=0, help="--sample only: seed of the draws")
    c.add_argument("--splits", default=None, help="comma-separated splits (default all)")
    c.add_argument("--device", default=None)
    c.add_argument("--no-progress", action="store_true")
    c.add_argument("--overwrite", action="store_true", help="discard an existing cache of that name")
    c.set_defaults(fn=_cache)


def _cache(a) -> None:
    from recipes.distill.cache import write_cache

    top_k = a.top_k if a.top_k is not None or a.sample is not None else 32
    out = write_cache(a.teacher, a.data, a.out, top_k=top_k, sample=a.sample, temperature=a.temperature,
                      seq_len=a.seq_len, seed=a.seed, batch_windows=a.batch_windows,
                      splits=a.splits.split(",") if a.splits else None, device=a.device,
                      progress=not a.no_progress, overwrite=a.overwrite)
    print(f"distill cache {a.out}: {out['tokens']:,} tokens written in {out['seconds']:.1f}s, "
          f"{out['bytes_per_token']:g} bytes per token; data.sidecars: {out['sidecars']}")
