"""The pipeline file: typed dataclasses, loading from YAML and the checks that need no run config.

Used by `llmcore pipeline`, `llmcore sweep` (a one-stage pipeline built in memory) and the
experiments. A pipeline file reads

    out_dir: runs/pipe
    overrides: [data.path=runs/data]           # every stage
    stages:
      - name: pretrain
        config: ../recipes/configs/tiny.yaml   # relative to the pipeline file
        overrides: [train.max_steps=100]
      - name: finetune
        config: ../recipes/configs/tiny.yaml
        init_from: pretrain                    # train.init_from = its final checkpoint
        sweep: {key: optim.lr, values: [1.0e-3, 3.0e-3]}
        # or grid: [{key: optim.lr, values: [...]}, {key: train.seed, values: [0, 1]}]

Named numbers or strings (`vars: {lam: 0.0, post_tokens: 40960, data: runs/d}`) may be swept like config keys (a
sweep over `lam` sets the variable, not a key) and used in any override as `${expr}`
(`llmcore.pipeline.expr`): `data.sources[1]` weights, budgets and step counts that follow from
one swept number are written once.

Unknown keys are errors naming the key and the nearest valid one, as in a run config. The
checks that need the stages' run configs (keys, references between stages) are in `plan`.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmcore.config.load import build_dataclass, read_yaml
from llmcore.errors import ConfigError

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass
class Sweep:
    """One config key and its values: one run per value."""

    key: str = ""
    """Dotted run-config key, e.g. `optim.lr`, or the name of a pipeline variable (`vars`)."""
    values: list[Any] = field(default_factory=list)
    """Numbers, strings or booleans; each run gets the override `key=value`."""


@dataclass
class Stage:
    """A named step of the pipeline: one run, or one run per variant when swept."""

    name: str = ""
    """Unique; the stage's folder and how later stages name it (letters, digits, `_.-`)."""
    config: str = ""
    """Run config YAML; relative to the pipeline file when loaded from one. Empty: the defaults."""
    overrides: list[str] = field(default_factory=list)
    """Dotted overrides of this stage, after the pipeline's (later ones win)."""
    init_from: str = ""
    """An earlier stage whose final checkpoint this one starts from (`train.init_from`):
    `pretrain`, or one variant of a swept stage, `pretrain[optim.lr=0.001]`. A swept stage named
    without a variant pairs with this stage's run of the same values of its swept keys: run by
    run when both sweep the same keys, and each source run crossed with more keys (a grid over
    `lam` and `optim.lr` starting from a stage swept over `lam`)."""
    inputs: dict[str, str] = field(default_factory=dict)
    """Other config keys set to an earlier stage's final checkpoint, same references as
    `init_from`: `{distill.teacher: teacher}`, `{future_summary.revlm_checkpoint: revlm}`."""
    sweep: Sweep | None = None
    """One run per value of one key."""
    grid: list[Sweep] = field(default_factory=list)
    """One run per combination of the values of two (or more) keys, first key outermost."""
    out_dir: str = ""
    """This stage's folder relative to the pipeline's out_dir; default its name (`.`: the
    pipeline's folder itself, as `llmcore sweep` does). Swept runs are `<folder>/<key>=<value>`."""

    def axes(self) -> list[Sweep]:
        """The swept keys in order: [] for a single run."""
        return [self.sweep] if self.sweep is not None else list(self.grid)


@dataclass
class Metric:
    """One number of `llmcore report`: an evaluation set's loss after a stage."""

    stage: str = ""
    """The stage whose runs it is read from; a row of a later stage takes it from the run it
    descends from (through init_from and inputs)."""
    set: str = "val"
    """The evaluation set: `val` or a name in the runs' `eval.sets`. Read at the run's best
    checkpoint when it keeps one (what later stages start from), else at its end."""


@dataclass
class Frontier:
    """One plot of `llmcore report`: metric y against metric x, a curve per value of `by`."""

    x: str = ""
    """A metric name (a key of `report.metrics`)."""
    y: str = ""
    over: str = ""
    """The swept key whose values are the points of one curve (e.g. the last stage's `optim.lr`)."""
    by: str = ""
    """The swept key with one curve per value (e.g. `lam`), or several, comma-separated (one
    curve per combination); empty: one curve."""


@dataclass
class Report:
    """What `llmcore report` computes from a pipeline's finished runs."""

    metrics: dict[str, Metric] = field(default_factory=dict)
    """Name -> where it is read, e.g. `L_ret: {stage: ft, set: post}`. The table has one row
    per run of the latest stage a metric names."""
    frontiers: list[Frontier] = field(default_factory=list)
    average_over: list[str] = field(default_factory=list)
    """Swept keys averaged away (e.g. `train.seed`): each row is then the mean, with the
    standard deviation (n - 1) and the number of runs."""


