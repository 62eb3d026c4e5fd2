"""Safety pretraining (arXiv 2504.16980) and abliteration (arXiv 2510.02768): the `safety`
recipe (harm tags, SafeBeam), the `safety_classifier` recipe (the harmfulness scoring head)
and the `llmcore safety ...` commands (`recipes.safety.cli`)."""

from recipes.safety import classifier, recipe  # noqa: F401  (register `safety_classifier`, `safety`)
