"""Bad input met by a named error (the file, the key, the problem), never a raw traceback or a
silent wrong result: checkpoints, data files, HF folders, generation and evaluation limits.

Config ranges (learning rate, betas, log_every, ...) are tested in test_config.py."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from run_configs import RECIPE_RUN, tiny_config

import llmcore
import llmcore.errors
from llmcore.cli.main import main
from llmcore.errors import CheckpointError, ConfigError
from llmcore.train.loop import Trainer
from llmcore.train import manifest


@pytest.fixture(scope="module")
def run(prepared, tmp_path_factory):
    """A finished one-step `tiny` run (its folder holds `latest` and ckpt-000001)."""
    out = tmp_path_factory.mktemp("named") / "run"
    Trainer(tiny_config(prepared, out, *RECIPE_RUN, "train.max_steps=1")).fit()
    return out


def copy_ckpt(run, tmp_path):
    dst = tmp_path / "ckpt"
    shutil.copytree(run / "ckpt-000001", dst)
    return dst


# --- checkpoints ------------------------------------------------------------------------------

@pytest.mark.parametrize("state", [{"world_size": 1}, {"step": "3"}, [1, 2]])
def test_state_json_without_an_integer_step_is_named(run, tmp_path, state):
    ckpt = copy_ckpt(run, tmp_path)
    (ckpt / "state.json").write_text(json.dumps(state))
    from llmcore.train import checkpoint

    with pytest.raises(CheckpointError, match=rf"{ckpt / 'state.json'} has no integer `step`"):
        checkpoint.read_state(ckpt)


def test_resume_with_state_json_without_step_exits_2_naming_the_file(prepared, run, tmp_path, capsys):
    out = tmp_path / "r"
    shutil.copytree(run, out)
    state = json.loads((out / "ckpt-000001" / "state.json").read_text())
    del state["step"]
    (out / "ckpt-000001" / "state.json").write_text(json.dumps(state))
    manifest.write(out / "ckpt-000001")  # as if written so (else the checksum check names it first)
    args = ["train", f"data.path={prepared}", f"train.out_dir={out}", "train.progress=false", *RECIPE_RUN,
            "train.max_steps=2"]
    assert main(args) == 2
    assert f"{out / 'ckpt-000001' / 'state.json'} has no integer `step` (got None)" in capsys.readouterr().err


@pytest.mark.parametrize("text, problem", [("model: {preset: tiny\n", "is missing or unreadable"),
                                           ("- a\n- b\n", "is not a run config (a YAML mapping), got list")])
def test_config_yaml_that_is_not_a_run_config_is_named_by_generate_and_export(run, tmp_path, capsys, text, problem):
    ckpt = copy_ckpt(run, tmp_path)
    (ckpt / "config.yaml").write_text(text)
    expected = f"{ckpt / 'config.yaml'} {problem}"
    assert main(["generate", "--checkpoint", str(ckpt), "--prompt", "x", "--max-new-tokens", "2"]) == 2
    assert expected in capsys.readouterr().err
    assert main(["export-hf", "--checkpoint", str(ckpt), "--out", str(tmp_path / "hf")]) == 2
    assert expected in capsys.readouterr().err
    assert not (tmp_path / "hf").exists()


def test_resume_with_another_preset_names_both_presets_and_the_shapes(prepared, run, tmp_path):
    out = tmp_path / "r"
    shutil.copytree(run, out)
    with pytest.raises(CheckpointError) as e:
        Trainer(tiny_config(prepared, out, *RECIPE_RUN, "model.preset=demo", "train.max_steps=2"))
    msg = str(e.value)
    assert (f"cannot resume from {out / 'ckpt-000001'}: it holds model preset 'tiny', this run builds preset "
            "'demo' and the shapes differ (d_model 128 -> 192, n_heads 4 -> 6, ffn_hidden 352 -> 512, "
            "checkpoint -> run)") in msg
    assert "model.preset=tiny" in msg and "new train.out_dir" in msg


def test_init_from_another_size_is_named_before_loading(prepared, run, tmp_path):
    with pytest.raises(CheckpointError, match=r"cannot initialise from .*ckpt-000001: it holds model preset "
                                              r"'tiny', this run builds preset 'tiny' and the shapes differ "
                                              r"\(n_layers 2 -> 3, checkpoint -> run\)"):
        Trainer(tiny_config(prepared, tmp_path / "new", *RECIPE_RUN, "model.n_layers=3",
                            f"train.init_from={run}"))


def test_resume_that_changes_no_shape_still_loads(prepared, run, tmp_path):
    out = tmp_path / "r"
    shutil.copytree(run, out)
    # a deliberate change that sizes no weight: the shape check lets it through (the config
    # check refuses it unless allowed, naming the key)
    with pytest.raises(ConfigError, match=r"model\.max_seq_len: None -> 512"):
        Trainer(tiny_config(prepared, out, *RECIPE_RUN, "train.max_steps=2", "model.max_seq_len=512"))
    trainer = Trainer(tiny_config(prepared, out, *RECIPE_RUN, "train.max_steps=2", "model.max_seq_len=512",
                                  "train.allow_config_change=true"))
    assert trainer.step == 1


# --- import-hf --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def hf_dir(run, tmp_path_factory):
    from llmcore.hf.folder import export_hf

    return export_hf(str(run), str(tmp_path_factory.mktemp("hf") / "hf"))


def import_with(hf_dir, tmp_path, config):
    from llmcore.hf.folder import import_hf

    src = tmp_path / "src"
    shutil.copytree(hf_dir, src)
    (src / "config.json").write_text(json.dumps(config))
    return src, lambda: import_hf(str(src), str(tmp_path / "imp"))


@pytest.mark.parametrize("config, kind", [([1, 2], "list"), ("llama", "str"), (None, "NoneType")])
def test_import_hf_config_json_that_is_not_an_object_is_named(hf_dir, tmp_path, config, kind):
    src, do = import_with(hf_dir, tmp_path, config)
    with pytest.raises(CheckpointError, match=rf"{src / 'config.json'} is not a model config: expected a JSON "
                                              rf"object, got a JSON {kind}"):
        do()
    assert not (tmp_path / "imp").exists()


@pytest.mark.parametrize("rope_parameters, rope_scaling, key, rope_type", [
    ({"rope_type": "default", "rope_theta": 10000.0}, {"rope_type": "linear", "factor": 4.0}, "rope_scaling", "linear"),
    ({"rope_type": "default", "rope_theta": 10000.0}, {"type": "dynamic", "factor": 2.0}, "rope_scaling", "dynamic"),
    ({"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0}, None, "rope_parameters", "yarn"),
    ({"rope_type": "default"}, {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                               "high_freq_factor": 4.0}, "rope_scaling", "llama3"),
])
def test_import_hf_refuses_scaled_rope_from_either_key(hf_dir, tmp_path, rope_parameters, rope_scaling, key, rope_type):
    cfg = json.loads((hf_dir / "config.json").read_text())
    cfg.update(rope_parameters=rope_parameters, rope_scaling=rope_scaling)
    _, do = import_with(hf_dir, tmp_path, cfg)
    with pytest.raises(CheckpointError, match=rf"rope type={rope_type!r} is not supported by llmcore's model "
                                              rf"\(supported: \['default'\]\): {key} asks for scaled RoPE"):
        do()
    assert not (tmp_path / "imp").exists()
    transformers = pytest.importorskip("transformers")
    # what transformers makes of the same config.json: the scaled type we refused
    assert transformers.LlamaConfig.from_dict(cfg).rope_parameters["rope_type"] == rope_type


def test_import_hf_reads_rope_theta_where_transformers_does(hf_dir, tmp_path):
    """A non-empty rope_scaling wins over rope_parameters, its theta from the top-level key."""
    cfg = json.loads((hf_dir / "config.json").read_text())
    cfg.update(rope_theta=20000.0, rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
               rope_scaling={"rope_type": "default"})
    _, do = import_with(hf_dir, tmp_path, cfg)
    do()
    model, _ = llmcore.load(str(tmp_path / "imp"), device="cpu")
    assert model.args.rope_theta == 20000.0
    transformers = pytest.importorskip("transformers")
    assert transformers.LlamaConfig.from_dict(cfg).rope_parameters["rope_theta"] == 20000.0


def test_import_hf_rope_key_of_another_type_is_named(hf_dir, tmp_path):
    cfg = dict(json.loads((hf_dir / "config.json").read_text()), rope_scaling="linear")
    src, do = import_with(hf_dir, tmp_path, cfg)
    with pytest.raises(CheckpointError, match=rf"{src / 'config.json'}: rope_scaling must be an object or null, "
                                              "got 'linear'"):
        do()


# --- data -------------------------------------------------------------------------------------

def edit_manifest(prepared, tmp_path, edit):
    dst = tmp_path / "data"
    shutil.copytree(prepared, dst)
    m = json.loads((dst / "manifest.json").read_text())
    edit(m)
    (dst / "manifest.json").write_text(json.dumps(m))
    return dst


@pytest.mark.parametrize("edit, key", [
    (lambda m: m["tokenizer"].pop("vocab_size"), "tokenizer.vocab_size"),
    (lambda m: m.pop("tokenizer"), "tokenizer"),
    (lambda m: m.pop("splits"), "splits"),
    (lambda m: m["splits"]["train"].pop("shards"), "splits.train.shards"),
    (lambda m: m["splits"]["val"].pop("num_tokens"), "splits.val.num_tokens"),
    (lambda m: m["splits"]["train"]["shards"][0].pop("docs_file"), "splits.train.shards[0].docs_file"),
    (lambda m: m["splits"]["train"]["shards"][0].pop("num_docs"), "splits.train.shards[0].num_docs"),
])
def test_data_manifest_missing_a_key_names_the_key_and_file(prepared, tmp_path, edit, key):
    from llmcore.data.shards import TokenShards
    from llmcore.errors import DataError

    dst = edit_manifest(prepared, tmp_path, edit)
    with pytest.raises(DataError) as e:
        TokenShards(str(dst), "train")
    assert f"{dst / 'manifest.json'}: key {key!r} is missing (has [" in str(e.value)
    assert "re-run `llmcore data prepare`" in str(e.value)


def test_data_manifest_key_of_a_wrong_type_is_named(prepared, tmp_path):
    from llmcore.data.shards import TokenShards
    from llmcore.errors import DataError

    dst = edit_manifest(prepared, tmp_path, lambda m: m["splits"]["train"]["shards"][0].update(num_tokens="12"))
    with pytest.raises(DataError, match=r"manifest.json: splits.train.shards\[0\].num_tokens must be int, got '12'"):
        TokenShards(str(dst), "train")


def test_sidecar_manifest_missing_a_key_is_named(prepared, tmp_path):
    from run_configs import with_id_sidecar

    from llmcore.data.shards import TokenShards
    from llmcore.data.sidecar import Sidecar
    from llmcore.errors import DataError

    dst = with_id_sidecar(prepared, tmp_path / "data")
    path = dst / "sidecars" / "ids" / "sidecar.json"
    meta = json.loads(path.read_text())
    del meta["splits"]["train"]["shards"][0]["file"]
    path.write_text(json.dumps(meta))
    with pytest.raises(DataError, match=rf"{path}: key 'splits.train.shards\[0\].file' is missing"):
        Sidecar(TokenShards(str(dst), "train"), "ids")


LATIN1 = "caf\xe9 ol\xe9".encode("latin-1")  # invalid UTF-8 at byte 3 of its line


@pytest.mark.parametrize("name, body", [
    ("bad.txt", b"first line\n\nsecond " + LATIN1 + b"\n"),
    ("bad.jsonl", b'{"text": "ok"}\n{"text": "' + LATIN1 + b'"}\n'),
])
def test_invalid_utf8_input_to_prepare_names_file_line_and_byte(prepared, tmp_path, name, body):
    from llmcore.data.prepare import prepare
    from llmcore.errors import DataError

    src = tmp_path / name
    src.write_bytes(body)
    line = body[:body.index(LATIN1)].count(b"\n") + 1
    offset = body.index(LATIN1) + 3
    with pytest.raises(DataError, match=rf"{src}: invalid UTF-8 at line {line} \(byte offset {offset}, "
                                        r"b'\\xe9': invalid continuation byte\)"):
        prepare([str(src)], str(prepared / "tokenizer"), str(tmp_path / "out"), progress=False)
    assert not (tmp_path / "out").exists()


def test_invalid_utf8_in_a_gz_input_to_the_tokenizer_is_named(tmp_path):
    import gzip

    from llmcore.errors import DataError
    from llmcore.tokenizer import Tokenizer

    src = tmp_path / "bad.txt.gz"
    src.write_bytes(gzip.compress(b"a\nb\n" + LATIN1 + b"\n"))
    with pytest.raises(DataError, match=rf"{src}: invalid UTF-8 at line 3 \(byte offset 7,"):
        Tokenizer.train([str(src)], str(tmp_path / "tok"), 300)


def test_invalid_utf8_in_sft_jsonl_names_file_and_line(tmp_path):
    from llmcore.data.sft import read_tasks
    from llmcore.errors import DataError

    src = tmp_path / "t.jsonl"
    src.write_bytes(b'{"prompt": "1+1=", "answer": "2"}\n{"prompt": "' + LATIN1 + b'", "answer": "x"}\n')
    with pytest.raises(DataError, match=rf"{src}: invalid UTF-8 at line 2 \(byte offset 49,"):
        read_tasks(str(src))


@pytest.mark.parametrize("row, key, shown", [
    ({"prompt": "1+1=", "answer": None}, "answer", "null"),
    ({"prompt": None, "answer": "2"}, "prompt", "null"),
    ({"prompt": "1+1=", "answer": ["2"]}, "answer", '["2"]'),
    ({"prompt": "1+1=", "answer": True}, "answer", "true"),
])
def test_sft_null_or_non_text_fields_are_refused_by_line(tmp_path, row, key, shown):
    from llmcore.data.sft import read_tasks
    from llmcore.errors import DataError

    src = tmp_path / "t.jsonl"
    src.write_text(json.dumps({"prompt": "2+2=", "answer": "4"}) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(DataError) as e:
        read_tasks(str(src))
    assert str(e.value) == f"{src}:2: field {key!r} is {shown}, expected a string (or a number)"


def test_sft_numbers_stay_text_as_before(tmp_path):
    from llmcore.data.sft import read_tasks

    src = tmp_path / "t.jsonl"
    src.write_text('{"prompt": "2+2=", "answer": 4}\n')
    assert read_tasks(str(src)) == [{"prompt": "2+2=", "answer": "4"}]


# --- generation and evaluation limits ---------------------------------------------------------

def test_max_new_tokens_beyond_the_context_is_named(run, capsys):
    assert main(["generate", "--checkpoint", str(run), "--prompt", "x", "--max-new-tokens", "1024"]) == 2
    assert ("max_new_tokens=1024 exceeds the model's context: max_seq_len=1024 leaves room for at most 1023 "
            "new tokens after a one-token prompt (use --max-new-tokens 1023 or less)") in capsys.readouterr().err


@pytest.mark.parametrize("value", ["nan", "inf", "-0.5"])
def test_temperature_nan_or_infinite_is_refused(run, capsys, value):
    assert main(["generate", "--checkpoint", str(run), "--prompt", "x", "--max-new-tokens", "2",
                 "--temperature", value]) == 2
    assert (f"temperature must be a finite number >= 0 (0 = greedy, e.g. 0.8), got {float(value)}"
            in capsys.readouterr().err)


def test_a_prompt_beyond_the_context_is_refused_or_truncated_on_request(run, caplog):
    from llmcore.generate.beam import beam_search
    from llmcore.generate.sampling import generate

    model, tok = llmcore.load(str(run), device="cpu")
    prompt = [int(t) for t in torch.randint(3, 300, (1000,), generator=torch.Generator().manual_seed(0))]
    with pytest.raises(llmcore.errors.ConfigError) as e:
        generate(model, [[5, 6], prompt], 30, temperature=0.0)
    assert str(e.value) == ("prompt 1 has 1000 tokens: with max_new_tokens=30 it needs 1030 positions, beyond "
                            "the model's max_seq_len=1024; shorten it to 994 tokens, lower max_new_tokens to 24, "
                            "or truncate prompts (--truncate-prompts keeps the last 994 tokens)")
    with pytest.raises(llmcore.errors.ConfigError, match="prompt 0 has 1000 tokens"):
        beam_search(model, prompt, beam_width=2, max_new_tokens=30)
    with caplog.at_level("WARNING"):
        cut = generate(model, [prompt], 30, temperature=0.0, truncate_prompts=True)
    assert "prompt 0: 1000 tokens + max_new_tokens 30 exceed max_seq_len 1024; keeping its last 994" in caplog.text
    assert cut == generate(model, [prompt[-994:]], 30, temperature=0.0)


def test_eval_seq_len_beyond_max_seq_len_is_refused(prepared, run, capsys):
    assert main(["eval", "--checkpoint", str(run), "--data", str(prepared), "--seq-len", "1500"]) == 2
    assert ("seq_len=1500 exceeds the model's max_seq_len=1024 (positions it was never trained on); "
            "use --seq-len 1024 or less") in capsys.readouterr().err


@pytest.mark.parametrize("reader", ["tasks", "documents", "prompts"])
@pytest.mark.parametrize("body, message", [
    (b'{"prompt": "a", "answer": "b", "text": "c"}\n{"prompt": "' + LATIN1 + b'"}\n',
     rf"invalid UTF-8 at line 2 \(byte offset {44 + 12 + 3},"),  # line 1 + newline, then `{"prompt": "`, `caf`
    (b'{"prompt": "a", "answer": "b", "text": "c"}\n\n[1, 2]\n', r":3: expected a JSON object, got list"),
    (b'{"prompt": "a", "answer": "b", "text": "c"}\n{"prompt": \n', r":2: not valid JSON"),
])
def test_every_jsonl_reader_names_the_file_and_line(tmp_path, reader, body, message):
    """Task files, bits-per-byte documents and a recipe's prompt files share one reader."""
    from llmcore.data.sft import read_tasks
    from llmcore.errors import DataError
    from llmcore.eval.bits_per_byte import read_documents
    from recipes.safety.cli import read_prompts

    read = {"tasks": read_tasks, "documents": read_documents, "prompts": read_prompts}[reader]
    src = tmp_path / "in.jsonl"
    src.write_bytes(body)
    with pytest.raises(DataError, match=rf"{src}{message}" if message.startswith(":") else rf"{src}: {message}"):
        read(str(src))
    with pytest.raises(DataError, match=rf"{tmp_path / 'missing.jsonl'} does not exist"):
        read(str(tmp_path / "missing.jsonl"))
