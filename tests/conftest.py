"""Shared test set-up: thread count, a generated corpus, and a prepared tiny dataset.

The corpus is generated (seeded) English-like text: deterministic, a few hundred KB, with
enough structure that a tiny model's loss falls within a few dozen steps.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
import torch

# Two cores on CI: more threads only adds contention, and a fixed count keeps float
# reductions in the same order run to run (bitwise resume tests rely on it).
torch.set_num_threads(1)
# Triton must see the interpreter flag before its first import, whichever test imports it
# first; auto dispatch never picks Triton for a CPU tensor, so this changes nothing else.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".torch_extensions"))

_SUBJECTS = ["the hacker", "a wizard", "the daemon", "my program", "the kernel", "our compiler", "a user"]
_VERBS = ["reads", "patches", "compiles", "crashes", "frobs", "hacks", "boots", "prints"]
_OBJECTS = ["the file", "a bug", "the tape", "some code", "the terminal", "a list", "the core"]
_TAILS = ["at night.", "with great care.", "for no reason.", "twice.", "in the lab.", "quickly."]


def make_corpus(path: Path, n_docs: int = 600, seed: int = 0) -> Path:
    """Paragraph documents (blank-line separated) of template sentences with counting runs."""
    rng = random.Random(seed)
    docs = []
    for d in range(n_docs):
        sents = []
        for _ in range(rng.randint(2, 6)):
            sents.append(f"{rng.choice(_SUBJECTS).capitalize()} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)} "
                         f"{rng.choice(_TAILS)}")
        start = rng.randint(0, 50)
        sents.append("Count: " + " ".join(str(start + i) for i in range(rng.randint(3, 8))) + ".")
        docs.append(" ".join(sents))
    path.write_text("\n\n".join(docs) + "\n")
    return path


@pytest.fixture(scope="session")
def corpus_maker():
    """`make_corpus` for tests that need a corpus of their own (a test module cannot import
    it from `conftest`: that name is ambiguous between the test folders' conftest files)."""
    return make_corpus


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory) -> Path:
    return make_corpus(tmp_path_factory.mktemp("corpus") / "corpus.txt")


@pytest.fixture(scope="session")
def prepared(tmp_path_factory, corpus_file) -> Path:
    """A tokenizer (vocab 512, every registered recipe's special tokens) and prepared data;
    the tokenizer is also copied to <data>/tokenizer as `llmcore data prepare` does."""
    import shutil

    from llmcore.data.prepare import prepare
    from llmcore.recipe.registry import all_special_tokens
    from llmcore.tokenizer import Tokenizer

    root = tmp_path_factory.mktemp("prepared")
    tok = Tokenizer.train([str(corpus_file)], str(root / "tok"), 512, special_tokens=all_special_tokens(include_testing=True))
    prepare([str(corpus_file)], tok, str(root / "data"), val_fraction=0.05, progress=False)
    shutil.copytree(root / "tok", root / "data" / "tokenizer")
    return root / "data"
