"""An exported folder under lm-evaluation-harness (`.[eval]` extra): its bits per byte on a local
text task equal `llmcore eval --text` on the checkpoint within 1e-4, with one window per
document and with rolling windows (a context shorter than the documents)."""

from __future__ import annotations

import json
import os

import pytest
from run_configs import tiny_config

import llmcore
from llmcore.cli.main import main
from llmcore.eval.bits_per_byte import bits_per_byte, read_documents, rolling_windows
from llmcore.hf.folder import export_hf
from llmcore.train.loop import Trainer

TASK = """task: local_bpb
dataset_path: json
dataset_kwargs:
  data_files:
    test: {docs}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: word_perplexity
  - metric: byte_perplexity
  - metric: bits_per_byte
"""


def test_rolling_windows_cover_every_target_once():
    assert rolling_windows(5, 8) == [(0, 5, 5)]
    assert rolling_windows(10, 4) == [(0, 4, 4), (4, 8, 4), (6, 10, 2)]  # the last takes full context
    assert sum(n for *_, n in rolling_windows(1001, 64)) == 1001 and rolling_windows(0, 4) == []


@pytest.mark.slow
def test_lm_eval_bits_per_byte_equals_llmcore_eval(prepared, corpus_file, tmp_path, capsys, monkeypatch):
    lm_eval = pytest.importorskip("lm_eval")
    from lm_eval.tasks import TaskManager

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    run, hf = tmp_path / "run", tmp_path / "hf"
    Trainer(tiny_config(prepared, run, "data.seq_len=64", "train.global_batch_size=4", "model.n_layers=2",
                        "train.max_steps=30", "optim.lr=3e-3", "schedule.warmup_steps=3",
                        "train.eval_batches=1")).fit()
    export_hf(str(run), str(hf))
    docs = tmp_path / "docs.jsonl"
    paragraphs = corpus_file.read_text().split("\n\n")[:12]
    docs.write_text("".join(json.dumps({"text": p}) + "\n" for p in paragraphs))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "local_bpb.yaml").write_text(TASK.format(docs=docs))

    assert main(["eval", "--checkpoint", str(run), "--text", str(docs)]) == 0
    ours = json.loads(capsys.readouterr().out)["text"]
    model, tok = llmcore.load(str(run))
    short = bits_per_byte(model, tok, read_documents(docs), max_length=16)  # rolling: docs are longer
    assert short["tokens"] == ours["tokens"] and max(len(tok.encode(p)) for p in paragraphs) > 16
    for max_length, want in ((None, ours), (16, short)):
        extra = f",max_length={max_length}" if max_length else ""
        out = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={hf},dtype=float32{extra}",
                                      tasks=["local_bpb"], task_manager=TaskManager(include_path=str(tasks)),
                                      device="cpu", batch_size=1)
        got = out["results"]["local_bpb"]
        print(f"max_length {max_length}: lm_eval bits_per_byte {got['bits_per_byte,none']:.6f}, "
              f"llmcore {want['bits_per_byte']:.6f}")
        assert got["bits_per_byte,none"] == pytest.approx(want["bits_per_byte"], abs=1e-4), max_length
        assert got["byte_perplexity,none"] == pytest.approx(want["byte_perplexity"], abs=1e-4)
        assert got["word_perplexity,none"] == pytest.approx(want["word_perplexity"], rel=1e-4)
    assert os.path.isfile(hf / "README.md")
