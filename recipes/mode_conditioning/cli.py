"""`llmcore modes cluster | split`: the mode conditioning recipe's commands.

Registered through the `llmcore.commands` entry point (`modes =
"recipes.mode_conditioning:add_command"`); see `recipes.mode_conditioning.cluster`.
"""

from __future__ import annotations

import json

from recipes.mode_conditioning.cluster import ClusterSettings, cluster_file, split_file
from recipes.mode_conditioning.gradients import DEFAULT_PARAMS


def build(parser) -> None:
    """Add the `cluster` and `split` actions to the parser of `llmcore modes`."""
    actions = parser.add_subparsers(dest="action", required=True)
    c = actions.add_parser("cluster", help="cluster per-example gradients into modes; write the side-car")
    c.add_argument("--checkpoint", required=True, help="run or checkpoint whose gradients are clustered")
    c.add_argument("--data", required=True, help="SFT jsonl to cluster (the side-car is written beside it)")
    c.add_argument("--assign", nargs="*", default=[], help="more jsonl files labelled by the nearest centroid")
    c.add_argument("--modes", type=int, default=2)
    c.add_argument("--dim", type=int, default=4096, help="random projection size D")
    c.add_argument("--params", default=",".join(DEFAULT_PARAMS),
                   help="comma-separated parameter name prefixes (layers.-1. = the last block)")
    c.add_argument("--batch-size", type=int, default=32)
    c.add_argument("--project-batch", type=int, default=256)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--method", default="kmeans", choices=["kmeans", "spherical"])
    c.add_argument("--restarts", type=int, default=8)
    c.add_argument("--precondition", action="store_true", help="divide by Adam's sqrt(v_hat) + eps")
    c.add_argument("--name", default="modes", help="side-car name (train with data.sidecars: [name])")
    c.add_argument("--seq-len", type=int, default=256)
    c.add_argument("--answer-tokens", type=int, default=0,
                   help="only the first N answer tokens enter log p(y|x) (0: all)")
    c.add_argument("--overwrite", action="store_true", help="recompute features made with other settings")
    c.add_argument("--no-progress", action="store_true")
    c.set_defaults(fn=_cluster)
    s = actions.add_parser("split", help="one jsonl per mode (specialists' training files)")
    s.add_argument("--data", required=True)
    s.add_argument("--name", default="modes", help="side-car (or jsonl field) holding the modes")
    s.add_argument("--out-dir", default=None)
    s.set_defaults(fn=_split)


def _cluster(a) -> None:
    settings = ClusterSettings(modes=a.modes, dim=a.dim, params=[p for p in a.params.split(",") if p],
                               batch_size=a.batch_size, project_batch=a.project_batch, seed=a.seed,
                               method=a.method, restarts=a.restarts, precondition=a.precondition, name=a.name,
                               seq_len=a.seq_len, answer_tokens=a.answer_tokens)
    out = cluster_file(a.checkpoint, a.data, settings, assign_to=a.assign, overwrite=a.overwrite,
                       progress=not a.no_progress)
    print(json.dumps(out, indent=1))


def _split(a) -> None:
    for f in split_file(a.data, a.name, a.out_dir):
        print(f)
