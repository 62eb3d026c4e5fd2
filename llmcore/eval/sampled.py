"""pass@k of a prompt/answer task by sampling: n samples per prompt, grouped by the run's
fan-out (mode conditioning's modes), judged by a verifier, estimated per k with the
allocation-aware unbiased estimator and bootstrap confidence intervals.

Used by `llmcore eval --pass-at-k 1,2,4,...` and by experiments (ModC's Countdown curves).
A verifier is `fn(prompt, answer, completion) -> bool`, named `module:function`
(`recipes.tasks.countdown:verify`), or one of the built-in `exact` (the default: the
completion's first line equals the answer) and `regex` (the first line fully matches the
task's answer read as a regular expression: a task with many valid answers).
The k of each point is split over the groups as the fan-out splits it (`RecipeSet.fan_out(ids,
k)`), and the n drawn samples as it splits n, so each group's k_g <= n_g must hold (it does for
any proportional split when n >= k).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence

from llmcore.data.sft import read_tasks
from llmcore.errors import ConfigError
from llmcore.eval.pass_at_k import bootstrap_ci, pass_at_k_allocated
from llmcore.eval.tasks import first_line
from llmcore.generate.groups import sample_groups_many
from llmcore.targets import load_target

Verifier = Callable[[str, str, str], bool]


def exact_first_line(prompt: str, answer: str, completion: str) -> bool:
    """The default verifier: the completion's first line equals the stripped answer."""
    return first_line(completion) == answer.strip()


def regex_first_line(prompt: str, answer: str, completion: str) -> bool:
    """The `regex` verifier: the completion's first line fully matches the answer as a regular
    expression."""
    return re.fullmatch(answer, first_line(completion)) is not None


BUILT_IN = {"exact": exact_first_line, "regex": regex_first_line}


def load_verifier(target: str | None) -> Verifier:
    """`module:function` -> the function; None or `exact` -> `exact_first_line`; `regex` ->
    `regex_first_line`."""
    if not target:
        return exact_first_line
    if target in BUILT_IN:
        return BUILT_IN[target]
    return load_target(target, "verifier")


def sample_and_judge(model, tokenizer, tasks: Sequence[dict], n: int, verifier: Verifier, *, recipes=None,
                     max_new_tokens: int = 64, temperature: float = 1.0, seed: int = 0,
                     prompts_per_batch: int = 8) -> list[dict]:
    """For each task {"prompt", "answer"}: {"groups": {label: (n_g, c_g)}, "samples": {label:
    [(text, correct)]}}, n samples per prompt; batch b of prompts is sampled with seed + b."""
    out = []
    for b, start in enumerate(range(0, len(tasks), prompts_per_batch)):
        chunk = tasks[start:start + prompts_per_batch]
        drawn = sample_groups_many(model, tokenizer, [t["prompt"] for t in chunk], n, recipes=recipes,
                                   max_new_tokens=max_new_tokens, temperature=temperature, seed=seed + b)
        for t, groups in zip(chunk, drawn):
            judged = {g: [(s, bool(verifier(t["prompt"], t["answer"], s))) for s in texts] for g, texts in groups.items()}
            out.append({"groups": {g: (len(v), sum(c for _, c in v)) for g, v in judged.items()}, "samples": judged})
    return out


