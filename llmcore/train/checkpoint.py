"""Checkpoints: safetensors weights + optimizer, data-loader, schedule and RNG state.

Layout of `out_dir/ckpt-000100/`: `model.safetensors` (trunk, HF-style names), `aux.safetensors`
(recipe modules, when any), `optimizer.pt` (or the engine's own files), `state.json` (step,
loader state, world size), `rng-rank<r>.pt` (tensors only), `config.yaml`, `tokenizer/`, and
`manifest.json` (size, xxh3_128 and sha256 of every other file, `llmcore.train.manifest`).

The invariant a save keeps: a folder named `ckpt-N` is always complete, and `latest` always
names a loadable one. A checkpoint is written as `ckpt-N.tmp`, hashed and fsynced, then renamed.
Re-saving an existing step moves the old folder aside to `ckpt-N.old` first (`resolve` reads
it while `ckpt-N` is absent) and deletes it only once the new one is in place. Then `latest`
(a one-line file) is replaced atomically, then old checkpoints beyond `keep_last` are pruned:
never the one `latest` or `best` names, each renamed to `ckpt-N.trash` before it is deleted.
Leftovers of a crash at any point are tidied by `llmcore.train.leftovers` at the next start.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from llmcore.errors import CheckpointError, ConfigError
from llmcore.fsutil import (
    check_output_dir,
    fsync_dir,
    write_dir_atomically,
    write_text_atomically,
)
from llmcore.train import manifest, rng_state

log = logging.getLogger("llmcore")

CKPT_RE = re.compile(r"^ckpt-(\d+)$")
ASIDE = ".old"
"""Suffix of the previous copy of a step being re-saved (complete; read while `ckpt-N` is absent)."""
TRASH = ".trash"
"""Suffix of a checkpoint being pruned (renamed first, so a half-deleted folder is never `ckpt-N`)."""
BEST = "best"
"""The file naming the checkpoint with the best `train.keep_best_on` loss (kept from pruning)."""


def ckpt_name(step: int) -> str:
    return f"ckpt-{step:06d}"


def resolve(path: str | os.PathLike) -> Path:
    """A checkpoint dir from: a checkpoint dir, a run dir (its `latest`), or a pointer file
    (`latest`, or `best` as `train.keep_best_on` writes it)."""
    p = Path(path)
    pointer = None
    if p.is_file() and p.name in ("latest", BEST):
        pointer, p = p, p.parent
    elif p.is_dir() and (p / "latest").is_file():
        pointer = p / "latest"
    if pointer is not None:
        target = p / pointer.read_text().strip()
        if not target.is_dir() and (p / (target.name + ASIDE)).is_dir():
            target = p / (target.name + ASIDE)  # a re-save of this step was interrupted mid-swap
        if not target.is_dir():
            raise CheckpointError(f"{pointer} points at {target.name}, which does not exist")
        return target
    if not p.exists():
        raise CheckpointError(f"checkpoint not found: {p}")
    if not (p / "state.json").is_file():
        raise CheckpointError(f"{p} is not a checkpoint (no state.json) and has no `latest` file")
    return p


def latest(out_dir: str | os.PathLike) -> Path | None:
    """The checkpoint `out_dir/latest` points at, or None when the run has none yet."""
    p = Path(out_dir)
    return resolve(p) if (p / "latest").is_file() else None


def split_state(full: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    """TrainModule state -> (trunk weights with `model.` stripped, aux weights)."""
    trunk = {k[len("model."):]: v for k, v in full.items() if k.startswith("model.")}
    aux = {k[len("aux."):]: v for k, v in full.items() if k.startswith("aux.")}
    return trunk, aux


def save(engine, out_dir: str, step: int, train_state: dict, config_yaml: str,
         tokenizer_dir: str | None, keep_last: int, loader_state: dict | None = None) -> Path:
    """Write checkpoint `step` atomically on every rank's part; returns the final path."""
    out = Path(out_dir)
    final = out / ckpt_name(step)
    tmp = out / (ckpt_name(step) + ".tmp")
    full = engine.full_state_dict()  # collective under ZeRO-3: every rank calls it
    if engine.is_main:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    engine.barrier()
    if engine.is_main:
        trunk, aux = split_state(full)
        save_file({k: v.contiguous() for k, v in trunk.items()}, str(tmp / "model.safetensors"))
        if aux:
            save_file({k: v.contiguous() for k, v in aux.items()}, str(tmp / "aux.safetensors"))
        state = dict(train_state, step=step, world_size=engine.world_size, backend=engine.backend,
                     loader=loader_state)
        (tmp / "state.json").write_text(json.dumps(state, indent=1))
        (tmp / "config.yaml").write_text(config_yaml)
        if tokenizer_dir:
            shutil.copytree(tokenizer_dir, tmp / "tokenizer")
    engine.save_optimizer(str(tmp))
    torch.save(rng_state.capture(), tmp / f"rng-rank{engine.rank}.pt")
    engine.barrier()
    if engine.is_main:
        manifest.write(tmp)  # every rank's files are in: hash and fsync them all
        _install(out, tmp, final)
        _write_latest(out, final.name)
        prune(out, keep_last)
    engine.barrier()
    return final


