"""3SUM over digit tuples: does some triple of the listed items sum to zero (mod 10, per digit)?

The filler-token task of Pfau, Merrill & Bowman, "Let's think dot by dot" (arXiv 2404.15758),
used by the pause-token grid (`benchmarks.experiments.pause_grid`): a yes/no answer that needs
every triple of the prompt checked, O(n^3) comparisons, while a causal transformer of fixed
depth has only one position per prompt token to do them in. Extra positions after the prompt
(pauses, fillers) add parallel width per layer -- room for more of those comparisons -- which is
exactly what pauses can offer and a serial task (a long carry chain) cannot use. One problem:

    prompt "372918045566=" answer "T"     (items 37 29 18 04 55 66; 37 + 18 + 55 = 00 mod 10)

Choices the paper leaves open (or that differ at this scale), made here:
- each item is `dims` digits written without separators (fixed width, so an item's position
  says which digit is which), `n` items per prompt, answer `T` or `F`;
- items are uniform in Z_10^dims and the two labels are balanced by rejection (the natural
  rate of "some triple sums to 0" is 1 - (1 - 10^-dims)^C(n,3)), so chance is 50% and no
  item statistic separates the labels other than the triples themselves;
- the pretraining corpus mixes n in [min_items, n] (as a language over which sums to zero is
  visible at every length), the fine-tuning and test sets use n exactly.
"""

from __future__ import annotations

import functools
import itertools
import os

import numpy as np

from llmcore.errors import ConfigError
from recipes.tasks import files

CHARS = "0123456789=TF"


@functools.cache
def _triples(n: int) -> np.ndarray:
    return np.array(list(itertools.combinations(range(n), 3)), dtype=np.int64).reshape(-1, 3)


def zero_triples(items: np.ndarray, modulus: int = 10) -> np.ndarray:
    """For items [..., n, dims]: whether some i < j < k has items[i] + items[j] + items[k] == 0
    (mod `modulus`) in every digit, per leading index (vectorised over a batch of prompts)."""
    t = _triples(items.shape[-2])
    sums = items[..., t[:, 0], :] + items[..., t[:, 1], :] + items[..., t[:, 2], :]
    return (sums % modulus == 0).all(-1).any(-1)


def has_zero_triple(items: np.ndarray, modulus: int = 10) -> bool:
    """Whether some i < j < k has items[i] + items[j] + items[k] == 0 (mod `modulus`) in every digit."""
    return bool(zero_triples(np.asarray(items), modulus))


def _text(items: np.ndarray) -> str:
    return "".join(map(str, items.reshape(-1).tolist())) + "="


def problem(rng: np.random.Generator, n: int, dims: int, label: bool, modulus: int = 10) -> dict:
    """One problem with `n` items of `dims` digits in [0, modulus) whose answer is `label`
    (drawn by rejection)."""
    _check(n, dims, modulus)
    for _ in range(100):
        items = rng.integers(0, modulus, size=(1000, n, dims))
        hit = np.flatnonzero(zero_triples(items, modulus) == label)
        if hit.size:
            return {"prompt": _text(items[hit[0]]), "answer": "T" if label else "F"}
    raise ConfigError(f"3SUM: no {'positive' if label else 'negative'} problem with n={n}, dims={dims} found "
                      "in 100000 draws; choose n and dims with both labels common")


def _check(n: int, dims: int, modulus: int = 10) -> None:
    if n < 3 or dims < 1 or not 2 <= modulus <= 10:
        raise ConfigError(f"3SUM needs n >= 3 items of dims >= 1 digits modulo 2..10, got n={n}, dims={dims}, "
                          f"modulus={modulus}")


def problems(count: int, seed: int, n: int | tuple[int, int], dims: int,
             exclude: set[str] = frozenset(), modulus: int = 10) -> list[dict]:
    """`count` distinct problems (no prompt of `exclude`), half of each label (alternating);
    `n` an item count or an inclusive (min, max) range drawn per problem; digits in
    [0, modulus). Deterministic."""
    lo, hi = (n, n) if isinstance(n, int) else n
    for k in range(lo, hi + 1):
        _check(k, dims, modulus)
    rng = np.random.default_rng([seed, dims, lo, hi, 0x35] + ([modulus] if modulus != 10 else []))
    seen, out = set(exclude), []
    pools: dict[tuple[int, bool], list[str]] = {}
    for _ in range(20 * count + 1000):
        if len(out) == count:
            return out
        k, label = int(rng.integers(lo, hi + 1)), len(out) % 2 == 0
        pool = pools.setdefault((k, label), [])
        if not pool:  # draw candidates in bulk: one vectorised label check per 4096 prompts
            items = rng.integers(0, modulus, size=(4096, k, dims))
            pool += [_text(x) for x in items[zero_triples(items, modulus) == label]][::-1]
            if not pool:  # a rare label: search harder (and name the problem if there is none)
                pool.append(problem(rng, k, dims, label, modulus)["prompt"])
        prompt = pool.pop()
        if prompt not in seen:
            seen.add(prompt)
            out.append({"prompt": prompt, "answer": "T" if label else "F"})
    raise ConfigError(f"3SUM: cannot draw {count} distinct problems with n={n}, dims={dims}")


def write_jsonl(path: str | os.PathLike, rows: list[dict]) -> str:
    """Rows as JSON lines: the format of `data.format: sft` and `llmcore eval --tasks`."""
    return files.write_jsonl(path, rows)


def train_tokenizer(out_dir: str, special_tokens: list[str] = (), overwrite: bool = True):
    """One piece per character of CHARS (`recipes.tasks.files.char_tokenizer`)."""
    return files.char_tokenizer(out_dir, CHARS, [r["prompt"] + r["answer"] for r in problems(100, 0, (3, 6), 2)],
                                special_tokens, overwrite)


def score(model, tokenizer, jsonl_path: str, *, recipes=None, batch_size: int = 256) -> dict:
    """Greedy exact match of the T/F answer, and the accuracy on each label (a model that
    always answers one label scores 0.5 overall and 1.0 / 0.0 on the labels).
    Returns {"accuracy", "n", "accuracy_T", "accuracy_F"}."""
    from llmcore.eval.tasks import exact_match

    res = exact_match(model, tokenizer, jsonl_path, max_new_tokens=2, recipes=recipes, batch_size=batch_size)
    by = {"T": [], "F": []}
    for e in res["examples"]:
        by[e["answer"]].append(e["prediction"][:1] == e["answer"])
    return {"accuracy": res["accuracy"], "n": res["n"],
            **{f"accuracy_{k}": float(np.mean(v)) if v else float("nan") for k, v in by.items()}}
