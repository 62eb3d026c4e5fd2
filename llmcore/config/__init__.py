"""Run configuration: typed dataclasses (schema) and their loading from YAML with `base:` includes and dotted overrides (load)."""
