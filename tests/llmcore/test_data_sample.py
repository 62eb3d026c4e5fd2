"""llmcore.data.sample / collate: every per-token field moves with its token through insert,
trim and reverse; fill rules; collation keys, shifts, dtypes, provenance; name collisions;
the trainer's micro-batch split keeps every key aligned."""

import numpy as np
import pytest
import torch

from llmcore.data import FILL_PREVIOUS, Sample, to_batch
from llmcore.data.sample import checked
from llmcore.errors import ConfigError

N = 13


def sample(n=N, seed=0, **kw):
    """Tokens 100.. with a position field (pos[i] = i), a [n, 2] top-k-like field, two docs."""
    rng = np.random.default_rng(seed)
    pos = np.arange(n, dtype=np.int64)
    topk = np.stack([pos * 10, pos * 10 + 1], axis=1).astype(np.uint16)
    return Sample(tokens=100 + pos, doc_ids=(pos >= 5).astype(np.int64), loss_mask=rng.random(n) < 0.7,
                  fields={"pos": pos, "topk": topk, "score": np.where(pos >= 5, 0.5, 0.25).astype(np.float16)},
                  fills={"pos": -1, "score": FILL_PREVIOUS}, values={"w": 3}, source="a", source_index=2,
                  doc_index=7, doc_offset=4, **kw)


def test_insert_moves_every_field_with_its_token_and_fills_the_new_slots():
    s = sample()
    at = [0, 5, 5, N]
    out = s.insert(at, 9, fill={"topk": [7, 8]})
    assert len(out) == N + 4
    new = out.tokens == 9
    assert np.flatnonzero(new).tolist() == [0, 6, 7, N + 3]
    # every old token keeps its own value of every per-token array
    for name, a in s.per_token().items():
        np.testing.assert_array_equal(out.per_token()[name][~new], a, err_msg=name)
    assert out.fields["pos"][new].tolist() == [-1] * 4  # the sample's own fill rule
    assert out.fields["topk"][new].tolist() == [[7, 8]] * 4  # overridden for this call
    # FILL_PREVIOUS and doc ids copy the token before (the first token's at the front)
    assert out.fields["score"][new].tolist() == [0.25, 0.25, 0.25, 0.5]
    assert out.doc_ids[new].tolist() == [0, 0, 0, 1]
    assert not out.loss_mask[new].any() and s.insert(at, 9, loss=True).loss_mask[new].all()
    assert (out.values, out.source_index, out.doc_index, out.doc_offset) == ({"w": 3}, 2, 7, 4)
    assert out.fields["topk"].dtype == np.uint16 and out.fields["score"].dtype == np.float16
    np.testing.assert_array_equal(s.tokens, 100 + np.arange(N))  # the input is untouched
    # a field without any fill rule gets 0
    bare = Sample(s.tokens, s.doc_ids, s.loss_mask, fields={"x": np.ones(N)})
    assert bare.insert([3], 9).fields["x"][3] == 0


def test_insert_per_token_tokens_and_errors():
    s = sample()
    out = s.insert([2, 2], [7, 8])
    assert out.tokens[2:4].tolist() == [7, 8]
    with pytest.raises(IndexError, match=r"\[0, 13\]"):
        s.insert([N + 1], 9)
    with pytest.raises(KeyError, match="nope"):
        s.insert([1], 9, fill={"nope": 0})
    with pytest.raises(ValueError, match="fill for field 'pos'"):
        s.insert([1], 9, fill={"pos": "next"})


def test_trim_and_reverse_move_fields():
    s = sample()
    t = s.trim(8)
    assert all(len(a) == 8 for a in t.per_token().values())
    np.testing.assert_array_equal(t.fields["topk"], s.fields["topk"][:8])
    r = s.reversed()
    for name, a in s.per_token().items():
        np.testing.assert_array_equal(r.per_token()[name], a[::-1], err_msg=name)
    # the field still sits with its token after reversal: pos tells where each token came from
    np.testing.assert_array_equal(r.tokens, 100 + r.fields["pos"])
    assert r.doc_index == s.doc_index  # provenance names the window as read
    with pytest.raises(ValueError, match="trim"):
        s.trim(N + 1)


