"""Generation: the KV-cached decode equals recomputing the whole sequence, batched prompts of
different lengths equal each prompt alone, and the sampling controls do what they say."""

import pytest
import torch

from llmcore.errors import ConfigError
from llmcore.generate.sampling import _left_pad, generate, generate_text, prefill, sample
from llmcore.model.args import ModelArgs
from llmcore.model.transformer import Transformer
from llmcore.recipe.recipe_set import RecipeSet

VOCAB = 61


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    args = ModelArgs(vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                     ffn_hidden=64, max_seq_len=64, rope_theta=500.0)
    m = Transformer(args).eval()
    with torch.no_grad():  # larger weights than the init: peaked, model-like distributions
        for p in m.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.15)
    return m


def prompts_of(lengths, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(4, VOCAB, (n,), generator=g).tolist() for n in lengths]


@torch.no_grad()
def greedy_recompute(model, prompt, n):
    """Reference without a cache: the full forward of the growing sequence every step."""
    ids = list(prompt)
    for _ in range(n):
        h = model(torch.tensor([ids]))
        ids.append(int(model.logits(h[0, -1]).argmax()))
    return ids[len(prompt):]


def test_cached_greedy_equals_recompute(model):
    for prompt in prompts_of([1, 7, 13]):
        assert generate(model, [prompt], 15, temperature=0.0) == [greedy_recompute(model, prompt, 15)]


def test_batched_different_lengths_equals_each_alone(model):
    prompts = prompts_of([9, 1, 5, 12])
    alone = [generate(model, [p], 10, temperature=0.0)[0] for p in prompts]
    assert generate(model, prompts, 10, temperature=0.0) == alone
    # the prefill logits of every padded row agree with the row alone, not just their argmax
    ids, real, pos = _left_pad(prompts, 0, "cpu")
    mask = torch.cat([real, torch.ones(len(prompts), 1, dtype=torch.bool)], dim=1)
    with torch.no_grad():
        batched = prefill(model, ids, pos, mask, model.new_caches(len(prompts), ids.shape[1] + 1))
        for i, p in enumerate(prompts):
            single = model.logits(model(torch.tensor([p]))[0, -1])
            torch.testing.assert_close(batched[i], single, atol=1e-5, rtol=1e-5)


def test_top_k_1_and_tiny_top_p_equal_greedy(model):
    prompts = prompts_of([4, 8])
    greedy = generate(model, prompts, 12, temperature=0.0)
    assert generate(model, prompts, 12, temperature=1.5, top_k=1, seed=3) == greedy
    assert generate(model, prompts, 12, temperature=1.5, top_p=1e-6, seed=3) == greedy


def test_top_k_and_top_p_restrict_the_support():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).repeat(2000, 1)
    g = torch.Generator().manual_seed(0)
    assert set(sample(logits, 1.0, top_k=2, generator=g).tolist()) == {0, 1}
    # mass before token 2 is 0.8 >= 0.75: tokens 0 and 1 survive
    assert set(sample(logits, 1.0, top_p=0.75, generator=g).tolist()) == {0, 1}
    drawn = sample(logits, 1.0, generator=g)
    assert set(drawn.tolist()) == {0, 1, 2, 3}
    assert abs((drawn == 0).float().mean().item() - 0.5) < 0.05


def test_temperature_is_applied_before_top_p():
    # p = (0.5, 0.3, 0.15, 0.05). At temperature 2 the probabilities are (0.379, 0.294, 0.208,
    # 0.120): the mass before token 2 is 0.673 < 0.75, so tokens 0, 1, 2 survive top_p=0.75
    # (at temperature 1 only 0 and 1 would). At temperature 0.5 they are (0.685, 0.247,
    # 0.062, 0.007): top_p=0.6 keeps token 0 alone (at temperature 1, 0 and 1).
    p = torch.tensor([[0.5, 0.3, 0.15, 0.05]], dtype=torch.float64)
    logits = torch.log(p).float().repeat(4001, 1)
    g = torch.Generator().manual_seed(5)
    hot = sample(logits, 2.0, top_p=0.75, generator=g)
    assert set(hot.tolist()) == {0, 1, 2}
    kept = p[0, :3].sqrt() / p[0, :3].sqrt().sum()  # the tempered distribution over the kept set
    freq = torch.bincount(hot, minlength=4)[:3].double() / hot.numel()
    assert (freq - kept).abs().max() < 0.03, (freq, kept)  # sd ~0.007
    assert set(sample(logits, 0.5, top_p=0.6, generator=g).tolist()) == {0}
    # with top-k first: temperature 3 leaves (0.398, 0.335, 0.267) over the 3 largest, mass
    # 0.733 < 0.8 before token 2 (at temperature 1: 0.842, and token 2 would go)
    assert set(sample(logits, 3.0, top_k=3, top_p=0.8, generator=g).tolist()) == {0, 1, 2}


