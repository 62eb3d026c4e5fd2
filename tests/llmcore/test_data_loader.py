"""llmcore.data.loader: packed windows, mixture weights, determinism, ranks, exact resume,
transforms, document ids, evaluation batches."""

import json

import numpy as np
import pytest
import torch

from llmcore.data import PackedLoader, TokenShards, eval_batches, write_token_folder
from llmcore.errors import ConfigError, DataError

HASH = "c" * 64
VOCAB, EOS, T, B = 300, 2, 16, 8


def make_docs(n, seed):
    """n documents of 1..40 random ids in [4, VOCAB), each ending with eos."""
    rng = np.random.default_rng(seed)
    return [np.append(rng.integers(4, VOCAB, size=rng.integers(1, 40)), EOS) for _ in range(n)]


def shards(root, name, n_docs, seed, tok_hash=HASH):
    write_token_folder(str(root / name), {"train": make_docs(n_docs, seed)},
                       tokenizer={"hash": tok_hash, "vocab_size": VOCAB}, shard_tokens=200)
    return TokenShards(str(root / name))


@pytest.fixture
def big(tmp_path):  # ~2000 tokens: ~125 windows of T
    return shards(tmp_path, "big", 100, seed=1)


@pytest.fixture
def small(tmp_path):  # ~400 tokens: ~25 windows, so it runs through several epochs
    return shards(tmp_path, "small", 20, seed=2)


def windows_of(s):
    """{tokens of window i: i*T} for every window of a source."""
    n = (s.num_tokens - 1) // T
    return {tuple(s.read(i * T, T + 1)): i * T for i in range(n)}


def full_rows(batch):
    """The T+1 tokens of each sample of a batch (input_ids plus the last label)."""
    return [tuple(r) + (int(l[-1]),) for r, l in zip(batch["input_ids"].tolist(),
                                                      batch["labels"].tolist())]


def equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def pause_transform(sample, rng):
    """Mask the loss of a random prefix and replace the first token by a random id."""
    out = sample.copy()
    out.tokens[0] = rng.integers(4, VOCAB)
    mask = np.ones(T + 1, dtype=bool)
    mask[: rng.integers(2, T)] = False
    out.loss_mask = mask
    return out


def test_batch_is_windows_of_the_sources(big, small):
    loader = PackedLoader([("big", big, 1.0), ("small", small, 1.0)], T, B, seed=0)
    index = {**{k: (big, v) for k, v in windows_of(big).items()},
             **{k: (small, v) for k, v in windows_of(small).items()}}
    for _ in range(3):
        batch = next(loader)
        assert set(batch) == {"input_ids", "labels", "doc_ids", "source_index", "doc_index", "doc_offset"}
        assert all(batch[k].shape == (B, T) and batch[k].dtype == torch.long
                   for k in ("input_ids", "labels", "doc_ids"))
        assert all(batch[k].shape == (B,) and batch[k].dtype == torch.long
                   for k in ("source_index", "doc_index", "doc_offset"))
        for b, (row, doc) in enumerate(zip(full_rows(batch), batch["doc_ids"])):
            src, start = index[row]  # every sample is one aligned window of one source
            assert torch.equal(doc, torch.from_numpy(src.doc_ids(start, T + 1)[:-1]))
            assert loader.source_names[int(batch["source_index"][b])] == ("big" if src is big else "small")
            assert (int(batch["doc_index"][b]), int(batch["doc_offset"][b])) == src.locate(start)


def test_doc_ids_follow_eos(big):
    batch = PackedLoader([("big", big, 1.0)], T, 32, seed=3).next_batch()
    ids, doc = batch["input_ids"], batch["doc_ids"]
    assert (doc[:, 0] == 0).all()
    # a new document starts right after each eos, and nowhere else
    assert torch.equal(doc[:, 1:] - doc[:, :-1], (ids[:, :-1] == EOS).long())


def test_deterministic_for_seed(big, small):
    def run(seed):
        loader = PackedLoader([("big", big, 2.0), ("small", small, 1.0)], T, B, seed=seed)
        return [loader.next_batch() for _ in range(5)]

    a, b, c = run(7), run(7), run(8)
    assert all(equal(x, y) for x, y in zip(a, b))
    assert not all(equal(x, y) for x, y in zip(a, c))


def test_each_epoch_visits_every_window_once(small):
    n = (small.num_tokens - 1) // T
    loader = PackedLoader([("small", small, 1.0)], T, 1, seed=0)
    epochs = [[full_rows(loader.next_batch())[0] for _ in range(n)] for _ in range(2)]
    assert sorted(epochs[0]) == sorted(epochs[1]) == sorted(windows_of(small))
    assert epochs[0] != epochs[1]  # reshuffled
    assert loader.stats()["sources"]["small"]["epoch"] == 2


@pytest.mark.parametrize("world", [2, 4])
def test_ranks_split_the_global_batch(big, small, world):
    sources = [("big", big, 1.0), ("small", small, 3.0)]
    whole = PackedLoader(sources, T, B, seed=4, transform=pause_transform)
    ranks = [PackedLoader(sources, T, B, seed=4, rank=r, world_size=world,
                          transform=pause_transform) for r in range(world)]
    for _ in range(4):
        full = whole.next_batch()
        parts = [r.next_batch() for r in ranks]
        for r, part in enumerate(parts):  # rank r holds samples r, r + world, ...
            assert equal(part, {k: v[r::world] for k, v in full.items()})
    assert ranks[1].stats() == whole.stats()


