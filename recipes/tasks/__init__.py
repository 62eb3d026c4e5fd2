"""Synthetic tasks for the recipes' small-scale checks: generators of prompt/answer data and
their exact-match evaluation.

Used by the experiments in `benchmarks/experiments/` and by tests. Each task is one module
(e.g. `recipes.tasks.arithmetic`) offering a seeded generator of `{"prompt", "answer"}` rows,
writers for the formats llmcore reads (SFT jsonl for `data.format: sft`, a prepared token
folder for pretraining) and an exact-match score built on `llmcore.eval.tasks.exact_match`.
Nothing is imported here, so `import recipes` stays cheap.
"""
