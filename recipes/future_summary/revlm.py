"""The frozen right-to-left LM of FSP-RevLM: load and check it.

Used by `recipes.future_summary` (kind `fsp_revlm`). The reverse LM is an ordinary llmcore run
trained with `data.reverse=true` on the same tokenizer; it is kept on the recipe object, not in
the trained module, so it is never optimised, sharded or written into the run's checkpoints
(the config names its path instead).
"""

from __future__ import annotations

import yaml

import llmcore
from llmcore.errors import CheckpointError, ConfigError
from llmcore.train import checkpoint


def load_reverse_lm(path: str, tokenizer=None):
    """The reverse LM of checkpoint/run `path` on the CPU, in eval mode, frozen.

    ConfigError when it was trained left-to-right or with another tokenizer than the run's.
    """
    key = "future_summary.revlm_checkpoint"
    try:
        ckpt = checkpoint.resolve(path)
    except CheckpointError as e:
        raise ConfigError(f"{key}={path}: {e}") from None
    raw = yaml.safe_load((ckpt / "config.yaml").read_text()) or {}
    if not (raw.get("data") or {}).get("reverse", False):
        raise ConfigError(f"{key}={path}: {ckpt} was trained left to right (its config.yaml has no "
                          "data.reverse: true); FSP-RevLM needs a right-to-left LM")
    model, rev_tok = llmcore.load(str(ckpt), device="cpu")
    if tokenizer is not None and rev_tok.hash != tokenizer.hash:
        raise ConfigError(f"{key}={path}: its tokenizer ({rev_tok.hash[:12]}) is not the run's "
                          f"({tokenizer.hash[:12]}); the targets would read other token ids")
    model.requires_grad_(False)
    return model.eval()
