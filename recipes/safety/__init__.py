"""Safety pretraining (arXiv 2504.16980) and abliteration (arXiv 2510.02768): the `safety`
recipe (harm tags, SafeBeam) and the `llmcore safety ...` commands (`recipes.safety.cli`)."""

from recipes.safety import recipe  # noqa: F401  (registers `safety`)