def test_resume_is_exact(big, small):
    def make(**kw):
        return PackedLoader([("big", big, 1.0), ("small", small, 1.0)], T, B, seed=11,
                            transform=pause_transform, **kw)

    straight = make()
    want = [straight.next_batch() for _ in range(15)]
    first = make()
    for _ in range(6):
        first.next_batch()
    state = json.loads(json.dumps(first.state_dict()))  # survives a JSON checkpoint
    resumed = make()
    resumed.load_state_dict(state)
    assert all(equal(resumed.next_batch(), w) for w in want[6:])
    assert resumed.stats() == straight.stats()
    for _ in range(8):  # past the next epoch end of "small": a used loader rewinds too
        first.next_batch()
    first.load_state_dict(state)
    assert equal(first.next_batch(), want[6])
    assert straight.stats()["sources"]["small"]["epoch"] >= 1  # resume crossed an epoch end
    # a resumed run may use another world size: rank 1 of 2 continues the same global stream
    half = make(rank=1, world_size=2)
    half.load_state_dict(state)
    assert equal(half.next_batch(), {k: v[1::2] for k, v in want[6].items()})


def test_mixture_weights_and_token_accounting(big, small, tmp_path):
    idle = shards(tmp_path, "idle", 30, seed=5)
    loader = PackedLoader([("big", big, 3.0), ("small", small, 1.0), ("idle", idle, 0.0)],
                          T, B, seed=0)
    for _ in range(100):
        loader.next_batch()
    st = loader.stats()
    assert st["samples"] == 800 and st["tokens"] == 800 * T
    src = st["sources"]
    assert abs(src["big"]["share"] - 0.75) < 0.05  # 3 sigma is 0.046
    assert src["idle"]["samples"] == 0
    assert sum(s["tokens"] for s in src.values()) == st["tokens"]
    assert all(s["tokens"] == s["samples"] * T for s in src.values())
    saved = {s["name"]: s["tokens"] for s in loader.state_dict()["sources"]}
    assert saved == {k: v["tokens"] for k, v in src.items()}


def test_transform_is_reproducible_and_masks_labels(big):
    a = PackedLoader([("big", big, 1.0)], T, B, seed=2, transform=pause_transform).next_batch()
    b = PackedLoader([("big", big, 1.0)], T, B, seed=2, transform=pause_transform).next_batch()
    plain = PackedLoader([("big", big, 1.0)], T, B, seed=2).next_batch()
    assert equal(a, b)
    masked = a["labels"] == -100
    assert masked[:, 0].all() and not masked[:, -1].any() and masked.sum(1).unique().numel() > 1
    # unmasked labels are the window's real next tokens
    assert torch.equal(a["labels"][~masked], plain["labels"][~masked])

    def bad(sample, rng):
        return sample.trim(T)

    # sample g of the global stream gets rng = default_rng([seed, g, 7]), nothing else
    draws = []
    loader = PackedLoader([("big", big, 1.0)], T, 4, seed=2,
                          transform=lambda s, rng: draws.append(rng.random()) or s)
    for _ in range(3):
        loader.next_batch()
    assert draws == [np.random.default_rng([2, g, 7]).random() for g in range(12)]

    with pytest.raises(ValueError, match="length 17"):
        PackedLoader([("big", big, 1.0)], T, B, seed=2, transform=bad).next_batch()


def test_config_and_data_errors(big, small, tmp_path):
    with pytest.raises(ConfigError, match="multiple of world_size=2"):
        PackedLoader([("big", big, 1.0)], T, 7, seed=0, world_size=2)
    with pytest.raises(ConfigError, match="weights"):
        PackedLoader([("big", big, -1.0)], T, B, seed=0)
    with pytest.raises(DataError, match="fewer than one window"):
        PackedLoader([("small", small, 1.0)], small.num_tokens, B, seed=0)
    other = shards(tmp_path, "other", 10, seed=3, tok_hash="d" * 64)
    with pytest.raises(DataError, match="different tokenizers"):
        PackedLoader([("big", big, 1.0), ("other", other, 1.0)], T, B, seed=0)
    state = PackedLoader([("big", big, 1.0)], T, B, seed=0).state_dict()
    with pytest.raises(ConfigError, match="seq_len"):
        PackedLoader([("big", big, 1.0)], T * 2, B, seed=0).load_state_dict(state)
    with pytest.raises(DataError, match="sources"):
        PackedLoader([("small", small, 1.0)], T, B, seed=0).load_state_dict(state)


def test_eval_batches_are_sequential(big):
    n = (big.num_tokens - 1) // T
    batches = list(eval_batches(big, T, 5))
    sizes = [b["input_ids"].shape[0] for b in batches]
    assert sum(sizes) == n and set(sizes[:-1]) == {5} and 1 <= sizes[-1] <= 5
    ids = torch.cat([b["input_ids"] for b in batches])
    labels = torch.cat([b["labels"] for b in batches])
    flat = torch.from_numpy(big.read(0, n * T + 1))
    assert torch.equal(ids.reshape(-1), flat[:-1]) and torch.equal(labels.reshape(-1), flat[1:])
    assert len(list(eval_batches(big, T, 5, max_batches=2))) == 2
    assert equal(next(eval_batches(big, T, 5)), batches[0])
