"""Sampling from a model with a KV cache: prefill and decode as separate steps, batched prompts.

Used by the CLI (`llmcore generate`), by `llmcore.eval.tasks.exact_match` and by recipes'
decoding tests. Prompts of different lengths are left-padded into one batch: every row's
tokens then end at the same cache index, so one decode step serves all rows. Pad keys are
hidden through the model's `key_mask`, and each row's RoPE positions count only its real
tokens, so a padded row computes what it would compute alone.

The sampling step (`sample`) never syncs with the host; the loop syncs once per token only
for the end-of-sequence check, and only when an `eos_id` is given.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence

import torch

from llmcore.errors import ConfigError

log = logging.getLogger(__name__)

# fn(logits (B, V) fp32, ids (B, t) prompt + generated so far, left pads included) -> logits
LogitsProcessor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def ban_tokens(ids) -> LogitsProcessor:
    """A processor that never lets `ids` be sampled (their logits -inf): a recipe's signal
    tokens (pauses, harm tags, mode prefixes) are inputs, never outputs."""
    banned = [int(i) for i in ids]

    def ban(logits: torch.Tensor, prefix: torch.Tensor) -> torch.Tensor:
        logits[..., banned] = float("-inf")  # (B, V)
        return logits
    return ban


def prefill(model, input_ids: torch.Tensor, positions: torch.Tensor, key_mask: torch.Tensor,
            caches) -> torch.Tensor:
    """Run the (left-padded) prompts through the model, filling `caches`.

    input_ids, positions: (B, T); key_mask: (B, S) bool over the whole cache, True for keys a
    query may see (real prompt tokens and every generated position). Returns fp32 logits of
    the last prompt position, (B, V).
    """
    h = model(input_ids, positions=positions, caches=caches, key_mask=key_mask)  # (B, T, d)
    return model.logits(h[:, -1])


def decode_step(model, token: torch.Tensor, position: torch.Tensor, key_mask: torch.Tensor,
                caches) -> torch.Tensor:
    """One new token per row: token, position (B, 1) -> fp32 next-token logits (B, V)."""
    h = model(token, positions=position, caches=caches, key_mask=key_mask)  # (B, 1, d)
    return model.logits(h[:, -1])


def sample(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """Next token per row from fp32 logits (B, V) -> (B,) long, without a host sync.

    temperature 0 is greedy (argmax). top_k > 0 keeps the k largest logits; top_p < 1 keeps
    the smallest set of most likely tokens whose probability reaches top_p (always >= 1).
    """
    if temperature <= 0.0:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # drop a token when the mass of the tokens before it already reaches top_p; the first
        # token has 0 mass before it, so at least one survives
        drop = (probs.cumsum(dim=-1) - probs) >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(dim=-1)
    # argmax(p / E) with E ~ Exp(1) draws from p (the exponential race) without the host sync
    # torch.multinomial may do; the generator makes it reproducible
    race = torch.empty_like(probs).exponential_(1.0, generator=generator)
    return (probs / race).argmax(dim=-1)


def _check_args(prompts, max_new_tokens, temperature, top_k, top_p) -> None:
    if max_new_tokens < 0:
        raise ConfigError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if not math.isfinite(temperature) or temperature < 0:
        raise ConfigError(f"temperature must be a finite number >= 0 (0 = greedy, e.g. 0.8), got {temperature}")
    if top_k < 0:
        raise ConfigError(f"top_k must be >= 0 (0 = off), got {top_k}")
    if not 0.0 < top_p <= 1.0:
        raise ConfigError(f"top_p must be in (0, 1], got {top_p}")
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise ConfigError(f"prompt {i} is empty: give at least one token (e.g. eos, the "
                              "document separator the model was trained with)")


def fit_context(prompts: list[list[int]], max_new_tokens: int, max_seq_len: int | None,
                truncate_prompts: bool = False) -> list[list[int]]:
    """The prompts, checked to fit the model's context with `max_new_tokens` after them.

    The model was trained on positions below `max_seq_len` (None: no limit known). A
    `max_new_tokens` that leaves no room for a one-token prompt is a ConfigError; a prompt
    too long for it is a ConfigError naming the prompt, or with `truncate_prompts` keeps its
    last tokens (the ones nearest the continuation), with a warning.
    """
    if max_seq_len is None:
        return prompts
    if max_new_tokens >= max_seq_len:
        raise ConfigError(f"max_new_tokens={max_new_tokens} exceeds the model's context: max_seq_len="
                          f"{max_seq_len} leaves room for at most {max_seq_len - 1} new tokens after a "
                          f"one-token prompt (use --max-new-tokens {max_seq_len - 1} or less)")
    room = max_seq_len - max_new_tokens
    out = []
    for i, p in enumerate(prompts):
        if len(p) > room:
            if not truncate_prompts:
                raise ConfigError(
                    f"prompt {i} has {len(p)} tokens: with max_new_tokens={max_new_tokens} it needs "
                    f"{len(p) + max_new_tokens} positions, beyond the model's max_seq_len={max_seq_len}; "
                    f"shorten it to {room} tokens, lower max_new_tokens to {max(max_seq_len - len(p), 0)}"
                    f", or truncate prompts (--truncate-prompts keeps the last {room} tokens)")
            log.warning("prompt %d: %d tokens + max_new_tokens %d exceed max_seq_len %d; keeping its "
                        "last %d tokens", i, len(p), max_new_tokens, max_seq_len, room)
            p = p[len(p) - room:]
        out.append(p)
    return out


def _left_pad(prompts: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, ...]:
    """-> ids (B, T) left-padded, real (B, T) bool, positions (B, T) counting real tokens."""
    T = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), T), pad_id, dtype=torch.long)
    real = torch.zeros((len(prompts), T), dtype=torch.bool)
    for i, p in enumerate(prompts):
        ids[i, T - len(p):] = torch.tensor(p, dtype=torch.long)
        real[i, T - len(p):] = True
    positions = (real.long().cumsum(dim=1) - 1).clamp(min=0)  # pads sit at 0, never attended
    return ids.to(device), real.to(device), positions.to(device)


@torch.inference_mode()
def generate(model, prompts: list[list[int]], max_new_tokens: int, *, temperature: float = 1.0,
             top_k: int = 0, top_p: float = 1.0, eos_id: int | None = None,
             logits_processors: Sequence[LogitsProcessor] = (), seed: int | None = None,
             pad_id: int = 0, truncate_prompts: bool = False) -> list[list[int]]:
    """Continue each prompt (a list of token ids) by up to `max_new_tokens` tokens.

    Returns the new tokens only, one list per prompt; a row that produced `eos_id` stops
    there (the eos is its last element). Each logits processor maps fp32 logits (B, V) and
    the ids so far (B, t; left pads hold `pad_id`) to new logits, in order, before sampling.
    `seed` fixes the sampling noise (a private torch.Generator); None uses torch's global RNG.
    Prompt plus new tokens must fit the model's `max_seq_len` (`fit_context`: a ConfigError,
    or with `truncate_prompts` a prompt keeps its last tokens, with a warning).
    """
    _check_args(prompts, max_new_tokens, temperature, top_k, top_p)
    prompts = fit_context(prompts, max_new_tokens, _max_seq_len(model), truncate_prompts)
    if not prompts or max_new_tokens == 0:
        return [[] for _ in prompts]
    device = next(model.parameters()).device
    ids, real, positions = _left_pad(prompts, pad_id, device)
    B, T = ids.shape
    total = T + max_new_tokens
    key_mask = torch.ones(B, total, dtype=torch.bool, device=device)
    key_mask[:, :T] = real
    seq = torch.full((B, total), pad_id, dtype=torch.long, device=device)
    seq[:, :T] = ids
    generator = None
    if seed is not None:
        generator = torch.Generator(device=device)
        generator.manual_seed(seed)
    caches = model.new_caches(B, total)
    next_pos = positions[:, -1:] + 1  # (B, 1)
    done = torch.zeros(B, dtype=torch.bool, device=device)

    logits = prefill(model, ids, positions, key_mask, caches)
    n = 0
    for step in range(max_new_tokens):
        for fn in logits_processors:
            logits = fn(logits, seq[:, :T + step])
        token = sample(logits, temperature, top_k, top_p, generator)  # (B,)
        if eos_id is not None:
            token = token.masked_fill(done, eos_id)  # finished rows keep emitting eos
        seq[:, T + step] = token
        n = step + 1
        if eos_id is not None:
            done |= token == eos_id
            if bool(done.all()):  # the one host sync per token
                break
        if step + 1 < max_new_tokens:
            logits = decode_step(model, token[:, None], next_pos + step, key_mask, caches)

    out = []
    for row in seq[:, T:T + n].tolist():
        if eos_id is not None and eos_id in row:
            row = row[:row.index(eos_id) + 1]
        out.append(row)
    return out


def _max_seq_len(model) -> int | None:
    return getattr(getattr(model, "args", None), "max_seq_len", None)


def generate_text(model, tokenizer, prompts: list[str], max_new_tokens: int = 64, *,
                  temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                  seed: int | None = None, recipes=None,
                  logits_processors: Sequence[LogitsProcessor] = (),
                  stop_at_eos: bool = True, truncate_prompts: bool = False) -> list[str]:
    """Text in, generated text out (the continuation only, without the eos).

    Prompts are encoded without bos (training documents are separated by eos, not opened by
    bos); an empty prompt becomes [eos], the start of a new document. `recipes` (a RecipeSet
    or None) is bound to the tokenizer, may rewrite each prompt's ids (`prepare_prompt`) and
    adds its logits processors after `logits_processors`.
    """
    processors = list(logits_processors)
    encoded = [tokenizer.encode(p) or [tokenizer.eos_id] for p in prompts]
    if recipes:
        recipes.bind(tokenizer)
        encoded = [recipes.prepare_prompt(list(ids)) for ids in encoded]
        processors += recipes.logits_processors()
    eos = tokenizer.eos_id
    new = generate(model, encoded, max_new_tokens, temperature=temperature, top_k=top_k,
                   top_p=top_p, eos_id=eos if stop_at_eos else None,
                   logits_processors=processors, seed=seed, pad_id=tokenizer.pad_id,
                   truncate_prompts=truncate_prompts)
    return [tokenizer.decode([t for t in row if t != eos]) for row in new]
