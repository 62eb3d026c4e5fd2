"""Beam search: width 1 is greedy, a wide enough beam is exhaustive search (with and without
eos, under length penalties), reordered cache rows equal recomputing each beam, scores are
the recomputed log-probs, and the selector sees real proposals, a true lookahead, and rules."""

import itertools
import math

import pytest
import torch
import torch.nn as nn

from llmcore.errors import ConfigError
from llmcore.generate.beam import Candidates, beam_search
from llmcore.generate.sampling import generate, prefill
from llmcore.model.args import ModelArgs
from llmcore.model.transformer import Transformer


def peaked(args, seed=0, std=0.15):
    torch.manual_seed(seed)
    m = Transformer(args).eval()
    with torch.no_grad():  # larger weights than the init: peaked, model-like distributions
        for p in m.parameters():
            if p.dim() == 2:
                p.normal_(0.0, std)
    return m


@pytest.fixture(scope="module")
def model():
    return peaked(ModelArgs(vocab_size=61, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                            ffn_hidden=64, max_seq_len=64, rope_theta=500.0))


@pytest.fixture(scope="module")
def tiny():
    """Vocabulary 5: every continuation of 3 tokens (125) can be enumerated."""
    return peaked(ModelArgs(vocab_size=5, d_model=16, n_layers=2, n_heads=2, n_kv_heads=1,
                            ffn_hidden=24, max_seq_len=16), seed=2, std=0.6)


class Bigram(nn.Module):
    """A model whose next-token log-probs depend on the last token only (a fixed table), for
    hand-checkable eos and length-penalty cases. It needs no cache."""

    def __init__(self, table):
        super().__init__()
        self.table = nn.Parameter(torch.log(torch.tensor(table, dtype=torch.float32)))

    def forward(self, input_ids, *args, **kw):
        return self.table[input_ids]  # (B, T, V): the "hidden state" is the log-prob row

    def logits(self, h):
        return h.float()

    def new_caches(self, batch, max_len):
        return []


@torch.no_grad()
def log_probs(model, prompt, new):
    """Sum of log p(new | prompt) from one full forward, no cache."""
    ids = torch.tensor([list(prompt) + list(new)])
    logp = model.logits(model(ids)[0]).log_softmax(-1)  # (T, V)
    return sum(float(logp[len(prompt) + i - 1, t]) for i, t in enumerate(new))


def exhaustive(model, prompt, vocab, max_new, eos=None, length_penalty=1.0):
    """Every complete hypothesis (ends in eos, or reaches max_new without one), best first."""
    out = []
    for n in range(1, max_new + 1):
        for new in itertools.product(range(vocab), repeat=n):
            if eos is not None and eos in new[:-1]:
                continue
            if n < max_new and (eos is None or new[-1] != eos):
                continue
            out.append((log_probs(model, prompt, new) / n ** length_penalty, list(new)))
    return sorted(out, key=lambda f: -f[0])


def prompts_of(lengths, vocab=61, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(4, vocab, (n,), generator=g).tolist() for n in lengths]


def test_width_1_equals_greedy(model):
    for prompt in prompts_of([1, 7, 13]):
        (ids, _), = beam_search(model, prompt, beam_width=1, max_new_tokens=15)
        assert ids == generate(model, [prompt], 15, temperature=0.0)[0]


@pytest.mark.parametrize("eos,length_penalty", [(None, 1.0), (2, 0.7), (2, 0.0), (0, 2.0)],
                         ids=["no-eos", "eos2-lp0.7", "eos2-lp0", "eos0-lp2"])
