"""pass@k of sampled answers on prompt -> answer tasks, at several temperatures.

Used by `llmcore eval --pass-at-k` and the experiments that measure test-time scaling
(distillation). For each prompt, n answers are sampled (one batch, through
`llmcore.generate.groups.sample_groups`, so a recipe's fan-out and decoding hooks apply),
each judged correct by `match`, and pass@k is the unbiased estimator of Chen et al.
(`llmcore.eval.pass_at_k`) averaged over prompts. `match`: "exact" (the answer's first line,
stripped, equals the task's answer, as `llmcore.eval.tasks.exact_match`) or "regex" (it fully
matches the task's answer read as a regular expression: a task with many valid answers).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from llmcore.data.sft import read_tasks
from llmcore.errors import ConfigError
from llmcore.eval.pass_at_k import pass_at_k
from llmcore.eval.tasks import first_line
from llmcore.generate.groups import sample_groups

MATCHES = ("exact", "regex")


def judge(pred: str, answer: str, match: str) -> bool:
    """True when the first line of `pred` answers `answer` under `match`."""
    got = first_line(pred)
    return got == answer.strip() if match == "exact" else re.fullmatch(answer, got) is not None


def pass_at_k_sweep(model, tokenizer, tasks: str | list[dict], *, n: int, ks: Sequence[int],
                    temperatures: Sequence[float], match: str = "exact", max_new_tokens: int = 32,
                    top_k: int = 0, top_p: float = 1.0, seed: int = 0, recipes=None) -> dict:
    """{"T=<t>": {"pass@<k>": mean over prompts, ...}, "n", "prompts"} for every temperature.

    `tasks`: a prompt/answer JSON-lines path or a list of {"prompt", "answer"}; every k must be
    in 1..n. Samples of prompt i at temperature index j use seed `seed + 1000003 * j + i`, so
    the sweep is reproducible and temperatures do not share noise.
    """
    if match not in MATCHES:
        raise ConfigError(f"pass@k match={match!r} is not one of {MATCHES}")
    if n < 1 or not ks or any(not 1 <= k <= n for k in ks):
        raise ConfigError(f"pass@k needs 1 <= k <= n for every k, got n={n}, ks={list(ks)}")
    if not temperatures or any(t < 0 for t in temperatures):
        raise ConfigError(f"pass@k temperatures must be >= 0, got {list(temperatures)}")
    rows = read_tasks(tasks) if isinstance(tasks, str) else list(tasks)
    if match == "regex":
        for r in rows:
            try:
                re.compile(r["answer"])
            except re.error as e:
                raise ConfigError(f"pass@k: answer {r['answer']!r} is not a regular expression: {e}") from None
    out: dict = {"n": n, "prompts": len(rows)}
    for j, t in enumerate(temperatures):
        totals = {k: 0.0 for k in ks}
        for i, r in enumerate(rows):
            groups = sample_groups(model, tokenizer, r["prompt"], n, recipes=recipes, max_new_tokens=max_new_tokens,
                                   temperature=t, top_k=top_k, top_p=top_p, seed=seed + 1000003 * j + i)
            c = sum(judge(p, r["answer"], match) for texts in groups.values() for p in texts)
            for k in ks:
                totals[k] += pass_at_k(n, c, k)
        out[f"T={t:g}"] = {f"pass@{k}": totals[k] / len(rows) for k in ks}
    return out
