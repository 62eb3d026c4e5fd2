"""The data pipeline: ``llmcore.data.prepare.prepare`` (text files -> token shards),
``TokenShards`` (read a prepared split), ``PackedLoader`` / ``eval_batches`` (training and
evaluation batches), ``write_token_folder`` (token ids -> a prepared folder, for tests/tools).

Used by the CLI (`llmcore data prepare`), the trainer and evaluation. ``prepare`` is not
re-exported here: the name would hide its module (``llmcore.data.prepare``); import it from
there. ``datasets`` is imported only when ``prepare`` runs, so the trainer starts without it.
"""

from llmcore.data.loader import PackedLoader, eval_batches, to_batch
from llmcore.data.shards import FORMAT, TokenShards, read_manifest
from llmcore.data.writer import tokenizer_info, write_token_folder

__all__ = ["FORMAT", "PackedLoader", "TokenShards", "eval_batches", "read_manifest", "to_batch",
           "tokenizer_info", "write_token_folder"]
