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

    from llmcore import checkpoint
    from llmcore.config import from_dict
    from llmcore.model import Transformer
    from llmcore.presets import resolve_model_args
    from llmcore.tokenizer import Tokenizer
    import yaml

    ckpt = checkpoint.resolve(path)
    raw = yaml.safe_load((ckpt / "config.yaml").read_text())
    cfg = from_dict({k: raw[k] for k in ("model",) if k in raw} | {"data": {"path": "-"}})
    tokenizer = Tokenizer.load(str(ckpt / "tokenizer"))
    args = resolve_model_args(cfg.model, tokenizer.vocab_size)
    model = Transformer(args)
    weights = {k[len("model."):]: v for k, v in checkpoint.load_weights(ckpt).items() if k.startswith("model.")}
    model.load_state_dict(weights)
    model.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return model.eval(), tokenizer
