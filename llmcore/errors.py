"""Exception types raised for bad user input: each names the offending key, file or shape.

Callers (the CLI, the trainer) catch ``LlmcoreError`` to print one clear line instead of a
traceback; everything else is a bug and keeps its traceback.
"""


class LlmcoreError(Exception):
    """Base class of every error caused by input the user can fix."""


class ConfigError(LlmcoreError):
    """A config file or override is wrong: unknown key, wrong type, invalid value."""


class DataError(LlmcoreError):
    """A data file is missing, truncated, corrupt, or was made with another tokenizer."""


class CheckpointError(LlmcoreError):
    """A checkpoint is missing, incomplete, corrupt, or does not match the run."""


class TokenizerError(LlmcoreError):
    """A tokenizer folder is missing files or lacks a special token the run needs."""
