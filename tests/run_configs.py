"""Configs of the short `tiny` runs that the trainer and recipe tests train on the `prepared`
fixture data. Later overrides win, so a test module adds only what it changes."""

from llmcore.config.load import load_run_config

# Two layers, 32-token windows, 2 x 2 accumulation, a constant LR: steps of a few ms for the
# recipe tests, with accumulation and every hook exercised.
RECIPE_RUN = ("model.n_layers=2", "data.seq_len=32", "train.micro_batch_size=2", "train.global_batch_size=4",
              "train.log_every=1", "train.eval_batches=1", "optim.lr=1e-2", "schedule.kind=constant",
              "schedule.warmup_steps=0")


def tiny_config(prepared, out_dir, *overrides):
    """A `tiny` run on the prepared data folder `prepared`, writing to `out_dir`, no progress bar."""
    return load_run_config(None, [f"data.path={prepared}", f"train.out_dir={out_dir}", "model.preset=tiny",
                                  "train.progress=false", *overrides])


def with_id_sidecar(prepared, dst, name: str = "ids"):
    """A copy of the prepared folder at `dst` with a per-token side-car `name` holding each
    token's own id, so a batch's `name` field must equal the labels wherever they take a loss."""
    import shutil

    import numpy as np

    from llmcore.data.sidecar_writer import write_sidecar

    shutil.copytree(prepared, dst)

    def ids(shards, k):
        start, n, _, _ = shards.shard_span(k)
        return np.asarray(shards.read(start, n), dtype=np.int32)

    write_sidecar(str(dst), name, ids, kind="token", dtype="int32")
    return dst
