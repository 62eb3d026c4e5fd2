"""Redraw the figures of the pause, SAM and path-star records from their committed results.

    pip install matplotlib          # plots only; not needed to train or test
    python -m benchmarks.experiments.plots        # writes benchmarks/results/{pause_grid,sam_forgetting,path_star}.png

Each study's script draws its figure when it finishes (its `plot` function); this reads the
committed `benchmarks/results/<study>.json` and calls the same functions, so a figure can be
redrawn (or restyled) without training anything.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / "results"


def _plt():
    from llmcore.plots import pyplot

    return pyplot("the experiment plots")


def main(argv=None) -> None:
    from benchmarks.experiments import path_star, pause_grid, sam_forgetting

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", default=str(RESULTS), help="folder of the result JSON files")
    ap.add_argument("--out", default=str(RESULTS), help="where the PNGs go")
    a = ap.parse_args(argv)
    Path(a.out).mkdir(parents=True, exist_ok=True)
    for name, module in (("pause_grid", pause_grid), ("sam_forgetting", sam_forgetting), ("path_star", path_star)):
        doc = json.loads((Path(a.results) / f"{name}.json").read_text())
        print("wrote", module.plot(doc, Path(a.out) / f"{name}.png"))


if __name__ == "__main__":
    main()
