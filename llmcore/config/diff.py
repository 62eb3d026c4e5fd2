"""Differences between two configs as `key: old -> new` lines: the one rule for naming what
changed, used by the trainer's resume check and the pipeline's finished-run check."""

from __future__ import annotations

from collections.abc import Callable


def flatten(d: dict, prefix: str = "") -> dict:
    """Nested mappings as dotted keys (`{"optim": {"lr": 1}}` -> `{"optim.lr": 1}`); a list of
    mappings by index with its length (`data.sources.#: 2`, `data.sources.0.path: ...`), so a
    field added to its items since a save is a key of its own (and a removed item still shows)."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, list) and v and all(isinstance(item, dict) for item in v):
            out[f"{key}.#"] = len(v)
            for i, item in enumerate(v):
                out.update(flatten(item, f"{key}.{i}."))
        else:
            out.update(flatten(v, key + ".") if isinstance(v, dict) and v else {key: v})
    return out


def differences(old: dict, new: dict, *, keep: Callable[[str], bool] = lambda key: True,
                common_only: bool = False) -> list[str]:
    """`key: old -> new` for every kept dotted key whose value differs, sorted by key.
    `common_only` compares only keys both sides have (a field added since a save is no change)."""
    a = {k: v for k, v in flatten(old).items() if keep(k)}
    b = {k: v for k, v in flatten(new).items() if keep(k)}
    keys = a.keys() & b.keys() if common_only else a.keys() | b.keys()
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(keys) if a.get(k) != b.get(k)]


def shown(diffs: list[str], limit: int) -> str:
    """The first `limit` differences joined, with a count of the rest."""
    return "; ".join(diffs[:limit]) + (f"; and {len(diffs) - limit} more" if len(diffs) > limit else "")