def _install(out: Path, tmp: Path, final: Path) -> None:
    """Rename the complete `tmp` to `final`. An existing `final` (a re-save of its step) is moved
    aside first and deleted only after the new one is in place, so at every instant either
    `final` or `final.old` is a complete checkpoint for `latest` to name."""
    aside = out / (final.name + ASIDE)
    if final.exists():
        if aside.exists():
            shutil.rmtree(aside)  # an older aside: `final` is complete, so it is garbage
        os.replace(final, aside)
        fsync_dir(out)
    os.replace(tmp, final)
    fsync_dir(out)
    if aside.exists():
        shutil.rmtree(aside)


def save_model(model, tokenizer, out_dir: str | os.PathLike, config=None, *, overwrite: bool = False,
               extra_state: dict | None = None) -> Path:
    """Write `model` (a Transformer) and `tokenizer` as an ordinary checkpoint folder at
    `out_dir`, without an engine or an optimizer: what `llmcore.save` does (weight edits such
    as abliteration, `import-hf`).

    The folder is a checkpoint at step 0 (`model.safetensors`, `state.json`, `config.yaml`,
    `tokenizer/` when `tokenizer` is given), so `llmcore.load(out_dir)`, `llmcore eval`,
    `export-hf` and `train.init_from=out_dir` read it as any other. `config` is the run Config
    the model belongs to (its recipes and data are kept); None writes one whose `model`
    section spells out every architecture field. Written atomically; a non-empty `out_dir` is
    refused without `overwrite`, naming it.
    """
    from llmcore.config.load import from_dict
    from llmcore.model.presets import model_section

    out = check_output_dir(out_dir, overwrite, CheckpointError)
    if config is None:
        config = from_dict({"model": model_section(model.args), "data": {"path": "-"}}, source="llmcore.save")
        config.data.path = ""  # the run that starts from this checkpoint names its own data
    weights = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    state = {"step": 0, "world_size": 1, "backend": "single", "loader": None, **(extra_state or {})}

    def write(tmp: Path) -> None:
        save_file(weights, str(tmp / "model.safetensors"))
        (tmp / "config.yaml").write_text(config.to_yaml())
        (tmp / "state.json").write_text(json.dumps(state, indent=1))
        if tokenizer is not None:
            tokenizer.save(str(tmp / "tokenizer"))
        manifest.write(tmp)

    write_dir_atomically(out, write)
    return out


def _write_latest(out: Path, name: str) -> None:
    _write_pointer(out, "latest", name)


def _write_pointer(out: Path, pointer: str, name: str) -> None:
    write_text_atomically(out / pointer, name + "\n", durable=True)


def pointed(out: Path, pointer: str) -> str | None:
    """The checkpoint name the pointer file `out/pointer` holds (`latest`, `best`), or None."""
    path = out / pointer
    return path.read_text().strip() if path.is_file() else None


def complete_steps(out: Path) -> list[int]:
    """Steps of the `ckpt-N` folders in `out`, ascending."""
    return sorted(int(m.group(1)) for d in out.iterdir() if (m := CKPT_RE.match(d.name)) and d.is_dir())


def remove(out: Path, name: str) -> None:
    """Delete checkpoint `out/name`: renamed to `name.trash` first (atomic), so a crash mid-delete
    leaves no half folder under a checkpoint's name; leftover trash goes at the next start."""
    trash = out / (name + TRASH)
    if trash.exists():
        shutil.rmtree(trash)
    os.replace(out / name, trash)
    shutil.rmtree(trash)


def prune(out: Path, keep_last: int) -> None:
    """Delete the oldest complete checkpoints beyond `keep_last` (0 keeps all); the ones
    `out/latest` and `out/best` name are never deleted."""
    if keep_last <= 0:
        return
    keep = {pointed(out, "latest"), pointed(out, BEST)}
    for s in complete_steps(out)[:-keep_last]:
        if ckpt_name(s) not in keep:
            remove(out, ckpt_name(s))


def mark_best(out_dir: str | os.PathLike, ckpt: Path) -> None:
    """Point `out_dir/best` at checkpoint `ckpt` (atomically, as `latest`)."""
    _write_pointer(Path(out_dir), BEST, ckpt.name)


def read_state(ckpt: Path) -> dict:
    try:
        state = json.loads((ckpt / "state.json").read_text())
    except (OSError, ValueError) as e:  # ValueError: not JSON, or not UTF-8 at all
        raise CheckpointError(f"{ckpt / 'state.json'} is unreadable: {e}") from None
    if not isinstance(state, dict) or not isinstance(state.get("step"), int) or isinstance(state["step"], bool):
        got = repr(state.get("step")) if isinstance(state, dict) else f"a JSON {type(state).__name__}"
        raise CheckpointError(f"{ckpt / 'state.json'} has no integer `step` (got {got}): incomplete or "
                              "not written by llmcore")
    return state


WEIGHT_FILES = ("model.safetensors", "aux.safetensors")


