"""Countdown: combine the given numbers with + - * to reach a target, solved by written search.

The small-scale check of mode conditioning (arXiv 2512.01127, METHODS.md "Mode
conditioning"): one task with two solution *styles*, stream-of-search traces (Gandhi et al.,
arXiv 2404.03683) of a depth-first and of a breadth-first search, so a model may learn both
and pass@k can gain from sampling both. Used by `benchmarks.experiments.modc` and its tests.

A problem is three numbers in 1..`max_number` and a target reachable in two steps: first two
of the numbers combined by + or *, then that result and the third number by + or - (larger
minus smaller). Fewer operations than the full game keep traces short enough (<= 103
characters, mean 42 / 61) for a tiny model at seq_len 112. The search tree has 6 first-step
nodes (pairs (0,1), (0,2), (1,2) x ops + *, the generation order) of two children each.
Traces, one character per token:

    prompt  "5,3,2>17|"
    dfs     "3*2=6:11,1;3+2=5:10,0;5*2=10:13,7;5+2=7:10,4;5*3=15:17;#(5*3)+2"
    bfs     "[8,15,7,10,5,6]5+3=8:10,6;5*3=15:17;#(5*3)+2"

- dfs: a stack search. The first-step nodes are pushed in generation order, so the last one
  is expanded first; each node's line names it and lists its children's values.
- bfs: a queue search. The whole first level's values are written as a frontier `[...]`
  first, then the nodes are expanded in generation order.
Both stop at the first child equal to the target (the line ends there) and finish with
`#` and the solving expression. The two styles put a given problem's solution at opposite
ends of their order, so a problem that is long (hard) in one style is short in the other
(trace lengths correlate at -0.46 over all problems with numbers up to 9): their per-problem
success rates differ, which is what splitting k across modes exploits.

`verify` parses the final expression with `ast` (never `eval`): only integer constants, + - *
and parentheses; it must use exactly the prompt's numbers (as a multiset) and equal the
target. `style_of` tells which style a generated trace follows. Also here: the
one-piece-per-character tokenizer, the jsonl writer (the style is recorded per example as
`style`: 0 dfs, 1 bfs) and split files per style (for specialists).
"""

from __future__ import annotations

import ast
import os
from collections import Counter

import numpy as np

from llmcore.errors import ConfigError
from recipes.tasks import files

STYLES = ("dfs", "bfs")
CHARS = "0123456789+-*=,:;[]#()>|"
_FIRST_OPS = ("+", "*")
_PAIRS = ((0, 1), (0, 2), (1, 2))


def _apply(a: int, op: str, b: int) -> tuple[int, str]:
    """a op b with minus as larger minus smaller; returns (value, the expression text)."""
    if op == "-" and b > a:
        a, b = b, a
    value = a + b if op == "+" else a - b if op == "-" else a * b
    return value, f"{a}{op}{b}"


def first_level(numbers: list[int]) -> list[tuple[str, int, int]]:
    """The 6 first-step nodes in generation order: (expression, value, the unused number)."""
    out = []
    for i, j in _PAIRS:
        rest = numbers[3 - i - j]
        for op in _FIRST_OPS:
            value, text = _apply(numbers[i], op, numbers[j])
            out.append((text, value, rest))
    return out


def children(value: int, rest: int) -> list[tuple[int, str]]:
    """The two second-step results of a node: (value, op) for + then - (larger minus smaller)."""
    return [(value + rest, "+"), (abs(value - rest), "-")]


def reachable(numbers: list[int]) -> set[int]:
    """Every target a two-step solution reaches (>= 1)."""
    return {v for _, value, rest in first_level(numbers) for v, _ in children(value, rest) if v >= 1}


def _node_line(text: str, value: int, rest: int, target: int) -> tuple[str, str | None]:
    """One expanded node: "a*b=v:c1,c2", stopping at the child equal to the target; returns
    the line and the solving expression (or None)."""
    parts = []
    for v, op in children(value, rest):
        parts.append(str(v))
        if v == target:
            expr = f"({text}){op}{rest}" if value >= rest or op == "+" else f"{rest}-({text})"
            return f"{text}={value}:" + ",".join(parts), expr
    return f"{text}={value}:" + ",".join(parts), None


def trace(numbers: list[int], target: int, style: str) -> str:
    """The search trace of `style` ("dfs" or "bfs") ending in `#<solution>` (see the module
    docstring); ConfigError when the target is not reachable."""
    if style not in STYLES:
        raise ConfigError(f"countdown style must be one of {STYLES}, got {style!r}")
    nodes = first_level(numbers)
    order = nodes[::-1] if style == "dfs" else nodes
    lines = []
    for text, value, rest in order:
        line, expr = _node_line(text, value, rest, target)
        lines.append(line)
        if expr is not None:
            head = "" if style == "dfs" else "[" + ",".join(str(v) for _, v, _ in nodes) + "]"
            return head + ";".join(lines) + ";#" + expr
    raise ConfigError(f"countdown: target {target} is not reachable from {numbers}")


