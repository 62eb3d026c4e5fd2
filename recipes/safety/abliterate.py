"""Abliteration: remove a model's refusal direction from its weights (Arditi et al., arXiv
2406.11717), the robustness test of safety pretraining (arXiv 2510.02768).

Used by `llmcore safety abliterate` and `benchmarks.experiments.safety`. Steps:
1. Candidates: per layer l, r_l = mean residual state of harmful prompts - that of harmless
   prompts, at the last `positions` prompt positions, normalised (`refusal_directions`).
2. Edit (`orthogonalize`): W <- W - r r^T W for every attention-output (o_proj) and MLP-down
   (down_proj) matrix of every block, so no block can write along r; optionally the
   embedding too (E <- E - E r r^T, rows are d-vectors). Computed in fp32, cast back.
3. Selection (`choose_layer`): the candidate whose edit leaves the fewest refusals on
   held-out harmful prompts while the KL to the original on harmless prompts stays under a
   bound, outside the last 20% of layers -- or a fixed layer.
4. Report: refusal rate on harmful prompts, false-refusal rate on harmless ones, before and
   after, and the KL to the original over the first N generated tokens (the first token's
   alone, which underestimates the damage, beside it).

Choices the papers leave open, made here:
- Layer l's state is the residual stream after block l (`return_layers` index l, 1..L); the
  embedding output (index 0) is no candidate: it carries the token identity only.
- Positions: Arditi et al. keep one candidate per layer and post-instruction position; here
  the last `positions` prompt positions are averaged into one candidate per layer (1 by
  default: the position that predicts the first answer token).
- "Not in the last 20%": l <= 0.8 L. "From layer 1 on": every block (1-indexed), i.e. all.
- Prompts are split in order: the first half gives the directions, the second half is held
  out for the refusal and KL measurements (`held_out` sets the fraction).
- KL(original || edited), averaged over every position of the original model's greedy
  continuation (up to N tokens each), on the raw distributions (no logits processors).
- Refusals are counted on greedy continuations of N tokens by a judge (`recipes.safety.judge`).
- Ties in refusals go to the smaller KL; no candidate under the bound is an error naming it.
- With tied embeddings, editing the embedding edits the output head as well (one matrix).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch

from llmcore.errors import ConfigError
from llmcore.generate.sampling import generate

PROMPT_TEMPLATE = "User: {prompt}\nAssistant:"
EDITED_SUFFIXES = ("self_attn.o_proj.weight", "mlp.down_proj.weight")
EMBEDDING = "embed_tokens.weight"


def encode_prompts(tokenizer, prompts: Sequence[str], template: str = PROMPT_TEMPLATE) -> list[list[int]]:
    """Each prompt in the chat template, as ids (ConfigError if the template lacks {prompt})."""
    if "{prompt}" not in template:
        raise ConfigError(f"prompt template {template!r} has no {{prompt}} slot")
    return [tokenizer.encode(template.replace("{prompt}", p)) or [tokenizer.eos_id] for p in prompts]


@torch.inference_mode()
def mean_states(model, prompts: Sequence[Sequence[int]], layers: Sequence[int], positions: int = 1) -> dict:
    """{layer: mean residual state (d,) fp64} over the last `positions` positions of each prompt."""
    if positions < 1:
        raise ConfigError(f"positions must be >= 1, got {positions}")
    device = next(model.parameters()).device
    sums = {i: torch.zeros(model.args.d_model, dtype=torch.float64, device=device) for i in layers}
    count = 0
    for ids in prompts:
        x = torch.tensor([list(ids)], dtype=torch.long, device=device)  # (1, T)
        _, states = model(x, return_layers=list(layers))
        for i in layers:
            sums[i] += states[i][0, -positions:].double().sum(0)  # (d,)
        count += min(positions, len(ids))
    return {i: s / max(1, count) for i, s in sums.items()}


def refusal_directions(model, harmful: Sequence[Sequence[int]], harmless: Sequence[Sequence[int]],
                       positions: int = 1) -> dict[int, torch.Tensor]:
    """{layer l in 1..L: unit r_l (d,) fp32} = normalised mean(harmful) - mean(harmless)."""
    if not harmful or not harmless:
        raise ConfigError("refusal directions need harmful and harmless prompts (got "
                          f"{len(harmful)} and {len(harmless)})")
    layers = list(range(1, model.args.n_layers + 1))
    a, b = mean_states(model, harmful, layers, positions), mean_states(model, harmless, layers, positions)
    out = {}
    for i in layers:
        d = a[i] - b[i]
        out[i] = (d / d.norm().clamp_min(1e-30)).float()
    return out


def candidate_layers(n_layers: int, exclude_last: float = 0.2) -> list[int]:
    """Layers 1..L outside the last `exclude_last` fraction (l <= (1 - exclude_last) L)."""
    return [i for i in range(1, n_layers + 1) if i <= (1.0 - exclude_last) * n_layers + 1e-9]


def edited_names(model, embedding: bool = False) -> list[str]:
    """Names of the parameters `orthogonalize` edits."""
    return [n for n, _ in model.named_parameters() if n.endswith(EDITED_SUFFIXES) or (embedding and n == EMBEDDING)]


@torch.no_grad()
def orthogonalize(model, r: torch.Tensor, embedding: bool = False):
    """A copy of `model` with r projected out of every o_proj / down_proj output (and the
    embedding's rows with `embedding`): W <- W - r r^T W in fp32, cast back to W's dtype.
    `r` (d,) is normalised here; `model` is not modified."""
    out = copy.deepcopy(model)
    r = r.detach().float().to(next(model.parameters()).device)
    r = r / r.norm()
    params = dict(out.named_parameters())
    for name in edited_names(out, embedding):
        p = params[name]
        w = p.detach().float()
        if name == EMBEDDING:
            w = w - (w @ r)[:, None] * r[None, :]  # (V, d): each row loses its r component
        else:
            w = w - r[:, None] * (r[None, :] @ w)  # (d, k): outputs lose their r component
        p.copy_(w.to(p.dtype))
    return out


def greedy(model, prompts: Sequence[Sequence[int]], max_new_tokens: int, eos_id: int | None,
           processors: Sequence[Callable] = (), batch_size: int = 32) -> list[list[int]]:
    """Greedy continuations (the new ids, eos kept) of each prompt, in batches."""
    out = []
    for k in range(0, len(prompts), batch_size):
        out += generate(model, [list(p) for p in prompts[k:k + batch_size]], max_new_tokens, temperature=0.0,
                        eos_id=eos_id, logits_processors=processors)
    return out


def refusal_rate(model, tokenizer, prompts: Sequence[Sequence[int]], judge, max_new_tokens: int,
                 processors: Sequence[Callable] = ()) -> float:
    """Fraction of greedy continuations the judge's `is_refusal` calls a refusal."""
    if not prompts:
        return 0.0
    outs = greedy(model, prompts, max_new_tokens, tokenizer.eos_id, processors)
    texts = [tokenizer.decode([t for t in o if t != tokenizer.eos_id]) for o in outs]
    return sum(judge.is_refusal(t) for t in texts) / len(texts)


@torch.inference_mode()
def generation_kl(original, edited, prompts: Sequence[Sequence[int]], max_new_tokens: int,
                  eos_id: int | None, processors: Sequence[Callable] = (),
                  conts: Sequence[Sequence[int]] | None = None) -> tuple[float, float]:
    """(KL over the first N generated tokens, KL of the first token only), both
    KL(original || edited) averaged over positions of the original's greedy continuations
    (`conts`, when the caller has them: they do not change between edits)."""
    if conts is None:
        conts = greedy(original, prompts, max_new_tokens, eos_id, processors)
    device = next(original.parameters()).device
    total, n, first = 0.0, 0, 0.0
    for p, c in zip(prompts, conts):
        ids = torch.tensor([list(p) + list(c)], dtype=torch.long, device=device)
        rows = slice(len(p) - 1, len(p) - 1 + max(1, len(c)))  # the distributions that chose c
        lo = original.logits(original(ids))[0, rows].log_softmax(-1)  # (m, V)
        le = edited.logits(edited(ids))[0, rows].log_softmax(-1)
        kl = (lo.exp() * (lo - le)).sum(-1).clamp_min(0)  # (m,)
        total, n, first = total + float(kl.sum()), n + kl.numel(), first + float(kl[0])
    return total / max(1, n), first / max(1, len(prompts))


def choose_layer(candidates: list[dict], kl_bound: float) -> dict:
    """The candidate {"layer", "refusal", "kl"} with the fewest refusals among those with
    kl <= kl_bound (ties: smaller KL, then the earlier layer); ConfigError naming the bound
    and the smallest KL seen when none is under it."""
    ok = [c for c in candidates if c["kl"] <= kl_bound]
    if not ok:
        best = min((c["kl"] for c in candidates), default=float("nan"))
        raise ConfigError(f"no candidate layer keeps the KL on harmless prompts under the bound "
                          f"{kl_bound} (smallest: {best:.4g}); raise --kl-bound or give --layer")
    return min(ok, key=lambda c: (c["refusal"], c["kl"], c["layer"]))


def split(rows: Sequence, held_out: float) -> tuple[list, list]:
    """(direction set, held-out set): the first 1 - held_out of `rows`, then the rest."""
    if not 0.0 < held_out < 1.0:
        raise ConfigError(f"held_out must be in (0, 1), got {held_out}")
    k = max(1, min(len(rows) - 1, round(len(rows) * (1.0 - held_out))))
    if len(rows) < 2:
        raise ConfigError(f"need at least 2 prompts of each kind to split (got {len(rows)})")
    return list(rows[:k]), list(rows[k:])


def abliterate(model, tokenizer, harmful: Sequence[str], harmless: Sequence[str], *, judge,
               layer: int | None = None, embedding: bool = False, positions: int = 1,
               held_out: float = 0.5, kl_bound: float = 0.1, max_new_tokens: int = 16,
               template: str = PROMPT_TEMPLATE, processors: Sequence[Callable] = (),
               log: Callable[[str], None] = lambda s: None):
    """(edited model, report, r) for prompt texts `harmful` / `harmless` (see the module
    docstring); r (d,) is the chosen unit direction.

    `processors`: the checkpoint's decoding logits processors (e.g. the tag ban), used when
    generating; `layer`: a fixed layer instead of the selection.
    """
    L = model.args.n_layers
    if layer is not None and not 1 <= layer <= L:
        raise ConfigError(f"--layer {layer} is not a layer of this model (1..{L})")
    hd, hv = split(encode_prompts(tokenizer, harmful, template), held_out)
    gd, gv = split(encode_prompts(tokenizer, harmless, template), held_out)
    directions = refusal_directions(model, hd, gd, positions)
    eos = tokenizer.eos_id
    before = refusal_rate(model, tokenizer, hv, judge, max_new_tokens, processors)
    false_before = refusal_rate(model, tokenizer, gv, judge, max_new_tokens, processors)
    log(f"before: refusal {before:.3f} on {len(hv)} held-out harmful, false refusal {false_before:.3f}")
    layers = [layer] if layer is not None else candidate_layers(L)
    if not layers:
        raise ConfigError(f"a {L}-layer model has no layer outside its last 20%: give --layer")
    conts = greedy(model, gv, max_new_tokens, eos, processors)  # the original's, shared by every candidate
    candidates = []
    for i in layers:
        edited = orthogonalize(model, directions[i], embedding)
        kl, kl_first = generation_kl(model, edited, gv, max_new_tokens, eos, processors, conts)
        refusal = refusal_rate(edited, tokenizer, hv, judge, max_new_tokens, processors)
        candidates.append({"layer": i, "refusal": refusal, "kl": kl, "kl_first_token": kl_first})
        log(f"layer {i}/{L}: refusal {refusal:.3f}, KL {kl:.4g}")
    chosen = candidates[0] if layer is not None else choose_layer(candidates, kl_bound)
    edited = orthogonalize(model, directions[chosen["layer"]], embedding)
    report = {"layer": chosen["layer"], "n_layers": L, "embedding": embedding, "positions": positions,
              "kl_bound": kl_bound, "max_new_tokens": max_new_tokens,
              "n_harmful_held_out": len(hv), "n_harmless_held_out": len(gv),
              "refusal_before": before, "refusal_after": chosen["refusal"],  # greedy: the same edit, the same text
              "false_refusal_before": false_before,
              "false_refusal_after": refusal_rate(edited, tokenizer, gv, judge, max_new_tokens, processors),
              "kl": chosen["kl"], "kl_first_token": chosen["kl_first_token"], "candidates": candidates,
              "edited": edited_names(model, embedding)}
    return edited, report, directions[chosen["layer"]]
