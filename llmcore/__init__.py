"""llmcore: a decoder-only LM pretraining stack with research recipes as first-class citizens.

Stable entry points: `llmcore.load(path) -> (model, tokenizer)`; `model(input_ids)` returns
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
    weights = {k[len("model."):]: v for k, v in checkpoint.load_weights(ckpt).items() if k.startswith("model.")}
    model.load_state_dict(weights)
    model.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return model.eval(), tokenizer


def load_recipes(path: str):
    """The recipes (a RecipeSet, bound to nothing yet) a checkpoint was trained with, for
    their decoding hooks: `generate_text(..., recipes=llmcore.load_recipes(path))`."""
    from llmcore.train import checkpoint

    return checkpoint.recipes(checkpoint.resolve(path))
