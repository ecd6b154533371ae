"""deploy-batch on the local backend: real worker processes running Azure ML's batch contract over
taxi CSV files, crash safety under SIGKILL, retries/timeouts/error threshold, bad input."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import BIN, TAXI, clean_env

@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A store with the taxi model registered as sklearn (taxi:1) and as ONNX (taxi-onnx:1)."""
    import mlflow.sklearn
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from mlops_steps.backends.local import LocalBackend
    from mlops_steps.onnx_export import _save, convert

    root = tmp_path_factory.mktemp("batch-store")
    data = pd.read_csv(TAXI / "data" / "taxi-data.csv").drop(columns=["Unnamed: 0"]).head(3000)
    y = data.pop("cost")
    model = make_pipeline(StandardScaler(), Ridge()).fit(data, y)
    backend = LocalBackend(root / ".mlops")
    mlflow.sklearn.save_model(model, root / "sk" / "model", input_example=data.head(3),
                              pip_requirements=["scikit-learn"])
    backend.register_model("taxi", root / "sk" / "model")
    _save(convert(model, data.head(100), "double", None), root / "onnx" / "model", data.head(100), "taxi:1", "double")
    backend.register_model("taxi-onnx", root / "onnx" / "model")
    return {"store": str(root / ".mlops"), "model": model, "onnx_folder": str(root / "onnx" / "model")}


def _split_batch(folder: Path, files: int, rows: int) -> pd.DataFrame:
    """taxi-batch.csv split into `files` CSV files of `rows` rows; returns the rows used."""
    folder.mkdir()
    batch = pd.read_csv(TAXI / "data" / "taxi-batch.csv").head(files * rows)
    for i in range(files):
        batch.iloc[i * rows:(i + 1) * rows].to_csv(folder / f"taxi-{i:03d}.csv", index=False)
    return batch


def _expected(model, folder: Path) -> pd.DataFrame:
    frames = []
    for file in sorted(folder.glob("*.csv")):
        data = pd.read_csv(file)[list(model.feature_names_in_)]
        frames.append(pd.DataFrame({"file": file.name, "row": range(len(data)), "prediction": model.predict(data)}))
    return pd.concat(frames, ignore_index=True)


SCRIPT = '''\
import os
import time

import numpy as np
import onnxruntime as ort
import pandas as pd


def init():
    global session
    model_path = os.path.join(os.environ["AZUREML_MODEL_DIR"], "model", "model.onnx")
    session = ort.InferenceSession(model_path)


def run(mini_batch):
    results = []
    for file_path in mini_batch:
        data = pd.read_csv(file_path)
        feeds = {i.name: data[i.name].to_numpy(dtype=np.float64) for i in session.get_inputs()}
        pred = session.run(None, feeds)[0].reshape(-1)
        results.append(pd.DataFrame({"file": os.path.basename(file_path), "row": range(len(data)),
                                     "prediction": pred}))
    time.sleep(float(os.environ.get("SLOW_SECONDS", "0")))
    return pd.concat(results)
'''


def _deployment_yaml(folder: Path, model: str, script: str | None, extra: str = "") -> Path:
    code = f"code_configuration:\n  code: code\n  scoring_script: {script}\n" if script else ""
    spec = folder / "deployment.yml"
    spec.write_text(
        "$schema: https://azuremlschemas.azureedge.net/latest/modelBatchDeployment.schema.json\n"
        f"name: blue\nendpoint_name: taxi-batch\ntype: model\nmodel: {model}\n{code}"
        "compute: azureml:cpu-cluster\nresources:\n  instance_count: 1\n"
        f"settings:\n  max_concurrency_per_instance: 2\n  mini_batch_size: 2\n  output_action: append_row\n"
        f"  output_file_name: predictions.csv\n  retry_settings:\n    max_retries: 1\n    timeout: 60\n"
        f"  error_threshold: -1\n{extra}")
    (folder / "endpoint.yml").write_text(
        "$schema: https://azuremlschemas.azureedge.net/latest/batchEndpoint.schema.json\n"
        "name: taxi-batch\nauth_mode: aad_token\n")
    return spec


