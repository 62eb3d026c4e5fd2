"""`llmcore safety ...`: the safety recipe's commands (found through the `llmcore.commands`
entry point `safety = "recipes.safety.cli:add_command"`).

- `abliterate`: remove the refusal direction (`recipes.safety.abliterate`), save a new checkpoint.
- `train-classifier` / `score`: the harmfulness classifier and its per-document side-car
  (`recipes.safety.classifier`).
- `route`: keep / rephrase / refuse by score into weighted data sources (`recipes.safety.route`).
- `eval`: refusal and unsafe-continuation rates with the pattern judge (and a model judge).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from llmcore.errors import DataError

log = logging.getLogger("llmcore")


def read_prompts(path: str, field: str = "prompt") -> list[str]:
    """The `field` strings of a JSON-lines file (DataError naming the file and line)."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"prompt file {p} does not exist")
    out = []
    for lineno, line in enumerate(p.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as e:
            raise DataError(f"{p}:{lineno}: not a JSON line: {e}") from None
        if not isinstance(row, dict) or not isinstance(row.get(field), str):
            raise DataError(f"{p}:{lineno}: needs a string field {field!r}")
        out.append(row[field])
    if not out:
        raise DataError(f"prompt file {p} holds no prompts")
    return out


def _judge(a):
    from recipes.safety.judge import REFUSAL_PATTERNS, UNSAFE_PATTERNS, PatternJudge

    return PatternJudge(refusal=a.refusal_pattern or REFUSAL_PATTERNS, unsafe=a.unsafe_pattern or UNSAFE_PATTERNS)


def _judge_args(p) -> None:
    p.add_argument("--refusal-pattern", action="append", help="regex of a refusal (repeatable; default: built-in)")
    p.add_argument("--unsafe-pattern", action="append", help="regex of an unsafe continuation (repeatable)")


def add_command(parser) -> None:
    """safety: harmfulness scoring and routing, safety evaluation, abliteration."""
    actions = parser.add_subparsers(dest="action", required=True)
    ab = actions.add_parser("abliterate", help="remove the refusal direction; save a new checkpoint")
    ab.add_argument("--checkpoint", required=True)
    ab.add_argument("--harmful", required=True, help="jsonl of harmful prompts ({\"prompt\": ...})")
    ab.add_argument("--harmless", required=True, help="jsonl of harmless prompts")
    ab.add_argument("--out", required=True, help="new checkpoint folder")
    ab.add_argument("--layer", type=int, help="fixed layer (1..L) instead of the selection")
    ab.add_argument("--embedding", action="store_true", help="also edit the embedding")
    ab.add_argument("--positions", type=int, default=1, help="last prompt positions averaged")
    ab.add_argument("--held-out", type=float, default=0.5, help="fraction of prompts held out")
    ab.add_argument("--kl-bound", type=float, default=0.1, help="max KL on harmless prompts")
    ab.add_argument("--new-tokens", type=int, default=16, help="N generated tokens judged and in the KL")
    ab.add_argument("--template", default=None, help="chat template with {prompt}")
    ab.add_argument("--report", help="write the report JSON here too")
    ab.add_argument("--overwrite", action="store_true")
    _judge_args(ab)
    ab.set_defaults(fn=cmd_abliterate)


def _load(checkpoint: str):
    import llmcore

    model, tok = llmcore.load(checkpoint, device="cpu")
    recipes = llmcore.load_recipes(checkpoint)
    recipes.bind(tok)
    return model, tok, recipes


def _run_config(checkpoint: str):
    from llmcore.config.load import from_dict
    from llmcore.recipe.registry import recipe_config_class
    from llmcore.train.checkpoint import resolve, saved_config

    ckpt = resolve(checkpoint)
    raw = saved_config(ckpt)
    data = dict(raw.get("data") or {})
    path = data.get("path", "")
    data["path"] = path or "-"  # a checkpoint written by `llmcore.save` names no data: keep it so
    cfg = from_dict({**raw, "data": data}, source=str(ckpt / "config.yaml"), recipe_configs=recipe_config_class)
    cfg.data.path = path
    return cfg


def _write_report(report: dict, path: str | None) -> None:
    text = json.dumps(report, indent=1)
    print(text)
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text + "\n")


def cmd_abliterate(a) -> None:
    import llmcore
    from recipes.safety.abliterate import PROMPT_TEMPLATE, abliterate

    harmful, harmless = read_prompts(a.harmful), read_prompts(a.harmless)
    model, tok, recipes = _load(a.checkpoint)
    config = _run_config(a.checkpoint)
    edited, report, _ = abliterate(model, tok, harmful, harmless, judge=_judge(a), layer=a.layer,
                                   embedding=a.embedding, positions=a.positions, held_out=a.held_out,
                                   kl_bound=a.kl_bound, max_new_tokens=a.new_tokens,
                                   template=a.template or PROMPT_TEMPLATE,
                                   processors=recipes.logits_processors(), log=log.info)
    out = llmcore.save(edited, tok, a.out, config, overwrite=a.overwrite)
    report["checkpoint"], report["out"] = str(a.checkpoint), str(out)
    _write_report(report, a.report)
