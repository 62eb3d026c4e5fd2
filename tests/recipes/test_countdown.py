"""The Countdown task: both search traces reach a verified solution, the traces follow their
search order, the verifier parses with `ast` and refuses what is not a solution, the style
of a generation is recognised, and generation is deterministic for a seed."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from llmcore.errors import ConfigError
from recipes.tasks import countdown as cd


def test_example_traces():
    assert cd.trace([5, 3, 2], 17, "dfs") == "3*2=6:11,1;3+2=5:10,0;5*2=10:13,7;5+2=7:10,4;5*3=15:17;#(5*3)+2"
    assert cd.trace([5, 3, 2], 17, "bfs") == "[8,15,7,10,5,6]5+3=8:10,6;5*3=15:17;#(5*3)+2"
    assert cd.trace([1, 1, 9], 7, "bfs").endswith("#9-(1+1)")  # minus: larger minus smaller
    with pytest.raises(ConfigError, match="not reachable"):
        cd.trace([5, 3, 2], 16, "dfs")


def test_every_trace_of_every_small_problem_solves_it_in_its_search_order():
    for numbers in itertools.product(range(1, 5), repeat=3):
        numbers = list(numbers)
        nodes = [f"{t}={v}" for t, v, _ in cd.first_level(numbers)]
        for target in sorted(cd.reachable(numbers)):
            p = cd.prompt_of(numbers, target)
            for style in cd.STYLES:
                t = cd.trace(numbers, target, style)
                assert cd.verify(p, "", t) and cd.style_of(t) == cd.STYLES.index(style)
                visited = [line.split(":")[0] for line in t.split("#")[0].split("]")[-1].split(";") if line]
                order = nodes[::-1] if style == "dfs" else nodes
                assert visited == order[:len(visited)]  # a prefix of its order, stopping at the first solution
                last = t.split("#")[0].rstrip(";").split(";")[-1]
                assert last.split(":")[1].split(",")[-1] == str(target)


def test_verifier_accepts_any_solution_and_refuses_the_rest():
    p = cd.prompt_of([5, 3, 2], 17)
    assert cd.verify(p, "", "anything;#5*3+2") and cd.verify(p, "", "#2+(3*5)")
    for bad in ["#5*3+1", "#5*3*2", "#(5+3)*2+1", "#5*3+2+0", "#17", "no answer", "#5*3+", "#__import__('os')",
                "#5*3+2.0", "#5**3", "#5/3+2", "#(5*3)+2)", "#" + "(" * 30 + "5" + ")" * 30]:
        assert not cd.verify(p, "", bad), bad
    assert cd.style_of("[1,2]") == 1 and cd.style_of("3*2=6") == 0 and cd.style_of("") == -1 and cd.style_of(";x") == -1


def test_problems_are_distinct_deterministic_and_mixed_in_style():
    a, b = cd.problems(400, 3), cd.problems(400, 3)
    assert a == b and len({r["prompt"] for r in a}) == 400
    assert 0.4 < np.mean([r["style"] for r in a]) < 0.6
    other = cd.problems(50, 4, exclude={r["prompt"] for r in a})
    assert not {r["prompt"] for r in other} & {r["prompt"] for r in a}
    parts = cd.split_by(a, [r["style"] for r in a])
    assert [len(x) for x in parts] == [sum(r["style"] == s for r in a) for s in (0, 1)]


def test_tokenizer_is_one_piece_per_character(tmp_path):
    tok = cd.train_tokenizer(str(tmp_path / "tok"))
    row = cd.problems(1, 0)[0]
    text = row["prompt"] + row["answer"]
    assert len(tok.encode(text)) == len(text) and tok.decode(tok.encode(text)) == text