def test_copy_is_deep_and_lengths_are_checked():
    s = sample()
    c = s.copy()
    c.tokens[0], c.fields["topk"][0, 0], c.values["w"] = 1, 1, 4
    assert s.tokens[0] == 100 and s.fields["topk"][0, 0] == 0 and s.values["w"] == 3
    with pytest.raises(ValueError, match="'topk' has shape"):
        Sample(s.tokens, s.doc_ids, s.loss_mask, fields={"topk": s.fields["topk"][:-1]})
    with pytest.raises(ValueError, match="length 13; got length 12"):
        checked("t", s.trim(12), N, "src")
    with pytest.raises(ValueError, match="got dict"):
        checked("t", {}, N, "src")


def test_collate_keys_shifts_and_dtypes():
    samples = [sample(seed=i) for i in range(3)]
    batch = to_batch(samples)
    assert set(batch) == {"input_ids", "labels", "doc_ids", "pos", "topk", "score", "w",
                          "source_index", "doc_index", "doc_offset"}
    assert all(v.shape[0] == 3 for v in batch.values())
    assert batch["topk"].shape == (3, N - 1, 2) and batch["topk"].dtype == torch.int64  # uint16 -> int64
    assert batch["score"].dtype == torch.float16 and batch["pos"].dtype == torch.int64
    # a field is aligned with the labels: position t holds the field of token t + 1
    assert torch.equal(batch["pos"], torch.arange(1, N).expand(3, -1))
    for b, s in enumerate(samples):
        real = batch["labels"][b] != -100
        assert torch.equal(batch["labels"][b][real], torch.from_numpy(s.tokens[1:])[real])
        assert torch.equal(batch["input_ids"][b], torch.from_numpy(s.tokens[:-1]))
    assert batch["w"].tolist() == [3, 3, 3] and batch["doc_offset"].tolist() == [4, 4, 4]


def test_name_collisions_and_mismatched_samples_are_named():
    s = sample()
    for bad in ("labels", "input_ids", "doc_index", "n_loss_tokens"):
        with pytest.raises(ConfigError, match=f"field name '{bad}' collides"):
            to_batch([Sample(s.tokens, s.doc_ids, s.loss_mask, fields={bad: s.tokens})])
    with pytest.raises(ConfigError, match="collides"):
        to_batch([Sample(s.tokens, s.doc_ids, s.loss_mask, values={"labels": 1})])
    with pytest.raises(ConfigError, match="both per-token fields and per-sample values"):
        to_batch([Sample(s.tokens, s.doc_ids, s.loss_mask, fields={"x": s.tokens}, values={"x": 1})])
    with pytest.raises(ValueError, match="sample 1 of the batch has fields"):
        to_batch([s, Sample(s.tokens, s.doc_ids, s.loss_mask)])


def test_micro_batch_split_keeps_every_key_aligned():
    """The trainer splits a batch with v[i*mb:(i+1)*mb] for every key: each micro-batch must
    hold exactly the rows of its own samples."""
    samples = []
    for i in range(8):
        s = sample(seed=i)
        s.fields["pos"] = s.fields["pos"] + 1000 * i  # which sample a row belongs to
        s.values["w"], s.doc_index = i, 10 * i
        samples.append(s)
    full, mb = to_batch(samples), 2
    for i in range(4):
        micro = {k: v[i * mb:(i + 1) * mb] for k, v in full.items()}
        alone = to_batch(samples[i * mb:(i + 1) * mb])
        assert micro.keys() == alone.keys() and all(torch.equal(micro[k], alone[k]) for k in micro)
        assert (micro["pos"] // 1000).tolist() == [[2 * i] * (N - 1), [2 * i + 1] * (N - 1)]
        assert micro["w"].tolist() == [2 * i, 2 * i + 1] and micro["doc_index"].tolist() == [20 * i, 20 * i + 10]
