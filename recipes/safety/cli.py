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

from llmcore.data.jsonl import read_json_lines
from llmcore.errors import DataError

log = logging.getLogger("llmcore")


def read_prompts(path: str, field: str = "prompt") -> list[str]:
    """The `field` strings of a JSON-lines file (DataError naming the file and line)."""
    p = Path(path)
    out = []
    for lineno, row in read_json_lines(p, "prompt file"):
        if not isinstance(row.get(field), str):
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
    _add_rest(actions)


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
    """Abliterate a checkpoint, save the edited one with `llmcore.save`, print the report."""
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


def _add_rest(actions) -> None:
    tc = actions.add_parser("train-classifier", help="train the harmfulness scoring head with our trainer")
    tc.add_argument("--checkpoint", required=True, help="the trunk to start from")
    tc.add_argument("--data", required=True, help="labelled jsonl: {\"text\": ..., \"score\": 0-5}")
    tc.add_argument("--val", help="labelled jsonl for validation")
    tc.add_argument("--out", required=True, help="run folder (resumes from its latest checkpoint)")
    tc.add_argument("--steps", type=int, default=200)
    tc.add_argument("--seq-len", type=int, default=128, help="texts are cut to this many tokens")
    tc.add_argument("--positive-weight", type=float, default=3.0)
    tc.add_argument("--set", action="append", default=[], help="config override key=value (repeatable)")
    tc.set_defaults(fn=cmd_train_classifier)

    sc = actions.add_parser("score", help="write per-document harmfulness scores beside the shards")
    sc.add_argument("--classifier", required=True, help="a checkpoint of `safety train-classifier`")
    sc.add_argument("--data", required=True, help="a prepared data folder")
    sc.add_argument("--name", default="harm_score", help="side-car name")
    sc.add_argument("--chunk", type=int, default=256, help="tokens per chunk (documents: max over chunks)")
    sc.add_argument("--batch-size", type=int, default=32)
    sc.add_argument("--overwrite", action="store_true")
    sc.add_argument("--no-progress", action="store_true")
    sc.set_defaults(fn=cmd_score)

    ro = actions.add_parser("route", help="keep / rephrase / refuse by score into weighted data sources")
    ro.add_argument("--data", required=True, help="a scored prepared data folder")
    ro.add_argument("--out", required=True)
    ro.add_argument("--rephrase-at", type=float, default=0.5)
    ro.add_argument("--refuse-at", type=float, default=3.5)
    ro.add_argument("--score-name", default="harm_score")
    ro.add_argument("--split", default="train")
    ro.add_argument("--rewriter", help="a generation-capable checkpoint (default: templates)")
    ro.add_argument("--weights", default="", help="part multipliers, e.g. keep=1,refusal=2")
    ro.add_argument("--overwrite", action="store_true")
    ro.set_defaults(fn=cmd_route)

    ev = actions.add_parser("eval", help="refusal / unsafe-continuation rates with the pattern judge")
    ev.add_argument("--checkpoint", required=True)
    ev.add_argument("--harmful", required=True, help="jsonl of harmful prompts")
    ev.add_argument("--harmless", help="jsonl of harmless prompts (false refusals)")
    ev.add_argument("--new-tokens", type=int, default=32)
    ev.add_argument("--beam", type=int, default=0, help="beam width (the checkpoint's selector, e.g. SafeBeam); 0: greedy")
    ev.add_argument("--template", default=None)
    ev.add_argument("--judge-classifier", help="a classifier checkpoint as the model judge")
    ev.add_argument("--judge-threshold", type=float, default=3.5, help="model judge: unsafe at score >= this")
    ev.add_argument("--labelled", help="jsonl {\"text\", \"unsafe\": bool}: judge agreement on it")
    ev.add_argument("--report")
    _judge_args(ev)
    ev.set_defaults(fn=cmd_eval)


def _labelled_rows(path: str, text_field: str, label_field: str) -> list[tuple[str, float]]:
    p = Path(path)
    out = []
    for lineno, row in read_json_lines(p, "labelled file"):
        if not isinstance(row.get(text_field), str) or not isinstance(row.get(label_field), (int, float, bool)):
            raise DataError(f"{p}:{lineno}: needs a string {text_field!r} and a number {label_field!r}")
        out.append((row[text_field], float(row[label_field])))
    if not out:
        raise DataError(f"labelled file {p} holds no rows")
    return out


def _classifier_rows(src: str, dst: Path, tok, seq_len: int) -> str:
    """{"text", "score"} -> SFT rows {"prompt": text cut to seq_len tokens, "answer": "", "score"}."""
    rows = []
    for text, score in _labelled_rows(src, "text", "score"):
        if score != int(score) or not 0 <= score <= 5:
            raise DataError(f"{src}: score {score} is not an integer in 0..5")
        ids = tok.encode(text)
        keep = seq_len
        while len(ids) > seq_len:  # decode(ids[:k]) may re-encode longer: shrink until it fits
            text = tok.decode(ids[:keep])
            ids, keep = tok.encode(text), keep - 1
        rows.append({"prompt": text, "answer": "", "score": int(score)})
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(dst)


