"""The generated DeepSpeed config and the user-JSON override rules (no processes started), and
the DeepSpeed engine's refusal of `no_sync` where ZeRO partitions gradients."""

from __future__ import annotations

import json

import pytest

from llmcore.config.load import load_run_config
from llmcore.engine.deepspeed import config as deepspeed_config
from llmcore.errors import ConfigError, LlmcoreError


def cfg(*extra):
    return load_run_config(None, ["data.path=/unused", "engine.backend=deepspeed", "engine.zero_stage=2",
                                  "train.micro_batch_size=2", "train.global_batch_size=16", *extra])


def test_generated_config_follows_ours():
    ds = deepspeed_config.build(cfg(), world_size=4, bf16=False)
    assert (ds["train_batch_size"], ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"]) == (16, 2, 2)
    assert ds["zero_optimization"] == {"stage": 2}
    assert ds["bf16"] == {"enabled": False} and ds["gradient_clipping"] == 0.0
    assert "optimizer" not in ds and "scheduler" not in ds  # ours, passed as objects
    off = deepspeed_config.build(cfg("engine.offload=true", "engine.zero_stage=3"), 2, bf16=True, pin_memory=True)
    assert off["zero_optimization"] == {"stage": 3, "stage3_param_persistence_threshold": 0,
                                        "offload_optimizer": {"device": "cpu", "pin_memory": True}}
    assert off["bf16"] == {"enabled": True} and off["gradient_accumulation_steps"] == 4


def test_precision_rule_is_the_trainers():
    assert deepspeed_config.use_bf16(cfg("train.precision=bf16"), "cpu", False)
    assert not deepspeed_config.use_bf16(cfg("train.precision=auto"), "cpu", False)
    assert deepspeed_config.use_bf16(cfg("train.precision=auto"), "cuda", True)
    assert not deepspeed_config.use_bf16(cfg("train.precision=fp32"), "cuda", True)


def test_user_json_merges_key_by_key(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"zero_optimization": {"stage3_param_persistence_threshold": 0, "overlap_comm": True},
                                "communication_data_type": "fp32", "train_batch_size": 16}))
    ds = deepspeed_config.build(cfg(f"engine.deepspeed_config={path}", "engine.zero_stage=3"), 4, bf16=False)
    assert ds["zero_optimization"] == {"stage": 3, "stage3_param_persistence_threshold": 0, "overlap_comm": True}
    assert ds["communication_data_type"] == "fp32" and ds["train_batch_size"] == 16


@pytest.mark.parametrize("user, match", [
    ({"train_batch_size": 32}, "'train_batch_size' is set by llmcore from train.global_batch_size"),
    ({"gradient_accumulation_steps": 1}, "'gradient_accumulation_steps' is set by llmcore"),
    ({"optimizer": {"type": "Adam"}}, "'optimizer' is set by llmcore from optim"),
    ({"gradient_clipping": 1.0}, "'gradient_clipping' is set by llmcore from optim.grad_clip"),
    ({"zero_optimization": {"stage": 1}}, "zero_optimization.stage=1 disagrees with engine.zero_stage=2"),
], ids=["batch", "accum", "optimizer", "clipping", "stage"])
def test_user_json_cannot_change_what_llmcore_owns(tmp_path, user, match):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(user))
    with pytest.raises(ConfigError, match=match) as err:
        deepspeed_config.build(cfg(f"engine.deepspeed_config={path}"), 4, bf16=False)
    assert str(path) in str(err.value)


def test_bad_user_json_and_bad_stage_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="file not found: .*missing.json"):
        deepspeed_config.build(cfg(f"engine.deepspeed_config={tmp_path / 'missing.json'}"), 1, False)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="bad.json is not valid JSON"):
        deepspeed_config.build(cfg(f"engine.deepspeed_config={bad}"), 1, False)
    bad.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="must hold a JSON object, got list"):
        deepspeed_config.build(cfg(f"engine.deepspeed_config={bad}"), 1, False)
    with pytest.raises(ConfigError, match="zero_stage 1, 2 or 3, got 0.*engine.backend=ddp"):
        deepspeed_config.build(cfg("engine.zero_stage=0"), 1, False)
    with pytest.raises(ConfigError, match="not a multiple of micro_batch_size x world size = 2 x 3"):
        deepspeed_config.build(cfg(), 3, False)


@pytest.mark.parametrize("stage", [2, 3])
def test_no_sync_is_refused_where_zero_partitions_gradients(stage):
    from llmcore.engine.deepspeed.engine import DeepSpeedEngine

    engine = DeepSpeedEngine.__new__(DeepSpeedEngine)  # the refusal needs no process group
    engine.stage, engine.sharded_grads = stage, True
    with pytest.raises(LlmcoreError, match=f"zero_stage={stage} partitions gradients.*cannot skip"):
        with engine.no_sync():
            pass


def test_zero3_shards_every_parameter_by_default():
    # Weight edits through engine.local_params() (SAM) must reach the forward: no parameter may
    # stay gathered ("persistent") between steps unless the user's JSON asks for it.
    from llmcore.config.load import load_config
    from llmcore.engine.deepspeed.config import generate

    cfg = load_config(None, ["data.path=d", "engine.backend=deepspeed", "engine.zero_stage=3"])
    assert generate(cfg, 1, bf16=False)["zero_optimization"]["stage3_param_persistence_threshold"] == 0
    cfg2 = load_config(None, ["data.path=d", "engine.backend=deepspeed", "engine.zero_stage=2"])
    assert "stage3_param_persistence_threshold" not in generate(cfg2, 1, bf16=False)["zero_optimization"]
