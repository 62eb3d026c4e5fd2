"""One prompt fanned out into labelled groups of samples (mode conditioning's split of k).

Used by pass@k evaluations (`llmcore.eval.pass_at_k`) and by recipes whose inference splits
k samples across prompt variants through the `fan_out` hook (ModC prepends a `<mode_i>` token
per group). Without such a recipe there is one group, "all", with every sample.
"""

from __future__ import annotations

from typing import Sequence

from llmcore.errors import ConfigError
from llmcore.generate.sampling import LogitsProcessor, generate
from llmcore.recipe.recipe_set import RecipeSet


def sample_groups(model, tokenizer, prompt: str, k: int, *, recipes=None,
                  max_new_tokens: int = 64, temperature: float = 1.0, top_k: int = 0,
                  top_p: float = 1.0, seed: int | None = None,
                  logits_processors: Sequence[LogitsProcessor] = (),
                  stop_at_eos: bool = True) -> dict[str, list[str]]:
    """k samples of one prompt, grouped by the fan-out's labels: {label: [texts]} in fan-out
    order, each list as long as the group's sample count (a group may get 0).

    The prompt is encoded as `sampling.generate_text` does (no bos; empty -> [eos]); `recipes`
    (a RecipeSet or None) is bound to the tokenizer, fans the ids out (`RecipeSet.fan_out`),
    then rewrites each variant (`prepare_prompt`: the last rewrite before the model, so e.g.
    pauses stay right before the generated tokens) and adds its logits processors. All k rows
    are sampled in one batch (left-padded variants decode as they would alone), so `seed`
    fixes every group's draws at once.
    """
    return sample_groups_many(model, tokenizer, [prompt], k, recipes=recipes, max_new_tokens=max_new_tokens,
                              temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
                              logits_processors=logits_processors, stop_at_eos=stop_at_eos)[0]


def sample_groups_many(model, tokenizer, prompts: Sequence[str], k: int, *, recipes=None,
                       max_new_tokens: int = 64, temperature: float = 1.0, top_k: int = 0,
                       top_p: float = 1.0, seed: int | None = None,
                       logits_processors: Sequence[LogitsProcessor] = (),
                       stop_at_eos: bool = True) -> list[dict[str, list[str]]]:
    """`sample_groups` for several prompts in one batch of len(prompts) x k rows: one
    {label: [texts]} per prompt, in order (pass@k evaluations of many prompts)."""
    if k < 1:
        raise ConfigError(f"k must be >= 1 samples, got {k}")
    recipes = recipes if recipes is not None else RecipeSet([])
    processors = list(logits_processors)
    recipes.bind(tokenizer)
    processors += recipes.logits_processors()
    rows, owners, plans = [], [], []
    for i, prompt in enumerate(prompts):
        ids = tokenizer.encode(prompt) or [tokenizer.eos_id]
        groups = recipes.fan_out(list(ids), k)
        plans.append([label for _, _, label in groups])
        for variant, n, label in groups:
            variant = recipes.prepare_prompt(list(variant))
            rows += [variant] * n
            owners += [(i, label)] * n
    eos = tokenizer.eos_id
    new = generate(model, rows, max_new_tokens, temperature=temperature, top_k=top_k,
                   top_p=top_p, eos_id=eos if stop_at_eos else None,
                   logits_processors=processors, seed=seed, pad_id=tokenizer.pad_id)
    out: list[dict[str, list[str]]] = [{label: [] for label in labels} for labels in plans]
    for (i, label), row in zip(owners, new):
        out[i][label].append(tokenizer.decode([t for t in row if t != eos]))
    return out
