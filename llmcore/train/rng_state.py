"""The RNG state of one rank (torch, CUDA, numpy, python) as plain tensors and numbers.

Saved in every checkpoint as `rng-rank<r>.pt` by `llmcore.train.checkpoint`. The file holds
only tensors, ints, floats, strings and None, so it loads with `torch.load(weights_only=True)`:
resuming never unpickles an object (numpy's and python's states are tuples of objects, so they
are taken apart here into a uint32 key tensor and numbers, and put back together on load).
"""

from __future__ import annotations

import random

import numpy as np
import torch

FORMAT = "llmcore-rng-v1"


def capture() -> dict:
    """This process's generators, as a weights-only-loadable dict."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {
        "format": FORMAT,
        "torch": torch.get_rng_state(),
        # int64: safe for the 32-bit words, and a dtype every torch version round-trips
        "numpy": {"kind": kind, "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(gauss)},
        "python": {"version": int(version), "state": torch.tensor(internal, dtype=torch.int64),
                   "gauss_next": gauss_next},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore(state: dict) -> None:
    """Put back what `capture` returned (KeyError/TypeError/ValueError on a malformed dict)."""
    if state.get("format") != FORMAT:
        raise ValueError(f"format {state.get('format')!r}, expected {FORMAT!r}")
    n = state["numpy"]
    p = state["python"]
    torch.set_rng_state(state["torch"])
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    random.setstate((p["version"], tuple(int(x) for x in p["state"].tolist()), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
