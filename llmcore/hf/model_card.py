"""The `README.md` model card `export-hf` writes into a Hugging Face folder (the HF convention).

Everything in it is read from the checkpoint and the run folder around it, never typed by
hand: the architecture (config.yaml, resolved against the preset), the exact parameter count,
the tokens trained (state.json), the recipes, the last validation loss (the run's
`metrics.jsonl`, at or before the checkpoint's step), the command that wrote the checkpoint
(recorded by `llmcore train`) and the full training config, which reproduces the run.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from llmcore.model.args import ModelArgs
from llmcore.train.metrics import read_metrics

FILE = "README.md"


def final_validation(run_dir: Path, step: int) -> dict | None:
    """The last evaluation row (with `val_loss`) of `run_dir/metrics.jsonl` at or before `step`;
    None when the run has no metrics file or never evaluated."""
    rows = [row for row in read_metrics(run_dir / "metrics.jsonl") if "val_loss" in row and row["step"] <= step]
    return rows[-1] if rows else None


def render(ckpt: Path, args: ModelArgs, state: dict, config_yaml: str, vocab_size: int, dtype: str) -> str:
    """The card's Markdown for checkpoint `ckpt` (its model args, state.json and config.yaml text)."""
    config = yaml.safe_load(config_yaml) or {}
    recipes = config.get("recipes") or []
    step = int(state.get("step", 0))
    tokens = state.get("tokens_seen")
    evaluated = final_validation(ckpt.parent, step)
    preset = (config.get("model") or {}).get("preset", "?")
    lines = ["---", "library_name: transformers", "pipeline_tag: text-generation", "tags:", "- llmcore", "- llama",
             "---", "", f"# {ckpt.parent.name}/{ckpt.name}", "",
             f"A decoder-only language model trained with llmcore and exported as `LlamaForCausalLM` ({dtype}).", "",
             "## Model", "",
             "| field | value |", "| --- | --- |",
             f"| parameters | {args.num_params():,} |",
             f"| preset | {preset} |",
             f"| layers x d_model | {args.n_layers} x {args.d_model} |",
             f"| attention heads (key/value heads) | {args.n_heads} ({args.n_kv_heads}) |",
             f"| feed-forward (SwiGLU) hidden | {args.ffn_hidden} |",
             f"| vocabulary (tokenizer) | {args.vocab_size} ({vocab_size}) |",
             f"| context | {args.max_seq_len} tokens, RoPE theta {args.rope_theta:g} |",
             f"| tied embeddings | {'yes' if args.tie_embeddings else 'no'} |",
             "", "## Training", "",
             f"- steps: {step:,}; training tokens: {f'{tokens:,}' if isinstance(tokens, int) else 'not recorded'}",
             f"- recipes: {', '.join(f'`{r}`' for r in recipes) if recipes else 'none (plain next-token prediction)'}"]
    init_from = (config.get("train") or {}).get("init_from")
    if init_from:
        lines.append(f"- initialised from `{init_from}` (tokens before it are not counted)")
    if state.get("imported_from"):
        lines.append(f"- imported from the Hugging Face folder `{state['imported_from']}` (not trained here)")
    if evaluated is not None:
        lines.append(f"- final validation loss: {evaluated['val_loss']:.4f} nats/token (step {evaluated['step']:,})")
    else:
        lines.append("- final validation loss: not evaluated")
    command = state.get("command")
    lines += ["", "## How it was made", ""]
    if command:
        lines += ["The command that wrote this checkpoint:", "", "```bash", command, "```", ""]
    else:
        lines += ["No command was recorded (trained from Python); the config below reproduces it.", ""]
    lines += [(f"Exported with `llmcore export-hf --checkpoint {ckpt}`. The full training config "
               "(`llmcore train --config <this file>` trains the same run):"), "",
              "```yaml", config_yaml.rstrip("\n"), "```", ""]
    return "\n".join(lines)
