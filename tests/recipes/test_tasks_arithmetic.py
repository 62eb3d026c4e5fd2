"""recipes.tasks.arithmetic: correct zero-padded sums, carry-chain control, distinct and
deterministic draws, a tokenizer with one piece per character, the pretraining folder, and
exact-match scoring (with per-digit accuracy) through llmcore's evaluation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llmcore.data import TokenShards
from llmcore.errors import ConfigError
from llmcore.model.args import ModelArgs
from llmcore.model.transformer import Transformer
from llmcore.recipe.recipe_set import RecipeSet
from llmcore.recipe.registry import all_special_tokens
from llmcore.tokenizer import Tokenizer
from recipes.tasks import arithmetic as task
from recipes.tasks import files


def operands(row):
    a, b = row["prompt"].rstrip("=").split("+")
    return a, b


def test_answers_are_zero_padded_sums_of_fixed_width_operands():
    for row in task.problems(300, 0, 5, chain=0.3):
        a, b = operands(row)
        assert len(a) == len(b) == 5 and row["prompt"].endswith("=")
        assert len(row["answer"]) == 6 and int(row["answer"]) == int(a) + int(b)


def test_chain_sets_how_often_a_digit_pair_sums_to_nine():
    rng = np.random.default_rng(0)
    assert all(task.problem(rng, 6, chain=1.0)["answer"] == "0999999" for _ in range(20))
    pairs = [(int(x), int(y)) for row in task.problems(2000, 1, 6, chain=0.5) for x, y in zip(*operands(row))]
    nine = np.mean([x + y == 9 for x, y in pairs])
    assert abs(nine - (0.5 + 0.5 * 0.1)) < 0.02  # chain, plus the uniform draw's 1 in 10
    with pytest.raises(ConfigError, match="chain"):
        task.problem(rng, 3, chain=1.5)


def test_problems_are_distinct_deterministic_and_respect_exclude_and_widths():
    a = task.problems(500, 7, (1, 4))
    assert a == task.problems(500, 7, (1, 4)) and a != task.problems(500, 8, (1, 4))
    assert len({r["prompt"] for r in a}) == 500
    assert {len(operands(r)[0]) for r in a} == {1, 2, 3, 4}
    held = {r["prompt"] for r in a[:100]}
    assert not held & {r["prompt"] for r in task.problems(500, 9, (1, 4), exclude=held)}
    with pytest.raises(ConfigError, match="distinct"):
        task.problems(200, 0, 1)  # only 100 one-digit problems exist


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return task.train_tokenizer(str(tmp_path_factory.mktemp("arith") / "tok"), all_special_tokens())


def test_tokenizer_has_one_piece_per_character_and_the_recipe_tokens(tok):
    for row in task.problems(50, 2, 6, chain=0.5):
        ids = tok.encode(row["prompt"] + row["answer"])
        assert len(ids) == len(row["prompt"]) + len(row["answer"])
        assert tok.encode(row["prompt"]) + tok.encode(row["answer"]) == ids
    assert tok.token_id("<pause>") >= 0


def test_pretraining_folder_holds_prompt_answer_eos_documents(tok, tmp_path):
    rows = task.problems(40, 3, (1, 3))
    files.write_pretraining_data(str(tmp_path / "pt"), tok, rows[:30], rows[30:])
    train = TokenShards(str(tmp_path / "pt"), "train", expected_tokenizer_hash=tok.hash)
    want = [tok.encode(r["prompt"] + r["answer"]) + [tok.eos_id] for r in rows[:30]]
    assert train.read(0, train.num_tokens).tolist() == sum(want, [])
    assert TokenShards(str(tmp_path / "pt"), "val").num_tokens == sum(len(r["prompt"] + r["answer"]) + 1
                                                                       for r in rows[30:])
    assert Tokenizer.load(str(tmp_path / "pt" / "tokenizer")).hash == tok.hash


class Oracle:
    """A decoding hook that forces the correct answer (its first digit off by one when
    `wrong_first`), whatever the model: the scorer must then report exactly that."""

    name = "oracle"

    def __init__(self, tok, wrong_first=False):
        self.tok, self.wrong_first = tok, wrong_first

    def logits_processors(self):
        def force(logits, ids):
            out = torch.full_like(logits, float("-inf"))
            for b, row in enumerate(ids.tolist()):
                text = self.tok.decode([t for t in row if t != self.tok.pad_id])
                prompt, _, done = text.partition("=")
                a, c = prompt.split("+")
                ans = str(int(a) + int(c)).zfill(len(a) + 1)
                if self.wrong_first:
                    ans = str((int(ans[0]) + 1) % 10) + ans[1:]
                out[b, self.tok.encode(ans[len(done)])[0] if len(done) < len(ans) else self.tok.eos_id] = 0.0
            return out
        return [force]


def test_score_is_exact_match_with_per_digit_accuracy(tok, tmp_path):
    path = task.write_jsonl(tmp_path / "test.jsonl", task.problems(20, 4, 3, chain=0.5))
    model = Transformer(ModelArgs(vocab_size=tok.vocab_size, d_model=16, n_layers=1, n_heads=2, n_kv_heads=2,
                                  ffn_hidden=32, max_seq_len=32)).eval()
    right = task.score(model, tok, path, recipes=RecipeSet([Oracle(tok)]), batch_size=7)
    assert right == {"accuracy": 1.0, "n": 20, "digit_accuracy": [1.0] * 4}
    wrong = task.score(model, tok, path, recipes=RecipeSet([Oracle(tok, wrong_first=True)]))
    assert wrong == {"accuracy": 0.0, "n": 20, "digit_accuracy": [0.0, 1.0, 1.0, 1.0]}
