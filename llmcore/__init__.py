"""llmcore: a decoder-only LM pretraining stack with research recipes as first-class citizens.

Stable entry points: `llmcore.load(path) -> (model, tokenizer)`, `llmcore.save(model, tokenizer,
out_dir, config)`; `model(input_ids)` returns
hidden states, `model.logits(h)` the logits; `tokenizer.encode/decode`. Heavy submodules are
imported on use so `import llmcore` stays cheap.
"""

from __future__ import annotations

__version__ = "0.1.0"


def load(path: str, device: str | None = None):
    """Load a checkpoint for inference: `path` is a checkpoint dir, a run dir (its `latest`),
    or a `latest` file. Returns (model in eval mode, tokenizer); recipe aux heads are dropped."""
    import torch

    from llmcore.model.transformer import Transformer
    from llmcore.tokenizer import Tokenizer
    from llmcore.train import checkpoint

    ckpt = checkpoint.resolve(path)
    tokenizer = Tokenizer.load(str(ckpt / "tokenizer"))
    model = Transformer(checkpoint.model_args(ckpt, tokenizer.vocab_size))
    weights = {k[len("model."):]: v for k, v in checkpoint.load_verified_weights(ckpt).items() if k.startswith("model.")}
    model.load_state_dict(weights)
    model.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return model.eval(), tokenizer


def save(model, tokenizer, out_dir: str, config=None, *, overwrite: bool = False):
    """Write `model` and `tokenizer` as an ordinary checkpoint folder without an engine (after
    editing weights, e.g. abliteration); `config` is the run Config it belongs to, or None for
    one that spells out the architecture. `llmcore.load(out_dir)` and `train.init_from=out_dir`
    read it. A non-empty `out_dir` is refused unless `overwrite`. Returns the folder."""
    from llmcore.train import checkpoint

    return checkpoint.save_model(model, tokenizer, out_dir, config, overwrite=overwrite)


def load_recipes(path: str, overrides: list[str] | None = None):
    """The recipes (a RecipeSet, bound to nothing yet) a checkpoint was trained with, for
    their decoding hooks: `generate_text(..., recipes=llmcore.load_recipes(path))`.
    `overrides` change their options for decoding (`mode_conditioning.allocation=weights`)."""
    from llmcore.train import checkpoint

    return checkpoint.recipes(checkpoint.resolve(path), overrides)
