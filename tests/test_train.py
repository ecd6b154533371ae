"""train on the local backend: the real taxi pipeline, command jobs, failures and bad input."""
from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import pytest
from conftest import TAXI

from mlops_steps.backends.local import LocalBackend

SCRIPT = """
import argparse, mlflow, pathlib, sys
p = argparse.ArgumentParser()
p.add_argument("--data"); p.add_argument("--out"); p.add_argument("--alpha", type=float)
p.add_argument("--fail", default="no")
a = p.parse_args()
rows = len(pathlib.Path(a.data).read_text().splitlines()) - 1
print("rows", rows, flush=True)
with mlflow.start_run():
    mlflow.log_metric("rows", rows)
    mlflow.log_metric("alpha", a.alpha)
pathlib.Path(a.out, "result.txt").write_text(str(rows * a.alpha))
if a.fail == "yes":
    print("something broke: ValueError bad things", flush=True)
    sys.exit(4)
"""


def _command_job(workdir: Path, data: str = "./data.csv", extra: str = "") -> Path:
    (workdir / "src").mkdir(exist_ok=True)
    (workdir / "src" / "job.py").write_text(SCRIPT)
    (workdir / "data.csv").write_text("a,b\n1,2\n3,4\n5,6\n")
    spec = workdir / "job.yml"
    spec.write_text(textwrap.dedent(f"""\
        $schema: https://azuremlschemas.azureedge.net/latest/commandJob.schema.json
        type: command
        code: src
        command: >-
          python job.py --data ${{{{inputs.data}}}} --alpha ${{{{inputs.alpha}}}}
          --out ${{{{outputs.out}}}} --fail ${{{{inputs.fail}}}}
        environment: azureml:sklearn-env:1
        experiment_name: unit
        inputs:
          data:
            type: uri_file
            path: {data}
          alpha: 0.5
          fail: "no"
        outputs:
          out:
            type: uri_folder
        {extra}"""))
    return spec


def test_command_job_binds_inputs_outputs_and_mlflow(step, workdir):
    _command_job(workdir)
    res = step("train", "--job", "job.yml")
    assert res.code == 0, res
    out = res.outputs
    assert out["status"] == "Completed" and out["experiment"] == "unit"
    assert out["metrics"] == {"rows": 3.0, "alpha": 0.5}
    assert (Path(out["outputs"]["out"]) / "result.txt").read_text() == "1.5"
    assert "[main] rows 3" in res.stderr  # logs stream live, prefixed by node
    # the run is in the local MLflow store, under the job's parent run
    client = LocalBackend(workdir / ".mlops").client
    runs = client.search_runs([client.get_experiment_by_name("unit").experiment_id])
    assert {r.data.tags.get("mlops.node") for r in runs} >= {"main"}


def test_dry_run_shows_the_plan_and_runs_nothing(step, workdir):
    _command_job(workdir)
    res = step("train", "--job", "job.yml", "--dry-run")
    assert res.code == 0, res
    assert res.outputs["status"] == "DryRun" and "python job.py --data" in res.stderr
    assert not (workdir / ".mlops" / "jobs").exists()


def test_inputs_from_env_and_overrides(step, workdir):
    _command_job(workdir)
    res = step("train", env={"MLOPS_JOB": "job.yml", "MLOPS_SET_INPUT": "alpha=2"})
    assert res.code == 0, res
    assert res.outputs["metrics"]["alpha"] == 2.0


def test_failing_node_exits_3_with_log_tail(step, workdir):
    _command_job(workdir)
    res = step("train", "--job", "job.yml", "--set-input", "fail=yes")
    assert res.code == 3, res
    assert "node main failed with exit code 4" in res.stdout + res.stderr
    assert "something broke: ValueError bad things" in res.stderr
    assert "Traceback" not in res.stderr
    (job,) = (workdir / ".mlops" / "jobs").iterdir()
    record = json.loads((job / "job.json").read_text())
    assert record["status"] == "Failed" and record["nodes"]["main"]["status"] == "Failed"


@pytest.mark.parametrize("case, expect", [
    ("unbound", "${{inputs.nothere}} is not bound"),
    ("unknown-asset", "data asset 'no-such-data' is not registered"),
    ("schema", "rejected by Azure ML's job schema"),
    ("override", "the job declares no input 'nope'"),
])
def test_bad_job_inputs_exit_2(step, workdir, case, expect):
    args = []
    if case == "unbound":
        spec = _command_job(workdir)
        spec.write_text(spec.read_text().replace("--alpha ${{inputs.alpha}}", "--alpha ${{inputs.nothere}}"))
    elif case == "unknown-asset":
        _command_job(workdir, data="azureml:no-such-data:1")
    elif case == "schema":
        spec = _command_job(workdir)
        spec.write_text(spec.read_text().replace("type: command", "type: commandd"))
    else:
        _command_job(workdir)
        args = ["--set-input", "nope=1"]
    res = step("train", "--job", "job.yml", *args)
    assert res.code == 2, res
    assert expect in res.stderr and "Traceback" not in res.stderr
    assert not (workdir / ".mlops" / "jobs").exists() or not any((workdir / ".mlops" / "jobs").iterdir())


@pytest.mark.slow
def test_taxi_pipeline_end_to_end_then_register_model_idempotently(step, workdir):
    example = workdir / "taxi"
    shutil.copytree(TAXI, example, ignore=shutil.ignore_patterns(".mlops"))
    env = {"MLOPS_STORE": str(workdir / ".mlops")}
    data = step("register-data", "--data-yaml", str(example / "data.yml"), env=env)
    assert data.code == 0, data
    job = step("train", "--job", str(example / "pipeline.yml"), env=env)
    assert job.code == 0, job
    metrics = job.outputs["metrics"]
    assert set(metrics) == {"prep_data", "train_model", "evaluate_model", "register_model"}
    assert metrics["evaluate_model"]["r2"] > 0.7
    assert metrics["prep_data"]["train_rows"] + metrics["prep_data"]["test_rows"] == 9773
    info = json.loads((Path(job.outputs["outputs"]["model_info_output_path"]) / "model_info.json").read_text())
    assert info["registered"] is True and info["id"] == "taxi-model:1"

    first = step("register-model", "--model-name", "taxi", "--job-name", job.outputs["job-name"], env=env)
    again = step("register-model", "--model-name", "taxi", "--job-name", job.outputs["job-name"], env=env)
    assert first.code == 0 and again.code == 0, (first, again)
    assert first.outputs["model-id"] == again.outputs["model-id"] == "taxi:1"
    assert first.outputs["created"] is True and again.outputs["created"] is False
    # the registered model loads and predicts
    import mlflow.pyfunc
    import pandas as pd
    from mlops_steps.refs import parse_ref
    mv = LocalBackend(workdir / ".mlops").get_model(parse_ref("taxi:1"))
    frame = pd.read_csv(example / "data" / "taxi-data.csv").drop(columns=["Unnamed: 0", "cost"]).head(5)
    assert len(mlflow.pyfunc.load_model(str(mv.path)).predict(frame)) == 5


def test_register_model_bad_inputs(step, workdir):
    (workdir / "notamodel").mkdir()
    res = step("register-model", "--model-name", "m", "--model-path", "notamodel")
    assert res.code == 2 and "no MLmodel file" in res.stderr
    res = step("register-model", "--model-name", "m", "--job-name", "no-such-job")
    assert res.code == 2 and "job 'no-such-job' not found" in res.stderr
    res = step("register-model", "--model-name", "bad name!", "--model-path", "notamodel")
    assert res.code == 2 and "--model-name" in res.stderr
