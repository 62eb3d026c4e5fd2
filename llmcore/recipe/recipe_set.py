"""The recipes of one run and the fan-out of every hook over them, in config order.

Built by the trainer, the checkpoint loader and decoding. Each hook is optional and looked up
on the recipe's class, so a recipe may be any class (base-class no-ops count as absent).
`HOOKS` is the whole contract: README's hook table and `recipes.base.Recipe` are checked
against it by a test, and a recipe method that looks like a hook but is not one (`on_step_ends`)
is an error naming the nearest hook, so a typo never silently does nothing.
"""

from __future__ import annotations

import difflib
from typing import Any, Callable

import torch.nn as nn

from llmcore.errors import CheckpointError, ConfigError
from llmcore.recipe.registry import recipe_class

HOOKS = (
    "special_tokens", "bind", "transform", "ignore_ids", "frozen_modules", "modules", "loss",
    "ntp_weight", "optimizer_step", "on_train_start", "on_step_end", "on_eval", "on_train_end",
    "uses_max_steps", "state_dict", "load_state_dict", "logits_processors", "prepare_prompt", "beam_selector", "fan_out",
)
"""Every recipe hook llmcore calls, in the order of README's hook table."""

NTP = "ntp"
"""The reserved loss-term name of next-token prediction (see `ntp_owner`)."""


