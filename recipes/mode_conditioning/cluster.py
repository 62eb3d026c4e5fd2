"""`llmcore modes cluster`: modes from gradient clusters when the data has no mode labels.

ModC (arXiv 2512.01127): the per-example gradients of log p(y|x) of examples written in one
style point alike; projected to a few thousand dimensions and clustered, the clusters are
the modes. Steps, for an SFT jsonl and a checkpoint:

1. features: per-example gradients over a parameter subset (`gradients.batched_gradients`,
   one backward per batch), optionally Adam-preconditioned from the checkpoint's
   `optimizer.pt`, projected by the seeded Rademacher matrix (`projection`, D = `dim`,
   generated block by block: no [examples, parameters] array and no [parameters, D] matrix
   ever exists), written in parts of `project_batch` rows to a work folder beside the data;
2. L2 normalisation, then k-means++ with restarts or spherical k-means (`kmeans`);
3. the labels are written as the per-example side-car `name` of the jsonl
   (`llmcore.data.example_sidecar`): train with `data.sidecars: [name]` and
   `mode_conditioning.mode_field: name`. Other files (`assign`, e.g. the validation jsonl)
   get the nearest centroid's label under the same name.

Resume: each part is written atomically and listed only once complete; the work folder's
`meta.json` records what the features are made from (checkpoint hash, data hash, subset,
dim, seed, preconditioning), and a rerun with the same settings skips finished parts (with
other settings it is refused, naming the keys, unless `overwrite`). Same settings and seed:
identical features and labels.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from llmcore.data.collate import to_batch
from llmcore.data.example_sidecar import example_sidecar_dir, write_example_sidecar
from llmcore.data.sft import encode_examples, read_tasks
from llmcore.data.shards import sha256_file
from llmcore.errors import ConfigError, DataError
from recipes.mode_conditioning.gradients import (
    DEFAULT_PARAMS,
    adam_preconditioner,
    batched_gradients,
    select_parameters,
)
from recipes.mode_conditioning.kmeans import assign, kmeans
from recipes.mode_conditioning.projection import RademacherProjection


@dataclass
class ClusterSettings:
    """What `llmcore modes cluster` does (its flags)."""

    modes: int = 2
    dim: int = 4096
    """Projection size D (the paper: "a few thousand"; not published)."""
    params: list[str] = field(default_factory=lambda: list(DEFAULT_PARAMS))
    batch_size: int = 32
    """Examples per forward/backward."""
    project_batch: int = 256
    """Examples per projection pass (the random matrix is regenerated once per pass)."""
    seed: int = 0
    method: str = "kmeans"
    restarts: int = 8
    precondition: bool = False
    name: str = "modes"
    seq_len: int = 256
    answer_tokens: int = 0
    """Only the first N answer tokens of each example enter log p(y|x) (0: all of them): where
    the modes differ in how an answer starts, the rest of a long answer would drown that."""


def features(model, tokenizer, jsonl: str, s: ClusterSettings, work: Path, made_from: dict,
             precondition: dict | None, *, overwrite: bool = False, progress: bool = True) -> np.ndarray:
    """The [examples, dim] projected (not yet normalised) gradient features of `jsonl`,
    computed in resumable parts under `work` (see the module docstring)."""
    from tqdm.auto import tqdm

    rows = encode_examples(read_tasks(jsonl), tokenizer, s.seq_len, jsonl)
    names = select_parameters(model, s.params)
    meta = {"made_from": made_from, "examples": len(rows), "project_batch": s.project_batch}
    _open_work(work, meta, overwrite)
    project = RademacherProjection(s.dim, s.seed)
    device = next(model.parameters()).device
    parts = []
    bar = tqdm(total=len(rows), desc=f"modes cluster: gradient features of {Path(jsonl).name}", unit=" ex",
               disable=not progress)
    for p, start in enumerate(range(0, len(rows), s.project_batch)):
        file = work / f"part_{p:05d}.npy"
        chunk = rows[start:start + s.project_batch]
        if not file.is_file():
            grads: dict[str, list] = {n: [] for n in names}
            for b in range(0, len(chunk), s.batch_size):
                batch = {k: v.to(device) for k, v in to_batch(chunk[b:b + s.batch_size]).items()}
                if s.answer_tokens:
                    batch["labels"] = first_targets(batch["labels"], s.answer_tokens)
                for n, g in batched_gradients(model, names, batch, precondition).items():
                    grads[n].append(g)
                bar.update(min(s.batch_size, len(chunk) - b))
            feats = project({n: torch.cat(v) for n, v in grads.items()}).cpu().numpy()
            tmp = work / f".part_{p:05d}.tmp.npy"
            np.save(tmp, feats)
            os.replace(tmp, file)
        else:
            bar.update(len(chunk))
        parts.append(np.load(file))
    bar.close()
    return np.concatenate(parts)


def first_targets(labels: torch.Tensor, n: int) -> torch.Tensor:
    """labels [B, T] with every target after each row's first n (those != -100) set to -100."""
    keep = (labels != -100) & ((labels != -100).cumsum(1) <= n)
    return labels.masked_fill(~keep, -100)


