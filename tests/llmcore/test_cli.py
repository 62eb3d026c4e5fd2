"""The `llmcore` command end to end, and its one-line errors for bad input."""

import json
import os

import pytest

from llmcore.cli.main import main


def test_pipeline_from_text_to_hf_folder(tmp_path, corpus_file, capsys):
    tok, data, run, hf = (str(tmp_path / n) for n in ("tok", "data", "run", "hf"))
    assert main(["tokenizer", "train", "--input", str(corpus_file), "--vocab-size", "400", "--out", tok]) == 0
    assert main(["data", "prepare", "--input", str(corpus_file), "--tokenizer", tok, "--out", data,
                 "--val-fraction", "0.05"]) == 0
    assert main(["train", "--config", "recipes/configs/tiny.yaml", f"data.path={data}", f"train.out_dir={run}",
                 "data.seq_len=64", "train.max_steps=30", "train.progress=false", "train.eval_every=0",
                 "train.save_every=0"]) == 0
    capsys.readouterr()
    assert main(["eval", "--checkpoint", run, "--data", data, "--seq-len", "64"]) == 0
    val = json.loads(capsys.readouterr().out)["validation"]
    assert val["loss"] < val["unigram_entropy"]
    assert main(["generate", "--checkpoint", run, "--prompt", "The hacker", "--max-new-tokens", "8"]) == 0
    assert capsys.readouterr().out.startswith("The hacker")
    assert main(["export-hf", "--checkpoint", run, "--out", hf]) == 0
    assert (tmp_path / "hf" / "config.json").is_file() and (tmp_path / "hf" / "model.safetensors").is_file()


def test_errors_are_one_line_and_exit_2(tmp_path, capsys, prepared):
    assert main(["train", "--config", "recipes/configs/tiny.yaml", "optim.lrr=1"]) == 2
    assert "unknown key 'optim.lrr'; did you mean 'optim.lr'?" in capsys.readouterr().err
    assert main(["train", "--config", str(tmp_path / "nope.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err
    assert main(["train", "--config", "recipes/configs/tiny.yaml", f"data.path={tmp_path}/missing",
                 f"train.out_dir={tmp_path}/r"]) == 2
    assert "missing" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(tmp_path / "none"), "--data", str(prepared)]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    assert main(["data", "prepare", "--input", str(tmp_path / "no.txt"), "--tokenizer", str(prepared / "tokenizer"),
                 "--out", str(tmp_path / "d")]) == 2
    assert "no.txt" in capsys.readouterr().err


def test_print_config_resolves_overrides(capsys):
    assert main(["train", "--config", "recipes/configs/tiny.yaml", "optim.lr=0.5", "--print-config"]) == 0
    assert "lr: 0.5" in capsys.readouterr().out


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_sweep_runs_one_training_per_value(prepared, tmp_path, capsys, jobs):
    assert main(["sweep", "--jobs", jobs, "--config", "recipes/configs/tiny.yaml", "--key", "optim.lr", "--values", "1e-4,3e-3",
                 f"data.path={prepared}", f"train.out_dir={tmp_path}", "data.seq_len=32", "train.max_steps=15",
                 "train.progress=false", "train.eval_every=0", "train.save_every=0", "train.eval_batches=2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()[1:]
    assert [line.split()[0] for line in lines] == ["1e-4", "3e-3"]
    assert (tmp_path / "optim.lr=1e-4" / "latest").is_file() and (tmp_path / "optim.lr=3e-3" / "latest").is_file()
    # the larger peak LR learns faster in 15 steps: the sweep really changed the setting
    assert float(lines[1].split()[1]) < float(lines[0].split()[1])


def test_doc_freq_is_stored_beside_the_shards(prepared, tmp_path, capsys):
    import shutil

    import numpy as np

    data = shutil.copytree(prepared, tmp_path / "data")
    assert main(["data", "doc-freq", "--data", str(data)]) == 0
    assert "documents" in capsys.readouterr().out
    with np.load(data / "token_df.npz") as f:
        df, docs = f["df"], int(f["num_docs"])
    assert 0 < df.max() <= docs and df[0] == 0  # <unk> never occurs; no token in more docs than exist


def test_user_tokenizers_reserve_recipe_tokens_but_not_test_ones(tmp_path, corpus_file):
    from llmcore.tokenizer import Tokenizer

    assert main(["tokenizer", "train", "--input", str(corpus_file), "--vocab-size", "400",
                 "--out", str(tmp_path / "tok"), "--special-tokens", "<mine>"]) == 0
    specials = Tokenizer.load(str(tmp_path / "tok")).special_ids
    assert "<mine>" in specials and "<pause>" in specials and "<probe>" not in specials



def test_a_stop_signal_after_the_run_is_over_does_not_kill_the_exit(monkeypatch, capsys):
    """A launcher repeats its SIGTERM until the workers exit; one landing after `llmcore train`
    has checkpointed must not kill the process (torchrun would report the job failed)."""
    import signal

    import llmcore.train.loop

    class Finished:  # a run that has trained and checkpointed
        def __init__(self, cfg, command=""):
            pass

        def fit(self):
            return {"step": 1}

    monkeypatch.setattr(llmcore.train.loop, "Trainer", Finished)
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1)}
    try:
        assert main(["train", "data.path=unused", "train.max_steps=1"]) == 0
        assert all(signal.getsignal(s) is signal.SIG_IGN for s in before)
        os.kill(os.getpid(), signal.SIGTERM)  # would end the process under the default action
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)
    assert json.loads(capsys.readouterr().out)["step"] == 1
