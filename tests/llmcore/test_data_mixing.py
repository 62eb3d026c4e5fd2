"""Exact mixing and per-source token budgets of the packed loader: shares by tokens at every
prefix, the order of one source unchanged by another's weight (a stage-1 stream across mixing
fractions), budgets as the same first windows, held-out documents never served, resume, and
identical streams for any world size."""

import numpy as np
import pytest

from llmcore.config.load import load_config
from llmcore.data import PackedLoader, TokenShards, write_token_folder
from llmcore.errors import ConfigError, DataError

HASH = "d" * 64
VOCAB, EOS, T, B = 300, 2, 16, 8
HELD_OUT = VOCAB - 1  # only the val documents hold this id


def folder(root, name, n_docs, seed, val_docs=0):
    """A prepared folder of random documents (ids in [4, VOCAB - 1)); val documents, if any,
    each contain HELD_OUT."""
    rng = np.random.default_rng(seed)
    docs = [np.append(rng.integers(4, HELD_OUT, size=rng.integers(5, 40)), EOS) for _ in range(n_docs)]
    splits = {"train": docs}
    if val_docs:
        splits["val"] = [np.array([5, HELD_OUT, 7, EOS]) for _ in range(val_docs)]
    write_token_folder(str(root / name), splits, tokenizer={"hash": HASH, "vocab_size": VOCAB}, shard_tokens=500)
    return TokenShards(str(root / name))


def rows(loader, n_batches):
    """(source index, the T + 1 tokens) of every sample of n_batches batches."""
    out = []
    for _ in range(n_batches):
        b = loader.next_batch()
        for s, ids, lab in zip(b["source_index"].tolist(), b["input_ids"].tolist(), b["labels"].tolist()):
            out.append((s, tuple(ids) + (lab[-1],)))
    return out


@pytest.fixture
def pre(tmp_path):  # ~4600 tokens: ~290 windows
    return folder(tmp_path, "pre", 200, seed=1)


@pytest.fixture
def post(tmp_path):  # ~2300 tokens, 20 held-out val documents
    return folder(tmp_path, "post", 100, seed=2, val_docs=20)