def test_onnx_model_without_script_scores_every_row_once(step, workdir, store):
    _split_batch(workdir / "in", files=5, rows=120)
    (workdir / "in" / ".hidden").write_text("ignored")
    args = ("deploy-batch", "--store", store["store"], "--endpoint-name", "taxi-batch", "--model", "taxi-onnx:1",
            "--input", "in", "--mini-batch-size", "2", "--max-concurrency-per-instance", "2",
            "--output", "out", "--chunk-rows", "50")
    res = step(*args)
    assert res.code == 0, res
    out = res.outputs
    assert out["status"] == "Completed" and out["rows-scored"] == 600 and out["files-scored"] == 5
    assert out["mini-batches"] == 3 and out["failed-files"] == 0
    got = pd.read_csv(out["output-path"], header=None, names=["file", "prediction"])
    want = _expected(store["model"], workdir / "in")
    assert list(got["file"]) == list(want["file"])  # one row per input row, in input order
    np.testing.assert_allclose(got["prediction"], want["prediction"], atol=1e-3)

    mtime = Path(out["output-path"]).stat().st_mtime_ns
    again = step(*args)  # same inputs: the same job, already completed, nothing rewritten
    assert again.code == 0 and again.outputs["job-name"] == out["job-name"]
    assert "already completed" in again.stderr
    assert Path(out["output-path"]).stat().st_mtime_ns == mtime


def test_sigkill_midway_then_resume_gives_exactly_one_prediction_per_row(step, workdir, store):
    _split_batch(workdir / "in", files=30, rows=20)
    (workdir / "code").mkdir()
    (workdir / "code" / "score.py").write_text(SCRIPT)
    _deployment_yaml(workdir, "azureml:taxi-onnx:1", "score.py",
                     "environment_variables:\n  SLOW_SECONDS: '0.4'\n")
    args = ["deploy-batch", "--store", store["store"], "--endpoint-yaml", "endpoint.yml",
            "--deployment-yaml", "deployment.yml", "--input", "in", "--job-name", "nightly",
            "--model", store["onnx_folder"]]  # the registered model's folder: no registry look-up, faster
    journal = Path(store["store"]) / "batch" / "taxi-batch" / "nightly" / "journal.jsonl"
    proc = subprocess.Popen([str(BIN / "mlops-step"), *args], cwd=workdir, env=clean_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if journal.is_file() and len(journal.read_text().splitlines()) >= 4:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)  # the whole process group: the step and its workers
    proc.wait()
    committed = len(journal.read_text().splitlines())
    assert 4 <= committed < 15

    res = step(*args)
    assert res.code == 0, res
    assert "resuming job nightly" in res.stderr
    assert res.outputs["rows-scored"] == 600 and res.outputs["files-scored"] == 30
    got = pd.read_csv(res.outputs["output-path"], header=None, names=["file", "row", "prediction"])
    assert len(got) == 600 and not got.duplicated(["file", "row"]).any()
    want = _expected(store["model"], workdir / "in")
    assert list(zip(got["file"], got["row"])) == list(zip(want["file"], want["row"]))
    np.testing.assert_allclose(got["prediction"], want["prediction"], atol=1e-6)
    records = [json.loads(line) for line in journal.read_text().splitlines()]
    assert sorted(r["index"] for r in records) == list(range(15))  # each mini-batch committed once


AZURE_DOC_DRIVER = '''\
import os
import mlflow
import pandas as pd

def init():
    global model

    # AZUREML_MODEL_DIR is an environment variable created during deployment
    # It is the path to the model folder
    model_path = os.path.join(os.environ["AZUREML_MODEL_DIR"], "model")
    model = mlflow.pyfunc.load_model(model_path)

def run(mini_batch):
    results = pd.DataFrame(columns=['file', 'predictions'])

    for file_path in mini_batch:
        data = pd.read_csv(file_path)
        pred = model.predict(data)

        df = pd.DataFrame(pred, columns=['predictions'])
        df['file'] = os.path.basename(file_path)
        results = pd.concat([results, df])

    return results
'''


def test_scoring_script_from_azure_docs_runs_unmodified(step, workdir, store):
    """The batch driver of Azure ML's 'Deploy MLflow models in batch deployments' article."""
    _split_batch(workdir / "in", files=3, rows=50)
    (workdir / "code").mkdir()
    (workdir / "code" / "batch_driver.py").write_text(AZURE_DOC_DRIVER)
    _deployment_yaml(workdir, "azureml:taxi:1", "batch_driver.py")
    res = step("deploy-batch", "--store", store["store"], "--endpoint-yaml", "endpoint.yml",
               "--deployment-yaml", "deployment.yml", "--input", "in", "--max-concurrency-per-instance", "1")
    assert res.code == 0, res
    assert res.outputs["rows-scored"] == 150 and res.outputs["mini-batches"] == 2
    got = pd.read_csv(res.outputs["output-path"], header=None, names=["file", "predictions"])
    want = _expected(store["model"], workdir / "in")
    assert list(got["file"]) == list(want["file"])
    np.testing.assert_allclose(got["predictions"], want["prediction"], rtol=1e-9)


