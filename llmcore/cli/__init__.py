"""The `llmcore` command (main); `python -m llmcore.cli` runs it."""
