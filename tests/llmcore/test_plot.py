"""`llmcore plot`: a PNG whose lines are exactly the runs' metrics.jsonl values against tokens."""

from __future__ import annotations

import json

import pytest
from run_configs import tiny_config

from llmcore.cli.main import main
from llmcore.errors import LlmcoreError
from llmcore.train.curves import plot_runs
from llmcore.train.loop import Trainer


@pytest.fixture(scope="module")
def runs(prepared, tmp_path_factory):
    """Two short runs (4 sequences x 32 tokens a step) with the probe recipe's `probe/aux` term."""
    root = tmp_path_factory.mktemp("plot")
    for lr in ("1e-3", "3e-3"):
        Trainer(tiny_config(prepared, root / f"lr{lr}", "data.seq_len=32", "train.global_batch_size=4",
                            "model.n_layers=2", "train.max_steps=4", "train.log_every=1", "train.eval_every=2",
                            "train.eval_batches=1", f"optim.lr={lr}", "recipes=[probe]")).fit()
    return [root / "lr1e-3", root / "lr3e-3"]


def test_plotted_lines_are_the_metrics(runs, tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "curves.png"
    fig = plot_runs(runs, out, ("loss", "val_loss", "probe/aux"))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    axes = fig.axes
    assert [ax.get_title() for ax in axes] == ["loss", "val_loss", "probe/aux"]
    for ax, key in zip(axes, ("loss", "val_loss", "probe/aux")):
        assert [line.get_label() for line in ax.lines] == ["lr1e-3", "lr3e-3"]
        for line, run in zip(ax.lines, runs):
            rows = [json.loads(s) for s in (run / "metrics.jsonl").read_text().splitlines()]
            want = [(r["step"] * 4 * 32, r[key]) for r in rows if key in r]
            assert list(zip(line.get_xdata(), line.get_ydata())) == want, (key, run.name)
    assert [len(ax.lines[0].get_xdata()) for ax in axes] == [4, 2, 4]


def test_cli_plot_and_an_absent_key(runs, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "c.png"
    assert main(["plot", *map(str, runs), "--out", str(out), "--terms", "probe/aux"]) == 0
    assert out.is_file() and "loss, val_loss, probe/aux of 2 runs" in capsys.readouterr().out
    with pytest.raises(LlmcoreError, match=r"no run has 'fsp/loss' in its metrics.jsonl \(numbers there: .*grad_norm"):
        plot_runs(runs, tmp_path / "x.png", ("loss", "fsp/loss"))
    assert main(["plot", str(tmp_path / "nope"), "--out", str(out)]) == 2
    assert "nope does not exist: `llmcore plot` takes run folders" in capsys.readouterr().err
