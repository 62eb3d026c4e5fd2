"""metrics.jsonl has one reader (`llmcore.train.metrics.read_metrics`): a row cut short by a
kill is skipped everywhere, and a step a resumed run logged again is read from its later row."""

from __future__ import annotations

import json

from llmcore.pipeline.result import last_train_metrics
from llmcore.train.metrics import read_metrics


def test_a_cut_row_is_skipped_and_a_repeated_step_reads_its_last_row(tmp_path):
    rows = [{"step": 1, "loss": 5.0}, {"step": 2, "loss": 4.0}, {"step": 2, "loss": 3.5, "val_loss": 3.9}]
    text = "".join(json.dumps(r) + "\n" for r in rows) + '{"step": 3, "loss": 3.'  # killed mid-write
    (tmp_path / "metrics.jsonl").write_text(text)
    assert read_metrics(tmp_path / "metrics.jsonl") == rows
    assert last_train_metrics(tmp_path, 2)["loss"] == 3.5  # raised on the cut row before
    assert last_train_metrics(tmp_path, 3) == {}
    assert read_metrics(tmp_path / "none.jsonl") == []
