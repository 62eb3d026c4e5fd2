"""`pause`: pause tokens, "Think before you speak" (Goyal et al., arXiv 2310.02226).

One new token `<pause>` with its own learned embedding gives the model extra positions (extra
computation) before it must commit to an output. Two training modes and one decoding rule:

- `pause.mode: pretrain` -- every packed window gets round(fraction x seq_len) pauses at
  uniformly random positions (consecutive pauses allowed) and is trimmed back to seq_len + 1.
- `pause.mode: finetune` -- every SFT row (`data.format: sft`, whose samples carry the value
  `prompt_len`) gets `num_tokens` pauses right after the prompt; the loss stays on the answer only.
- Decoding: in finetune mode `prepare_prompt` appends the same `num_tokens` pauses to every
  prompt (M_inf = M_ft, as in the paper); in both modes `<pause>` is never sampled.

Loss: a position whose NEXT token is `<pause>` takes no loss. That is `ignore_ids()` returning
the pause id: the fused linear cross-entropy drops those targets (and llmcore's loss-token
count skips them), so no separate mask pass exists. A pause position's own output (predicting
the next real token) keeps its loss. Attention stays plain causal.

Choices the paper leaves open, made here:
- Positions: a uniform random k-subset of the seq_len + 1 slots of the trimmed window holds
  the pauses; the other slots hold the window's first seq_len + 1 - k tokens in order. So the
  window always holds exactly k pauses, every interleaving equally likely. ("Insert at random
  gaps, then trim" would let some pauses fall off the end and vary the count.)
- Document id of a pause: that of the real token it follows, so it attends to (and computes
  on) the text before it, and a pause between two packed documents sits at the end of the
  first -- as the eos there does. A pause before the window's first real token takes that
  token's id (there is nothing before it).
- loss_mask of a pretraining pause is True: whether a pause target is scored is decided by
  `ignore_ids` alone, in one place. Finetuning pauses belong to the prompt side (loss_mask
  False), so answer-only loss holds even where `ignore_ids` is not applied.
- Per-token fields (side-cars such as a teacher's top-k cache) move with their tokens; a pause
  slot gets each field's fill value (the side-car's own rule, e.g. a per-document score copies
  the value of the token before it), so no field is shifted against the tokens.
- Randomness comes only from the `rng` the loader passes (seeded by the sample's global index),
  so a resumed run repeats the same insertions with no state of its own.
- A finetune row whose answer would be cut by the M pauses is a DataError naming
  `data.seq_len`, never a silent truncation of the answer.
- "Standard finetuning" of a pause-pretrained model is `mode: finetune, num_tokens: 0`: no
  pauses inserted, but `<pause>` is still banned at decoding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from llmcore.data import Sample
from llmcore.errors import ConfigError, DataError
from llmcore.generate.sampling import ban_tokens
from recipes.base import Recipe, register

_MODES = ("pretrain", "finetune")


@register("pause")
class Pause(Recipe):
    """Pause-pretraining / pause-finetuning transforms, loss masking and decoding hooks."""

    TOKEN = "<pause>"

    @dataclass
    class Config:
        mode: str = "pretrain"
        """pretrain: random pauses in packed windows | finetune: num_tokens pauses after each prompt."""
        fraction: float = 0.1
        """pretrain: pauses per window as a fraction of seq_len (the paper's 10%)."""
        num_tokens: int = 10
        """finetune and decoding: pauses after the prompt (M_ft = M_inf; the paper uses 10 or 50)."""

        def __post_init__(self):
            if self.mode not in _MODES:
                raise ConfigError(f"pause.mode={self.mode!r} is not one of {', '.join(_MODES)}")
            if not 0.0 <= self.fraction < 1.0:
                raise ConfigError(f"pause.fraction must be in [0, 1), got {self.fraction}")
            if self.num_tokens < 0:
                raise ConfigError(f"pause.num_tokens must be >= 0, got {self.num_tokens}")

    def __init__(self, config=None):
        super().__init__(config or self.Config())
        self.pause_id: int | None = None

    @classmethod
    def declared_special_tokens(cls) -> list[str]:
        return [cls.TOKEN]

    def bind(self, tokenizer) -> None:
        self.pause_id = tokenizer.token_id(self.TOKEN)

    def _id(self) -> int:
        if self.pause_id is None:
            raise RuntimeError("the pause recipe is not bound to a tokenizer: call bind(tokenizer) first")
        return self.pause_id

    # --- training --------------------------------------------------------------------------------
    def transform(self, sample: Sample, rng: np.random.Generator) -> Sample:
        if self.config.mode == "pretrain":
            return insert_random_pauses(sample, self._id(), self.config.fraction, rng)
        if "prompt_len" not in sample.values:
            raise ConfigError("pause.mode=finetune puts pauses after the prompt, so it needs prompt/answer "
                              "rows (data.format=sft); packed windows have no prompt")
        return insert_after_prompt(sample, self._id(), self.config.num_tokens)

    def ignore_ids(self) -> list[int]:
        return [self._id()]

    # --- decoding --------------------------------------------------------------------------------
    def prepare_prompt(self, ids: list[int]) -> list[int]:
        if self.config.mode == "finetune":
            return list(ids) + [self._id()] * self.config.num_tokens
        return ids

    def logits_processors(self):
        return [ban_tokens([self._id()])]  # never sample a pause


def num_pauses(seq_len: int, fraction: float) -> int:
    """Pauses per window: fraction x seq_len rounded to the nearest integer (halves up)."""
    return int(math.floor(fraction * seq_len + 0.5))


def insert_random_pauses(sample: Sample, pause_id: int, fraction: float, rng: np.random.Generator) -> Sample:
    """Pause-pretraining rewrite of one packed window (a Sample of n = seq_len + 1 tokens).

    k = num_pauses(n - 1, fraction) slots, a uniform random k-subset of the n, become pauses;
    the remaining slots take tokens[:n - k] in order (the rest is trimmed). Built as
    `Sample.insert` then `trim`, so doc_ids, loss_mask and every per-token field travel with
    their tokens; a pause takes the doc id of the real token before it (the first real token's
    when it leads the window), loss_mask True, and each field's fill value. Per-sample values
    and provenance pass through unchanged. Returns a new sample; `sample` is not modified.
    """
    n = len(sample)
    k = num_pauses(n - 1, fraction)
    if k == 0:
        return sample
    slots = np.sort(rng.choice(n, size=k, replace=False))
    # a pause in output slot s follows s - (pauses before it) real tokens: insert it there
    return sample.insert(slots - np.arange(k), pause_id, loss=True).trim(n)


def insert_after_prompt(row: Sample, pause_id: int, m: int) -> Sample:
    """Pause-finetuning rewrite of one SFT row (a Sample of n tokens, `values["prompt_len"]` p).

    tokens become prompt + m pauses + answer + eos + padding, trimmed to n; the pauses take the
    prompt's doc id, each field's fill value and, like the prompt, loss_mask False, so the loss
    stays on the answer and eos (the last pause predicts the answer's first token). DataError if
    trimming would cut a loss-carrying token. `prompt_len` keeps the real prompt's length.
    """
    if m == 0:
        return row
    p, n = int(row.values["prompt_len"]), len(row)
    mask = row.loss_mask
    if mask[n - m:].any():
        need = int(np.flatnonzero(mask)[-1]) + m  # the last loss token's index after the shift
        raise DataError(f"pause.num_tokens={m} pauses after a {p}-token prompt push the answer past the row of "
                        f"data.seq_len + 1 = {n} tokens; set data.seq_len >= {need}")
    return row.insert(np.full(m, p), pause_id, loss=False).trim(n)
