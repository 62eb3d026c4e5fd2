"""Safety pretraining on 2 CPU processes under DeepSpeed ZeRO-2: tag pretraining (tags from
the per-document score side-car, inserted by the loader's transform on every rank) and the
harmfulness classifier's training (SFT rows, the aux scoring head, ntp off) follow the
single-process loss and gradient-norm curves within 1e-5 relative."""

from __future__ import annotations

import pytest
from mp_helpers import assert_curves_close, overrides, torchrun
from safety_fixtures import safety_folder

from llmcore.config.load import load_run_config
from llmcore.train.loop import Trainer
from recipes.tasks import safety_data as sd

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]

LOSS_REL = 1e-5
ZERO2 = ("engine.backend=deepspeed", "engine.zero_stage=2")
TAGS = ("train.max_steps=4", "recipes=[safety]", "data.sidecars=[harm_score]", "safety.rate=0.1")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return safety_folder(tmp_path_factory.mktemp("safety_mp"))


def _single(data, out, *extra):
    Trainer(load_run_config(None, overrides(data, out, *extra))).fit()
    return out


def test_tag_pretraining_zero2_follows_single_process(folder, tmp_path):
    data, _, _ = folder
    ref = _single(data, tmp_path / "single", *TAGS)
    torchrun(2, overrides(data, tmp_path / "zero2", *TAGS, *ZERO2))
    assert_curves_close(ref, tmp_path / "zero2", LOSS_REL)


def test_classifier_training_zero2_follows_single_process(folder, tmp_path):
    data, _, _ = folder
    rows = [{"prompt": d["text"], "answer": "", "score": d["score"]} for d in sd.documents(64, 3, 0.5)]
    path = sd.write_jsonl(tmp_path / "lab.jsonl", rows)
    clf = ("train.max_steps=4", "data.format=sft", f"data.tokenizer={data}/tokenizer", "data.seq_len=256",
           "data.sft_fields=[score]", "recipes=[safety_classifier]", "train.ntp_weight=0", "train.eval_batches=0")
    ref = _single(path, tmp_path / "single", *clf)
    torchrun(2, overrides(path, tmp_path / "zero2", *clf, *ZERO2))
    assert_curves_close(ref, tmp_path / "zero2", LOSS_REL)
