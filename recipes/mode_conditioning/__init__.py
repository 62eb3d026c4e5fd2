"""`mode_conditioning`: ModC, mode tokens for diverse sampling (arXiv 2512.01127).

Training data often mixes several solution *modes* (here: depth-first vs breadth-first search
traces). Standard SFT lets each prompt collapse onto one mode; ModC prepends a token naming the
example's mode, so the model learns each mode on its own, and at inference the k samples of a
prompt are split across the modes (`fan_out`), keeping both alive: pass@k for k >= 2 rises
while pass@1 stays. Without labels the modes come from clustering per-example gradients
(`llmcore modes cluster`, `recipes.mode_conditioning.cluster`).

- `modes: C` reserves `<mode_0..C-1>` (`special_tokens`, config-dependent); a tokenizer trained
  without them lends them its free `<reserved_i>` slots (`Tokenizer.reserve`).
- Transform (SFT rows, `data.format: sft`): the example's mode m, the per-sample value
  `mode_field` (a jsonl field listed in `data.sft_fields`, or a per-example side-car listed in
  `data.sidecars`, e.g. the cluster assignment), becomes `<mode_m>` prepended at position 0.
  It takes no loss (loss_mask False; it is never a target, and it is banned at decoding).
  `prompt_len` grows by one, since the token belongs to the prompt: a later transform that
  acts at the prompt's end (pause-finetuning) still does, in either config order.
- `mode_dropout`: the fraction of rows (drawn per row from the loader's seeded rng) trained
  without a prefix, so the model also works unconditioned (`allocation: none`).
- Decoding: `fan_out(prompt_ids, k)` splits k over the modes (`allocation: uniform` or
  `weights`, e.g. validation pass@1 per mode; `recipes.mode_conditioning.allocation`), one
  `<mode_m>` prefix per group labelled `mode_m`.

Choices the paper leaves open, made here: the prefix goes before the prompt (position 0, so
every prompt token can attend to it and the same prompt encoding serves every mode); a row
whose last slot holds a loss token cannot be shifted and is a DataError naming
`data.seq_len`; a mode value outside [0, C) is a DataError naming the example; dropout rows
are unprefixed rather than given a separate `<mode_none>` token.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from llmcore.data import Sample
from llmcore.errors import ConfigError, DataError
from llmcore.generate.sampling import ban_tokens
from recipes.base import Recipe, register
from recipes.mode_conditioning.allocation import allocate

ALLOCATIONS = ("uniform", "weights", "none")


def mode_token(m: int) -> str:
    """The name of mode m's prefix token."""
    return f"<mode_{m}>"


@register("mode_conditioning")
class ModeConditioning(Recipe):
    """Mode-prefix tokens in training, k split across the modes at decoding."""

    @dataclass
    class Config:
        modes: int = 2
        """C: how many modes (reserves `<mode_0..C-1>`); the paper uses 2-4."""
        mode_field: str = "mode"
        """The per-sample value holding each example's mode in [0, C): a jsonl field in
        `data.sft_fields` or a per-example side-car in `data.sidecars` (cluster assignments)."""
        mode_dropout: float = 0.0
        """Fraction of rows trained without a prefix (so the model also samples unconditioned)."""
        allocation: str = "uniform"
        """Decoding: uniform (k split evenly) | weights (by `weights`) | none (no prefix, all k plain)."""
        weights: list[float] = dataclasses.field(default_factory=list)
        """allocation=weights: one weight per mode, e.g. each mode's validation pass@1."""

        def __post_init__(self):
            if self.modes < 1:
                raise ConfigError(f"mode_conditioning.modes must be >= 1, got {self.modes}")
            if not 0.0 <= self.mode_dropout < 1.0:
                raise ConfigError(f"mode_conditioning.mode_dropout must be in [0, 1), got {self.mode_dropout}")
            if self.allocation not in ALLOCATIONS:
                raise ConfigError(f"mode_conditioning.allocation={self.allocation!r} is not one of "
                                  f"{', '.join(ALLOCATIONS)}")
            if self.allocation == "weights":
                if len(self.weights) != self.modes:
                    raise ConfigError(f"mode_conditioning.weights has {len(self.weights)} entries for "
                                      f"modes={self.modes}")
                allocate(0, self.weights)  # checks the weights themselves

    def __init__(self, config=None):
        super().__init__(config or self.Config())
        self.mode_ids: list[int] | None = None

    def special_tokens(self) -> list[str]:
        return [mode_token(m) for m in range(self.config.modes)]

    def bind(self, tokenizer) -> None:
        self.mode_ids = [tokenizer.token_id(t) for t in self.special_tokens()]

    def _ids(self) -> list[int]:
        if self.mode_ids is None:
            raise RuntimeError("the mode_conditioning recipe is not bound to a tokenizer: call bind(tokenizer) first")
        return self.mode_ids

    # --- training --------------------------------------------------------------------------------
    def transform(self, sample: Sample, rng: np.random.Generator) -> Sample:
        c = self.config
        if c.mode_dropout > 0.0 and rng.random() < c.mode_dropout:
            return sample
        if c.mode_field not in sample.values:
            raise ConfigError(f"mode_conditioning.mode_field={c.mode_field!r} is not a value of the rows "
                              f"(they have {sorted(sample.values)}); list it in data.sft_fields (a jsonl field) "
                              "or data.sidecars (a per-example side-car such as `llmcore modes cluster` writes)")
        value = np.asarray(sample.values[c.mode_field])
        m = int(value)
        if value.ndim != 0 or m != value or not 0 <= m < c.modes:
            raise DataError(f"{sample.source} example {sample.doc_index}: {c.mode_field}={value.tolist()!r} is not a "
                            f"mode in [0, {c.modes})")
        return prepend_mode(sample, self._ids()[m])

    # --- decoding --------------------------------------------------------------------------------
    def logits_processors(self):
        return [ban_tokens(self._ids())]  # a mode token is never an output

    def fan_out(self, prompt_ids: list[int], k: int) -> list[tuple[list[int], int, str]]:
        """k samples split over the modes: [(<mode_m> + prompt, k_m, "mode_m")] (see allocation)."""
        c = self.config
        if c.allocation == "none":
            return [(list(prompt_ids), k, "none")]
        counts = allocate(k, c.weights if c.allocation == "weights" else [1.0] * c.modes)
        return [([tid] + list(prompt_ids), n, f"mode_{m}") for m, (tid, n) in enumerate(zip(self._ids(), counts))]


def prepend_mode(sample: Sample, token_id: int) -> Sample:
    """`token_id` inserted at position 0 of an SFT row, trimmed back to its length.

    The prefix takes the first token's document id, loss_mask False and each field's fill;
    `prompt_len` (when present) grows by one. DataError when the shift would push a loss token
    off the end of the row.
    """
    n = len(sample)
    if sample.loss_mask[-1]:
        raise DataError(f"{sample.source} example {sample.doc_index}: a mode prefix pushes its last loss token past "
                        f"data.seq_len + 1 = {n}; set data.seq_len >= {n}")
    out = sample.insert([0], token_id, loss=False).trim(n)
    if "prompt_len" in out.values:
        out.values["prompt_len"] = int(out.values["prompt_len"]) + 1
    return out


def add_command(parser) -> None:
    """modes: mode conditioning's tools (`llmcore modes cluster`, `llmcore modes split`)."""
    from recipes.mode_conditioning.cli import build

    build(parser)