def test_banning_processor_is_never_sampled(model):
    prompts = prompts_of([3, 6, 2, 5])
    free = generate(model, prompts, 30, temperature=2.0, seed=0)
    counts = torch.bincount(torch.tensor(sum(free, [])), minlength=VOCAB)
    banned = int(counts.argmax())  # the token sampled most without the ban
    seen_shapes = []

    def ban(logits, ids):
        seen_shapes.append(tuple(ids.shape))
        logits[:, banned] = float("-inf")
        return logits

    out = generate(model, prompts, 30, temperature=2.0, seed=0, logits_processors=[ban])
    assert counts[banned] > 0 and all(banned not in row for row in out)
    assert seen_shapes == [(4, 6 + step) for step in range(30)]  # prompt (left-padded) + so far


def test_seed_reproducible(model):
    prompts = prompts_of([4, 7, 2])
    a = generate(model, prompts, 20, temperature=1.0, seed=123)
    assert generate(model, prompts, 20, temperature=1.0, seed=123) == a
    assert generate(model, prompts, 20, temperature=1.0, seed=124) != a


def test_eos_stops_each_row(model):
    prompts = prompts_of([5, 2, 8])
    full = generate(model, prompts, 12, temperature=0.0)
    eos = full[0][3]
    out = generate(model, prompts, 12, temperature=0.0, eos_id=eos)
    for row, ref in zip(out, full):
        assert row == (ref[:ref.index(eos) + 1] if eos in ref else ref)
    assert out[0][-1] == eos and len(out[0]) <= 4


class _Recipe:
    """Prepends token 9 to every prompt and bans token 5 (duck-typed recipe hooks)."""
    name = "fake"

    def prepare_prompt(self, ids):
        return [9] + ids

    def logits_processors(self):
        def no_five(logits, ids):
            logits[:, 5] = float("-inf")
            return logits
        return [no_five]


class _Tok:
    """The few tokenizer members generate_text uses: ids are characters 'a'+i."""
    eos_id, pad_id = 2, 3

    def encode(self, text):
        return [ord(c) - ord("a") + 10 for c in text]

    def decode(self, ids):
        return "".join(chr(i - 10 + ord("a")) if i >= 10 else f"<{i}>" for i in ids)


def test_generate_text_applies_recipes(model):
    tok, recipes = _Tok(), RecipeSet([_Recipe()])
    texts = generate_text(model, tok, ["abc", ""], 8, temperature=0.0, recipes=recipes)

    def no_five(logits, ids):
        logits[:, 5] = float("-inf")
        return logits
    ref = generate(model, [[9, 10, 11, 12], [9, 2]], 8, temperature=0.0, eos_id=2, pad_id=3,
                   logits_processors=[no_five])
    assert texts == [tok.decode([t for t in row if t != 2]) for row in ref]
    assert all("<5>" not in t for t in texts)


def test_bad_arguments(model):
    with pytest.raises(ConfigError, match="prompt 1 is empty"):
        generate(model, [[4], []], 3)
    with pytest.raises(ConfigError, match="top_p"):
        generate(model, [[4]], 3, top_p=0.0)
    with pytest.raises(ConfigError, match="temperature"):
        generate(model, [[4]], 3, temperature=-1.0)
    assert generate(model, [[4], [5, 6]], 0) == [[], []]
