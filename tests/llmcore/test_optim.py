"""Learning-rate schedules and parameter groups."""

import pytest
import torch

from llmcore.config.schema import ScheduleConfig
from llmcore.train.optim import lr_multiplier, param_groups


def curve(kind, steps=100, **kw):
    cfg = ScheduleConfig(kind=kind, warmup_steps=10, min_lr_ratio=0.1, **kw)
    return [lr_multiplier(s, steps, cfg) for s in range(steps)]


def test_warmup_is_linear_to_peak():
    c = curve("cosine")
    assert c[:10] == pytest.approx([(i + 1) / 10 for i in range(10)])


def test_cosine_decays_monotonically_to_floor():
    c = curve("cosine")
    assert all(a >= b for a, b in zip(c[10:], c[11:]))
    assert c[10] == pytest.approx(1.0) and c[-1] == pytest.approx(0.1, abs=1e-3)


def test_wsd_flat_then_short_linear_anneal():
    c = curve("wsd", anneal_fraction=0.2)
    assert c[10:80] == [1.0] * 70
    assert c[-1] == pytest.approx(0.1)
    steps = [a - b for a, b in zip(c[80:], c[81:])]
    assert steps == pytest.approx([steps[0]] * len(steps))  # linear


def test_constant_after_warmup():
    assert curve("constant")[10:] == [1.0] * 90


def test_no_decay_on_norms():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4, bias=True), torch.nn.LayerNorm(4))
    decay, no_decay = param_groups(model.named_parameters(), 0.1)
    assert [p.shape for p in decay["params"]] == [torch.Size([4, 4])]
    assert len(no_decay["params"]) == 3 and no_decay["weight_decay"] == 0.0
