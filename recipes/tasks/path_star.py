"""Path-star graphs: find the path from the centre to a named leaf, given the shuffled edges.

The planning task of Bachmann & Nagarajan, "The pitfalls of next-token prediction" (arXiv
2403.06963), used by FSP (arXiv 2510.14751) to show that predicting a summary of the future
fixes what teacher-forced next-token prediction cannot learn. Used by
`benchmarks.experiments.path_star` and its tests. A graph has a start node with `degree` arms;
each arm is a chain of `path_len - 1` nodes, so the answer -- start, then the goal's arm out
to the goal leaf -- has `path_len` nodes. Node names are drawn per graph from the first
`num_nodes` letters of NODES. One problem:

    prompt "fq,ab,qk,bz,fa,kt|ft="    (edges parent->child, shuffled; then start, goal)
    answer "fqkt"

Teacher forcing makes every answer token after the first choice trivial (the child of the
previous node in the edge list: the "Clever Hans" cheat), which starves the one hard token --
the first node after the start, which needs the goal's arm traced backwards -- of signal:
NTP stays near 1/degree on it. `score` reports that choice separately.

Also here: the task's one-piece-per-character tokenizer and exact-match scoring through
`llmcore.eval.tasks.exact_match`.
"""

from __future__ import annotations

import os

import numpy as np

from llmcore.errors import ConfigError
from recipes.tasks import files

NODES = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
CHARS = NODES + ",|="


def problem(rng: np.random.Generator, degree: int, path_len: int, num_nodes: int) -> dict:
    """One path-star graph as {"prompt", "answer"} (see the module docstring)."""
    needed = degree * (path_len - 1) + 1
    if degree < 2 or path_len < 2:
        raise ConfigError(f"path-star needs degree >= 2 and path_len >= 2, got {degree}, {path_len}")
    if not needed <= num_nodes <= len(NODES):
        raise ConfigError(f"degree {degree} x (path_len {path_len} - 1) + 1 = {needed} nodes do not fit in "
                          f"num_nodes={num_nodes} (at most {len(NODES)})")
    names = [NODES[i] for i in rng.choice(num_nodes, needed, replace=False)]
    start, arms = names[0], [names[1 + a * (path_len - 1): 1 + (a + 1) * (path_len - 1)] for a in range(degree)]
    edges = [(start, arm[0]) for arm in arms] + [(arm[i], arm[i + 1]) for arm in arms for i in range(path_len - 2)]
    edges = [edges[i] for i in rng.permutation(len(edges))]
    arm = arms[int(rng.integers(degree))]
    return {"prompt": ",".join(u + v for u, v in edges) + f"|{start}{arm[-1]}=", "answer": start + "".join(arm)}


def problems(n: int, seed: int, degree: int, path_len: int, num_nodes: int,
             exclude: set[str] = frozenset()) -> list[dict]:
    """`n` distinct problems whose prompt is not in `exclude`; deterministic for a seed."""
    rng = np.random.default_rng([seed, degree, path_len, num_nodes])
    seen, out = set(exclude), []
    for _ in range(100 * n + 1000):
        if len(out) == n:
            return out
        row = problem(rng, degree, path_len, num_nodes)
        if row["prompt"] not in seen:
            seen.add(row["prompt"])
            out.append(row)
    raise ConfigError(f"could not draw {n} distinct path-star problems (degree {degree}, path_len {path_len}, "
                      f"num_nodes {num_nodes})")


def write_jsonl(path: str | os.PathLike, rows: list[dict]) -> str:
    """Rows as JSON lines: the format of `data.format: sft` and `llmcore eval --tasks`."""
    return files.write_jsonl(path, rows)


def train_tokenizer(out_dir: str, special_tokens: list[str] = (), overwrite: bool = True):
    """One piece per character of CHARS and no merges (`recipes.tasks.files.char_tokenizer`),
    so every node is one token and encode(prompt) + encode(answer) == encode(prompt + answer)."""
    sample = [r["prompt"] + r["answer"] for r in problems(200, 0, 2, 5, len(NODES))]
    return files.char_tokenizer(out_dir, CHARS, sample, special_tokens, overwrite)


def edges_of(prompt: str) -> set[tuple[str, str]]:
    """The (parent, child) edges listed in a prompt."""
    return {(e[0], e[1]) for e in prompt.split("|", 1)[0].split(",")}


def judge(prompt: str, answer: str, prediction: str) -> dict:
    """Per-example verdicts: exact match; first choice right (the node after the start);
    a valid walk (start first, every step an edge of the prompt: the Clever-Hans skill)."""
    edges = edges_of(prompt)
    walk = len(prediction) >= 2 and prediction[0] == answer[0] and all(
        (a, b) in edges for a, b in zip(prediction, prediction[1:]))
    return {"correct": prediction == answer, "first": prediction[1:2] == answer[1:2], "valid_walk": walk}


def score(model, tokenizer, jsonl_path: str, *, recipes=None, batch_size: int = 256) -> dict:
    """Greedy exact match of a path-star file plus the first-choice accuracy and the rate of
    valid walks. Returns {"accuracy", "first_step", "valid_walk", "n"}."""
    from llmcore.data.sft import read_tasks
    from llmcore.eval.tasks import exact_match

    width = max(len(t["answer"]) for t in read_tasks(jsonl_path))
    res = exact_match(model, tokenizer, jsonl_path, max_new_tokens=width + 1, recipes=recipes,
                      batch_size=batch_size)
    verdicts = [judge(e["prompt"], e["answer"].strip(), e["prediction"]) for e in res["examples"]]
    n = max(1, len(verdicts))
    return {"accuracy": res["accuracy"], "n": res["n"],
            "first_step": sum(v["first"] for v in verdicts) / n,
            "valid_walk": sum(v["valid_walk"] for v in verdicts) / n}
