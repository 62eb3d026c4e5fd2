"""Beam search with a KV cache and a selector hook (SafeBeam's one-token lookahead and pruning).

Used by evaluations and scripts that want the most likely continuations, and by recipes whose
decoding re-ranks or prunes beams through the `beam_selector` hook (the safety recipe's SafeBeam).

One step: every live beam's next-token log-probs (after the logits processors) are added to
its score; the 2·W best (parent, token) extensions are proposed (2·W so that beams that end in
eos, or that a selector prunes, still leave W to continue: SafeBeam drops half); a selector
may prune, re-score or reorder them; the best W that do not end in eos become the next beams.
The KV cache is filled once by the prompt's prefill, then its rows follow the beams: each
step gathers the parent rows (`KVCache.reorder`) and appends one token per beam, so no prefix
is ever recomputed. A beam of one prompt has no padding, so every cached key is visible.

Bookkeeping of finished hypotheses is on the host: one sync per step, two more with a selector
(checking its answer; whether its lookahead covered the kept beams). W is small, and a beam
step needs the host's decision anyway.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable, Sequence

import torch

from llmcore.errors import ConfigError
from llmcore.generate.sampling import LogitsProcessor, decode_step, fit_context, prefill


@dataclass(frozen=True)
class Candidates:
    """The N extensions of the live beams proposed at one step (what a selector sees).

    parent (N,) long: row of the live beam each candidate extends.
    token (N,) long: its next token.
    score (N,) fp32: cumulative log-prob of the extended sequence under the processed logits;
        a selector may replace it (`rescored`), and the beams keep what it returns.
    ids (N, t + 1) long: the extended sequences, prompt included.
    index (N,) long: the candidate's position in the step's proposal; it lets the search take a
        lookahead's forward as the next step's instead of running it again.
    """

    parent: torch.Tensor
    token: torch.Tensor
    score: torch.Tensor
    ids: torch.Tensor
    index: torch.Tensor

    def __len__(self) -> int:
        return self.token.shape[0]

    def select(self, rows: torch.Tensor) -> "Candidates":
        """The candidates at `rows`: (M,) long indices or an (N,) bool mask, in that order."""
        return Candidates(self.parent[rows], self.token[rows], self.score[rows], self.ids[rows], self.index[rows])

    def rescored(self, score: torch.Tensor) -> "Candidates":
        """The same candidates with new cumulative scores (N,)."""
        return replace(self, score=score.to(self.score.dtype))


# The lookahead: candidates -> (N, V) fp32 log-probs of the token after each candidate's
# extended sequence, from the model itself (no logits processor: SafeBeam must see P(tag) even
# though the tag is banned from the output).
Lookahead = Callable[[Candidates], torch.Tensor]
# The selector: (proposed candidates, lookahead) -> the candidates to keep, any order, scores
# possibly changed; keeping none ends the search.
Selector = Callable[[Candidates, Lookahead], Candidates]


class _Lookahead:
    """One decode step of the given candidates on copies of the live cache rows; remembers its
    last call so the search can continue from it."""

    def __init__(self, model, caches, position: int, total: int):
        self.model, self.caches, self.position, self.total = model, caches, position, total
        self.last = None  # (index (N,), raw logits (N, V), caches of N rows)

    def __call__(self, cands: Candidates) -> torch.Tensor:
        caches = [c.select(cands.parent) for c in self.caches]  # copies: the live rows stay put
        logits = _step(self.model, cands.token, self.position, self.total, caches)
        self.last = (cands.index, logits, caches)
        return logits.log_softmax(dim=-1)

    def continue_with(self, kept: Candidates, n_proposed: int):
        """(logits (M, V), caches) of the kept candidates if the last call covered all of
        them, else None."""
        if self.last is None:
            return None
        index, logits, caches = self.last
        where = torch.full((n_proposed,), -1, dtype=torch.long, device=index.device)
        where[index] = torch.arange(len(index), device=index.device)
        rows = where[kept.index]
        if bool((rows < 0).any()):
            return None
        for c in caches:
            c.reorder(rows)
        return logits[rows], caches


def _step(model, token: torch.Tensor, position: int, total: int, caches) -> torch.Tensor:
    """Append one token per row (N,) at `position`; -> fp32 logits (N, V)."""
    n = token.shape[0]
    pos = torch.full((n, 1), position, dtype=torch.long, device=token.device)
    visible = torch.ones(n, total, dtype=torch.bool, device=token.device)
    return decode_step(model, token[:, None], pos, visible, caches)


def _check_selected(out, n_live: int, n_proposed: int, t: int) -> Candidates:
    if not isinstance(out, Candidates):
        raise ConfigError(f"beam selector returned {type(out).__name__}, not Candidates")
    n = len(out)
    shapes = [tuple(x.shape) for x in (out.parent, out.score, out.index)]
    if any(s != (n,) for s in shapes) or tuple(out.ids.shape) != (n, t + 1):
        raise ConfigError(f"beam selector returned inconsistent candidates: token {(n,)}, "
                          f"parent/score/index {shapes}, ids {tuple(out.ids.shape)} (want ({n}, {t + 1}))")
    if n and bool((out.parent.min() < 0) | (out.parent.max() >= n_live)
                  | (out.index.min() < 0) | (out.index.max() >= n_proposed)):
        raise ConfigError(f"beam selector returned a parent outside [0, {n_live}) or an index "
                          f"outside [0, {n_proposed}): keep proposed candidates (select, rescored)")
    return out


def _best_reachable(score: float, length: int, max_len: int, length_penalty: float) -> float:
    """Upper bound of the normalised score of any continuation of a live beam: its raw score
    only falls, and score / len^penalty is monotone in len, so one end of [length + 1, max_len]
    bounds it."""
    return max(score / (length + 1) ** length_penalty, score / max_len ** length_penalty)


@torch.inference_mode()
def beam_search(model, prompt_ids: Sequence[int], *, beam_width: int, max_new_tokens: int,
                eos_id: int | None = None, length_penalty: float = 1.0,
                selector: Selector | None = None,
                logits_processors: Sequence[LogitsProcessor] = ()) -> list[tuple[list[int], float]]:
    """The `beam_width` best continuations of one prompt, best first: [(new ids, score)].

    score = sum of the continuation's log-probs / len(new ids) ** length_penalty (1: mean
    log-prob per token, 0: plain sum, which favours short hypotheses). A hypothesis ends when
    its last token is `eos_id` (kept in its ids) or at `max_new_tokens`. As in Hugging Face's
    search, an eos extension finishes a hypothesis only if it ranks among the W best of its
    step (it would have been a beam); the search stops early once no live beam can still beat
    the W-th finished one (an exact bound, not a heuristic), so stopping never changes the
    result. Logits processors get fp32 logits (n, V) and the ids so far (n, t), prompt
    included, as in `sampling.generate`. `selector` (see `Selector`) sees every proposal.
    Fewer than W results come back only if the vocabulary or a selector leaves fewer.
    """
    if beam_width < 1:
        raise ConfigError(f"beam_width must be >= 1, got {beam_width}")
    if max_new_tokens < 0:
        raise ConfigError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if len(prompt_ids) == 0:
        raise ConfigError("the prompt is empty: give at least one token (e.g. eos)")
    if max_new_tokens == 0:
        return [([], 0.0)]
    fit_context([list(prompt_ids)], max_new_tokens, getattr(getattr(model, "args", None), "max_seq_len", None))
    device = next(model.parameters()).device
    W, T = beam_width, len(prompt_ids)
    total = T + max_new_tokens
    seq = torch.tensor([list(prompt_ids)], dtype=torch.long, device=device)  # (1, T)
    caches = model.new_caches(1, total)
    logits = prefill(model, seq, torch.arange(T, device=device)[None],
                     torch.ones(1, total, dtype=torch.bool, device=device), caches)  # (1, V)
    score = torch.zeros(1, device=device)
    finished: list[tuple[float, list[int]]] = []  # (normalised score, new ids), best first

    for step in range(max_new_tokens):
        for fn in logits_processors:
            logits = fn(logits, seq)
        n, V = logits.shape
        flat = (score[:, None] + logits.log_softmax(dim=-1)).flatten()  # (n * V,)
        top, where = flat.topk(min(2 * W, flat.numel()))  # sorted, best first
        parent, token = where // V, where % V
        cands = Candidates(parent, token, top, torch.cat([seq[parent], token[:, None]], dim=1),
                           torch.arange(len(top), device=device))
        look = _Lookahead(model, caches, T + step, total)
        if selector is not None:
            cands = _check_selected(selector(cands, look), n, len(top), seq.shape[1])

        order = cands.score.argsort(descending=True, stable=True)
        tokens, scores = cands.token[order].tolist(), cands.score[order].tolist()  # the sync
        length, keep = step + 1, []
        for rank, (tok, s) in enumerate(zip(tokens, scores)):
            if s == -math.inf or len(keep) == W:
                break
            if eos_id is not None and tok == eos_id:
                if rank < W:
                    finished.append((s / length ** length_penalty, cands.ids[order[rank], T:].tolist()))
            else:
                keep.append(rank)
        finished = sorted(finished, key=lambda f: -f[0])[:W]
        if not keep:
            break
        kept = cands.select(order[torch.tensor(keep, device=device)])
        seq, score = kept.ids, kept.score
        if step + 1 == max_new_tokens:
            finished += [(s / length ** length_penalty, row[T:])
                         for s, row in zip(kept.score.tolist(), kept.ids.tolist())]
            break
        if len(finished) == W and _best_reachable(scores[keep[0]], length, max_new_tokens,
                                                  length_penalty) <= finished[-1][0]:
            break
        reused = look.continue_with(kept, len(top))
        if reused is not None:
            logits, caches = reused
        else:
            for c in caches:
                c.reorder(kept.parent)
            logits = _step(model, kept.token, T + step, total, caches)

    finished = sorted(finished, key=lambda f: -f[0])[:W]
    return [(ids, s) for s, ids in finished]


def beam_search_text(model, tokenizer, prompt: str, *, beam_width: int = 4,
                     max_new_tokens: int = 64, length_penalty: float = 1.0, recipes=None,
                     logits_processors: Sequence[LogitsProcessor] = (),
                     stop_at_eos: bool = True) -> list[tuple[str, float]]:
    """Text in, the best `beam_width` continuations out: [(text without the eos, score)].

    The prompt is encoded as `sampling.generate_text` does (no bos; empty -> [eos]). `recipes`
    (a RecipeSet or None) is bound to the tokenizer, rewrites the prompt (`prepare_prompt`),
    adds its logits processors after `logits_processors` and its composed `beam_selector`.
    """
    processors = list(logits_processors)
    ids = tokenizer.encode(prompt) or [tokenizer.eos_id]
    selector = None
    if recipes:
        recipes.bind(tokenizer)
        ids = recipes.prepare_prompt(list(ids))
        processors += recipes.logits_processors()
        selector = recipes.beam_selector()
    eos = tokenizer.eos_id
    found = beam_search(model, ids, beam_width=beam_width, max_new_tokens=max_new_tokens,
                        eos_id=eos if stop_at_eos else None, length_penalty=length_penalty,
                        selector=selector, logits_processors=processors)
    return [(tokenizer.decode([t for t in row if t != eos]), s) for row, s in found]
