"""Stop a run whose steps keep coming out non-finite, before it saves or prunes anything.

Used by the trainer's loop. A step with a non-finite gradient norm is skipped (no update);
one such step is a spike, but a long run of them means the weights or the data are broken
(a bit-flipped checkpoint resumes as NaN), and carrying on would exit 0 and let pruning delete
the good checkpoints. While such a run lasts the loop makes no periodic save; after
`train.max_nonfinite_steps` in a row (0: never) it raises.
"""

from __future__ import annotations

from llmcore.errors import LlmcoreError


class NonFiniteError(LlmcoreError):
    """Too many consecutive optimizer steps had a non-finite gradient norm."""


class NonFiniteGuard:
    def __init__(self, limit: int, out_dir: str):
        self.limit, self.out_dir = limit, out_dir
        self.run = 0  # consecutive skipped steps so far

    def after_step(self, step: int, metrics: dict) -> None:
        """Count step `step`'s outcome; NonFiniteError once `limit` skipped steps are consecutive."""
        self.run = self.run + 1 if metrics.get("skipped_nonfinite") else 0
        if self.limit > 0 and self.run >= self.limit:
            raise NonFiniteError(
                f"steps {step - self.run + 1}-{step}: {self.run} consecutive optimizer steps had a non-finite "
                f"gradient norm (loss {metrics.get('loss')}); stopped without saving, so the checkpoints in "
                f"{self.out_dir} are as they were. Check the data and the latest checkpoint, lower optim.lr, "
                "or raise train.max_nonfinite_steps")
