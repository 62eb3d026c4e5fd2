"""`llmcore plot`: a PNG whose lines are exactly the runs' metrics.jsonl values against tokens."""

from __future__ import annotations

import json

import pytest

from llmcore.cli.main import main
from llmcore.errors import LlmcoreError
from llmcore.train.curves import plot_runs


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two run folders whose metrics.jsonl are laid out as the trainer writes them (4 sequences
    x 32 tokens a step): train rows every step, evaluation rows (no `tokens`) at steps 2 and 4,
    a recipe term `probe/aux`, a nested `data` entry, and a last row cut short by a kill."""
    root = tmp_path_factory.mktemp("plot")
    out = []
    for k, name in enumerate(("lr1e-3", "lr3e-3")):
        lines = []
        for step in range(1, 5):
            lines.append(json.dumps({"time": 1.0 * step, "step": step, "tokens": step * 128, "loss": 6.0 - 0.3 * k - 0.1 * step,
                                     "probe/aux": 0.01 * step, "lr": 1e-3, "data": {"samples": 4 * step}}))
            if step % 2 == 0:
                lines.append(json.dumps({"time": 1.5 * step, "step": step, "val_loss": 6.1 - 0.2 * k - 0.1 * step}))
        (root / name).mkdir()
        (root / name / "metrics.jsonl").write_text("\n".join(lines) + '\n{"step": 5, "loss": 5.')
        out.append(root / name)
    return out


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
            rows = [json.loads(s) for s in (run / "metrics.jsonl").read_text().splitlines() if s.endswith("}")]
            want = [(r["step"] * 4 * 32, r[key]) for r in rows if key in r]
            assert list(zip(line.get_xdata(), line.get_ydata())) == want, (key, run.name)
    assert [len(ax.lines[0].get_xdata()) for ax in axes] == [4, 2, 4]


def test_cli_plot_and_an_absent_key(runs, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "c.png"
    assert main(["plot", *map(str, runs), "--out", str(out), "--terms", "probe/aux"]) == 0
    assert out.is_file() and "loss, val_loss, probe/aux of 2 runs" in capsys.readouterr().out
    with pytest.raises(LlmcoreError, match=r"no run has 'fsp/loss' in its metrics.jsonl \(numbers there: .*probe/aux"):
        plot_runs(runs, tmp_path / "x.png", ("loss", "fsp/loss"))
    assert main(["plot", str(tmp_path / "nope"), "--out", str(out)]) == 2
    assert "nope does not exist: `llmcore plot` takes run folders" in capsys.readouterr().err
