"""A pipeline's runs, worked out before anything trains: each stage expanded into its variants,
references between stages turned into checkpoint paths, every run config loaded, and the state of
each run on disk (new, resume, finished). A mistake in the last stage therefore fails in seconds,
not after the first stage's hours.

Used by the runner (`llmcore.pipeline.run`) and by `llmcore pipeline --dry-run`.
"""

from __future__ import annotations

import difflib
import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from llmcore.config.diff import differences, shown
from llmcore.config.load import load_run_config, read_saved
from llmcore.config.schema import Config
from llmcore.errors import ConfigError
from llmcore.pipeline.expr import substitute
from llmcore.pipeline.result import RESULT_FILE, read_result
from llmcore.pipeline.spec import Pipeline, Stage, value_text, variant_label
from llmcore.recipe.recipe_set import RecipeSet
from llmcore.recipe.registry import recipe_config_class
from llmcore.train import checkpoint
from llmcore.train.optim import lr_multiplier

DISPLAY_ONLY = ("train.progress",)
"""Keys that change what a terminal shows, not what a run trains or writes: a finished run is
not "another config" for them (a `--jobs` worker turns its bar off)."""
_REF_RE = re.compile(r"^([^\[\]]+)(?:\[(.*)\])?$")


@dataclass
class Run:
    """One training run of a pipeline: a stage, or one variant of a swept stage."""

    stage: str
    """The stage's name."""
    position: int
    """The stage's place in the pipeline, from 1."""
    stages: int
    """How many stages the pipeline has (for `stage 2/3` in logs)."""
    variant: str
    """`key=value[,key2=value2]`; empty for a stage without sweep or grid."""
    params: dict[str, Any]
    """The swept keys (config keys and pipeline variables) and this run's values, as the spec
    gives them."""
    out_dir: Path
    """The run's `train.out_dir`."""
    config: Config
    """Its resolved run config."""
    state: str = "new"
    """new (no checkpoint) | resume (a checkpoint before max_steps) | finished (skipped)."""
    start_step: int = 0
    """Step of its latest checkpoint; 0 when new."""
    sources: dict[str, str] = field(default_factory=dict)
    """Config key -> the run (`stage[variant]`) whose final checkpoint it is set to."""

    @property
    def name(self) -> str:
        return f"{self.stage}[{self.variant}]" if self.variant else self.stage

    @property
    def title(self) -> str:
        return _title(self.stage, self.position, self.stages, self.variant)

    @property
    def final_checkpoint(self) -> Path:
        """What a later stage starts from, known before this run trains: its best checkpoint
        (`out_dir/best`) when it keeps one, `out_dir/latest` when it may stop early (the step
        is not known in advance), else the checkpoint at max_steps (so a changed length of this
        run changes the dependent run's config, and a finished dependent run is refused)."""
        t = self.config.train
        if t.keep_best_on:
            return self.out_dir / checkpoint.BEST
        if t.early_stop_patience:
            return self.out_dir / "latest"
        return self.out_dir / checkpoint.ckpt_name(t.max_steps)


