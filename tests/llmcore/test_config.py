"""Config loading: YAML + dotted overrides, typed, unknown keys and bad types are errors."""

from pathlib import Path

import pytest

from llmcore.config.load import load_config, load_run_config
from llmcore.errors import ConfigError
from llmcore.recipe.registry import recipe_config_class

CONFIGS = Path(__file__).resolve().parents[2] / "recipes" / "configs"


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


def test_base_chain_merges_sections_key_by_key(tmp_path):
    (tmp_path / "root.yaml").write_text("data: {path: d, seq_len: 64}\noptim: {lr: 1.0e-3, beta2: 0.9}\n"
                                        "train: {max_steps: 7, seed: 3}\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "mid.yaml").write_text("base: ../root.yaml\noptim: {lr: 2.0e-3}\n")
    leaf = tmp_path / "sub" / "leaf.yaml"
    leaf.write_text("base: mid.yaml\ntrain: {seed: 5}\n")
    cfg = load_config(leaf, ["train.max_steps=9"])
    assert (cfg.optim.lr, cfg.optim.beta2) == (2e-3, 0.9)  # mid's lr over root's, root's beta2 kept
    assert (cfg.train.seed, cfg.train.max_steps, cfg.data.seq_len) == (5, 9, 64)


def test_base_errors_name_the_files(tmp_path):
    a = write(tmp_path, "base: missing.yaml\ndata: {path: d}\n")
    with pytest.raises(ConfigError, match=r"missing\.yaml \(the base of .*c\.yaml\)"):
        load_config(a)
    (tmp_path / "x.yaml").write_text("base: y.yaml\n")
    (tmp_path / "y.yaml").write_text("base: x.yaml\n")
    with pytest.raises(ConfigError, match=r"cycle: .*x\.yaml -> .*y\.yaml -> .*x\.yaml"):
        load_config(tmp_path / "x.yaml")
    (tmp_path / "ok.yaml").write_text("data: {path: d}\n")
    with pytest.raises(ConfigError, match="unknown key 'optim.lrr'"):  # keys are checked after merging
        load_config(write(tmp_path, "base: ok.yaml\noptim: {lrr: 1}\n"))


def _is_pipeline(path: Path) -> bool:
    import yaml
    return "stages" in (yaml.safe_load(path.read_text()) or {})


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml") if not _is_pipeline(p)))
def test_every_shipped_config_loads(name):
    cfg = load_run_config(CONFIGS / name)
    assert cfg.train.max_steps > 0 and cfg.model.preset


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml") if _is_pipeline(p)))
def test_every_shipped_pipeline_plans(name, tmp_path):
    from llmcore.pipeline.plan import plan
    from llmcore.pipeline.spec import load_pipeline

    spec = load_pipeline(CONFIGS / name)
    spec.out_dir = str(tmp_path)  # nothing on disk: every run new
    runs = plan(spec)
    assert runs and all(r.state == "new" and r.config.train.max_steps > 0 for r in runs)


@pytest.mark.parametrize("override, message", [
    ("optim.lr=-1e-3", "optim.lr=-0.001 is out of range: must be >= 0.0 (e.g. 3e-4)"),
    ("optim.lr=nan", "optim.lr=nan is out of range: must be >= 0.0 (e.g. 3e-4)"),
    ("optim.lr=.nan", "optim.lr=nan is out of range"),
    ("optim.beta1=1.0", "optim.beta1=1.0 is out of range: must be [0.0, 1.0) (e.g. 0.9)"),
    ("optim.beta2=-0.1", "optim.beta2=-0.1 is out of range: must be [0.0, 1.0) (e.g. 0.95)"),
    ("optim.beta2=nan", "optim.beta2=nan is out of range: must be [0.0, 1.0)"),
    ("train.log_every=0", "train.log_every=0 is out of range: must be >= 1 (1 logs every step)"),
    ("train.save_every=-1", "train.save_every=-1 is out of range: must be >= 0 (0 saves only at the end)"),
    ("schedule.warmup_steps=-5", "schedule.warmup_steps=-5 is out of range: must be >= 0 (0 for no warmup)"),
    ("optim.weight_decay=-0.1", "optim.weight_decay=-0.1 is out of range: must be >= 0.0 (0 disables it)"),
    ("optim.grad_clip=-1", "optim.grad_clip=-1.0 is out of range: must be >= 0.0 (0 disables clipping)"),
    ("optim.eps=0", "optim.eps=0.0 is out of range: must be > 0.0"),
])
def test_numbers_out_of_range_are_refused_by_key(override, message):
    with pytest.raises(ConfigError) as e:
        load_config(None, ["data.path=d", override])
    assert message in str(e.value)


def test_numbers_at_their_bounds_are_accepted():
    cfg = load_config(None, ["data.path=d", "optim.lr=0", "optim.beta1=0", "optim.beta2=0.999",
                             "train.log_every=1", "train.save_every=0", "schedule.warmup_steps=0",
                             "optim.weight_decay=0", "optim.grad_clip=0"])
    assert cfg.optim.beta2 == 0.999 and cfg.train.log_every == 1
