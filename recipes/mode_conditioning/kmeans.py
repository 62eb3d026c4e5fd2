"""k-means for ModC's gradient features: k-means++ with restarts, or spherical k-means; plus
the agreement scores the tests and the experiment report (adjusted Rand index, purity).

Used by `recipes.mode_conditioning.cluster`. The paper clusters projected gradients with
k-means into C = 2-4 clusters and gives no further detail. Chosen here:
- `kmeans`: Euclidean Lloyd iterations from k-means++ seeds (Arthur & Vassilvitskii 2007),
  `restarts` seeded restarts, the run with the lowest inertia (sum of squared distances) kept;
- `spherical`: the same on the unit sphere: assignment by the largest cosine, centroids
  renormalised to unit length, "inertia" sum(1 - cos), k-means++ seeding by 1 - cos;
- ties in assignment go to the lower cluster index, an emptied cluster is re-seeded at the
  point farthest from its centroid, and clusters are renumbered by first appearance in the
  data (so the labels of two equal clusterings are equal, not merely a permutation).
All in float64 numpy from a seeded Generator: the same seed gives the same labels.
"""

from __future__ import annotations

import numpy as np

from llmcore.errors import ConfigError

METHODS = ("kmeans", "spherical")


def _distances(x: np.ndarray, c: np.ndarray, spherical: bool) -> np.ndarray:
    """[N, K] squared Euclidean distances, or 1 - cosine for unit vectors."""
    if spherical:
        return np.maximum(1.0 - x @ c.T, 0.0)
    return np.maximum((x * x).sum(1)[:, None] - 2.0 * x @ c.T + (c * c).sum(1)[None, :], 0.0)


def _seed_plus_plus(x: np.ndarray, k: int, rng: np.random.Generator, spherical: bool) -> np.ndarray:
    centers = [x[int(rng.integers(len(x)))]]
    d = _distances(x, np.stack(centers), spherical)[:, 0]
    for _ in range(1, k):
        total = d.sum()
        i = int(rng.choice(len(x), p=d / total)) if total > 0 else int(rng.integers(len(x)))
        centers.append(x[i])
        d = np.minimum(d, _distances(x, x[i:i + 1], spherical)[:, 0])
    return np.stack(centers)


def _lloyd(x, centers, spherical, iters):
    labels = None
    for _ in range(iters):
        d = _distances(x, centers, spherical)
        new = d.argmin(1)  # argmin: the lower index on ties
        if labels is not None and np.array_equal(new, labels):
            break
        labels = new
        for j in range(len(centers)):
            members = x[labels == j]
            if len(members) == 0:  # re-seed at the point worst served by its centroid
                members = x[[int(d[np.arange(len(x)), labels].argmax())]]
            c = members.mean(0)
            if spherical:
                c = c / max(np.linalg.norm(c), 1e-12)
            centers[j] = c
    d = _distances(x, centers, spherical)
    labels = d.argmin(1)
    return labels, centers, float(d[np.arange(len(x)), labels].sum())


def canonical(labels: np.ndarray) -> np.ndarray:
    """Renumber clusters by first appearance (0 for the first row's cluster, ...)."""
    order = {}
    for v in labels.tolist():
        order.setdefault(v, len(order))
    return np.array([order[v] for v in labels.tolist()], dtype=np.int64)


def kmeans(x: np.ndarray, k: int, *, method: str = "kmeans", restarts: int = 8, iters: int = 100,
           seed: int = 0) -> tuple[np.ndarray, np.ndarray, float]:
    """Cluster rows of x [N, D] into k: (labels [N] int64, centroids [k, D], inertia) of the
    best of `restarts` runs (see the module docstring)."""
    if method not in METHODS:
        raise ConfigError(f"modes cluster: method {method!r} is not one of {', '.join(METHODS)}")
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or not 1 <= k <= len(x):
        raise ConfigError(f"modes cluster: cannot make {k} clusters of {x.shape[0] if x.ndim else 0} points")
    spherical = method == "spherical"
    if spherical:
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    rng = np.random.default_rng([seed, 0x6B6D])
    best = None
    for _ in range(max(1, restarts)):
        labels, centers, inertia = _lloyd(x, _seed_plus_plus(x, k, rng, spherical), spherical, iters)
        if best is None or inertia < best[2] - 1e-12:
            best = (labels, centers.copy(), inertia)
    labels, centers, inertia = best
    order = {}
    for v in labels.tolist():
        order.setdefault(v, len(order))
    perm = [c for c, _ in sorted(order.items(), key=lambda kv: kv[1])] + [c for c in range(k) if c not in order]
    return canonical(labels), centers[perm], inertia


def assign(x: np.ndarray, centroids: np.ndarray, method: str = "kmeans") -> np.ndarray:
    """Nearest centroid of each row (new data, e.g. the validation file), lower index on ties."""
    x = np.asarray(x, dtype=np.float64)
    spherical = method == "spherical"
    if spherical:
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return _distances(x, np.asarray(centroids, dtype=np.float64), spherical).argmin(1).astype(np.int64)


def adjusted_rand_index(a, b) -> float:
    """Hubert & Arabie's adjusted Rand index of two labelings (1 = identical up to renaming)."""
    a, b = np.asarray(a), np.asarray(b)
    _, ai = np.unique(a, return_inverse=True)
    _, bi = np.unique(b, return_inverse=True)
    table = np.zeros((ai.max() + 1, bi.max() + 1), dtype=np.int64)
    np.add.at(table, (ai, bi), 1)

    def pairs(v):
        return float((v * (v - 1) // 2).sum())
    index, rows, cols, total = pairs(table), pairs(table.sum(1)), pairs(table.sum(0)), len(a) * (len(a) - 1) / 2
    expected = rows * cols / total if total else 0.0
    top = (rows + cols) / 2 - expected
    return 1.0 if top == 0 else (index - expected) / top


def purity(labels, truth) -> float:
    """Fraction of points whose cluster's majority true label is their own."""
    labels, truth = np.asarray(labels), np.asarray(truth)
    hit = 0
    for c in np.unique(labels):
        _, counts = np.unique(truth[labels == c], return_counts=True)
        hit += int(counts.max())
    return hit / len(labels)