def plan(spec: Pipeline, overrides: list[str] | None = None, source: str = "<pipeline>") -> list[Run]:
    """Every run of `spec` in order, checked; trains nothing.

    A run's overrides, later ones winning: the stage config file, the pipeline's overrides, the
    stage's, `overrides` (the command line), the variant's values, then `train.out_dir` and the
    keys set to earlier stages' checkpoints. `${expr}` in the first three is worked out with the
    pipeline's `vars`, swept ones at this run's values. Raises ConfigError naming the stage and
    the problem.
    """
    spec.validate(source)
    position = {s.name: i for i, s in enumerate(spec.stages, 1)}
    by_stage: dict[str, list[Run]] = {}
    dirs: dict[Path, str] = {}
    for i, stage in enumerate(spec.stages, 1):
        refs = _references(stage, source)
        stage_dir = Path(spec.out_dir) / (stage.out_dir or stage.name)
        variants = _variants(stage)
        labels = [label for label, _ in variants]
        runs = []
        for label, params in variants:
            run_dir = stage_dir / _folder(label) if label else stage_dir
            title = _title(stage.name, i, len(spec.stages), label)
            sources = {key: _source(stage.name, i, label, params, labels, what, ref, position, by_stage)
                       for key, (what, ref) in refs.items()}
            values = _run_vars(spec.vars, params, title)
            texts = [substitute(o, values, f"{title}: override {o!r}")
                     for o in (*spec.overrides, *stage.overrides, *(overrides or []))]
            opts = [*texts, *(f"{k}={value_text(v)}" for k, v in params.items() if k not in spec.vars),
                    f"train.out_dir={run_dir}", *(f"{key}={src.final_checkpoint}" for key, src in sources.items())]
            try:
                cfg = load_run_config(stage.config or None, opts)
            except ConfigError as e:
                raise ConfigError(f"{title}: {e}") from None
            run = Run(stage.name, i, len(spec.stages), label, params, run_dir, cfg,
                      sources={key: src.name for key, src in sources.items()})
            if run_dir in dirs:
                raise ConfigError(f"{title}: its folder {run_dir} is also the folder of {dirs[run_dir]}")
            dirs[run_dir] = run.name
            _read_disk_state(run)
            _check_sources_finished(run, sources)
            runs.append(run)
        by_stage[stage.name] = runs
    return [run for runs in by_stage.values() for run in runs]


def _run_vars(defaults: dict[str, Any], params: dict[str, Any], title: str) -> dict[str, Any]:
    """The pipeline variables of one run: the defaults, swept ones at the run's values."""
    values = dict(defaults)
    for key, value in params.items():
        if key in defaults:
            if not isinstance(value, (int, float, str)) or isinstance(value, bool):
                raise ConfigError(f"{title}: pipeline variable {key} is swept over {value!r}, not a number or string")
            values[key] = value
    return values


def _title(stage: str, position: int, stages: int, variant: str) -> str:
    return f"stage {position}/{stages} {stage}" + (f" [{variant}]" if variant else "")


def _references(stage: Stage, source: str) -> dict[str, tuple[str, str]]:
    """Config key -> (the spec field naming it, stage reference)."""
    refs = {key: (f"inputs {key}", ref) for key, ref in stage.inputs.items()}
    if stage.init_from:
        if "train.init_from" in refs:
            raise ConfigError(f"{source}: stage {stage.name!r} sets train.init_from twice (init_from and inputs)")
        refs["train.init_from"] = ("init_from", stage.init_from)
    return refs


def _variants(stage: Stage) -> list[tuple[str, dict[str, Any]]]:
    """(label, {key: value}) per run; one unlabelled run for a stage without sweep or grid."""
    axes = stage.axes()
    out = []
    for combo in itertools.product(*(axis.values for axis in axes)):
        params = dict(zip((axis.key for axis in axes), combo))
        out.append((variant_label(params), params))
    return out


def _folder(label: str) -> str:
    # a value may hold a path (a sweep over data.path): one folder per run, never nested ones
    return re.sub(r"[^A-Za-z0-9._=,+-]", "_", label)


def _source(stage: str, pos: int, label: str, params: dict[str, Any], labels: list[str], what: str, ref: str,
            position: dict[str, int], by_stage: dict[str, list[Run]]) -> Run:
    """The run whose final checkpoint `ref` (`name` or `name[variant]`) means for run `label`
    (swept values `params`): a named variant, the only run, or the run of a swept stage with
    this run's values of that stage's swept keys."""
    where = f"stage {stage!r}: {what} {ref!r}"
    m = _REF_RE.match(ref)
    name, want = (m.group(1), m.group(2)) if m else (ref, None)
    if name not in position:
        near = difflib.get_close_matches(name, list(position), n=1)
        raise ConfigError(f"{where} is not a stage of the pipeline" + (f"; did you mean {near[0]!r}?" if near else ""))
    if position[name] >= pos:
        which = "itself" if name == stage else f"stage {position[name]}, which comes later"
        raise ConfigError(f"{where} names {which}: a stage can only use the stages before it")
    src = by_stage[name]
    variants = ", ".join(r.name for r in src)
    if want is not None:
        if not src[0].variant:
            raise ConfigError(f"{where}: stage {name!r} is not swept; write {name!r} without a variant")
        for run in src:
            if run.variant == want:
                return run
        raise ConfigError(f"{where}: stage {name!r} has no variant {want!r}; its variants: {variants}")
    if len(src) == 1:
        return src[0]
    if sorted(labels) == sorted(r.variant for r in src):
        return next(r for r in src if r.variant == label)  # variant i starts from variant i
    keys = list(src[0].params)
    if all(k in params for k in keys):  # crossed: this stage sweeps the source's keys and more
        want_values = [value_text(params[k]) for k in keys]
        for run in src:
            if [value_text(run.params[k]) for k in keys] == want_values:
                return run
        wanted = ",".join(f"{k}={v}" for k, v in zip(keys, want_values))
        raise ConfigError(f"{where}: stage {name!r} has no variant {wanted!r} for run {label!r}; "
                          f"its variants: {variants}")
    raise ConfigError(f"{where}: stage {name!r} is swept ({variants}); name one variant, e.g. "
                      f"{src[0].name!r}, or sweep {stage!r} over the same values to pair the runs")


