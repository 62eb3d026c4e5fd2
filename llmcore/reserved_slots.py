"""Lending a tokenizer's free reserved slots to special tokens it was not trained with.

Both tokenizer backends (`llmcore.tokenizer.Tokenizer` for SentencePiece,
`llmcore.tokenizer_hf.HFTokenizer` for `tokenizer.json`) give a recipe's config-dependent
tokens (`<mode_0..C-1>`) a slot by this one rule, so `RecipeSet.bind` works the same on either.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Sequence

from llmcore.errors import TokenizerError


def lend(names: Sequence[str], known: Container[str], aliases: dict[str, int], free: Sequence[int],
         where: str, check: Callable[[list[str]], None] | None = None) -> None:
    """Give each of `names` that is neither `known` nor already lent the next of the `free`
    slot ids (lowest first, in the order of `names`), recorded in `aliases` in place. The slots
    already lent are not in `free` (the caller leaves them out). `check(missing)` validates the
    new names first. TokenizerError naming the tokens when the slots run out."""
    missing = [n for n in dict.fromkeys(names) if n not in known and n not in aliases]
    free = sorted(free)
    if len(missing) > len(free):
        raise TokenizerError(f"tokenizer {where} has {len(free)} free <reserved_i> slots but "
                             f"{len(missing)} special tokens need one: {missing}")
    if check is not None:
        check(missing)
    aliases.update(zip(missing, free))


def special_id(name: str, ids: dict[str, int], aliases: dict[str, int], where: str) -> int:
    """The id of special token `name` in either backend: a lent slot (`aliases`) first, then the
    tokenizer's own special tokens (`ids`); TokenizerError listing what it has otherwise."""
    if name in aliases:
        return aliases[name]
    if name not in ids:
        raise TokenizerError(f"tokenizer {where} has no special token {name!r}; available: {sorted(ids)}")
    return ids[name]
