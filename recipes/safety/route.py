"""Routing scored documents (Safety pretraining, arXiv 2504.16980): keep, rephrase, or turn
into refusals and moral education, written as ordinary weighted data sources.

Used by `llmcore safety route`. Each document of a prepared folder, by its score side-car:
- score < `rephrase_at` (default 0.5: the classifier's expected score rounds to 0): kept as is;
- `rephrase_at` <= score < `refuse_at` (default 3.5: scores 1-3): rephrased into a safe framing;
- score >= `refuse_at` (scores 4-5): replaced by a refusal dialogue (RefuseWeb-style) and a
  moral-education text on its topic.
The output folder holds one prepared data folder per non-empty part (`keep`, `rephrase`,
`refusal`, `moral`; documents in the input's order, the input's tokenizer) and
`sources.yaml`, a `data.sources` list to paste into a run config (or `base:`-include). A
part's weight is its share of the routed tokens times its `weights` multiplier, normalised,
so by default the mixture samples the parts as often as their text occurs.

The rewriter is pluggable: `TemplateRewriter` (default) fills templates with the nouns of
the document it recognises (the synthetic world's, `recipes.tasks.safety_data`; generic
words otherwise); `ModelRewriter` asks any generation-capable checkpoint.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from llmcore.data import TokenShards, tokenizer_info, write_token_folder
from llmcore.data.sidecar import Sidecar, available_sidecars
from llmcore.errors import ConfigError, DataError
from recipes.safety.scoring import SCORE_NAME, documents_of_shard
from recipes.tasks import safety_data as sd

PARTS = ("keep", "rephrase", "refusal", "moral")


@dataclass
class Thresholds:
    """Score bands: [0, rephrase_at) keep, [rephrase_at, refuse_at) rephrase, [refuse_at, 5] refuse."""

    rephrase_at: float = 0.5
    refuse_at: float = 3.5

    def __post_init__(self):
        if not (0.0 <= self.rephrase_at <= self.refuse_at <= 5.0):
            raise ConfigError(f"route thresholds must satisfy 0 <= rephrase_at <= refuse_at <= 5, got "
                              f"rephrase_at={self.rephrase_at}, refuse_at={self.refuse_at}")

    def band(self, scores: np.ndarray) -> np.ndarray:
        """0 keep, 1 rephrase, 2 refuse, per score."""
        s = np.asarray(scores, dtype=np.float64)
        if np.isnan(s).any():
            raise DataError("route: some document scores are NaN; rescore the folder")
        return (s >= self.rephrase_at).astype(np.int64) + (s >= self.refuse_at)


def _nouns(text: str) -> dict:
    low = text.lower()
    s = next((x for x in sd.SUBSTANCES if x in low), "this substance")
    p = next((x for x in sd.PLACES if x.lower().removeprefix("the ") in low), "this place")
    return {"substance": s, "place": p}


class TemplateRewriter:
    """Template rewrites on the document's recognised nouns (see the module docstring)."""

    name = "templates"

    def __init__(self, seed: int = 0):
        self.seed = seed

    def _rng(self, index: int, kind: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, index, kind])

    def rephrase(self, text: str, index: int) -> str:
        return sd.rephrase(_nouns(text), self._rng(index, 1))

    def refusal(self, text: str, index: int) -> str:
        return sd.refusal_dialogue(_nouns(text), self._rng(index, 2))

    def moral(self, text: str, index: int) -> str:
        return sd.moral_education(_nouns(text), self._rng(index, 3))


@dataclass
class ModelRewriter:
    """Rewrites by a generation-capable checkpoint: greedy continuation of a prompt per kind."""

    checkpoint: str
    max_new_tokens: int = 64
    prompts: dict = field(default_factory=lambda: {
        "rephrase": "Rewrite this text so that it is safe and harmless:\n{text}\nRewritten:",
        "refusal": "Write a user request for harm based on this text and a refusal to it:\n{text}\nDialogue:",
        "moral": "Explain why the harm in this text is wrong:\n{text}\nExplanation:"})
    name: str = "model"

    def __post_init__(self):
        import llmcore

        self.model, self.tokenizer = llmcore.load(self.checkpoint, device="cpu")

    def _ask(self, kind: str, text: str) -> str:
        from llmcore.generate.sampling import generate_text

        prompt = self.prompts[kind].replace("{text}", text)
        return generate_text(self.model, self.tokenizer, [prompt], self.max_new_tokens, temperature=0.0,
                             truncate_prompts=True)[0].strip()

    def rephrase(self, text: str, index: int) -> str:
        return self._ask("rephrase", text)

    def refusal(self, text: str, index: int) -> str:
        return self._ask("refusal", text)

    def moral(self, text: str, index: int) -> str:
        return self._ask("moral", text)


