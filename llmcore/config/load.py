"""Loading a run config: YAML files (with `base:` includes), dotted overrides, type checks.

Used by the CLI, the pipeline, checkpoints and anyone building a run in Python. Every key is
checked: an unknown key is an error naming the key, the file and the nearest valid key; a value
of the wrong type is an error naming the key and the expected type.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from llmcore.config.schema import Config
from llmcore.errors import ConfigError


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                recipe_configs: typing.Callable[[str], type | None] | None = None) -> Config:
    """Load a YAML config (following its `base:` chain), apply `a.b=value` overrides,
    type-check everything, validate.

    `recipe_configs(name)` returns the Config dataclass of a recipe (or None for a recipe
    without options); `load_run_config` passes the registry's lookup, so this module never
    names a recipe.
    """
    source = str(path) if path else "<defaults>"
    raw: dict = read_yaml(path) if path else {}
    for item in overrides or []:
        _apply_override(raw, item)
    return from_dict(raw, source=source, recipe_configs=recipe_configs)


def load_run_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """A run's config with its recipe sections typed by the registered recipes' `Config`
    dataclasses: what `llmcore train`, the pipeline and experiments load."""
    from llmcore.recipe.registry import recipe_config_class

    return load_config(path, overrides, recipe_configs=recipe_config_class)


def read_yaml(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict:
    """One config file as a nested dict, with `base: other.yaml` resolved.

    `base` is read relative to the including file and merged under it key by key (a section
    given in both is merged, any other value is replaced); bases may chain. A missing base,
    or a cycle of bases, is an error naming the files.
    """
    p = Path(path)
    if not p.is_file():
        where = f" (the base of {_chain[-1]})" if _chain else ""
        raise ConfigError(f"config file not found: {p}{where}")
    if p.resolve() in _chain:
        raise ConfigError(f"config bases form a cycle: {' -> '.join(map(str, _chain + (p.resolve(),)))}")
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: top level must be a mapping, got {type(raw).__name__}")
    base = raw.pop("base", None)
    if base is None:
        return raw
    if not isinstance(base, str):
        raise ConfigError(f"{p}: base must be a file name, got {base!r}")
    return merge_dicts(read_yaml(p.parent / base, _chain + (p.resolve(),)), raw)


def merge_dicts(base: dict, over: dict) -> dict:
    """`over` on top of `base`: nested mappings merged key by key, everything else replaced."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_dicts(out[key], value)
        else:
            out[key] = value
    return out


def _apply_override(raw: dict, item: str) -> None:
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not of the form key=value (e.g. optim.lr=3e-4)")
    key, text = item.split("=", 1)
    try:
        value = yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError:
        value = text
    node = raw
    parts = key.strip().split(".")
    for part in parts[:-1]:
        nxt = node.setdefault(part, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"override {key}: {part} is not a section")
        node = nxt
    node[parts[-1]] = value


def read_saved(saved: dict, recipe_configs: typing.Callable[[str], type | None] | None = None) -> dict:
    """A saved config (a parsed config.yaml) as this version reads it, as a plain dict: a field
    added since the save is at its default, which is what the saved run trained with. One this
    version no longer has makes the file unreadable as a Config: it comes back as saved, and the
    comparisons (`differences(common_only=True)`) pass over keys only one side has. The one
    rule for "what did that run train with" of the resume check and the pipeline's skip."""
    try:
        return yaml.safe_load(from_dict(saved, recipe_configs=recipe_configs).to_yaml())
    except ConfigError:
        return saved


def from_dict(raw: dict, source: str = "<dict>",
              recipe_configs: typing.Callable[[str], type | None] | None = None) -> Config:
    """Build a Config from a nested dict (the YAML document), checking every key and type."""
    raw = dict(raw)
    recipes = raw.get("recipes", []) or []
    if isinstance(recipes, str):
        recipes = [recipes]
    if not isinstance(recipes, list) or not all(isinstance(r, str) for r in recipes):
        raise ConfigError(f"{source}: recipes must be a list of names, got {recipes!r}")
    recipe_sections: dict[str, Any] = {}
    for name in recipes:
        cls = recipe_configs(name) if recipe_configs else None
        section = raw.pop(name, None) or {}
        if cls is None:
            if section:
                raise ConfigError(f"{source}: recipe {name!r} takes no options, got {sorted(section)}")
            continue
        recipe_sections[name] = _build(cls, section, name, source)
    cfg = _build(Config, raw, "", source)
    cfg.recipes = list(recipes)
    cfg.recipe = recipe_sections
    return cfg.validate()


def build_dataclass(cls: type, raw: Any, source: str, prefix: str = "") -> Any:
    """An instance of dataclass `cls` from a nested dict, with the run config's checks: an
    unknown key names the key and the nearest valid one, a wrong type names the expected one.

    For other typed YAML files (the pipeline file) so that every file a user writes fails the
    same way; `prefix` is the dotted path of `raw` inside its file (`stages[1]`)."""
    return _build(cls, raw, prefix, source)


def _build(cls: type, raw: Any, prefix: str, source: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: {prefix or 'config'} must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "recipe"}
    kwargs = {}
    for key, value in raw.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key not in fields:
            near = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f"; did you mean {(prefix + '.' if prefix else '') + near[0]!r}?" if near else ""
            raise ConfigError(f"{source}: unknown key {dotted!r}{hint}")
        kwargs[key] = _coerce(hints[key], value, dotted, source)
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, key: str, source: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, key, source)
            except ConfigError as e:
                errors.append(e)
        raise errors[0]
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key, source)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{source}: {key} must be a list, got {value!r}")
        return [_coerce(item_tp, v, f"{key}[{i}]", source) for i, v in enumerate(value)]
    if origin is dict:
        key_tp, value_tp = typing.get_args(tp) or (Any, Any)
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {key} must be a mapping, got {value!r}")
        return {_coerce(key_tp, k, f"{key} key", source): _coerce(value_tp, v, f"{key}.{k}", source)
                for k, v in value.items()}
    if tp is Any:
        return value
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        # YAML 1.1 reads `1e-3` (no dot) as a string; accept what float() accepts.
        try:
            return float(value)
        except ValueError:
            pass
    if tp in (int, str, bool) and isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
        return value
    raise ConfigError(f"{source}: {key} must be {getattr(tp, '__name__', tp)}, got {value!r}")
