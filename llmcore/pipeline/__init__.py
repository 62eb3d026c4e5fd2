"""Pipelines of runs: named stages, each an ordinary resumable run that may start from an earlier
stage's final checkpoint, sweeps and grids over config keys, finished runs skipped on rerun, and
a summary of every run's final metrics (spec: the file; plan: its runs; expr: `${...}` in
overrides; run: the runner; summary: the table and CSV; report and frontier: `llmcore report`)."""
