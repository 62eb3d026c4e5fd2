"""The `llmcore` command: tokenizer, data, train, pipeline, report, sweep, eval, sensitivity, generate, export-hf,
import-hf.

Settings of a training run live in the typed config (YAML + dotted overrides), not in flags;
the flags here are for the one-shot tools around it. Any `LlmcoreError` (bad config key,
missing file, corrupt shard or checkpoint) prints one line naming the problem and exits 2.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import sys
from pathlib import Path

from llmcore.cli import sensitivity
from llmcore.cli.commands import add_recipe_commands
from llmcore.config.load import load_run_config
from llmcore.errors import LlmcoreError


def _split_csv(text: str | None) -> list[str]:
    return [t for t in (text or "").split(",") if t]


def cmd_tokenizer_train(a) -> None:
    from llmcore.recipe.registry import all_special_tokens
    from llmcore.tokenizer import Tokenizer

    specials = _split_csv(a.special_tokens)
    if not a.no_recipe_tokens:
        specials += [t for t in all_special_tokens() if t not in specials]
    tok = Tokenizer.train(a.input, a.out, a.vocab_size, special_tokens=specials, seed=a.seed,
                          overwrite=a.overwrite)
    print(f"tokenizer: {a.out} (vocab {tok.vocab_size}, special {', '.join(tok.special_ids) or 'none'})")


def cmd_data_prepare(a) -> None:
    from llmcore.data.prepare import prepare
    from llmcore.tokenizer import Tokenizer
    from llmcore.tokenizer_hf import HFTokenizer, is_hf_folder, is_llmcore_folder

    if is_hf_folder(a.tokenizer) and not is_llmcore_folder(a.tokenizer):
        # a Hugging Face folder as it comes: recipe special tokens placed as import-hf places them
        from llmcore.recipe.registry import all_special_tokens

        tok = HFTokenizer.from_hf_folder(a.tokenizer, all_special_tokens())
    else:
        tok = Tokenizer.load(a.tokenizer)
    manifest = prepare(a.input, tok, a.out, val_fraction=a.val_fraction, num_proc=a.num_proc,
                       text_field=a.text_field, sample_by=a.sample_by, overwrite=a.overwrite, seed=a.seed)
    # The run finds its tokenizer beside the data unless data.tokenizer says otherwise.
    if tok.backend == "sentencepiece":
        shutil.copytree(a.tokenizer, Path(a.out) / "tokenizer", dirs_exist_ok=True)
    else:
        tok.save(str(Path(a.out) / "tokenizer"), overwrite=True)
    splits = manifest["splits"]
    print(f"data: {a.out}: " + ", ".join(f"{k} {v['num_tokens']:,} tokens / {v['num_docs']:,} docs"
                                         for k, v in splits.items()))


def cmd_data_doc_freq(a) -> None:
    from llmcore.data.stats import DF_FILE, cached_document_frequency

    df, docs = cached_document_frequency(a.data)
    print(f"{a.data}/{DF_FILE}: {docs:,} documents, {int((df > 0).sum()):,} of {len(df):,} token ids occur")


def cmd_train(a) -> None:
    cfg = load_run_config(a.config, a.overrides)
    if a.print_config:
        print(cfg.to_yaml())
        return
    from llmcore.train.loop import Trainer

    result = Trainer(cfg, command=a.command_line).fit()
    # The run is checkpointed and over. A stop signal still arriving now (a launcher repeating
    # the SIGTERM it forwards until the workers exit) must not turn this clean exit into a death
    # by signal, which torchrun and slurm would report as a failed job.
    for sig in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, signal.SIG_IGN)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({k: v for k, v in result.items() if not isinstance(v, dict)}, default=float))


def cmd_pipeline(a) -> None:
    """Stages of runs from a pipeline file; `--dry-run` lists the runs and what is on disk."""
    from llmcore.pipeline.run import load_plan, run_pipeline

    if a.dry_run:
        for run in load_plan(a.config, a.overrides)[1]:
            state = {"new": "new", "resume": f"resume at step {run.start_step}", "finished": "finished"}[run.state]
            sources = "".join(f", {key} <- {src}" for key, src in run.sources.items())
            print(f"{run.title}: {state} of {run.config.train.max_steps} steps -> {run.out_dir}{sources}")
        return
    run_pipeline(a.config, a.overrides, jobs=a.jobs)


def cmd_report(a) -> None:
    """The metrics, table and frontier plots a pipeline file declares (`report:`)."""
    from llmcore.pipeline.report import write_report

    res = write_report(a.config, a.overrides, out=a.out, plots=not a.no_plots)
    print(res["markdown"])
    print("report: " + ", ".join(str(p) for p in res["files"]))


def cmd_sweep(a) -> None:
    """One run per value of a config key (e.g. a peak-LR sweep), each in its own out_dir
    (`<train.out_dir>/<key>=<value>`, so each resumes independently), then a summary table:
    a one-stage pipeline, so finished runs are skipped on a rerun."""
    from llmcore.pipeline.run import run_pipeline
    from llmcore.pipeline.spec import Pipeline, Stage, Sweep

    values = _split_csv(a.values)
    if not values:
        raise LlmcoreError("sweep needs --values v1,v2,...")
    base = load_run_config(a.config, a.overrides)
    # values stay the text typed, so the folders are named as typed (`optim.lr=1e-3`)
    spec = Pipeline(out_dir=base.train.out_dir, overrides=list(a.overrides),
                    stages=[Stage(name="sweep", config=a.config or "", out_dir=".", sweep=Sweep(a.key, values))])
    rows = run_pipeline(spec, print_summary=False, jobs=a.jobs)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"{a.key:>16}  {'train loss':>10}  {'val loss':>10}  out_dir")
        for row in rows:  # a run stopped by a signal (or not started after it) has no row
            fmt = lambda x: f"{x:10.4f}" if isinstance(x, float) else f"{'-':>10}"
            print(f"{row['params'][a.key]!s:>16}  {fmt(row.get('loss'))}  {fmt(row.get('val_loss'))}  {row['out_dir']}")


def cmd_eval(a) -> None:
    import llmcore
    from llmcore.eval.loss import validation_loss
    from llmcore.eval.tasks import exact_match

    model, tok = llmcore.load(a.checkpoint)
    recipes = llmcore.load_recipes(a.checkpoint, a.recipe_option)
    recipes.bind(tok)
    out: dict = {}
    if a.data:
        from llmcore.data.shards import TokenShards

        shards = TokenShards(a.data, "val", expected_tokenizer_hash=tok.hash)
        from llmcore.data.stats import unigram_entropy

        out["validation"] = validation_loss(model, shards, a.seq_len, a.batch_size, a.max_batches,
                                                     ignore_ids=recipes.ignore_ids())
        # The context-free baseline: a useful model's loss is well below it.
        out["validation"]["unigram_entropy"] = unigram_entropy(shards)
    if a.pass_at_k:
        from llmcore.eval.sampled import (
            evaluate_pass_at_k,
            evaluate_pass_at_k_temperatures,
        )

        if not a.tasks:
            raise LlmcoreError("eval --pass-at-k samples the prompts of --tasks; give a task jsonl")
        ks = [int(k) for k in _split_csv(a.pass_at_k)]
        temps = [float(t) for t in _split_csv(a.temperature)]
        kw = {"n": a.samples, "recipes": recipes, "verifier": a.verifier, "max_new_tokens": a.max_new_tokens,
              "max_tasks": a.max_tasks}
        # One temperature: the curve itself; several: one curve per "T=<t>".
        out["pass_at_k"] = (evaluate_pass_at_k(model, tok, a.tasks, ks, temperature=temps[0], seed=a.seed, **kw)
                            if len(temps) == 1 else
                            evaluate_pass_at_k_temperatures(model, tok, a.tasks, ks, temps, seed=a.seed, **kw))
    elif a.tasks:
        res = exact_match(model, tok, a.tasks, max_new_tokens=a.max_new_tokens, recipes=recipes)
        out["exact_match"] = {k: v for k, v in res.items() if k != "examples"}
    if a.copy_probe:
        from llmcore.eval.copy_probe import copy_probe

        lo = 1 + max([tok.eos_id, tok.pad_id, *tok.special_ids.values()])
        out["copy_probe"] = copy_probe(model, lo=lo, hi=tok.vocab_size, span=a.copy_span, n_seqs=a.copy_n,
                                       seed=a.seed)
    if a.text:
        from llmcore.eval.bits_per_byte import bits_per_byte, read_documents

        out["text"] = bits_per_byte(model, tok, read_documents(a.text, a.text_field))
    if not out:
        raise LlmcoreError("eval needs --data (validation loss), --tasks (exact match), --pass-at-k (sampled "
                           "pass@k), --copy-probe and/or --text (bits per byte)")
    print(json.dumps(out, indent=1))


def cmd_generate(a) -> None:
    import llmcore
    from llmcore.generate.sampling import generate_text

    model, tok = llmcore.load(a.checkpoint)
    prompts = a.prompt or [line.rstrip("\n") for line in sys.stdin]
    outs = generate_text(model, tok, prompts, max_new_tokens=a.max_new_tokens, temperature=a.temperature,
                         top_k=a.top_k, top_p=a.top_p, seed=a.seed, recipes=llmcore.load_recipes(a.checkpoint),
                         truncate_prompts=a.truncate_prompts)
    for p, o in zip(prompts, outs):
        print(p + o)


def cmd_export_hf(a) -> None:
    from llmcore.hf.folder import export_hf

    export_hf(a.checkpoint, a.out, overwrite=a.overwrite, max_shard_size=a.max_shard_size, dtype=a.dtype)
    print(f"exported {a.checkpoint} -> {a.out}")


def cmd_import_hf(a) -> None:
    from llmcore.hf.folder import import_hf

    import_hf(a.model, a.out, overwrite=a.overwrite)
    print(f"imported {a.model} -> {a.out}")


def cmd_plot(a) -> None:
    from llmcore.train.curves import DEFAULT_KEYS, plot_runs

    keys = DEFAULT_KEYS + tuple(t for t in _split_csv(a.terms) if t not in DEFAULT_KEYS)
    plot_runs(a.runs, a.out, keys)
    print(f"plot: {a.out} ({', '.join(keys)} of {len(a.runs)} run{'s' if len(a.runs) > 1 else ''})")


def cmd_checkpoint_verify(a) -> None:
    from llmcore.train import checkpoint, manifest

    ckpt = checkpoint.resolve(a.checkpoint)
    if not manifest.verify(ckpt, full=a.full):
        raise LlmcoreError(f"{ckpt} has no {manifest.MANIFEST} (saved by an older llmcore): nothing to verify")
    kinds = "xxh3_128 and sha256" if a.full else "xxh3_128 (sha256 for a v1 manifest)"
    print(f"{ckpt}: every file matches {manifest.MANIFEST} ({kinds})")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="llmcore", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    tok = sub.add_parser("tokenizer", help="tokenizer tools").add_subparsers(dest="action", required=True)
    t = tok.add_parser("train", help="train a SentencePiece BPE tokenizer")
    t.add_argument("--input", nargs="+", required=True, help="text/.gz/.jsonl files")
    t.add_argument("--vocab-size", type=int, required=True)
    t.add_argument("--out", required=True)
    t.add_argument("--special-tokens", help="comma-separated extra special tokens")
    t.add_argument("--no-recipe-tokens", action="store_true",
                   help="do not reserve the special tokens every registered recipe declares")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--overwrite", action="store_true")
    t.set_defaults(fn=cmd_tokenizer_train)

    data = sub.add_parser("data", help="data tools").add_subparsers(dest="action", required=True)
    d = data.add_parser("prepare", help="tokenize text into memmap shards + manifest")
    d.add_argument("--input", nargs="+", required=True, help="files or folders (.txt, .gz, .jsonl, .parquet)")
    d.add_argument("--tokenizer", required=True)
    d.add_argument("--out", required=True)
    d.add_argument("--val-fraction", type=float, default=0.01)
    d.add_argument("--num-proc", type=int, default=1)
    d.add_argument("--text-field", default="text")
    d.add_argument("--sample-by", default="paragraph", choices=["line", "paragraph", "document"])
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--overwrite", action="store_true")
    d.set_defaults(fn=cmd_data_prepare)

    df = data.add_parser("doc-freq", help="store per-token document frequencies beside the shards (tf-idf)")
    df.add_argument("--data", required=True, help="prepared data folder")
    df.set_defaults(fn=cmd_data_doc_freq)

    tr = sub.add_parser("train", help="train (resumes from train.out_dir/latest)")
    tr.add_argument("--config", help="YAML config (recipes/configs/*.yaml)")
    tr.add_argument("overrides", nargs="*", help="dotted overrides, e.g. optim.lr=3e-4 train.max_steps=100")
    tr.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    tr.set_defaults(fn=cmd_train)

    pl = sub.add_parser("pipeline", help="stages of runs (init_from a stage), sweeps, grids; skips finished runs")
    pl.add_argument("--config", required=True, help="pipeline YAML (stages, each with its run config)")
    pl.add_argument("overrides", nargs="*", help="dotted run-config overrides applied to every stage")
    pl.add_argument("--dry-run", action="store_true", help="check the pipeline and list its runs; train nothing")
    pl.add_argument("--jobs", type=int, default=1, help="train up to N runs at once, each in its own process, a run "
                    "as soon as the runs it starts from have finished (default 1: in order)")
    pl.set_defaults(fn=cmd_pipeline)

    rp = sub.add_parser("report", help="a pipeline's declared metrics: table (CSV, Markdown) and frontier PNGs")
    rp.add_argument("--config", required=True, help="pipeline YAML with a report: section")
    rp.add_argument("overrides", nargs="*", help="the dotted overrides the pipeline ran with")
    rp.add_argument("--out", help="folder of the report files (default <pipeline out_dir>/report)")
    rp.add_argument("--no-plots", action="store_true", help="tables only (no matplotlib needed)")
    rp.set_defaults(fn=cmd_report)

    sw = sub.add_parser("sweep", help="train once per value of one config key (e.g. peak LR)")
    sw.add_argument("--config", help="YAML config")
    sw.add_argument("--key", required=True, help="dotted config key, e.g. optim.lr")
    sw.add_argument("--values", required=True, help="comma-separated values, e.g. 1e-3,3e-3,1e-2")
    sw.add_argument("--jobs", type=int, default=1, help="train up to N of the runs at once (as llmcore pipeline)")
    sw.add_argument("overrides", nargs="*", help="dotted overrides applied to every run")
    sw.set_defaults(fn=cmd_sweep)

    ev = sub.add_parser("eval", help="validation loss, exact match, sampled pass@k, copy probe, bits per byte")
    ev.add_argument("--checkpoint", required=True)
    ev.add_argument("--data", help="prepared data folder (its val split)")
    ev.add_argument("--tasks", help="prompt/answer jsonl for exact match")
    ev.add_argument("--text", help="raw text (.txt: one document; .jsonl: one per line) for bits per byte, "
                                   "scored as lm-evaluation-harness scores loglikelihood_rolling")
    ev.add_argument("--text-field", default="text", help="the .jsonl field holding each document")
    ev.add_argument("--seq-len", type=int, default=256)
    ev.add_argument("--batch-size", type=int, default=8)
    ev.add_argument("--max-batches", type=int, default=None)
    ev.add_argument("--max-new-tokens", type=int, default=32)
    ev.add_argument("--pass-at-k", help="e.g. 1,2,4,8: sample --tasks prompts and report pass@k (split over the "
                                        "recipes' fan-out, e.g. ModC's modes) with 95%% bootstrap intervals")
    ev.add_argument("--samples", type=int, default=None, help="pass@k: samples per prompt (default: the largest k)")
    ev.add_argument("--verifier", help="pass@k: exact (default: the first line equals the answer), regex (it fully "
                                       "matches the answer as a regular expression) or module:function(prompt, "
                                       "answer, completion) -> bool")
    ev.add_argument("--temperature", default="1.0",
                    help="pass@k: sampling temperature, or a comma-separated list (one curve per T=<t>; 0 = greedy)")
    ev.add_argument("--seed", type=int, default=0, help="pass@k / --copy-probe: seed")
    ev.add_argument("--max-tasks", type=int, default=None, help="pass@k: only the first N prompts")
    ev.add_argument("--recipe-option", action="append", default=[], metavar="RECIPE.KEY=VALUE",
                    help="change a decoding option of the checkpoint's recipes, e.g. "
                         "mode_conditioning.allocation=weights 'mode_conditioning.weights=[0.3,0.1]'")
    ev.add_argument("--copy-probe", action="store_true", help="induction probe: random spans shown twice")
    ev.add_argument("--copy-span", type=int, default=16, help="--copy-probe: tokens per span")
    ev.add_argument("--copy-n", type=int, default=64, help="--copy-probe: sequences")
    ev.set_defaults(fn=cmd_eval)
    sensitivity.add_parser(sub)

    g = sub.add_parser("generate", help="sample continuations (prompts from --prompt or stdin)")
    g.add_argument("--checkpoint", required=True)
    g.add_argument("--prompt", action="append")
    g.add_argument("--max-new-tokens", type=int, default=64)
    g.add_argument("--temperature", type=float, default=0.8)
    g.add_argument("--top-k", type=int, default=0)
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--truncate-prompts", action="store_true",
                   help="keep the last tokens of a prompt too long for max_seq_len with --max-new-tokens "
                        "(with a warning) instead of refusing it")
    g.set_defaults(fn=cmd_generate)

    ex = sub.add_parser("export-hf", help="write a Hugging Face LlamaForCausalLM folder")
    ex.add_argument("--checkpoint", required=True)
    ex.add_argument("--out", required=True)
    ex.add_argument("--overwrite", action="store_true")
    ex.add_argument("--max-shard-size", default="2GB", help="split model.safetensors above this size")
    ex.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"], help="cast weights")
    ex.set_defaults(fn=cmd_export_hf)

    im = sub.add_parser("import-hf", help="turn a Llama-architecture HF folder into a checkpoint")
    im.add_argument("--model", required=True)
    im.add_argument("--out", required=True)
    im.add_argument("--overwrite", action="store_true")
    im.set_defaults(fn=cmd_import_hf)
    pt = sub.add_parser("plot", help="train/validation loss (and named terms) vs tokens of runs, from metrics.jsonl")
    pt.add_argument("runs", nargs="+", help="run folders (train.out_dir)")
    pt.add_argument("--out", default="curves.png", help="image file (.png, .pdf, .svg)")
    pt.add_argument("--terms", help="comma-separated further keys of metrics.jsonl, e.g. fsp/loss,eval/code/loss")
    pt.set_defaults(fn=cmd_plot)

    ck = sub.add_parser("checkpoint", help="checkpoint tools").add_subparsers(dest="action", required=True)
    cv = ck.add_parser("verify", help="check every file of a checkpoint against its manifest.json")
    cv.add_argument("checkpoint", help="checkpoint dir, run dir (its latest) or a latest/best file")
    cv.add_argument("--full", action="store_true", help="check the sha256 chunks too (slower; the fast "
                    "xxh3_128 check is what every load does)")
    cv.set_defaults(fn=cmd_checkpoint_verify)
    add_recipe_commands(sub, builtin=set(sub.choices))
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        parser = build_parser()
    except LlmcoreError as e:  # a recipe command that cannot be loaded
        print(f"llmcore: error: {e}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    args.command_line = shlex.join(["llmcore", *(sys.argv[1:] if argv is None else argv)])
    try:
        args.fn(args)
    except LlmcoreError as e:
        print(f"llmcore: error: {e}", file=sys.stderr)
        _close_process_group(barrier=False)
        return 2
    _close_process_group()
    return 0


def _close_process_group(barrier: bool = True) -> None:
    """Leave torch.distributed cleanly: with gloo, exiting while the group is alive can abort
    the process ("terminate called without an active exception") and torchrun reports a failure."""
    if "torch.distributed" not in sys.modules:
        return
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        if barrier:
            dist.barrier()
        dist.destroy_process_group()