class RecipeSet:
    """The recipes of one run, in config order, with each hook fanned out over them."""

    def __init__(self, recipes: list[Any]):
        self.recipes = recipes
        for r in recipes:
            _check_hook_names(r)
        steppers = [r for r in recipes if _has(r, "optimizer_step")]
        if len(steppers) > 1:
            raise ConfigError(f"recipes {[r.name for r in steppers]} all replace the optimizer step; at most one may")
        self.stepper = steppers[0] if steppers else None
        owners = [r for r in recipes if _has(r, "ntp_weight") or getattr(r, "replaces_ntp", False)]
        if len(owners) > 1:
            raise ConfigError(f"recipes {[r.name for r in owners]} all replace or scale the '{NTP}' term; "
                              "at most one may")
        self.ntp_owner = owners[0] if owners else None
        """The one recipe that returns the `ntp` term itself (`replaces_ntp`) or scales it
        (`ntp_weight`), or None."""
        # Two recipes each splitting k over their own variants have no meaningful product
        # (whose labels, whose counts?), so a run may fan prompts out through one recipe only.
        fanners = [r for r in recipes if _has(r, "fan_out")]
        if len(fanners) > 1:
            raise ConfigError(f"recipes {[r.name for r in fanners]} all fan prompts out (fan_out); at most one may")
        self.fanner = fanners[0] if fanners else None

    @classmethod
    def from_config(cls, cfg) -> "RecipeSet":
        return cls([recipe_class(n)(cfg.recipe.get(n)) for n in cfg.recipes])

    def __bool__(self) -> bool:
        return bool(self.recipes)

    @property
    def names(self) -> list[str]:
        return [r.name for r in self.recipes]

    # --- tokenizer and data ---------------------------------------------------------------
    def special_tokens(self) -> list[str]:
        out: list[str] = []
        for r in self.recipes:
            fn = getattr(r, "special_tokens", None)
            for tok in (fn() if fn else []):
                if tok not in out:
                    out.append(tok)
        return out

    def bind(self, tokenizer) -> None:
        """Give each recipe the tokenizer (to resolve its special-token ids) before training.

        Tokens the recipes need that the tokenizer was not trained with (a count set by config,
        `<mode_0..C-1>`) first take its free reserved slots (`Tokenizer.reserve`), in config
        order, the same way in training and decoding."""
        names = self.special_tokens()
        if names:  # both tokenizer backends have reserve(); no recipe token, nothing to place
            tokenizer.reserve(names)
        for r in self.recipes:
            if _has(r, "bind"):
                r.bind(tokenizer)

    def transform(self) -> Callable | None:
        fns = [r.transform for r in self.recipes if _has(r, "transform")]
        if not fns:
            return None

        def chained(sample, rng):
            for fn in fns:
                sample = fn(sample, rng)
            return sample
        return chained

    def ignore_ids(self) -> list[int]:
        """Target ids no recipe wants a next-token loss on (e.g. `<pause>`)."""
        out: list[int] = []
        for r in self.recipes:
            if _has(r, "ignore_ids"):
                out += [i for i in r.ignore_ids() if i not in out]
        return out

    # --- modules --------------------------------------------------------------------------
    def frozen_modules(self, model_args) -> dict[str, nn.Module]:
        """Name -> frozen nn.Module (a teacher, a reverse LM) from every recipe, for the engine
        to place. Names are shared by all recipes of the run: a clash is an error."""
        out: dict[str, nn.Module] = {}
        owner: dict[str, str] = {}
        for r in self.recipes:
            if not _has(r, "frozen_modules"):
                continue
            for name, mod in (r.frozen_modules(model_args) or {}).items():
                if name in out:
                    raise ConfigError(f"recipes {owner[name]!r} and {r.name!r} both declare a frozen module {name!r}")
                if not isinstance(mod, nn.Module):
                    raise ConfigError(f"recipe {r.name!r}: frozen module {name!r} is a {type(mod).__name__}, "
                                      "not an nn.Module")
                out[name], owner[name] = mod, r.name
        return out

    def modules(self, model_args) -> dict[str, Any]:
        """Recipe name -> extra trainable nn.Module (aux heads), saved and sharded with the model."""
        out = {}
        for r in self.recipes:
            if _has(r, "modules"):
                mod = r.modules(model_args)
                if mod is not None:
                    out[r.name] = mod
        return out

    def uses_max_steps(self) -> bool:
        """True when some recipe trains differently under another `train.max_steps` (a
        schedule over the whole run): then even a run that stopped early would not repeat
        itself under a longer cap."""
        return any(_has(r, "uses_max_steps") and bool(r.uses_max_steps()) for r in self.recipes)

    # --- the step -------------------------------------------------------------------------
    def ntp_weight(self, step: int) -> float:
        """The owner's multiplier of the next-token term at `step` (1 without one)."""
        r = self.ntp_owner
        return float(r.ntp_weight(step)) if r is not None and _has(r, "ntp_weight") else 1.0

    @property
    def replaces_ntp(self) -> bool:
        """True when a recipe computes the `ntp` term itself (llmcore then does not)."""
        return self.ntp_owner is not None and bool(getattr(self.ntp_owner, "replaces_ntp", False))

    def losses(self, ctx) -> dict[str, tuple]:
        """Named (sum, count) loss terms from every recipe for one micro-batch: `<recipe>/<key>`,
        except the reserved `ntp`, which only the recipe that `replaces_ntp` may return."""
        terms: dict[str, tuple] = {}
        for r in self.recipes:
            if not _has(r, "loss"):
                continue
            for key, term in (r.loss(ctx) or {}).items():
                if key == NTP:
                    if not (r is self.ntp_owner and self.replaces_ntp):
                        raise ConfigError(f"recipe {r.name!r} returned the reserved '{NTP}' term without "
                                          "`replaces_ntp = True`")
                    terms[NTP] = term
                else:
                    terms[f"{r.name}/{key}"] = term
        if self.replaces_ntp and NTP not in terms:
            raise ConfigError(f"recipe {self.ntp_owner.name!r} replaces the '{NTP}' term but its loss "
                              "returned none")
        return terms

    # --- callbacks and state --------------------------------------------------------------
    def callback(self, event: str, ctx, metrics: dict | None = None) -> dict:
        """Call `on_<event>(ctx[, metrics])` of every recipe; merge the metric dicts returned."""
        out: dict = {}
        hook = f"on_{event}"
        for r in self.recipes:
            if _has(r, hook):
                fn = getattr(r, hook)
                out.update((fn(ctx) if event == "train_start" else fn(ctx, metrics)) or {})
        return out

    def state_dict(self) -> dict:
        """Recipe name -> that recipe's JSON-serialisable state, for checkpoints."""
        return {r.name: r.state_dict() for r in self.recipes if _has(r, "state_dict")}

    def load_state_dict(self, state: dict, where: str = "checkpoint") -> None:
        for r in self.recipes:
            if not _has(r, "load_state_dict"):
                continue
            if r.name not in state:
                raise CheckpointError(f"{where} has no state for recipe {r.name!r} (saved: "
                                      f"{sorted(state) or 'none'}); was it trained without it?")
            r.load_state_dict(state[r.name])

    # --- decoding -------------------------------------------------------------------------
    def logits_processors(self) -> list[Callable]:
        out: list[Callable] = []
        for r in self.recipes:
            if _has(r, "logits_processors"):
                out += list(r.logits_processors())
        return out

    def prepare_prompt(self, ids: list[int]) -> list[int]:
        for r in self.recipes:
            if _has(r, "prepare_prompt"):
                ids = r.prepare_prompt(ids)
        return ids

    def beam_selector(self) -> Callable | None:
        """The recipes' beam selectors chained in config order, or None when no recipe has one.

        Chained, not at most one: pruning and re-scoring compose (each selector sees the
        survivors of the one before it, with the same lookahead), so e.g. SafeBeam can run
        beside a repetition filter. See `llmcore.generate.beam.Selector`.
        """
        fns = []
        for r in self.recipes:
            if _has(r, "beam_selector"):
                fn = r.beam_selector()
                if fn is not None:
                    fns.append((r.name, fn))
        if not fns:
            return None

        def chained(candidates, lookahead):
            for name, fn in fns:
                candidates = fn(candidates, lookahead)
                if candidates is None:
                    raise ConfigError(f"recipe {name!r}: its beam selector returned None; return the "
                                      "candidates to keep (none kept: an empty selection)")
            return candidates
        return chained

    def fan_out(self, prompt_ids: list[int], k: int) -> list[tuple[list[int], int, str]]:
        """One prompt's ids -> [(variant ids, n samples, group label)] with the n summing to k.

        Without a fan-out recipe: one group "all" with the prompt and all k samples. A recipe's
        answer is checked here (counts, labels), and a bad one is refused naming the recipe.
        """
        if self.fanner is None:
            return [(list(prompt_ids), k, "all")]
        name = self.fanner.name
        groups = [tuple(g) for g in self.fanner.fan_out(list(prompt_ids), k)]
        if not groups or any(len(g) != 3 for g in groups):
            raise ConfigError(f"recipe {name!r}: fan_out must return a non-empty list of "
                              f"(prompt ids, n samples, label), got {groups!r}")
        counts = [g[1] for g in groups]
        labels = [g[2] for g in groups]
        if any(isinstance(n, bool) or not isinstance(n, int) or n < 0 for n in counts) or sum(counts) != k:
            raise ConfigError(f"recipe {name!r}: fan_out(k={k}) gave sample counts {counts}, which "
                              f"must be integers >= 0 summing to {k}")
        if len(set(labels)) != len(labels) or not all(isinstance(x, str) for x in labels):
            raise ConfigError(f"recipe {name!r}: fan_out gave group labels {labels}; they must be distinct strings")
        if any(len(g[0]) == 0 for g in groups):
            raise ConfigError(f"recipe {name!r}: fan_out gave an empty prompt for a group")
        return [(list(ids), n, label) for ids, n, label in groups]


def _has(recipe: Any, hook: str) -> bool:
    """True when the recipe overrides `hook` (base-class no-ops count as absent)."""
    fn = getattr(type(recipe), hook, None)
    if fn is None:
        return False
    return not getattr(fn, "_default_hook", False)


def _check_hook_names(recipe: Any) -> None:
    """A public method named like a callback (`on_*`) that is no hook is a typo: say so."""
    for name in dir(type(recipe)):
        if name.startswith("on_") and name not in HOOKS and callable(getattr(type(recipe), name)):
            near = difflib.get_close_matches(name, HOOKS, n=1)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            raise ConfigError(f"recipe {getattr(recipe, 'name', type(recipe).__name__)!r} defines {name!r}, "
                              f"which is not a recipe hook{hint}")
