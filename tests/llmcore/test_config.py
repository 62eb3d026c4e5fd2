"""Config loading: YAML + dotted overrides, typed, unknown keys and bad types are errors."""

import pytest

from llmcore.config.load import load_config
from llmcore.errors import ConfigError
from llmcore.recipe.registry import recipe_config_class


def write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_yaml_and_overrides_are_typed(tmp_path):
    p = write(tmp_path, "model: {preset: tiny}\ndata: {path: d, seq_len: 64}\ntrain: {max_steps: 5}\n")
    cfg = load_config(p, ["optim.lr=1e-3", "train.seed=7", "train.progress=false", "data.sources=[{path: a, weight: 2}]"])
    assert cfg.optim.lr == 1e-3 and isinstance(cfg.optim.lr, float)
    assert cfg.train.seed == 7 and cfg.train.progress is False and cfg.train.max_steps == 5
    assert cfg.data.seq_len == 64 and cfg.data.sources[0].weight == 2.0 and cfg.data.sources[0].path == "a"


def test_unknown_key_names_key_file_and_nearest(tmp_path):
    p = write(tmp_path, "data: {path: d}\noptim: {lrr: 0.1}\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert "optim.lrr" in msg and str(p) in msg and "optim.lr" in msg


def test_unknown_override_and_section(tmp_path):
    with pytest.raises(ConfigError, match="train.max_step'.*train.max_steps"):
        load_config(None, ["data.path=d", "train.max_step=3"])
    with pytest.raises(ConfigError, match="unknown key 'trian'"):
        load_config(None, ["data.path=d", "trian.seed=1"])


def test_wrong_type_names_key(tmp_path):
    with pytest.raises(ConfigError, match="train.max_steps must be int"):
        load_config(None, ["data.path=d", "train.max_steps=lots"])
    with pytest.raises(ConfigError, match="model.tie_embeddings must be bool"):
        load_config(None, ["data.path=d", "model.tie_embeddings=3"])


def test_validation_rules():
    with pytest.raises(ConfigError, match="schedule.kind"):
        load_config(None, ["data.path=d", "schedule.kind=linear"])
    with pytest.raises(ConfigError, match="not a multiple"):
        load_config(None, ["data.path=d", "train.micro_batch_size=3", "train.global_batch_size=8"])
    with pytest.raises(ConfigError, match="data.path is empty"):
        load_config(None, [])
    with pytest.raises(ConfigError, match="config file not found"):
        load_config("/nonexistent/x.yaml")


def test_recipe_sections_are_typed_by_the_recipe():
    cfg = load_config(None, ["data.path=d", "recipes=[probe]", "probe.loss_weight=0.5"],
                      recipe_configs=recipe_config_class)
    assert cfg.recipe["probe"].loss_weight == 0.5
    with pytest.raises(ConfigError, match="probe.loss_wieght"):
        load_config(None, ["data.path=d", "recipes=[probe]", "probe.loss_wieght=0.5"],
                    recipe_configs=recipe_config_class)
    with pytest.raises(ConfigError, match="unknown recipe 'prob'.*'probe'"):
        load_config(None, ["data.path=d", "recipes=[prob]"], recipe_configs=recipe_config_class)


def test_round_trip_through_yaml(tmp_path):
    cfg = load_config(None, ["data.path=d", "recipes=[probe]", "probe.loss_weight=0.25", "optim.lr=0.01"],
                      recipe_configs=recipe_config_class)
    p = write(tmp_path, cfg.to_yaml())
    again = load_config(p, recipe_configs=recipe_config_class)
    assert again.to_dict() == cfg.to_dict()