def load_verified_weights(ckpt: Path) -> dict[str, torch.Tensor]:
    """`load_weights` after checking the weight files against the checkpoint's manifest (when
    it has one): what inference loads (`llmcore.load`, export-hf) read, so a corrupt or
    modified weight file is refused by name instead of producing NaNs."""
    if not manifest.verify(ckpt, only=WEIGHT_FILES):
        log.warning("%s has no %s (saved by an older llmcore): its weight files are not checksummed",
                    ckpt, manifest.MANIFEST)
    return load_weights(ckpt)


def load_weights(ckpt: Path) -> dict[str, torch.Tensor]:
    """TrainModule-style state dict (`model.*`, `aux.*`) from the safetensors files."""
    path = ckpt / "model.safetensors"
    if not path.is_file():
        raise CheckpointError(f"{ckpt}: model.safetensors is missing")
    full = {f"model.{k}": v for k, v in _read_safetensors(path).items()}
    if (ckpt / "aux.safetensors").is_file():
        full.update({f"aux.{k}": v for k, v in _read_safetensors(ckpt / "aux.safetensors").items()})
    return full


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own types for truncated/corrupt headers
        raise CheckpointError(f"{path}: cannot read weights ({e})") from None


def check_compatible(ckpt: Path, state: dict, world_size: int, backend: str) -> None:
    """A resume must keep the world size of sharded optimizer state; say so otherwise."""
    saved = state.get("world_size", 1)
    if saved != world_size and (backend == "deepspeed" or state.get("backend") == "deepspeed"):
        raise CheckpointError(
            f"{ckpt} was saved by {saved} DeepSpeed processes; resuming with {world_size} is not supported "
            f"(launch with --nproc_per_node {saved}, or export-hf and start a new run with train.init_from)")


def load_rng(ckpt: Path, rank: int, world_size: int) -> None:
    """Restore this rank's generators from `rng-rank<rank>.pt` (weights only: nothing in it can
    run code). A rank the saving run did not have (a larger DDP world) keeps its seed's state."""
    from llmcore.train.metrics import log

    path = ckpt / f"rng-rank{rank}.pt"
    if not path.is_file():
        if rank >= world_size:
            log.warning("%s: no RNG state for rank %d (saved by %d ranks); it keeps its seeded state",
                        ckpt, rank, world_size)
            return
        raise CheckpointError(f"{path} is missing: the checkpoint is incomplete")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # an UnpicklingError names the refused global (an older, pickled RNG file)
        raise CheckpointError(f"{path} is not a tensors-only RNG file and was not unpickled "
                              f"(corrupt, or written by an older llmcore): {str(e).splitlines()[0]}") from None
    try:
        rng_state.restore(state)
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as e:
        raise CheckpointError(f"{path} is not a valid RNG state: {e}") from None


def saved_config(ckpt: Path) -> dict:
    """The checkpoint's `config.yaml` as a mapping (CheckpointError if missing, not YAML, or not a mapping)."""
    path = ckpt / "config.yaml"
    import yaml

    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (OSError, ValueError, yaml.YAMLError) as e:  # safe_load refuses python/* tags: no code runs
        raise CheckpointError(f"{path} is missing or unreadable: {e}") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path} is not a run config (a YAML mapping), got {type(raw).__name__}")
    return raw


def model_args(ckpt: Path, vocab_size: int | None):
    """The checkpoint's architecture (ModelArgs) from its config.yaml."""
    from llmcore.config.load import from_dict
    from llmcore.model.presets import resolve_model_args

    raw = saved_config(ckpt)
    try:
        cfg = from_dict({"model": raw.get("model") or {}, "data": {"path": "-"}}, source=str(ckpt / "config.yaml"))
        return resolve_model_args(cfg.model, vocab_size)
    except ConfigError as e:
        raise CheckpointError(f"{ckpt / 'config.yaml'}: {e}") from None


def recipes(ckpt: Path, overrides: list[str] | None = None):
    """The RecipeSet the checkpoint was trained with (for its decoding hooks: pauses, bans, …).

    `overrides` (`mode_conditioning.allocation=weights`) change options of those recipes for
    decoding only; a key outside their sections is a ConfigError naming the recipes."""
    import copy

    from llmcore.config.load import _apply_override, from_dict
    from llmcore.recipe.recipe_set import RecipeSet
    from llmcore.recipe.registry import recipe_config_class

    raw = saved_config(ckpt)
    names = raw.get("recipes") or []
    sections = {n: copy.deepcopy(raw[n]) for n in names if n in raw}
    for item in overrides or []:
        section = item.split("=", 1)[0].split(".", 1)[0]
        if section not in names or "." not in item.split("=", 1)[0]:
            raise ConfigError(f"recipe option {item!r}: only options of the checkpoint's recipes "
                              f"({', '.join(names) or 'none'}) may be changed at decoding, as <recipe>.<key>=<value>")
        _apply_override(sections, item)
    cfg = from_dict({"data": {"path": "-"}, "recipes": names, **sections}, source=str(ckpt / "config.yaml"),
                    recipe_configs=recipe_config_class)
    return RecipeSet.from_config(cfg)