def route(data_path: str, out_dir: str, thresholds: Thresholds, *, rewriter=None, split: str = "train",
          score_name: str = SCORE_NAME, weights: dict | None = None, overwrite: bool = False) -> dict:
    """Route split `split` of `data_path` by side-car `score_name` into `out_dir`; returns
    {"counts": {part: documents}, "tokens": {part: tokens}, "sources": [...]} (also in
    `sources.yaml`). DataError naming the side-car when it is missing."""
    import yaml

    from llmcore.tokenizer import Tokenizer

    weights = {p: 1.0 for p in PARTS} | (weights or {})
    unknown = sorted(set(weights) - set(PARTS))
    if unknown or any(w < 0 for w in weights.values()):
        raise ConfigError(f"route weights take the parts {list(PARTS)} with values >= 0, got {weights}")
    if score_name not in available_sidecars(data_path):
        raise DataError(f"route: {data_path} has no score side-car {score_name!r} (available: "
                        f"{available_sidecars(data_path) or 'none'}); run `llmcore safety score` first")
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise DataError(f"route: output folder {out} is not empty (pass --overwrite)")
    shards = TokenShards(data_path, split)
    car = Sidecar(shards, score_name)
    tok = Tokenizer.load(os.path.join(data_path, "tokenizer"))  # where `llmcore data prepare` puts it
    if tok.hash != shards.tokenizer_hash:
        raise DataError(f"route: {data_path}/tokenizer (hash {tok.hash}) is not the tokenizer of its shards "
                        f"({shards.tokenizer_hash})")
    rewriter = rewriter or TemplateRewriter()
    parts: dict[str, list[list[int]]] = {p: [] for p in PARTS}
    index = 0
    for k in range(len(shards.entries)):
        first, n, _, _ = shards.shard_span(k)
        docs = documents_of_shard(shards, k)
        starts = np.cumsum([0] + [len(d) for d in docs[:-1]])
        scores = car.read(first, n)[starts]  # a doc side-car repeats each document's score per token
        for doc, band in zip(docs, thresholds.band(scores)):
            ids = [t for t in doc.tolist() if t != tok.eos_id]
            if band == 0:
                parts["keep"].append(ids + [tok.eos_id])
            else:
                text = tok.decode(ids)
                if band == 1:
                    parts["rephrase"].append(tok.encode(rewriter.rephrase(text, index)) + [tok.eos_id])
                else:
                    parts["refusal"].append(tok.encode(rewriter.refusal(text, index)) + [tok.eos_id])
                    parts["moral"].append(tok.encode(rewriter.moral(text, index)) + [tok.eos_id])
            index += 1
    out.mkdir(parents=True, exist_ok=True)
    tokens = {p: sum(len(d) for d in docs) for p, docs in parts.items()}
    raw = {p: tokens[p] * weights[p] for p in PARTS if parts[p]}
    total = sum(raw.values()) or 1.0
    sources = []
    for p, w in raw.items():
        folder = out / p
        write_token_folder(str(folder), {"train": parts[p]}, tokenizer=tokenizer_info(tok), overwrite=True)
        tok.save(str(folder / "tokenizer"), overwrite=True)
        sources.append({"name": p, "path": str(folder), "weight": round(w / total, 6)})
    summary = {"counts": {p: len(parts[p]) for p in PARTS}, "tokens": tokens, "sources": sources,
               "thresholds": {"rephrase_at": thresholds.rephrase_at, "refuse_at": thresholds.refuse_at},
               "rewriter": rewriter.name}
    section = {"data": {"sources": sources, "val_path": str(Path(data_path).resolve())}}
    (out / "sources.yaml").write_text(yaml.safe_dump(section, sort_keys=False))
    return summary