def test_exact_shares_hold_at_every_prefix_and_for_any_world_size(pre, post, tmp_path):
    third = folder(tmp_path, "third", 100, seed=3)
    weights = {"pre": 0.62, "post": 0.3, "third": 0.08}
    sources = [("pre", pre, 0.62), ("post", post, 0.3), ("third", third, 0.08)]
    loader = PackedLoader(sources, T, B, seed=0, mixing="exact")
    picks = [s for s, _ in rows(loader, 60)]
    served = np.zeros(3)
    for n, s in enumerate(picks, 1):
        served[s] += 1
        # every prefix: each source within one window of its share (tokens: seq_len per window)
        assert np.abs(served - np.array(list(weights.values())) * n).max() < 1.0, n
    st = loader.stats()["sources"]
    for name, w in weights.items():
        assert abs(st[name]["tokens"] / (60 * B * T) - w) < 0.02 * w
    # two ranks serve the same global stream, split sample by sample
    whole = rows(PackedLoader(sources, T, B, seed=0, mixing="exact"), 5)
    halves = [rows(PackedLoader(sources, T, B, seed=0, mixing="exact", rank=r, world_size=2), 5) for r in (0, 1)]
    merged = [halves[i % 2][(i // 8) * 4 + (i % 8) // 2] for i in range(40)]
    assert merged == whole


def stage_one(pre, post, lam, seed=0):
    """A stage-1 stream of the added mode: all of pre's windows plus lam of post's first 64 windows."""
    pre_windows, post_windows = (pre.num_tokens - 1) // T, 64
    extra = int(lam * post_windows)
    sources = [("pre", pre, pre_windows * T), ("post", post, extra * T, extra * T)]
    loader = PackedLoader(sources, T, 1, seed=seed, mixing="exact")
    return rows(loader, pre_windows + extra), pre_windows, extra


def test_stage_one_order_is_the_same_for_every_lambda_but_the_mixed_in_windows(pre, post):
    streams = {lam: stage_one(pre, post, lam) for lam in (0.0, 0.25, 0.5, 1.0)}
    pre_only = [w for s, w in streams[0.0][0]]
    post_windows = {tuple(post.read(i * T, T + 1)) for i in range(64)}
    seen_before: set = set()
    for stream, pre_windows, extra in streams.values():
        assert [w for s, w in stream if s == 0] == pre_only  # D_pre: same windows, same order
        mixed = [w for s, w in stream if s == 1]
        assert len(mixed) == extra and len(set(mixed)) == extra  # each budgeted window once
        # the budget is post's first windows in stream order, whatever the seed: nested across lam
        first = {tuple(post.read(i * T, T + 1)) for i in range(extra)}
        assert set(mixed) == first and seen_before <= first <= post_windows
        seen_before = first
        # proportions by tokens over the stage, within 2% of the target share
        share = extra / (pre_windows + extra)
        assert abs(len(mixed) / len(stream) - share) <= 0.02 * max(share, 1e-9)
        # spread evenly: every quarter of the stage holds a quarter of the mixed-in windows (+-1)
        quarter = len(stream) // 4
        for q in range(4):
            part = stream[q * quarter:(q + 1) * quarter]
            assert abs(sum(s == 1 for s, _ in part) - share * len(part)) <= 1.0
    assert [w for s, w in stage_one(pre, post, 0.5, seed=7)[0] if s == 1] != [
        w for s, w in streams[0.5][0] if s == 1]  # a seed reorders the budget, never changes it


def test_skip_tokens_serves_exactly_what_a_budget_left_out(post):
    """A D_post budget divided between two stages: the first N tokens, then the rest."""
    total = (post.num_tokens - 1) // T
    first = rows(PackedLoader([("post", post, 1.0, 40 * T)], T, 8, seed=0), 5)
    rest = rows(PackedLoader([("post", post, 1.0, None, 40 * T)], T, 8, seed=0), (total - 40) // 8)
    every = {tuple(post.read(i * T, T + 1)) for i in range(total)}
    assert len({w for _, w in first}) == 40 and len({w for _, w in rest}) == (total - 40) // 8 * 8
    assert not {w for _, w in first} & {w for _, w in rest}
    assert {w for _, w in first} | {w for _, w in rest} <= every
    assert {w for _, w in first} == {tuple(post.read(i * T, T + 1)) for i in range(40)}
    with pytest.raises(DataError, match=rf"source 'post': max_tokens={total * T} asks for {total} windows of "
                                        rf"seq_len={T}, but .* has {total - 40} after skip_tokens={40 * T}"):
        PackedLoader([("post", post, 1.0, total * T, 40 * T)], T, 8, seed=0)
    with pytest.raises(DataError, match=rf"skip_tokens={(total + 1) * T} skips {total + 1} windows"):
        PackedLoader([("post", post, 1.0, None, (total + 1) * T)], T, 8, seed=0)


def test_held_out_documents_are_never_served(pre, post):
    sources = [("pre", pre, 0.5), ("post", post, 0.5)]
    loader = PackedLoader(sources, T, B, seed=0, mixing="exact")
    for _ in range(2 * ((post.num_tokens - 1) // T) // (B // 2) + 2):  # past two epochs of post
        batch = loader.next_batch()
        assert not (batch["input_ids"] == HELD_OUT).any() and not (batch["labels"] == HELD_OUT).any()
    assert loader.stats()["sources"]["post"]["epoch"] >= 2
    assert (TokenShards(post.path, "val").read(0, 4) == np.array([5, HELD_OUT, 7, EOS])).all()


def test_exact_resume_budget_errors_and_mixing_mismatch(pre, post):
    sources = [("pre", pre, 0.75), ("post", post, 0.25, 40 * T)]
    a = PackedLoader(sources, T, B, seed=3, mixing="exact")
    rows(a, 7)
    state = a.state_dict()
    b = PackedLoader(sources, T, B, seed=3, mixing="exact")
    b.load_state_dict(state)
    assert rows(a, 6) == rows(b, 6)
    with pytest.raises(ConfigError, match="saved mixing=exact, this run has mixing=random"):
        PackedLoader(sources, T, B, seed=3).load_state_dict(state)
    windows = (post.num_tokens - 1) // T
    with pytest.raises(DataError, match=rf"source 'post': max_tokens={(windows + 1) * T} asks for {windows + 1} "
                                        rf"windows of seq_len={T}, but .* has {windows}"):
        PackedLoader([("pre", pre, 1.0), ("post", post, 1.0, (windows + 1) * T)], T, B, seed=0)
    with pytest.raises(ConfigError, match="mixing='even' is not one of random, exact"):
        PackedLoader(sources, T, B, seed=0, mixing="even")
    idle = PackedLoader([("pre", pre, 1.0), ("post", post, 0.0, 0)], T, B, seed=0, mixing="exact")
    assert {s for s, _ in rows(idle, 3)} == {0}  # a zero budget of weight 0 is allowed and never drawn
    with pytest.raises(ConfigError, match=r"data.sources\[1\].max_tokens=0 must be > 0 \(0 only for a source "
                                          r"of weight 0\)"):
        load_config(None, ["data.sources=[{path: a}, {path: b, weight: 1, max_tokens: 0}]"])
    with pytest.raises(ConfigError, match="data.mixing='even' is not one of random, exact"):
        load_config(None, ["data.path=d", "data.mixing=even"])


def test_a_replay_fraction_is_served_exactly_in_a_training_run(prepared, tmp_path):
    """Stage 2 with replay: 10% of the windows from a second (pre-training) source, by tokens,
    read back from the checkpoint's loader state."""
    import shutil

    from llmcore.train import checkpoint
    from llmcore.train.loop import Trainer
    from tests.run_configs import RECIPE_RUN, tiny_config

    replay = tmp_path / "replay"
    shutil.copytree(prepared, replay)
    cfg = tiny_config(prepared, tmp_path / "run", *RECIPE_RUN, "train.max_steps=5", "data.mixing=exact",
                      (f"data.sources=[{{name: post, path: '{prepared}', weight: 0.9}}, "
                       f"{{name: replay, path: '{replay}', weight: 0.1}}]"))
    Trainer(cfg).fit()
    sources = checkpoint.read_state(checkpoint.resolve(tmp_path / "run"))["loader"]["sources"]
    assert [(s["name"], s["samples"]) for s in sources] == [("post", 18), ("replay", 2)]  # 20 windows