def prompt_of(numbers: list[int], target: int) -> str:
    return ",".join(map(str, numbers)) + f">{target}|"


def parse_prompt(prompt: str) -> tuple[list[int], int]:
    """"5,3,2>16|" -> ([5, 3, 2], 16); ValueError on anything else."""
    body = prompt.strip()
    if not body.endswith("|") or ">" not in body:
        raise ValueError(f"not a countdown prompt: {prompt!r}")
    nums, target = body[:-1].split(">")
    return [int(x) for x in nums.split(",")], int(target)


def problem(rng: np.random.Generator, max_number: int = 9, style: str | None = None) -> dict:
    """One problem: uniform numbers, a uniform reachable target, a uniform style (or `style`).
    Returns {"prompt", "answer", "style" (0 dfs, 1 bfs), "numbers", "target"}."""
    numbers = [int(x) for x in rng.integers(1, max_number + 1, size=3)]
    target = int(rng.choice(sorted(reachable(numbers))))
    s = style if style is not None else STYLES[int(rng.integers(2))]
    return {"prompt": prompt_of(numbers, target), "answer": trace(numbers, target, s), "style": STYLES.index(s)}


def problems(n: int, seed: int, max_number: int = 9, exclude: set[str] = frozenset()) -> list[dict]:
    """`n` problems with distinct prompts not in `exclude`; deterministic for a seed."""
    rng = np.random.default_rng([seed, max_number, 0xC0])
    seen, out = set(exclude), []
    for _ in range(200 * n + 1000):
        if len(out) == n:
            return out
        row = problem(rng, max_number)
        if row["prompt"] not in seen:
            seen.add(row["prompt"])
            out.append(row)
    raise ConfigError(f"could not draw {n} distinct countdown problems with numbers up to {max_number}")


# --- checking a generation ---------------------------------------------------------------------

def _value(node: ast.AST, used: list[int]) -> int:
    """Evaluate an expression tree of integer constants and + - * only (no eval)."""
    if isinstance(node, ast.Constant) and type(node.value) is int:
        used.append(node.value)
        return node.value
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub, ast.Mult)):
        a, b = _value(node.left, used), _value(node.right, used)
        return a + b if isinstance(node.op, ast.Add) else a - b if isinstance(node.op, ast.Sub) else a * b
    raise ValueError(f"not allowed in a countdown answer: {ast.dump(node)[:60]}")


def final_expression(completion: str) -> str | None:
    """The text after the last `#` up to the end of the line, or None without one."""
    if "#" not in completion:
        return None
    return completion.rsplit("#", 1)[1].split("\n", 1)[0].strip()


def verify(prompt: str, answer: str, completion: str) -> bool:
    """True when the completion's final expression uses exactly the prompt's numbers and
    equals its target (`answer`, the reference trace, is not needed: any solution counts).
    The signature is that of `llmcore eval --verifier`."""
    numbers, target = parse_prompt(prompt)
    expr = final_expression(completion)
    if not expr or len(expr) > 40:
        return False
    try:
        tree = ast.parse(expr, mode="eval")
        used: list[int] = []
        value = _value(tree.body, used)
    except (SyntaxError, ValueError, RecursionError):
        return False
    return value == target and Counter(used) == Counter(numbers)


def style_of(completion: str) -> int:
    """0 for a depth-first trace, 1 for a breadth-first one (it opens with its frontier `[`),
    -1 for anything else (empty)."""
    text = completion.lstrip()
    if not text:
        return -1
    return 1 if text.startswith("[") else 0 if text[0].isdigit() else -1


# --- files -------------------------------------------------------------------------------------

def write_jsonl(path: str | os.PathLike, rows: list[dict]) -> str:
    """Rows as JSON lines {"prompt", "answer", "style"}: `data.format: sft` with
    `data.sft_fields: [style]`, and `llmcore eval --tasks`."""
    return files.write_jsonl(path, rows, fields=("prompt", "answer", "style"))


def split_by(rows: list[dict], labels) -> list[list[dict]]:
    """The rows of each label 0..max(labels) (a specialist's training set per mode)."""
    labels = [int(x) for x in labels]
    return [[r for r, m in zip(rows, labels) if m == c] for c in range(max(labels) + 1)]


def train_tokenizer(out_dir: str, special_tokens: list[str] = (), overwrite: bool = True):
    """One piece per character of CHARS and no merges (`recipes.tasks.files.char_tokenizer`), so
    every digit and operator is one token and encode(prompt) + encode(answer) == encode(prompt + answer)."""
    sample = [r["prompt"] + r["answer"] for r in problems(200, 0)]
    return files.char_tokenizer(out_dir, CHARS, sample, special_tokens, overwrite)