def test_wide_beam_equals_exhaustive_search_V5_L3(tiny, eos, length_penalty):
    prompt, W = [1, 3], 25  # 25 = 5^2 beams keep every prefix, so nothing is pruned early
    want = exhaustive(tiny, prompt, 5, 3, eos, length_penalty)[:W]
    got = beam_search(tiny, prompt, beam_width=W, max_new_tokens=3, eos_id=eos, length_penalty=length_penalty)
    assert [ids for ids, _ in got] == [ids for _, ids in want]
    for (_, s), (ref, _) in zip(got, want):
        assert s == pytest.approx(ref, abs=1e-5)
    if eos is not None:
        assert any(len(ids) < 3 for ids, _ in got)  # finished hypotheses stay in the results


def test_narrow_beam_scores_are_the_recomputed_log_probs(model):
    for lp in (1.0, 0.5):
        for prompt in prompts_of([5, 12], seed=3):
            got = beam_search(model, prompt, beam_width=4, max_new_tokens=9, eos_id=7, length_penalty=lp)
            assert len(got) == 4 and [s for _, s in got] == sorted((s for _, s in got), reverse=True)
            for ids, s in got:
                assert 7 not in ids[:-1] and (ids[-1] == 7 or len(ids) == 9)
                assert s * len(ids) ** lp == pytest.approx(log_probs(model, prompt, ids), abs=1e-4)


@torch.no_grad()
def test_reordered_cache_rows_equal_recomputing_each_row(model):
    rows = prompts_of([6, 6, 6], seed=4)  # three sequences of one length (no padding)
    ids = torch.tensor(rows)
    caches = model.new_caches(3, 8)
    visible = torch.ones(5, 8, dtype=torch.bool)
    prefill(model, ids, torch.arange(6).expand(3, 6), visible[:3], caches)
    before = [c.k.clone() for c in caches]
    picked = [c.select(torch.tensor([1])) for c in caches]  # a copy: the source is untouched
    assert all(torch.equal(c.k, b) for c, b in zip(caches, before)) and picked[0].k.shape[0] == 1
    seqs = [list(r) for r in rows]
    for parents, tokens in (([2, 0, 0, 1, 2], [9, 10, 11, 12, 13]), ([4, 1, 1], [20, 21, 22])):
        for c in caches:
            c.reorder(torch.tensor(parents))  # rows follow their parents, also changing the batch
        seqs = [seqs[p] + [t] for p, t in zip(parents, tokens)]
        pos = torch.full((len(tokens), 1), len(seqs[0]) - 1)
        h = model(torch.tensor(tokens)[:, None], positions=pos, caches=caches, key_mask=visible[:len(tokens)])
        for i, s in enumerate(seqs):
            ref = model.logits(model(torch.tensor([s]))[0, -1])
            torch.testing.assert_close(model.logits(h[i, -1]), ref, atol=1e-5, rtol=1e-5, msg=f"row {i}")


def test_length_penalty_and_eos_on_a_bigram():
    # after token 1: eos(0) .5, token 2 .4, token 3 .1; token 2 continues with itself (.9)
    table = [[.25] * 4, [.5, .01, .4, .09], [.05, .01, .9, .04], [.25] * 4]
    bigram = Bigram(table)
    short = beam_search(bigram, [1], beam_width=2, max_new_tokens=4, eos_id=0, length_penalty=0.0)
    assert short[0] == ([0], pytest.approx(math.log(.5)))  # the plain sum favours stopping now
    mean = beam_search(bigram, [1], beam_width=2, max_new_tokens=4, eos_id=0, length_penalty=1.0)
    # per-token mean: the long run wins, and the hypothesis finished at step 1 is kept beside it
    assert mean == [([2, 2, 2, 2], pytest.approx(math.log(.4 * .9 ** 3) / 4)), ([0], pytest.approx(math.log(.5)))]
    long = beam_search(bigram, [1], beam_width=2, max_new_tokens=4, eos_id=0, length_penalty=2.0)
    assert long[0] == ([2, 2, 2, 2], pytest.approx(math.log(.4 * .9 ** 3) / 16))