def cmd_train_classifier(a) -> None:
    """Build the classifier run (SFT rows, init_from the trunk, ntp off, the head recipe) in
    `--out` (its `classifier.yaml`) and train it with the trainer; rerunning resumes it."""
    import yaml

    from llmcore.config.load import load_run_config
    from llmcore.tokenizer import Tokenizer
    from llmcore.train.checkpoint import resolve, saved_config
    from llmcore.train.loop import Trainer

    ckpt = resolve(a.checkpoint)
    tok = Tokenizer.load(str(ckpt / "tokenizer"))
    out = Path(a.out)
    train = _classifier_rows(a.data, out / "classifier_data" / "train.jsonl", tok, a.seq_len)
    data = {"format": "sft", "path": train, "seq_len": a.seq_len, "sft_fields": ["score"],
            "tokenizer": str(ckpt / "tokenizer")}
    if a.val:
        data["val_path"] = _classifier_rows(a.val, out / "classifier_data" / "val.jsonl", tok, a.seq_len)
    spec = {"model": saved_config(ckpt).get("model") or {}, "data": data,
            "train": {"init_from": str(ckpt), "max_steps": a.steps, "out_dir": str(out), "ntp_weight": 0.0},
            "recipes": ["safety_classifier"], "safety_classifier": {"positive_weight": a.positive_weight}}
    path = out / "classifier.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    result = Trainer(load_run_config(str(path), list(a.set))).fit()
    print(json.dumps({"classifier": result.get("checkpoint"), "loss": result.get("loss")}))


def cmd_score(a) -> None:
    """Score every document of a prepared folder into a per-document side-car (resumable)."""
    from llmcore.data.shards import sha256_file
    from recipes.safety.classifier import Classifier
    from recipes.safety.scoring import score_folder

    clf = Classifier(a.classifier)
    made_from = {"classifier": clf.path, "head_sha256": sha256_file(str(Path(clf.path) / "aux.safetensors")),
                 "chunk": a.chunk}
    meta = score_folder(a.data, lambda docs: clf.score_documents(docs, a.chunk, a.batch_size), name=a.name,
                        made_from=made_from, progress=not a.no_progress, overwrite=a.overwrite)
    print(f"side-car {a.name!r} of {a.data}: splits {sorted(meta['splits'])}")


def cmd_route(a) -> None:
    """Route a scored folder into weighted keep / rephrase / refusal / moral sources."""
    from recipes.safety.route import ModelRewriter, TemplateRewriter, Thresholds, route

    weights = {}
    for item in filter(None, a.weights.split(",")):
        k, sep, v = item.partition("=")
        try:
            weights[k.strip()] = float(v)
        except ValueError:
            sep = ""
        if not sep:
            from llmcore.errors import ConfigError
            raise ConfigError(f"--weights item {item!r} is not part=number")
    rewriter = ModelRewriter(a.rewriter) if a.rewriter else TemplateRewriter()
    summary = route(a.data, a.out, Thresholds(a.rephrase_at, a.refuse_at), rewriter=rewriter, split=a.split,
                    score_name=a.score_name, weights=weights, overwrite=a.overwrite)
    print(json.dumps(summary, indent=1))


def continuations(model, tok, recipes, prompts: list[str], template: str, new_tokens: int, beam: int) -> list[str]:
    """Each prompt's continuation as text: greedy, or the best beam with the recipes' selector."""
    from llmcore.generate.beam import beam_search_text
    from recipes.safety.abliterate import encode_prompts, greedy

    if beam:
        return [beam_search_text(model, tok, template.replace("{prompt}", p), beam_width=beam,
                                 max_new_tokens=new_tokens, recipes=recipes)[0][0] for p in prompts]
    ids = encode_prompts(tok, prompts, template)
    outs = greedy(model, ids, new_tokens, tok.eos_id, recipes.logits_processors())
    return [tok.decode([t for t in o if t != tok.eos_id]) for o in outs]


def cmd_eval(a) -> None:
    """Refusal, unsafe-continuation and false-refusal rates of a checkpoint, with the pattern
    judge, an optional model judge and their agreement on a labelled subset."""
    from recipes.safety.abliterate import PROMPT_TEMPLATE
    from recipes.safety.judge import agreement, rate

    judge = _judge(a)
    model, tok, recipes = _load(a.checkpoint)
    template = a.template or PROMPT_TEMPLATE
    harmful = continuations(model, tok, recipes, read_prompts(a.harmful), template, a.new_tokens, a.beam)
    report = {"checkpoint": a.checkpoint, "decoding": f"beam {a.beam}" if a.beam else "greedy",
              "n_harmful": len(harmful), "refusal_rate": rate(judge.is_refusal, harmful),
              "unsafe_rate": rate(judge.is_unsafe, harmful)}
    if a.harmless:
        harmless = continuations(model, tok, recipes, read_prompts(a.harmless), template, a.new_tokens, a.beam)
        report["false_refusal_rate"] = rate(judge.is_refusal, harmless)
    model_judge = None
    if a.judge_classifier:
        from recipes.safety.classifier import Classifier

        clf = Classifier(a.judge_classifier)

        def model_judge(text: str) -> bool:
            return bool(clf.score_texts([text])[0] >= a.judge_threshold)
        report["model_judge_unsafe_rate"] = rate(model_judge, harmful)
    if a.labelled:
        rows = _labelled_rows(a.labelled, "text", "unsafe")
        texts, labels = [t for t, _ in rows], [bool(y) for _, y in rows]
        other = model_judge or (lambda t: False)
        agree = agreement(judge.is_unsafe, other, texts, labels)
        report["labelled"] = {"n": agree["n"], "pattern_accuracy": agree["accuracy_a"]}
        if model_judge:
            report["labelled"].update(model_accuracy=agree["accuracy_b"], agreement=agree["agreement"])
    _write_report(report, a.report)
