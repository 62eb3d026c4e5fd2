"""`safety`: harmfulness-tag pretraining and SafeBeam decoding (Safety pretraining, Maini et
al., arXiv 2504.16980).

Training: documents a classifier scored unsafe (a per-document score side-car, listed in
`data.sidecars`) get the tag token at random positions, `rate` x their length
(`recipes.safety.tags` documents the choices); safe documents never do. The tag is an
ordinary prediction target, so the model learns P(tag | context).
Decoding: the tag is never emitted (a logits processor bans it) and beam search runs SafeBeam
(`recipes.safety.safebeam`): per beam a one-token lookahead of P(tag), the half of the beams
with the highest dropped, the top-k of the rest by log-likelihood kept.

The tag token is config-dependent: `<harm>` is reserved in tokenizers trained with the
recipes' tokens (`llmcore tokenizer train`); a tokenizer trained without it can give the
tag one of its reserved slots (`safety.token: "<reserved_0>"`) with no retraining.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from llmcore.data import Sample
from llmcore.errors import ConfigError
from llmcore.generate.sampling import ban_tokens
from recipes.base import Recipe, register
from recipes.safety.safebeam import safebeam_selector
from recipes.safety.tags import insert_tags


@register("safety")
class Safety(Recipe):
    """Harm tags in unsafe documents (training), tag ban and SafeBeam (decoding)."""

    TOKEN = "<harm>"

    @dataclass
    class Config:
        token: str = "<harm>"
        """The tag: `<harm>` or a reserved slot of an older tokenizer (`<reserved_0>`)."""
        rate: float = 0.05
        """Tags per token of an unsafe segment (the paper's ~5% of the length)."""
        score_field: str = "harm_score"
        """The per-document score side-car (`data.sidecars`) that says which documents are unsafe."""
        min_score: float = 1.0
        """A document is unsafe when its score (0-5) is >= this: by default all that routing does
        not keep as it is (score 0)."""
        safebeam: bool = True
        """Beam search runs SafeBeam (the tag is banned from the output either way)."""
        drop_fraction: float = 0.5
        """SafeBeam drops this fraction of the proposals with the highest P(tag) (the paper's half)."""

        def __post_init__(self):
            if not 0.0 <= self.rate < 1.0:
                raise ConfigError(f"safety.rate must be in [0, 1), got {self.rate}")
            if not 0.0 <= self.drop_fraction < 1.0:
                raise ConfigError(f"safety.drop_fraction must be in [0, 1), got {self.drop_fraction}")
            if not self.token or " " in self.token:
                raise ConfigError(f"safety.token must be a special token name, got {self.token!r}")

    def __init__(self, config=None):
        super().__init__(config or self.Config())
        self.tag_id: int | None = None
        self.unk_id = 0

    @classmethod
    def declared_special_tokens(cls) -> list[str]:
        return [cls.TOKEN]

    def special_tokens(self) -> list[str]:
        return [self.config.token]

    def bind(self, tokenizer) -> None:
        self.tag_id = tokenizer.token_id(self.config.token)
        self.unk_id = tokenizer.unk_id

    def _id(self) -> int:
        if self.tag_id is None:
            raise RuntimeError("the safety recipe is not bound to a tokenizer: call bind(tokenizer) first")
        return self.tag_id

    # --- training --------------------------------------------------------------------------------
    def transform(self, sample: Sample, rng: np.random.Generator) -> Sample:
        name = self.config.score_field
        if name not in sample.fields:
            raise ConfigError(f"safety: the window has no per-document score field {name!r} (fields: "
                              f"{sorted(sample.fields) or 'none'}); write it with `llmcore safety score` "
                              f"and list it in data.sidecars")
        return insert_tags(sample, self._id(), sample.fields[name], self.config.min_score,
                           self.config.rate, rng, self.unk_id)

    # --- decoding --------------------------------------------------------------------------------
    def logits_processors(self):
        return [ban_tokens([self._id()])]  # the tag is a signal, never output

    def beam_selector(self):
        return safebeam_selector(self._id(), self.config.drop_fraction) if self.config.safebeam else None
