import itertools

import numpy as np
import pytest

from llmcore.errors import ConfigError
from recipes.tasks import three_sum


def _brute(prompt: str, dims: int) -> bool:
    digits = prompt.rstrip("=")
    items = [tuple(int(c) for c in digits[i:i + dims]) for i in range(0, len(digits), dims)]
    return any(all((a + b + c) % 10 == 0 for a, b, c in zip(*t)) for t in itertools.combinations(items, 3))


def test_labels_are_right_balanced_and_deterministic():
    rows = three_sum.problems(200, 7, 8, 2)
    assert rows == three_sum.problems(200, 7, 8, 2)
    assert len({r["prompt"] for r in rows}) == 200
    assert sum(r["answer"] == "T" for r in rows) == 100
    for r in rows:
        assert len(r["prompt"]) == 8 * 2 + 1 and r["prompt"].endswith("=")
        assert (r["answer"] == "T") == _brute(r["prompt"], 2)


def test_mixed_lengths_and_exclusion():
    held = {r["prompt"] for r in three_sum.problems(50, 1, 6, 2)}
    rows = three_sum.problems(300, 2, (4, 6), 2, exclude=held)
    assert {(len(r["prompt"]) - 1) // 2 for r in rows} == {4, 5, 6}
    assert not held & {r["prompt"] for r in rows}


def test_has_zero_triple_by_hand():
    assert three_sum.has_zero_triple(np.array([[3, 7], [1, 8], [6, 5], [0, 0]]))  # 37 + 18 + 65 = 110 -> (10, 20)
    assert not three_sum.has_zero_triple(np.array([[1, 1], [1, 1], [1, 1]]))


def test_bad_sizes_are_named():
    with pytest.raises(ConfigError, match="n >= 3"):
        three_sum.problems(4, 0, 2, 2)
    with pytest.raises(ConfigError, match="no positive problem"):
        three_sum.problem(np.random.default_rng(0), 3, 6, label=True)  # 1e-6 per draw


def test_tokenizer_is_one_piece_per_character(tmp_path):
    tok = three_sum.train_tokenizer(str(tmp_path / "tok"))
    row = three_sum.problems(4, 0, 8, 2)[0]
    ids = tok.encode(row["prompt"])
    assert len(ids) == len(row["prompt"])
    assert tok.encode(row["prompt"] + row["answer"]) == ids + tok.encode(row["answer"])
    assert tok.decode(ids) == row["prompt"]
