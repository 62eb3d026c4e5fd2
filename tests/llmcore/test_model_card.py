"""export-hf writes a README.md model card whose numbers are the run's own: the parameter count
of the exported weights, the tokens trained, the recipes, the last validation loss in
metrics.jsonl and the command that trained it."""

from __future__ import annotations

import json
import shlex

import yaml
from safetensors.torch import load_file

from llmcore.cli.main import main


def test_export_writes_a_model_card_from_the_run(prepared, tmp_path, capsys):
    run, hf = tmp_path / "run", tmp_path / "hf"
    train = ["train", f"data.path={prepared}", f"train.out_dir={run}", "model.preset=tiny", "model.n_layers=2",
             "data.seq_len=32", "train.global_batch_size=4", "train.max_steps=3", "train.progress=false",
             "train.eval_batches=1", "recipes=[probe]"]
    assert main(train) == 0
    assert main(["export-hf", "--checkpoint", str(run), "--out", str(hf)]) == 0
    capsys.readouterr()
    card = (hf / "README.md").read_text()

    front = card.split("---\n")[1]
    assert yaml.safe_load(front) == {"library_name": "transformers", "pipeline_tag": "text-generation",
                                     "tags": ["llmcore", "llama"]}
    exported = sum(t.numel() for t in load_file(str(hf / "model.safetensors")).values())
    config = json.loads((hf / "config.json").read_text())
    assert f"| parameters | {exported:,} |" in card
    assert f"| layers x d_model | 2 x {config['hidden_size']} |" in card
    assert f"| attention heads (key/value heads) | {config['num_attention_heads']} " \
           f"({config['num_key_value_heads']}) |" in card
    assert f"training tokens: {3 * 4 * 32:,}" in card and "steps: 3;" in card
    assert "- recipes: `probe`" in card
    val = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in val if "val_loss" in r][-1]
    assert f"final validation loss: {last['val_loss']:.4f} nats/token (step 3)" in card
    assert f"```bash\n{shlex.join(['llmcore', *train])}\n```" in card
    saved = yaml.safe_load(card.split("```yaml\n")[1].split("```")[0])
    assert saved["train"]["max_steps"] == 3 and saved["recipes"] == ["probe"]


def test_card_of_a_run_that_never_evaluated_and_had_no_command(prepared, tmp_path):
    """`llmcore.save` of a model (no run folder around it): the card says what it does not know."""
    import torch

    import llmcore
    from llmcore.hf.folder import export_hf
    from llmcore.model.args import ModelArgs
    from llmcore.model.transformer import Transformer
    from llmcore.tokenizer import Tokenizer

    tok = Tokenizer.load(str(prepared / "tokenizer"))
    torch.manual_seed(0)
    model = Transformer(ModelArgs(vocab_size=tok.vocab_size, d_model=32, n_layers=1, n_heads=2, n_kv_heads=2,
                                  ffn_hidden=64, max_seq_len=64))
    llmcore.save(model, tok, str(tmp_path / "saved"))
    card = (export_hf(str(tmp_path / "saved"), str(tmp_path / "hf")) / "README.md").read_text()
    assert f"| parameters | {sum(p.numel() for p in model.parameters()):,} |" in card
    assert "final validation loss: not evaluated" in card
    assert "No command was recorded" in card
