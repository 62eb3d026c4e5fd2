"""`python -m llmcore.cli …` (what torchrun and slurm launch) is the `llmcore` command."""

import sys

from llmcore.cli.main import main

sys.exit(main())