@dataclass
class Pipeline:
    """Stages run in order; each run is an ordinary resumable training run."""

    out_dir: str = ""
    """Folder of every stage's runs and of `summary.csv` (relative to the working directory,
    like `train.out_dir`)."""
    overrides: list[str] = field(default_factory=list)
    """Dotted overrides applied to every stage, before the stage's own."""
    vars: dict[str, Any] = field(default_factory=dict)
    """Named numbers (or strings, e.g. a data folder) for `${expr}` in overrides, each a
    default that a sweep or grid over its name replaces for that stage's runs (a stage paired
    with a swept one sweeps the same name)."""
    stages: list[Stage] = field(default_factory=list)
    """Run in this order; a stage may only name earlier ones."""
    report: Report = field(default_factory=Report)
    """Metrics, frontiers and averaging of `llmcore report` (nothing trains differently)."""

    def validate(self, source: str = "<pipeline>") -> Pipeline:
        """Check what needs no run config: names, sweeps, grids. Raises ConfigError naming it."""
        if not self.out_dir:
            raise ConfigError(f"{source}: out_dir is empty: give the folder of the pipeline's runs")
        if not self.stages:
            raise ConfigError(f"{source}: stages is empty: a pipeline needs at least one stage")
        if not isinstance(self.vars, dict):
            raise ConfigError(f"{source}: vars must be a mapping of names to numbers, got {self.vars!r}")
        for name, value in self.vars.items():
            if not isinstance(name, str) or not name.isidentifier() or "." in name:
                raise ConfigError(f"{source}: vars name {name!r} must be an identifier (letters, digits, _)")
            if not isinstance(value, (int, float, str)) or isinstance(value, bool):
                raise ConfigError(f"{source}: vars {name} must be a number or a string, got {value!r}")
        seen: dict[str, int] = {}
        for i, stage in enumerate(self.stages, 1):
            if not stage.name:
                raise ConfigError(f"{source}: stage {i} has no name")
            if not NAME_RE.match(stage.name):
                raise ConfigError(f"{source}: stage name {stage.name!r} may hold only letters, digits and _.- "
                                  "(it is a folder name)")
            if stage.name in seen:
                raise ConfigError(f"{source}: duplicate stage name {stage.name!r} (stages {seen[stage.name]} and {i})")
            seen[stage.name] = i
            _check_axes(stage, source)
            if not isinstance(stage.inputs, dict):
                raise ConfigError(f"{source}: stage {stage.name!r}: inputs must be a mapping of config keys "
                                  f"to stage names, got {stage.inputs!r}")
            for key, ref in stage.inputs.items():
                if not isinstance(key, str) or not isinstance(ref, str) or not ref:
                    raise ConfigError(f"{source}: stage {stage.name!r}: inputs maps config keys to stage names, "
                                      f"got {key!r}: {ref!r}")
        _check_report(self.report, list(seen), source)
        return self


def _check_report(report: Report, stages: list[str], source: str) -> None:
    for name, metric in report.metrics.items():
        if metric.stage not in stages:
            near = difflib.get_close_matches(metric.stage, stages, n=1)
            raise ConfigError(f"{source}: report.metrics.{name}: stage {metric.stage!r} is not a stage of the "
                              "pipeline" + (f"; did you mean {near[0]!r}?" if near else ""))
    for i, fr in enumerate(report.frontiers):
        for axis in ("x", "y"):
            if getattr(fr, axis) not in report.metrics:
                raise ConfigError(f"{source}: report.frontiers[{i}].{axis}={getattr(fr, axis)!r} is not a metric "
                                  f"of report.metrics (have: {', '.join(report.metrics) or 'none'})")
        if not fr.over:
            raise ConfigError(f"{source}: report.frontiers[{i}].over is empty: name the swept key whose values "
                              "are the points of a curve")


def _check_axes(stage: Stage, source: str) -> None:
    where = f"{source}: stage {stage.name!r}"
    if stage.sweep is not None and stage.grid:
        raise ConfigError(f"{where}: give sweep (one key) or grid (several keys), not both")
    if len(stage.grid) == 1:
        raise ConfigError(f"{where}: a grid needs two or more keys; use sweep for one")
    keys = [axis.key for axis in stage.axes()]
    for axis in stage.axes():
        if not axis.key:
            raise ConfigError(f"{where}: a sweep has no key")
        if not axis.values:
            raise ConfigError(f"{where}: sweep over {axis.key} has no values")
        for v in axis.values:
            if not isinstance(v, (str, int, float)):
                raise ConfigError(f"{where}: sweep value {v!r} of {axis.key} must be a number, string or bool")
        texts = [value_text(v) for v in axis.values]
        if len(set(texts)) < len(texts):
            raise ConfigError(f"{where}: sweep over {axis.key} repeats a value: {texts}")
        if keys.count(axis.key) > 1:
            raise ConfigError(f"{where}: grid lists {axis.key} twice")


def value_text(value: Any) -> str:
    """A sweep value as override text, read back by the config loader as the same value (and
    shown in variant names): strings as written, `true`/`false`, floats by `repr`."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def variant_label(params: dict[str, Any]) -> str:
    """A run's variant as logs, folders and `stage[variant]` references spell it:
    `key=value[,key2=value2]` in the swept keys' order."""
    return ",".join(f"{k}={value_text(v)}" for k, v in params.items())


def load_pipeline(path: str | Path) -> Pipeline:
    """A pipeline file, every key checked, with stage config paths made relative to the file
    (so a pipeline runs the same from any working directory)."""
    p = Path(path)
    source = str(p)
    spec = build_dataclass(Pipeline, read_yaml(p), source)
    for stage in spec.stages:
        if stage.config and not Path(stage.config).is_absolute():
            stage.config = str(p.parent / stage.config)
    return spec.validate(source)