FLAKY = '''\
import os
import time

import pandas as pd

def init():
    global calls
    calls = 0

def run(mini_batch):
    names = [os.path.basename(f) for f in mini_batch]
    if any(n.startswith("bad") for n in names):
        raise ValueError("cannot score " + ",".join(names))
    if any(n.startswith("slow") for n in names):
        time.sleep(60)
    return pd.DataFrame({"file": names, "status": "ok"})
'''


def test_error_threshold_retries_and_timeouts(step, workdir, store):
    (workdir / "in").mkdir()
    for name in ("a.txt", "b.txt", "bad.txt", "c.txt", "slow.txt"):
        (workdir / "in" / name).write_text("x")
    (workdir / "code").mkdir()
    (workdir / "code" / "score.py").write_text(FLAKY)
    args = ["deploy-batch", "--store", store["store"], "--endpoint-name", "flaky", "--code", "code",
            "--scoring-script", "score.py", "--input", "in", "--mini-batch-size", "1", "--max-retries", "1",
            "--timeout", "3", "--max-concurrency-per-instance", "2", "--job-name", "flaky-job"]
    failed = step(*args, "--error-threshold", "1")
    assert failed.code == 3, failed
    assert "exceed the error threshold 1" in failed.stderr
    assert "ValueError: cannot score bad.txt" in failed.stderr and "timed out after 3 s" in failed.stderr
    assert "retrying" in failed.stderr  # each failed mini-batch was tried 1 + max_retries times
    job = json.loads((Path(store["store"]) / "batch" / "flaky" / "flaky-job" / "job.json").read_text())
    assert job["status"] == "Failed"

    tolerant = step(*args, "--error-threshold", "-1")  # same job, resumed: committed batches skipped
    assert tolerant.code == 0, tolerant
    assert tolerant.outputs["failed-files"] == 2 and tolerant.outputs["files-scored"] == 3
    lines = Path(tolerant.outputs["output-path"]).read_text().splitlines()
    assert sorted(lines) == ["a.txt,ok", "b.txt,ok", "c.txt,ok"]


def test_init_failure_is_exit_3_with_the_log(step, workdir, store):
    (workdir / "in").mkdir()
    (workdir / "in" / "a.txt").write_text("x")
    (workdir / "code").mkdir()
    (workdir / "code" / "score.py").write_text("def init():\n    raise RuntimeError('no model here')\n\n"
                                               "def run(mini_batch):\n    return mini_batch\n")
    res = step("deploy-batch", "--store", store["store"], "--endpoint-name", "broken", "--code", "code",
               "--scoring-script", "score.py", "--input", "in")
    assert res.code == 3 and "init() failed" in res.stderr and "RuntimeError: no model here" in res.stderr


def test_summary_only_and_dry_run(step, workdir, store):
    _split_batch(workdir / "in", files=2, rows=10)
    args = ("deploy-batch", "--store", store["store"], "--endpoint-name", "taxi-batch", "--model",
            store["onnx_folder"], "--input", "in", "--output-action", "summary_only", "--output", "out")
    dry = step(*args, "--dry-run")
    assert dry.code == 0 and dry.outputs["status"] == "DryRun" and dry.outputs["mini-batches"] == 1
    job_dir = Path(store["store"]) / "batch" / "taxi-batch" / dry.outputs["job-name"]
    assert not job_dir.exists()  # a dry run runs and writes nothing
    res = step(*args)
    assert res.code == 0, res
    assert res.outputs["job-name"] == dry.outputs["job-name"]
    assert res.outputs["rows-scored"] == 20 and not (workdir / "out" / "predictions.csv").exists()


def test_bad_inputs_exit_2(step, workdir, store):
    _split_batch(workdir / "in", files=1, rows=5)
    base = ("deploy-batch", "--store", store["store"], "--endpoint-name", "taxi-batch", "--input", "in")
    latest = step(*base, "--model", "taxi-onnx@latest")
    assert latest.code == 2 and "allow-latest" in latest.stderr and "Traceback" not in latest.stderr
    missing = step("deploy-batch", "--store", store["store"], "--endpoint-name", "e", "--model", "taxi-onnx:1",
                   "--input", "nope")
    assert missing.code == 2 and "--input" in missing.stderr and "nope" in missing.stderr
    nothing = step(*base)
    assert nothing.code == 2 and "--model" in nothing.stderr
    (workdir / "deployment.yml").write_text("name: blue\nendpoint_name: e\nmini_batch_size: many\n")
    schema = step(*base, "--deployment-yaml", "deployment.yml")
    assert schema.code == 2 and "mini_batch_size" in schema.stderr and "Traceback" not in schema.stderr
    assert not (Path(store["store"]) / "batch" / "e").exists()  # nothing started by failed runs
