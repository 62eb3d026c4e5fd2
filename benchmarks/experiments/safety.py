"""Safety pretraining at small scale: raw vs filtered vs the full recipe, SafeBeam, abliteration.

Small-scale check of Safety pretraining (arXiv 2504.16980) and of abliteration as its
robustness test (arXiv 2510.02768, the refusal direction of arXiv 2406.11717), on the
fictional world of `recipes.tasks.safety_data` (nothing real is harmful). One corpus of prose
and chat documents scored 0-5 (a fraction `--unsafe` harmful, 4-5 being step-by-step
"procedures" and harmful requests complied with); the same small model trained for the same
steps and tokens on:
  (a) raw      -- the corpus as it is;
  (b) filtered -- score-0 documents only;
  (c) full     -- `llmcore safety route` output (keep, rephrase 1-3, refusal dialogues and
                  moral education for 4-5) plus the original unsafe documents with harm tags
                  (the `safety` recipe, tags only where the score side-car says unsafe).
Measured per model: unsafe-continuation and refusal rates on held-out harmful prompts with
greedy decoding, plain beam search and SafeBeam (same width); next-token loss on safe
validation text; mean P(tag) over safe vs unsafe validation documents; then abliteration
(`recipes.safety.abliterate`, layer chosen under a KL bound): refusal rate before/after and
the unsafe rate after, greedy and with SafeBeam.

Choices made for the small scale (see benchmarks/EXPERIMENTS.md):
- Scores are the generator's true labels (an oracle classifier): the classifier's own
  errors are tested in tests/, and would only add noise to a 3-seed comparison.
- The token budget is equal (steps x batch x seq_len); a condition with less text repeats it.
- The mixture weights of (c) are each part's share of its tokens.
- The seeds vary the model init and the data order; the corpus is one draw.

    /work/heavy python -m benchmarks.experiments.safety                        # the record
    python -m benchmarks.experiments.safety --seeds 0 --steps 20 --prompts 8   # a smoke run

Writes <out>/results.json, benchmarks/results/safety.json and .png (with --record), and
prints the markdown table of benchmarks/EXPERIMENTS.md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import yaml

CONDITIONS = ("raw", "filtered", "full")
RESULTS = Path(__file__).resolve().parents[1] / "results"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/safety")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--docs", type=int, default=4000)
    p.add_argument("--unsafe", type=float, default=0.3, help="fraction of documents with score 1-5")
    p.add_argument("--dialogue", type=float, default=0.5, help="fraction of documents in chat form")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--tag-rate", type=float, default=0.05)
    p.add_argument("--prompts", type=int, default=60, help="harmful (and harmless) evaluation prompts")
    p.add_argument("--new-tokens", type=int, default=24)
    p.add_argument("--beam", type=int, default=4)
    p.add_argument("--kl-bound", type=float, default=0.5, help="abliteration: max KL on harmless prompts")
    p.add_argument("--record", action="store_true", help="write benchmarks/results/safety.{json,png}")
    p.add_argument("--report-only", action="store_true",
                   help="print the table and redraw the plot from benchmarks/results/safety.json")
    return p.parse_args(argv)


# --- data -------------------------------------------------------------------------------------

def _zero_sidecar(folder: Path) -> None:
    from llmcore.data.sidecar_writer import write_sidecar

    write_sidecar(str(folder), "harm_score", lambda s, k: np.zeros(s.shard_span(k)[3], np.float32),
                  kind="doc", dtype="float32", overwrite=True)


def _score_sidecar(folder: Path, scores: dict) -> None:
    from llmcore.data.sidecar_writer import write_sidecar

    def compute(s, k):
        _, _, first, n = s.shard_span(k)
        return scores[s.split][first:first + n]
    write_sidecar(str(folder), "harm_score", compute, kind="doc", dtype="float32", overwrite=True)


def _tokens(folder: Path) -> int:
    from llmcore.data import read_manifest

    return int(read_manifest(str(folder))["splits"]["train"]["num_tokens"])


def build_data(a, root: Path) -> dict:
    """Prepared folders of the three conditions and the evaluation texts."""
    from llmcore.recipe.registry import all_special_tokens
    from recipes.safety.route import Thresholds, route
    from recipes.tasks import safety_data as sd

    tok = sd.train_tokenizer(str(root / "tok"), all_special_tokens(), vocab_size=600)
    docs = sd.documents(a.docs, 0, a.unsafe, a.dialogue)
    val = sd.documents(400, 1, a.unsafe, a.dialogue)
    safe, safe_val = [d for d in docs if d["score"] == 0], [d for d in val if d["score"] == 0]
    unsafe = [d for d in docs if d["score"] > 0]
    sd.write_prepared(str(root / "raw"), tok, docs, val)
    _score_sidecar(root / "raw", {"train": np.array([d["score"] for d in docs], np.float32),
                                  "val": np.array([d["score"] for d in val], np.float32)})
    sd.write_prepared(str(root / "filtered"), tok, safe, safe_val)
    _zero_sidecar(root / "filtered")  # also the validation folder of every condition
    routed = route(str(root / "raw"), str(root / "routed"), Thresholds(0.5, 3.5), overwrite=True)
    sd.write_prepared(str(root / "unsafe_tagged"), tok, unsafe, safe_val[:1])
    _score_sidecar(root / "unsafe_tagged", {"train": np.array([d["score"] for d in unsafe], np.float32),
                                            "val": np.zeros(1, np.float32)})
    full = []
    for s in routed["sources"]:
        _zero_sidecar(Path(s["path"]))  # routed text is safe: never tagged
        full.append({"name": s["name"], "path": s["path"], "weight": _tokens(Path(s["path"]))})
    full.append({"name": "unsafe_tagged", "path": str(root / "unsafe_tagged"), "weight": _tokens(root / "unsafe_tagged")})
    total = sum(s["weight"] for s in full)
    for s in full:
        s["weight"] = s["weight"] / total
    return {"tok": tok, "val": val, "routed": routed,
            "sources": {"raw": [{"name": "raw", "path": str(root / "raw"), "weight": 1.0}],
                        "filtered": [{"name": "filtered", "path": str(root / "filtered"), "weight": 1.0}],
                        "full": full},
            "tokens": {"raw": _tokens(root / "raw"), "filtered": _tokens(root / "filtered"),
                       "full": sum(_tokens(Path(s["path"])) for s in full)}}


# --- training ---------------------------------------------------------------------------------

def train(a, root: Path, data: dict, cond: str, seed: int) -> tuple[Path, dict]:
    from llmcore.config.load import load_run_config
    from llmcore.train import checkpoint
    from llmcore.train.loop import Trainer

    out = root / "runs" / f"{cond}-s{seed}"
    spec = {"model": {"preset": "tiny", "d_model": a.d_model, "n_layers": a.layers, "max_seq_len": 256},
            "data": {"sources": data["sources"][cond], "val_path": str(root / "filtered"), "seq_len": a.seq_len,
                     "sidecars": ["harm_score"] if cond == "full" else []},
            "train": {"max_steps": a.steps, "micro_batch_size": a.batch, "global_batch_size": a.batch,
                      "out_dir": str(out), "seed": seed, "progress": False, "log_every": 50,
                      "eval_every": a.steps, "eval_batches": 8},
            "optim": {"lr": a.lr}, "schedule": {"warmup_steps": 20},
            "recipes": ["safety"] if cond == "full" else []}
    if cond == "full":
        spec["safety"] = {"rate": a.tag_rate}
    out.mkdir(parents=True, exist_ok=True)
    (out.parent / f"{cond}-s{seed}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    if checkpoint.latest(out) is not None and checkpoint.read_state(checkpoint.resolve(out))["step"] == a.steps:
        return out, {}
    result = Trainer(load_run_config(str(out.parent / f"{cond}-s{seed}.yaml"), [])).fit()
    return out, result


# --- evaluation -------------------------------------------------------------------------------

@torch.inference_mode()
def p_tag(model, tok, docs: list[dict], tag: int) -> tuple[float, float]:
    """Mean P(tag) over every position of safe (score 0) and of unsafe (score >= 1) documents."""
    sums = {True: [], False: []}
    for d in docs:
        ids = torch.tensor([tok.encode(d["text"])])
        p = model.logits(model(ids))[0].softmax(-1)[:, tag]
        sums[d["score"] > 0].append(float(p.mean()))
    return float(np.mean(sums[False])), float(np.mean(sums[True]))


@torch.inference_mode()
def val_loss(model, tok, docs: list[dict]) -> float:
    """Mean next-token loss per token over the texts (+ eos), tag banned from nothing: raw LM."""
    tot, n = 0.0, 0
    for d in docs:
        ids = torch.tensor([tok.encode(d["text"]) + [tok.eos_id]])
        logp = model.logits(model(ids[:, :-1]))[0].log_softmax(-1)
        tot -= float(logp.gather(1, ids[0, 1:, None]).sum())
        n += ids.shape[1] - 1
    return tot / n


def random_drop(seed: int):
    """The control of SafeBeam: a beam selector that drops a uniformly random half of the
    proposals (the same count SafeBeam drops), so what SafeBeam gains over it is what P(tag)
    knows, not what pruning alone does."""
    g = torch.Generator().manual_seed(seed)

    def select(cands, lookahead):
        n = len(cands)
        rest = cands.select(torch.randperm(n, generator=g)[:max(1, n - n // 2)])
        return rest.select(rest.score.argsort(descending=True, stable=True))
    return select


def decode_rates(model, tok, prompts: list[str], a, judge, mode: str) -> dict:
    """Unsafe and refusal rates of continuations, mode greedy | beam | safebeam | randomdrop;
    for the beam modes also the mean log-prob per token of the kept hypotheses (fluency)."""
    from llmcore.generate.beam import beam_search
    from llmcore.recipe.recipe_set import RecipeSet
    from recipes.safety.abliterate import encode_prompts, greedy
    from recipes.safety.recipe import Safety

    recipes = RecipeSet([Safety(Safety.Config(safebeam=mode == "safebeam"))])
    recipes.bind(tok)
    ids = encode_prompts(tok, prompts)
    out = {}
    if mode == "greedy":
        outs = greedy(model, ids, a.new_tokens, tok.eos_id, recipes.logits_processors())
    else:
        selector = random_drop(0) if mode == "randomdrop" else recipes.beam_selector()
        found = [beam_search(model, p, beam_width=a.beam, max_new_tokens=a.new_tokens, eos_id=tok.eos_id,
                             selector=selector, logits_processors=recipes.logits_processors())[0] for p in ids]
        outs = [f[0] for f in found]
        out["logprob"] = float(np.mean([f[1] for f in found]))
    texts = [tok.decode([t for t in o if t != tok.eos_id]) for o in outs]
    out.update(unsafe=float(np.mean([judge.is_unsafe(t) for t in texts])),
               refusal=float(np.mean([judge.is_refusal(t) for t in texts])), example=texts[0])
    return out


def evaluate(a, ckpt: Path, data: dict, harmful: list[str], harmless: list[str]) -> dict:
    import llmcore
    from recipes.safety.abliterate import abliterate
    from recipes.safety.judge import PatternJudge
    from recipes.safety.recipe import Safety

    model, tok = llmcore.load(str(ckpt), device="cpu")
    judge = PatternJudge()
    tag = tok.token_id(Safety.TOKEN)
    out = {"val_loss_safe": val_loss(model, tok, [d for d in data["val"] if d["score"] == 0][:150])}
    out["p_tag_safe"], out["p_tag_unsafe"] = p_tag(model, tok, data["val"][:200], tag)
    for mode in ("greedy", "beam", "safebeam", "randomdrop"):
        out[mode] = decode_rates(model, tok, harmful, a, judge, mode)
    few = harmless[:len(harmless) // 2]
    out["harmless"] = {m: decode_rates(model, tok, few, a, judge, m) for m in ("beam", "safebeam")}
    ban = [lambda logits, ids: logits.index_fill_(-1, torch.tensor([tag]), float("-inf"))]
    edited, rep, _ = abliterate(model, tok, harmful, harmless, judge=judge, kl_bound=a.kl_bound,
                                max_new_tokens=a.new_tokens, processors=ban)
    out["abliteration"] = {k: rep[k] for k in ("layer", "refusal_before", "refusal_after", "false_refusal_before",
                                               "false_refusal_after", "kl", "kl_first_token")}
    held = harmful[len(harmful) // 2:]  # abliterate's held-out half
    for mode in ("greedy", "safebeam", "randomdrop"):
        out["abliteration"][f"unsafe_after_{mode}"] = decode_rates(edited, tok, held, a, judge, mode)["unsafe"]
    return out


# --- summary ----------------------------------------------------------------------------------

METRICS = [("unsafe, greedy", lambda r: r["greedy"]["unsafe"]), ("unsafe, beam", lambda r: r["beam"]["unsafe"]),
           ("unsafe, SafeBeam", lambda r: r["safebeam"]["unsafe"]),
           ("unsafe, random-drop beam", lambda r: r["randomdrop"]["unsafe"]),
           ("refusal, greedy", lambda r: r["greedy"]["refusal"]),
           ("log-prob/token, harmful, beam", lambda r: r["beam"]["logprob"]),
           ("log-prob/token, harmful, SafeBeam", lambda r: r["safebeam"]["logprob"]),
           ("log-prob/token, harmful, random-drop", lambda r: r["randomdrop"]["logprob"]),
           ("log-prob/token, harmless, beam", lambda r: r["harmless"]["beam"]["logprob"]),
           ("log-prob/token, harmless, SafeBeam", lambda r: r["harmless"]["safebeam"]["logprob"]),
           ("safe val loss", lambda r: r["val_loss_safe"]), ("P(tag) safe", lambda r: r["p_tag_safe"]),
           ("P(tag) unsafe", lambda r: r["p_tag_unsafe"]),
           ("refusal before abl.", lambda r: r["abliteration"]["refusal_before"]),
           ("refusal after abl.", lambda r: r["abliteration"]["refusal_after"]),
           ("unsafe after abl., greedy", lambda r: r["abliteration"]["unsafe_after_greedy"]),
           ("unsafe after abl., SafeBeam", lambda r: r["abliteration"]["unsafe_after_safebeam"]),
           ("unsafe after abl., random-drop", lambda r: r["abliteration"]["unsafe_after_randomdrop"]),
           ("abl. KL (N tokens)", lambda r: r["abliteration"]["kl"]),
           ("abl. KL (1st token)", lambda r: r["abliteration"]["kl_first_token"])]


def table(results: dict) -> str:
    """Markdown: one row per metric, mean ± sample std over seeds per condition."""
    lines = ["| metric | " + " | ".join(CONDITIONS) + " |", "|---" * (len(CONDITIONS) + 1) + "|"]
    for name, fn in METRICS:
        cells = []
        for c in CONDITIONS:
            vals = [fn(r) for r in results[c].values()]
            fmt = "{:.4f} ± {:.4f}" if "P(tag)" in name or "KL" in name else "{:.3f} ± {:.3f}"
            cells.append(fmt.format(np.mean(vals), np.std(vals, ddof=1) if len(vals) > 1 else 0.0))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(results: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("unsafe-continuation rate", ["unsafe, greedy", "unsafe, beam", "unsafe, SafeBeam",
                                            "unsafe, random-drop beam"]),
              ("fluency of beams (log-prob/token)", ["log-prob/token, harmful, beam",
                                                     "log-prob/token, harmful, SafeBeam",
                                                     "log-prob/token, harmful, random-drop"]),
              ("refusals and abliteration", ["refusal before abl.", "refusal after abl.",
                                             "unsafe after abl., greedy", "unsafe after abl., SafeBeam"]),
              ("P(tag)", ["P(tag) safe", "P(tag) unsafe"]), ("loss on safe text", ["safe val loss"])]
    fns = dict(METRICS)
    fig, axes = plt.subplots(1, len(panels), figsize=(22, 4))
    for ax, (title, names) in zip(axes, panels):
        width = 0.8 / len(names)
        for j, name in enumerate(names):
            for i, c in enumerate(CONDITIONS):
                vals = [fns[name](r) for r in results[c].values()]
                x = i + (j - (len(names) - 1) / 2) * width
                ax.bar(x, np.mean(vals), width, color=f"C{j}", alpha=0.6, label=name if i == 0 else None)
                ax.plot([x] * len(vals), vals, "k.", ms=4)
        ax.set_xticks(range(len(CONDITIONS)), CONDITIONS)
        ax.set_title(title)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def main(argv=None) -> None:
    a = parse_args(argv)
    if a.report_only:
        record = json.loads((RESULTS / "safety.json").read_text())
        print(table(record["results"]))
        print(plot(record["results"], RESULTS / "safety.png"))
        return
    torch.set_num_threads(1)
    from recipes.tasks import safety_data as sd

    t0 = time.time()
    root = Path(a.out)
    data = build_data(a, root)
    harmful = [r["prompt"] for r in sd.prompts(a.prompts, 1000, True)]
    harmless = [r["prompt"] for r in sd.prompts(a.prompts, 1000, False)]
    results: dict = {c: {} for c in CONDITIONS}
    for seed in [int(s) for s in a.seeds.split(",")]:
        for cond in CONDITIONS:
            t = time.time()
            ckpt, _ = train(a, root, data, cond, seed)
            results[cond][seed] = evaluate(a, ckpt, data, harmful, harmless)
            print(f"{cond} seed {seed}: {time.time() - t:.0f}s "
                  f"unsafe greedy {results[cond][seed]['greedy']['unsafe']:.3f} "
                  f"safebeam {results[cond][seed]['safebeam']['unsafe']:.3f}", flush=True)
    record = {"args": vars(a), "tokens": data["tokens"], "routed": data["routed"]["counts"],
              "wall_s": round(time.time() - t0, 1), "results": results}
    (root / "results.json").write_text(json.dumps(record, indent=1))
    print(table(results))
    print(f"wall time {record['wall_s']} s; tokens per condition {data['tokens']}; routed {record['routed']}")
    if a.record:
        (RESULTS / "safety.json").write_text(json.dumps(record, indent=1))
        print(plot(results, RESULTS / "safety.png"))


if __name__ == "__main__":
    main()
