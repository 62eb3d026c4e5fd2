from benchmarks.experiments.pipeline_file import finished_runs, write_pipeline
from llmcore.pipeline.result import write_result
from llmcore.pipeline.spec import Pipeline, Stage, Sweep, load_pipeline


def test_written_file_loads_back_to_the_same_pipeline(tmp_path):
    spec = Pipeline(out_dir=str(tmp_path / "runs"), stages=[
        Stage(name="pre", sweep=Sweep("train.seed", [0, 1]), overrides=["train.max_steps=5"]),
        Stage(name="ft", init_from="pre", grid=[Sweep("train.seed", [0, 1]), Sweep("optim.lr", [0.001, 0.003])],
              inputs={}, overrides=["train.max_steps=2"])])
    path = write_pipeline(spec, tmp_path / "p" / "pipeline.yaml")
    back = load_pipeline(path)
    assert [s.name for s in back.stages] == ["pre", "ft"]
    assert back.stages[1].init_from == "pre" and back.stages[1].grid[1].values == [0.001, 0.003]
    assert back.stages[0].overrides == ["train.max_steps=5"]
    assert "inputs" not in path.read_text()  # defaults are left out, as a hand-written file would


def test_finished_runs_reads_params_and_results(tmp_path):
    spec = Pipeline(out_dir=str(tmp_path / "runs"), overrides=[f"data.path={tmp_path}"], stages=[
        Stage(name="ft", grid=[Sweep("train.seed", [1]), Sweep("optim.lr", [0.003])]), Stage(name="pre")])
    path = write_pipeline(spec, tmp_path / "pipeline.yaml")
    run = tmp_path / "runs" / "ft" / "train.seed=1,optim.lr=0.003"
    run.mkdir(parents=True)
    write_result(run, {"stage": "ft", "variant": "train.seed=1,optim.lr=0.003", "step": 2,
                       "checkpoint": f"{run}/ckpt-000002", "metrics": {"val_loss": 1.25}})
    rows = finished_runs(path)
    assert rows[0]["params"] == {"train.seed": 1, "optim.lr": 0.003}
    assert rows[0]["val_loss"] == 1.25 and rows[0]["step"] == 2
    assert rows[0]["checkpoint"].endswith("ckpt-000002")
    assert rows[1]["params"] == {} and rows[1]["checkpoint"] is None and "val_loss" not in rows[1]
