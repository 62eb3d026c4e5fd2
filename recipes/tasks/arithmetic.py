"""Multi-digit addition, answer most-significant digit first: a task whose first answer token
needs a carry chain as long as the operands.

Used by the pause-token experiment (`benchmarks.experiments.pause_grid`) and its tests; any
recipe that claims extra computation per answer token can use it. A problem is

    prompt "04213+93021="   answer "097234"

with both operands zero-padded to `digits` digits and the sum to `digits + 1`, so every
position means the same thing in every row. Written most-significant first, the first answer
digit is the carry out of the whole addition: it depends on every digit pair below it through
the carry chain, a serial computation `digits` steps long -- longer than the 2-layer models
the experiment trains. With uniform digits a pair sums to 9 (and so passes a carry on) only 1
time in 10, which makes long chains rare; `chain` raises that probability so long chains are
common and cannot be guessed from the top digits.

Also here: a minimal tokenizer for the task's characters, a writer for an SFT jsonl
(`data.format: sft`; the pretraining folder is `recipes.tasks.files.write_pretraining_data`),
and exact-match scoring (with the
accuracy of each answer digit) through `llmcore.eval.tasks.exact_match`.
`python -m recipes.tasks.arithmetic --out DIR` writes the jsonl files and a text corpus.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

from llmcore.errors import ConfigError
from recipes.tasks import files

CHARS = "0123456789+="


def problem(rng: np.random.Generator, digits: int, chain: float = 0.0) -> dict:
    """One addition of two `digits`-digit operands; each digit pair sums to 9 (carries
    propagate through it) with probability `chain` on top of the uniform draw."""
    if digits < 1:
        raise ConfigError(f"digits must be >= 1, got {digits}")
    if not 0.0 <= chain <= 1.0:
        raise ConfigError(f"chain must be in [0, 1], got {chain}")
    a = rng.integers(0, 10, size=digits)
    b = rng.integers(0, 10, size=digits)
    nine = rng.random(digits) < chain
    b = np.where(nine, 9 - a, b)
    x, y = "".join(map(str, a)), "".join(map(str, b))
    return {"prompt": f"{x}+{y}=", "answer": str(int(x) + int(y)).zfill(digits + 1)}


def problems(n: int, seed: int, digits: int | tuple[int, int], chain: float = 0.0,
             exclude: set[str] = frozenset()) -> list[dict]:
    """`n` distinct problems (no prompt of `exclude`); `digits` a width or an inclusive
    (min, max) range drawn uniformly per problem. Deterministic for a seed."""
    lo, hi = (digits, digits) if isinstance(digits, int) else digits
    if 10 ** (2 * hi) < 2 * (n + len(exclude)):
        raise ConfigError(f"cannot draw {n} distinct {lo}-{hi} digit problems")
    rng = np.random.default_rng([seed, 0xADD])
    seen, out = set(exclude), []
    while len(out) < n:
        row = problem(rng, int(rng.integers(lo, hi + 1)), chain)
        if row["prompt"] not in seen:
            seen.add(row["prompt"])
            out.append(row)
    return out


def write_jsonl(path: str | os.PathLike, rows: list[dict]) -> str:
    """Rows as JSON lines ({"prompt", "answer"}), the format of `data.format: sft` and
    `llmcore eval --tasks`."""
    return files.write_jsonl(path, rows)


def train_tokenizer(out_dir: str, special_tokens: list[str], overwrite: bool = True):
    """The smallest tokenizer for the task: one piece per character of CHARS (no merges),
    the control tokens, `special_tokens` and the reserved/byte pieces every llmcore tokenizer
    has (`recipes.tasks.files.char_tokenizer`)."""
    sample = [r["prompt"] + r["answer"] for r in problems(200, 0, (1, 4))]
    return files.char_tokenizer(out_dir, CHARS, sample, special_tokens, overwrite)


def score(model, tokenizer, jsonl_path: str, *, recipes=None, batch_size: int = 256) -> dict:
    """Greedy exact match of a task file, plus the accuracy of each answer digit (index 0 is
    the most significant: the one at the end of the longest carry chain).

    `recipes` (a RecipeSet, e.g. `llmcore.load_recipes(ckpt)`) rewrites prompts and bans
    tokens as in `llmcore eval`. Returns {"accuracy", "n", "digit_accuracy": [...]}.
    """
    from llmcore.data.sft import read_tasks
    from llmcore.eval.tasks import exact_match

    width = max(len(t["answer"]) for t in read_tasks(jsonl_path))
    res = exact_match(model, tokenizer, jsonl_path, max_new_tokens=width + 1, recipes=recipes,
                      batch_size=batch_size)
    hits = np.zeros(width)
    for e in res["examples"]:
        pred, ans = e["prediction"].ljust(width), e["answer"].ljust(width)
        hits += [p == a for p, a in zip(pred[:width], ans[:width])]
    return {"accuracy": res["accuracy"], "n": res["n"],
            "digit_accuracy": (hits / max(1, res["n"])).round(4).tolist()}


def main(argv: list[str] | None = None) -> None:
    from llmcore.recipe.registry import all_special_tokens

    p = argparse.ArgumentParser(description="write the addition task: train/val/test jsonl (SFT and eval), "
                                            "a tokenizer and a prepared pretraining folder")
    p.add_argument("--out", required=True)
    p.add_argument("--digits", type=int, default=7, help="operand width of the SFT/eval problems")
    p.add_argument("--min-digits", type=int, default=1, help="pretraining corpus widths: min..digits")
    p.add_argument("--chain", type=float, default=0.5, help="probability a digit pair sums to 9")
    p.add_argument("--train", type=int, default=50000, help="rows of train.jsonl")
    p.add_argument("--eval", type=int, default=500, help="rows of val.jsonl and of test.jsonl")
    p.add_argument("--corpus", type=int, default=200000, help="pretraining documents (95%% train, 5%% val)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    out = Path(a.out)
    test = problems(a.eval, a.seed + 1, a.digits, a.chain)
    val = problems(a.eval, a.seed + 2, a.digits, a.chain, exclude={r["prompt"] for r in test})
    held = {r["prompt"] for r in test + val}
    write_jsonl(out / "test.jsonl", test)
    write_jsonl(out / "val.jsonl", val)
    write_jsonl(out / "train.jsonl", problems(a.train, a.seed + 3, a.digits, a.chain, exclude=held))
    tok = train_tokenizer(str(out / "tokenizer"), all_special_tokens())
    corpus = problems(a.corpus, a.seed + 4, (a.min_digits, a.digits), a.chain, exclude=held)
    cut = len(corpus) * 19 // 20
    files.write_pretraining_data(str(out / "pretrain"), tok, corpus[:cut], corpus[cut:])
    print(f"wrote {out}/{{train,val,test}}.jsonl, {out}/tokenizer (vocab {tok.vocab_size}) and "
          f"{out}/pretrain ({len(corpus)} documents)")


if __name__ == "__main__":
    main()