def pass_at_k_curve(records: Sequence[Mapping[str, tuple[int, int]]], ks: Sequence[int],
                    allocation: Callable[[int], Mapping[str, int]], *, resamples: int = 2000,
                    seed: int = 0) -> dict:
    """Mean pass@k over prompts with a 95% bootstrap interval for each k, and pass@k of each
    group alone (its n_g samples, k <= n_g).

    records: per prompt {label: (n_g samples, c_g correct)}; allocation(k) -> {label: k_g}
    summing to k. Returns {"overall": {k: {"mean", "lo", "hi"}}, "groups": {label: {k: mean}}}.
    """
    overall: dict = {}
    for k in ks:
        split = dict(allocation(k))
        if sum(split.values()) != k:
            raise ConfigError(f"pass@k: the allocation of k={k} sums to {sum(split.values())}: {split}")
        per_prompt = []
        for rec in records:
            unknown = set(split) - set(rec)
            if unknown:
                raise ConfigError(f"pass@k: the allocation names groups {sorted(unknown)} the samples lack "
                                  f"(have {sorted(rec)})")
            for g, kg in split.items():
                if kg > rec[g][0]:
                    raise ConfigError(f"pass@{k}: group {g!r} is allocated {kg} samples but only {rec[g][0]} "
                                      "were drawn; draw more (n >= k)")
            per_prompt.append(pass_at_k_allocated({g: (rec[g][0], rec[g][1], kg) for g, kg in split.items()}))
        lo, hi = bootstrap_ci(per_prompt, resamples=resamples, seed=seed)
        overall[k] = {"mean": sum(per_prompt) / len(per_prompt), "lo": lo, "hi": hi}
    groups: dict = {}
    for g in (records[0] if records else {}):
        groups[g] = {k: sum(pass_at_k_allocated({g: (r[g][0], r[g][1], k)}) for r in records) / len(records)
                     for k in ks if all(k <= r[g][0] for r in records)}
    return {"overall": overall, "groups": groups}


def evaluate_pass_at_k(model, tokenizer, tasks_path: str | Sequence[dict], ks: Sequence[int], *, n: int | None = None,
                       recipes=None, verifier: str | Verifier | None = None, max_new_tokens: int = 64,
                       temperature: float = 1.0, seed: int = 0, max_tasks: int | None = None,
                       prompts_per_batch: int = 8) -> dict:
    """`llmcore eval --pass-at-k`: n (default max(ks)) samples per prompt of a jsonl task file
    (or a list of {"prompt", "answer"}), split over the recipes' fan-out, judged by `verifier`;
    the curve of `pass_at_k_curve`. Temperature 0 is greedy decoding."""
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ConfigError(f"--pass-at-k needs values >= 1, got {list(ks)}")
    n = n or ks[-1]
    if n < ks[-1]:
        raise ConfigError(f"pass@{ks[-1]} needs at least {ks[-1]} samples per prompt, got n={n}")
    if not math.isfinite(temperature) or temperature < 0:
        raise ConfigError(f"pass@k temperature must be a finite number >= 0, got {temperature}")
    fn = verifier if callable(verifier) else load_verifier(verifier)
    tasks = (read_tasks(tasks_path) if isinstance(tasks_path, str) else list(tasks_path))[:max_tasks]
    if not tasks:
        raise ConfigError(f"pass@k: no tasks in {tasks_path if isinstance(tasks_path, str) else 'the list'}")
    if fn is regex_first_line:
        for t in tasks:
            try:
                re.compile(t["answer"])
            except re.error as e:
                raise ConfigError(f"pass@k: answer {t['answer']!r} is not a regular expression: {e}") from None
    judged = sample_and_judge(model, tokenizer, tasks, n, fn, recipes=recipes, max_new_tokens=max_new_tokens,
                              temperature=temperature, seed=seed, prompts_per_batch=prompts_per_batch)
    from llmcore.recipe.recipe_set import RecipeSet

    fan = recipes if recipes is not None else RecipeSet([])
    probe_ids = tokenizer.encode(tasks[0]["prompt"]) or [tokenizer.eos_id]
    curve = pass_at_k_curve([j["groups"] for j in judged], ks,
                            lambda k: {label: kg for _, kg, label in fan.fan_out(list(probe_ids), k)})
    return {"n": n, "tasks": len(tasks), "temperature": temperature, **curve}


def evaluate_pass_at_k_temperatures(model, tokenizer, tasks_path: str | Sequence[dict], ks: Sequence[int],
                                    temperatures: Sequence[float], *, seed: int = 0, **kw) -> dict:
    """`evaluate_pass_at_k` at each temperature: {"T=<t>": curve, ...}. Temperature j samples with
    seed `seed + 1000003 * j`, so temperatures do not share noise and any one is reproducible."""
    if not temperatures:
        raise ConfigError("pass@k needs at least one temperature")
    return {f"T={t:g}": evaluate_pass_at_k(model, tokenizer, tasks_path, ks, temperature=float(t),
                                           seed=seed + 1000003 * j, **kw)
            for j, t in enumerate(temperatures)}