def _open_work(work: Path, meta: dict, overwrite: bool) -> None:
    file = work / "meta.json"
    if file.is_file() and not overwrite:
        old = json.loads(file.read_text())
        if old != json.loads(json.dumps(meta)):
            diff = sorted(k for k in set(old["made_from"]) | set(meta["made_from"])
                          if old["made_from"].get(k) != meta["made_from"].get(k)) or ["examples / project_batch"]
            raise DataError(f"modes cluster: {work} holds features made with other settings ({', '.join(diff)}); "
                            "pass --overwrite to recompute them")
        return
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    (work / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")


def normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (a zero row stays zero)."""
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def cluster_file(checkpoint: str, data: str, settings: ClusterSettings, *, assign_to: list[str] = (),
                 overwrite: bool = False, progress: bool = True) -> dict:
    """Run steps 1-3 of the module docstring; returns a summary (sizes, inertia, side-cars)."""
    import llmcore
    from llmcore.train import checkpoint as ckpts

    s = settings
    if s.modes < 1 or s.dim < 1 or s.batch_size < 1 or s.project_batch < 1:
        raise ConfigError(f"modes cluster: modes, dim, batch size and project batch must be >= 1 ({asdict(s)})")
    ckpt = ckpts.resolve(checkpoint)
    model, tokenizer = llmcore.load(str(ckpt))
    model.eval()
    made_from = {"checkpoint": str(ckpt), "model_sha256": sha256_file(str(ckpt / "model.safetensors")),
                 "params": s.params, "dim": s.dim, "seed": s.seed, "precondition": s.precondition,
                 "seq_len": s.seq_len, "answer_tokens": s.answer_tokens}
    pre = None
    if s.precondition:
        opt = ckpt / "optimizer.pt"
        if not opt.is_file():
            raise ConfigError(f"modes cluster --precondition needs {opt} (a single-process or DDP checkpoint's "
                              "optimizer state)")
        pre = adam_preconditioner(model, torch.load(opt, map_location="cpu", weights_only=True),
                                  select_parameters(model, s.params))
    out = {"sidecars": {}}
    x = normalise(features(model, tokenizer, data, s, _work(data, s.name),
                           {**made_from, "data_sha256": sha256_file(data)}, pre, overwrite=overwrite,
                           progress=progress))
    labels, centroids, inertia = kmeans(x, s.modes, method=s.method, restarts=s.restarts, seed=s.seed)
    ident = {**made_from, "method": s.method, "restarts": s.restarts, "modes": s.modes}
    write_example_sidecar(data, s.name, labels.astype(np.int64), made_from={**ident, "inertia": inertia},
                          overwrite=True)
    np.save(_work(data, s.name) / "centroids.npy", centroids)
    out["sidecars"][data] = np.bincount(labels, minlength=s.modes).tolist()
    out["inertia"] = inertia
    for other in assign_to:
        y = normalise(features(model, tokenizer, other, s, _work(other, s.name),
                               {**made_from, "data_sha256": sha256_file(other)}, pre, overwrite=overwrite,
                               progress=progress))
        got = assign(y, centroids, s.method)
        write_example_sidecar(other, s.name, got, made_from={**ident, "centroids_of": str(data)}, overwrite=True)
        out["sidecars"][other] = np.bincount(got, minlength=s.modes).tolist()
    return out


def _work(jsonl: str, name: str) -> Path:
    return example_sidecar_dir(jsonl, name).parent / f".{name}-features"


def split_file(data: str, name: str, out_dir: str | None = None) -> list[str]:
    """`llmcore modes split`: one jsonl per mode of side-car `name` (or of a jsonl field of
    that name), `<stem>.mode_<m>.jsonl`: each specialist's training file."""
    from llmcore.data.example_sidecar import (
        available_example_sidecars,
        read_example_sidecar,
    )

    src = Path(data)
    lines = [line for line in src.read_text(encoding="utf-8").splitlines() if line.strip()]
    if name in available_example_sidecars(data):
        labels = read_example_sidecar(data, name, len(lines)).astype(np.int64).tolist()
    else:
        try:
            labels = [int(json.loads(line)[name]) for line in lines]
        except (KeyError, ValueError, TypeError):
            raise DataError(f"modes split: {data} has neither a side-car nor a field {name!r} on every line "
                            f"(side-cars: {available_example_sidecars(data) or 'none'})") from None
    out = Path(out_dir) if out_dir else src.parent
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for m in range(max(labels) + 1):
        f = out / f"{src.stem}.mode_{m}.jsonl"
        f.write_text("".join(line + "\n" for line, lab in zip(lines, labels) if lab == m))
        files.append(str(f))
    return files
