"""The decoding hooks reach recipes: llmcore calls the probe's `beam_selector` every beam step
(its pruning shows in the results) and its `fan_out` once per prompt (its two groups and the
`<probe>` prefix show in what the model is fed); composition rules and bad answers."""

import pytest
import torch

from llmcore.errors import ConfigError
from llmcore.generate.beam import beam_search, beam_search_text
from llmcore.generate.groups import sample_groups
from llmcore.model.args import ModelArgs
from llmcore.model.transformer import Transformer
from llmcore.recipe.recipe_set import RecipeSet
from llmcore.tokenizer import Tokenizer
from recipes.base import Recipe
from recipes.probe import Probe


class Recording(Transformer):
    """Records the ids of every prefill (the prompts as the model saw them)."""

    def __init__(self, args):
        super().__init__(args)
        self.prefills = []

    def forward(self, input_ids, *a, **kw):
        if input_ids.shape[1] > 1:
            self.prefills.append(input_ids.tolist())
        return super().forward(input_ids, *a, **kw)


@pytest.fixture(scope="module")
def tok(prepared):
    return Tokenizer.load(str(prepared / "tokenizer"))


@pytest.fixture(scope="module")
def model(tok):
    torch.manual_seed(0)
    args = ModelArgs(vocab_size=tok.vocab_size, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                     ffn_hidden=64, max_seq_len=64)
    return Recording(args).eval()


def probe_set(tok, *more):
    recipes = RecipeSet([Probe(), *more])
    recipes.bind(tok)
    return recipes, recipes.recipes[0]


def test_beam_search_calls_the_probes_selector_every_step(tok, model):
    recipes, probe = probe_set(tok)
    prompt = tok.encode("Count: 1 2")
    found = beam_search(model, prompt, beam_width=3, max_new_tokens=7, selector=recipes.beam_selector(),
                        logits_processors=recipes.logits_processors())
    assert probe.calls["beam_selector"] == 7 and len(probe.pruned) == 7
    # a pruned sequence is never the prefix of a result: the search kept what the probe returned
    for ids, _ in found:
        full = prompt + ids
        assert not any(full[:len(p)] == p for p in probe.pruned)
        assert tok.token_id("<probe>") not in ids  # its logits processor came along too


def test_beam_search_text_passes_the_recipes_on(tok, model):
    recipes, probe = probe_set(tok)
    texts = beam_search_text(model, tok, "The kernel", beam_width=2, max_new_tokens=5, recipes=recipes,
                             stop_at_eos=False)
    assert len(texts) == 2 and all(isinstance(t, str) and isinstance(s, float) for t, s in texts)
    assert probe.calls["beam_selector"] == 5 and probe.calls["prepare_prompt"] == 1
    assert probe.calls["logits_processor"] >= 5


class KeepTwo(Recipe):
    """A second selector: keeps the first two candidates it is given."""
    name = "keep_two"

    def __init__(self):
        super().__init__()
        self.sizes = []

    def beam_selector(self):
        def keep(cands, lookahead):
            self.sizes.append(len(cands))
            return cands.select(torch.arange(min(2, len(cands))))
        return keep


def test_selectors_chain_in_config_order(tok, model):
    keep_two = KeepTwo()
    recipes, probe = probe_set(tok, keep_two)
    beam_search(model, tok.encode("Count: 3"), beam_width=3, max_new_tokens=4, selector=recipes.beam_selector())
    assert probe.calls["beam_selector"] == 4
    assert keep_two.sizes == [5, 5, 5, 5]  # 2 * 3 proposed, one pruned by the probe before it
    assert RecipeSet([]).beam_selector() is None


def test_sample_groups_calls_the_probes_fan_out(tok, model):
    recipes, probe = probe_set(tok)
    model.prefills.clear()
    groups = sample_groups(model, tok, "Count: 1 2", 5, recipes=recipes, max_new_tokens=4, seed=0)
    assert probe.calls["fan_out"] == 1 and probe.calls["prepare_prompt"] == 2  # once per variant
    assert list(groups) == ["plain", "probe"] and [len(g) for g in groups.values()] == [3, 2]
    assert all("<probe>" not in text for g in groups.values() for text in g)
    ids, pid = tok.encode("Count: 1 2"), tok.token_id("<probe>")
    (rows,) = model.prefills  # one batch: three plain rows, then two behind the <probe> prefix
    assert [r[-len(ids):] for r in rows] == [ids] * 5
    assert [r[-len(ids) - 1] == pid for r in rows] == [False, False, False, True, True]
    # seeded: the same groups again
    assert sample_groups(model, tok, "Count: 1 2", 5, recipes=recipes, max_new_tokens=4, seed=0) == groups


def test_sample_groups_without_recipes_is_one_group_of_k(tok, model):
    groups = sample_groups(model, tok, "Count: 1 2", 4, max_new_tokens=3, seed=1)
    assert list(groups) == ["all"] and len(groups["all"]) == 4


class BadCounts(Probe):
    def fan_out(self, prompt_ids, k):
        return [(prompt_ids, k - 1, "a"), (prompt_ids, 0, "b")]


class Splitter(Recipe):
    name = "splitter"

    def fan_out(self, prompt_ids, k):
        return [(prompt_ids, k, "x")]


def test_fan_out_errors_name_the_recipe(tok, model):
    recipes = RecipeSet([BadCounts()])
    recipes.bind(tok)
    with pytest.raises(ConfigError, match=r"recipe 'probe': fan_out\(k=5\) gave sample counts \[4, 0\]"):
        sample_groups(model, tok, "Count: 1", 5, recipes=recipes)
    with pytest.raises(ConfigError, match=r"\['probe', 'splitter'\] all fan prompts out"):
        RecipeSet([Probe(), Splitter()])
    with pytest.raises(ConfigError, match="k must be >= 1"):
        sample_groups(model, tok, "Count: 1", 0)