def test_logits_processors_apply_to_the_scores(model):
    prompt = prompts_of([4], seed=5)[0]
    free = beam_search(model, prompt, beam_width=3, max_new_tokens=8)
    banned = free[0][0][0]
    seen = []

    def ban(logits, ids):
        seen.append(tuple(ids.shape))
        logits[:, banned] = float("-inf")
        return logits

    out = beam_search(model, prompt, beam_width=3, max_new_tokens=8, logits_processors=[ban])
    assert all(banned not in ids for ids, _ in out)
    assert seen[0] == (1, 4) and seen[1] == (3, 5)  # one prompt row, then every beam with its ids


def test_selector_sees_the_proposals_and_a_true_lookahead(model):
    prompt = prompts_of([7], seed=6)[0]
    W, seen = 3, []

    def check(cands, lookahead):
        assert isinstance(cands, Candidates) and len(cands) <= 2 * W
        assert torch.equal(cands.ids[:, -1], cands.token) and (cands.ids[:, :7] == torch.tensor(prompt)).all()
        assert torch.equal(cands.score, cands.score.sort(descending=True).values)
        logp = lookahead(cands)  # (N, V)
        for i in range(len(cands)):
            ids = cands.ids[i].tolist()
            with torch.no_grad():
                ref = model.logits(model(torch.tensor([ids]))[0, -1]).log_softmax(-1)
            torch.testing.assert_close(logp[i], ref, atol=1e-5, rtol=1e-5)
        seen.append(len(cands))
        return cands

    plain = beam_search(model, prompt, beam_width=W, max_new_tokens=6)
    looked = beam_search(model, prompt, beam_width=W, max_new_tokens=6, selector=check)
    assert seen == [2 * W] * 6
    # continuing from the lookahead's forward instead of a fresh one changes nothing
    assert [i for i, _ in looked] == [i for i, _ in plain]
    assert [s for _, s in looked] == pytest.approx([s for _, s in plain], abs=1e-5)


def test_selector_prunes_and_rescores(model):
    prompt = prompts_of([5], seed=7)[0]
    plain = beam_search(model, prompt, beam_width=2, max_new_tokens=5)
    first = plain[0][0][0]

    def prune_first_token(cands, lookahead):
        return cands.select(cands.token != first)

    assert all(ids[0] != first for ids, _ in beam_search(model, prompt, beam_width=2, max_new_tokens=5,
                                                         selector=prune_first_token))

    def prefer_last(cands, lookahead):  # reverse the ranking: the search keeps what it is told
        return cands.rescored(-cands.score)

    worst = beam_search(model, prompt, beam_width=1, max_new_tokens=1, selector=prefer_last)
    logits = model.logits(model(torch.tensor([prompt]))[0, -1]).detach()
    assert worst[0][0] == [int(logits.topk(2).indices[-1])]  # the 2nd of the 2 proposed


def test_selector_keeping_nothing_ends_the_search_and_bad_answers_are_refused(model):
    prompt = [5, 6, 7]
    assert beam_search(model, prompt, beam_width=2, max_new_tokens=4,
                       selector=lambda c, look: c.select(c.token < 0)) == []
    with pytest.raises(ConfigError, match="not Candidates"):
        beam_search(model, prompt, beam_width=2, max_new_tokens=4, selector=lambda c, look: [1, 2])
    with pytest.raises(ConfigError, match="parent outside"):
        beam_search(model, prompt, beam_width=2, max_new_tokens=4,
                    selector=lambda c, look: Candidates(c.parent + 5, c.token, c.score, c.ids, c.index))


def test_bad_arguments(model):
    with pytest.raises(ConfigError, match="beam_width"):
        beam_search(model, [4], beam_width=0, max_new_tokens=3)
    with pytest.raises(ConfigError, match="max_new_tokens"):
        beam_search(model, [4], beam_width=2, max_new_tokens=-1)
    with pytest.raises(ConfigError, match="empty"):
        beam_search(model, [], beam_width=2, max_new_tokens=3)
    assert beam_search(model, [4], beam_width=2, max_new_tokens=0) == [([], 0.0)]
