"""Model presets: exact parameter counts, built on the meta device (no memory)."""

import pytest
import torch

from llmcore.config.schema import ModelConfig
from llmcore.errors import ConfigError
from llmcore.model.presets import get_preset, preset_names, resolve_model_args
from llmcore.model.transformer import Transformer


@pytest.mark.parametrize("name", preset_names())
def test_formula_matches_built_model(name):
    args = get_preset(name)
    with torch.device("meta"):
        model = Transformer(args)
    assert sum(p.numel() for p in model.parameters()) == args.num_params()


def test_llama3_shapes_match_published_counts():
    # Published parameter counts of Llama-3.2-1B, Llama-3.2-3B and Llama-3.1-8B.
    assert get_preset("1b").num_params() == 1_235_814_400
    assert get_preset("3b").num_params() == 3_212_749_824
    assert get_preset("8b").num_params() == 8_030_261_248


def test_tiny_is_about_a_million():
    assert 0.8e6 < get_preset("tiny").num_params() < 1.2e6


def test_explicit_fields_override_preset_and_tokenizer_vocab():
    args = resolve_model_args(ModelConfig(preset="tiny", n_layers=2), vocab_size=777)
    assert args.n_layers == 2 and args.vocab_size == 777 and args.d_model == get_preset("tiny").d_model
    with pytest.raises(ConfigError, match="did you mean 'tiny'"):
        resolve_model_args(ModelConfig(preset="tinny"))
    with pytest.raises(ConfigError, match="n_heads=4 is not divisible by model.n_kv_heads=3"):
        resolve_model_args(ModelConfig(preset="tiny", n_kv_heads=3))


def test_readme_table_matches_presets():
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    rows = re.findall(r"^\| `(\w+)`[^|]*\|(?:[^|]*\|){5} ([\d,]+) \|$", readme, flags=re.M)
    assert len(rows) == len(preset_names())
    for name, count in rows:
        assert get_preset(name).num_params() == int(count.replace(",", "")), name
