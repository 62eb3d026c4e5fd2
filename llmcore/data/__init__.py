"""The data pipeline: ``llmcore.data.prepare.prepare`` (text files -> token shards),
``TokenShards`` (read a prepared split), side-cars beside the shards (``write_sidecar`` /
``SidecarWriter`` write them, ``Sidecar`` reads them), ``Sample`` (one sequence with its
per-token fields, per-sample values and provenance), ``PackedLoader`` / ``eval_batches``
(training and evaluation batches, collated by ``to_batch``), ``write_token_folder`` (token
ids -> a prepared folder, for tests/tools).

Used by the CLI (`llmcore data prepare`), the trainer, evaluation and recipes. ``prepare`` is
not re-exported here: the name would hide its module (``llmcore.data.prepare``); import it
from there. ``datasets`` is imported only when ``prepare`` runs, so the trainer starts
without it.
"""

from llmcore.data.collate import to_batch
from llmcore.data.loader import PackedLoader, eval_batches
from llmcore.data.sample import FILL_PREVIOUS, Sample
from llmcore.data.shards import FORMAT, TokenShards, read_manifest
from llmcore.data.sidecar import Sidecar, available_sidecars
from llmcore.data.sidecar_writer import SidecarWriter, write_sidecar
from llmcore.data.writer import tokenizer_info, write_token_folder

__all__ = ["FILL_PREVIOUS", "FORMAT", "PackedLoader", "Sample", "Sidecar", "SidecarWriter", "TokenShards",
           "available_sidecars", "eval_batches", "read_manifest", "to_batch", "tokenizer_info",
           "write_sidecar", "write_token_folder"]