def _read_disk_state(run: Run) -> None:
    """new / resume / finished from the run's folder; refuses a finished run made by another
    config (it would be skipped and its stale result reported as this config's)."""
    ckpt = checkpoint.latest(run.out_dir)
    if ckpt is None:
        return
    step = int(checkpoint.read_state(ckpt)["step"])
    max_steps = run.config.train.max_steps
    if step > max_steps:
        raise ConfigError(f"{run.title}: {ckpt} is at step {step}, past train.max_steps={max_steps}; "
                          "raise max_steps or give the stage another folder")
    run.start_step = step
    if not (run.out_dir / RESULT_FILE).is_file() or (step < max_steps and not _stopped_early_at(run, step)):
        run.state = "resume"
        return
    saved = read_saved(yaml.safe_load((ckpt / "config.yaml").read_text()) or {}, recipe_config_class)
    now = yaml.safe_load(run.config.to_yaml())
    old_cap = saved.get("train", {}).get("max_steps") if isinstance(saved.get("train"), dict) else None
    if step < max_steps and isinstance(old_cap, int) and _cap_free(run.config, step, old_cap):
        # stopped early, by its own rule, and nothing before that step saw the cap: a longer
        # cap trains the same run
        now["train"]["max_steps"] = old_cap
    diff = shown(differences(saved, now, keep=lambda key: key not in DISPLAY_ONLY, common_only=True), 4)
    if diff:
        raise ConfigError(f"{run.title}: {run.out_dir} finished with another config ({diff}); delete the "
                          "folder or give the pipeline another out_dir to train it again")
    run.state = "finished"


def _cap_free(cfg: Config, step: int, old_cap: int) -> bool:
    """Whether the steps before `step` trained the same under `old_cap` as under
    `cfg.train.max_steps`: the LR schedule gives every one of them the same factor (true of a
    constant LR after its warmup, or of WSD before either anneal starts; never of cosine),
    and no recipe schedules over the run (`uses_max_steps`)."""
    cap = cfg.train.max_steps
    if any(lr_multiplier(i, old_cap, cfg.schedule) != lr_multiplier(i, cap, cfg.schedule) for i in range(step)):
        return False
    return not RecipeSet.from_config(cfg).uses_max_steps()


def _check_sources_finished(run: Run, sources: dict[str, Run]) -> None:
    """A finished run whose source will train (again) would be skipped and keep results made
    from the source's old checkpoint: refused, naming both."""
    if run.state != "finished":
        return
    for key, src in sources.items():
        if src.state != "finished":
            raise ConfigError(f"{run.title}: {run.out_dir} finished, but {key} comes from {src.name}, which is "
                              f"{src.state} (it will train, so this result is stale); delete {run.out_dir} "
                              "to train it again from the new checkpoint")


def _stopped_early_at(run: Run, step: int) -> bool:
    """True when the run's result records an early stop (a callback's) at this very step: it
    finished before max_steps, and resuming it would train past the point it stopped at."""
    saved = read_result(run.out_dir)
    return bool(saved.get("stopped_early")) and int(saved["step"]) == step
