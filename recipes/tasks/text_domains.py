"""Three text domains for a pretrain -> post-train -> fine-tune study, prepared with one tokenizer.

Used by the early-exposure configs (`recipes/configs/early_exposure_*.yaml`) and their
experiment (`benchmarks.experiments.early_exposure`); any study of forgetting between domains
can use it. `python -m recipes.tasks.text_domains --out runs/early_exposure/data` writes

- `pre/`: the Jargon File 4.4.7 shipped with llmcore (`llmcore/data/corpus/`, public domain):
  natural English prose, one paragraph per document;
- `post/`: generated weather-station reports. Forty fictional stations, each with a fixed
  region, elevation and instrument, reappear in every report about them: the domain holds
  facts a model learns and a later fine-tune can erase, which is what retention measures;
- `ft/`: generated workshop order ledgers (fixed item -> material and price pairs, other words);

each a prepared folder (`llmcore data prepare` layout, 5% of its documents held out as `val`)
with the shared tokenizer beside it. Why two domains are generated: no text under a clearly
public-domain licence ships with the repository besides the Jargon File, and templated domains
cost no bytes, are distinct from it and from each other, and have a known structure. The
output is a function of the seed alone; a folder already complete is kept.
"""

from __future__ import annotations

import argparse
import random
import shutil
from pathlib import Path

import llmcore
from llmcore.data.prepare import prepare
from llmcore.recipe.registry import all_special_tokens
from llmcore.tokenizer import Tokenizer

JARGON = Path(llmcore.__file__).parent / "data" / "corpus" / "jargon-4.4.7.txt.gz"
DOMAINS = ("pre", "post", "ft")

_NAMES = ["Kelby", "Arnmoor", "Tessel", "Vard", "Oxwick", "Pellan", "Rusk", "Hallow", "Marrin", "Coldby",
          "Fenwold", "Istra", "Lune", "Brack", "Dunmere", "Ysolt", "Garrow", "Nethen", "Quill", "Sorrow",
          "Tarn", "Umber", "Welk", "Ashgrove", "Bellhaven", "Crail", "Dray", "Eskar", "Fallow", "Glenn",
          "Harrow", "Ilse", "Jorvik", "Kestle", "Lorn", "Mossby", "Norr", "Orrin", "Pyke", "Ravel"]
_REGIONS = ["northern coast", "eastern hills", "southern plain", "western fells", "central valley",
            "island chain", "high moor", "river delta"]
_INSTRUMENTS = ["a brass barometer", "a mercury thermometer", "a cup anemometer", "a rain gauge",
                "a wind vane", "a sunshine recorder"]
_SKY = ["clear", "hazy", "overcast", "broken cloud", "light rain", "heavy rain", "fog", "snow showers"]
_WIND = ["north", "north-east", "east", "south-east", "south", "south-west", "west", "north-west"]

_ITEMS = {"hinge": ("brass", 4), "bracket": ("iron", 6), "spindle": ("oak", 3), "latch": ("steel", 5),
          "gear": ("bronze", 9), "handle": ("ash", 2), "rivet": ("copper", 1), "panel": ("pine", 7),
          "spring": ("steel", 3), "pulley": ("iron", 8), "dowel": ("beech", 1), "clasp": ("silver", 12)}
_SHOPS = ["Mill Lane", "Quarry Row", "Old Forge", "Tanner Street", "Harbour Yard", "Bell Court"]
_CLERKS = ["Ada", "Bram", "Cora", "Dov", "Elin", "Fitch"]


def station_reports(n_docs: int, seed: int = 0) -> list[str]:
    """`n_docs` reports; each station's region, elevation and instrument are fixed by `seed`
    (station i's facts never change between its reports)."""
    rng = random.Random(seed)
    facts = {name: (rng.choice(_REGIONS), rng.randrange(10, 900, 10), rng.choice(_INSTRUMENTS)) for name in _NAMES}
    docs = []
    for _ in range(n_docs):
        name = rng.choice(_NAMES)
        region, elevation, instrument = facts[name]
        lines = [f"Station {name}, {region}, {elevation} m, reports at {rng.randint(0, 23):02d}:00 by {instrument}."]
        for _ in range(rng.randint(1, 3)):
            lines.append(f"Sky {rng.choice(_SKY)}, wind {rng.choice(_WIND)} {rng.randint(0, 45)} knots, "
                         f"temperature {rng.randint(-12, 31)} C.")
        lines.append(f"End of report from {name} on the {region}.")
        docs.append(" ".join(lines))
    return docs


def workshop_ledger(n_docs: int, seed: int = 0) -> list[str]:
    """`n_docs` order entries; each item always has the same material and unit price."""
    rng = random.Random(seed + 1)
    docs = []
    for _ in range(n_docs):
        lines = [f"Order {rng.randint(100, 999)} for the {rng.choice(_SHOPS)} workshop."]
        for _ in range(rng.randint(1, 4)):
            item = rng.choice(list(_ITEMS))
            material, price = _ITEMS[item]
            qty = rng.randint(1, 20)
            lines.append(f"{qty} {material} {item}s at {price} pence each, {qty * price} pence.")
        lines.append(f"Entered by {rng.choice(_CLERKS)}.")
        docs.append(" ".join(lines))
    return docs


def write_study_data(out: str | Path, *, post_docs: int = 1500, ft_docs: int = 1500, vocab_size: int = 512,
                     seed: int = 0, progress: bool = False) -> dict[str, str]:
    """Prepared folders `pre`, `post`, `ft` under `out` (kept when complete); domain -> path."""
    out = Path(out)
    paths = {d: out / d for d in DOMAINS}
    if all((p / "manifest.json").is_file() and (p / "tokenizer").is_dir() for p in paths.values()):
        return {d: str(p) for d, p in paths.items()}
    text = out / "text"
    text.mkdir(parents=True, exist_ok=True)
    files = {"pre": JARGON, "post": text / "post.txt", "ft": text / "ft.txt"}
    files["post"].write_text("\n\n".join(station_reports(post_docs, seed)) + "\n")
    files["ft"].write_text("\n\n".join(workshop_ledger(ft_docs, seed)) + "\n")
    tok_dir = out / "tokenizer"
    tok = Tokenizer.train([str(f) for f in files.values()], str(tok_dir), vocab_size,
                          special_tokens=all_special_tokens(), overwrite=True, seed=seed, progress=progress)
    for d in DOMAINS:
        prepare([str(files[d])], tok, str(paths[d]), val_fraction=0.05, overwrite=True, progress=progress, seed=seed)
        shutil.copytree(tok_dir, paths[d] / "tokenizer", dirs_exist_ok=True)
    return {d: str(p) for d, p in paths.items()}


def main(argv: list[str] | None = None) -> None:
    """`python -m recipes.tasks.text_domains --out DIR`: the three prepared folders."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="folder of the three prepared domains")
    p.add_argument("--post-docs", type=int, default=1500)
    p.add_argument("--ft-docs", type=int, default=1500)
    p.add_argument("--vocab-size", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    paths = write_study_data(a.out, post_docs=a.post_docs, ft_docs=a.ft_docs, vocab_size=a.vocab_size, seed=a.seed)
    for d, path in paths.items():
        print(f"{d}: {path}")


if __name__ == "__main__":
    main()
