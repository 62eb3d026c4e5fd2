"""Recipe commands: `llmcore <name> ...` added through the `llmcore.commands` entry-point group
(a real one, from a dist-info folder on sys.path) or `LLMCORE_COMMANDS`; clashes and broken
targets are named errors."""

from __future__ import annotations


import pytest

from llmcore.cli.main import main


@pytest.fixture
def installed_probe_command(tmp_path, monkeypatch):
    """A distribution that advertises the probe's command, as a recipe package's pyproject would."""
    info = tmp_path / "probe_commands-0.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: probe-commands\nVersion: 0.0\n")
    (info / "entry_points.txt").write_text("[llmcore.commands]\nprobe = recipes.probe:add_command\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return info


def test_an_entry_point_adds_a_subcommand(installed_probe_command, capsys):
    assert main(["probe", "echo", "--text", "hello"]) == 0
    assert capsys.readouterr().out.strip() == "probe says hello"


def test_a_recipe_command_error_is_one_line_and_exit_2(installed_probe_command, capsys):
    assert main(["probe", "echo", "--text", "x", "--fail"]) == 2
    assert capsys.readouterr().err.strip() == "llmcore: error: probe echo: asked to fail on 'x'"


def test_the_variable_adds_commands_and_bad_ones_are_named(monkeypatch, capsys):
    monkeypatch.setenv("LLMCORE_COMMANDS", "probe2=recipes.probe:add_command")
    assert main(["probe2", "echo", "--text", "hi"]) == 0
    assert "probe says hi" in capsys.readouterr().out
    monkeypatch.setenv("LLMCORE_COMMANDS", "train=recipes.probe:add_command")
    assert main(["train"]) == 2
    assert "recipe command 'train' (recipes.probe) clashes with the built-in `llmcore train`" in capsys.readouterr().err
    monkeypatch.setenv("LLMCORE_COMMANDS", "x=recipes.probe:no_such_function")
    assert main(["x"]) == 2
    assert "command 'x' -> 'recipes.probe:no_such_function' cannot be loaded" in capsys.readouterr().err
    monkeypatch.setenv("LLMCORE_COMMANDS", "x")
    assert main(["x"]) == 2
    assert "LLMCORE_COMMANDS: 'x' is not of the form name=module:function" in capsys.readouterr().err


def test_without_recipe_commands_the_builtins_are_unchanged(monkeypatch):
    monkeypatch.delenv("LLMCORE_COMMANDS", raising=False)
    from llmcore.cli.main import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert "probe" not in sub.choices and {"train", "pipeline", "eval", "export-hf"} <= set(sub.choices)
