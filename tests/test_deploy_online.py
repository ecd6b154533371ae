"""deploy-online and `endpoint` on the local backend: real routers, real serving processes, real HTTP.

Every endpoint a test creates is deleted (its processes stopped) in teardown.
"""
from __future__ import annotations

import http.client
import json
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import BIN, TAXI, StepRun, clean_env

pytestmark = pytest.mark.slow

# Azure ML's documented scoring script (azureml-examples cli/endpoints/online/model-1/onlinescoring/score.py),
# used unmodified.
AZURE_SCORE_PY = '''\
import os
import logging
import json
import numpy
import joblib


def init():
    """
    This function is called when the container is initialized/started, typically after create/update of the deployment.
    You can write the logic here to perform init operations like caching the model in memory
    """
    global model
    # AZUREML_MODEL_DIR is an environment variable created during deployment.
    # It is the path to the model folder (./azureml-models/$MODEL_NAME/$VERSION)
    # Please provide your model's folder name if there is one
    model_path = os.path.join(
        os.getenv("AZUREML_MODEL_DIR"), "model/sklearn_regression_model.pkl"
    )
    # deserialize the model file back into a sklearn model
    model = joblib.load(model_path)
    logging.info("Init complete")


def run(raw_data):
    """
    This function is called for every invocation of the endpoint to perform the actual scoring/prediction.
    In the example we extract the data from the json input and call the scikit-learn model's predict()
    method and return the result back
    """
    logging.info("model 1: request received")
    data = json.loads(raw_data)["data"]
    data = numpy.array(data)
    result = model.predict(data)
    logging.info("Request processed")
    return result.tolist()
'''

FAILING_SCORE_PY = '''\
import os

def init():
    raise RuntimeError("init exploded: cannot open " + os.environ["AZUREML_MODEL_DIR"])

def run(raw_data):
    return []
'''


def cli(cwd: Path, *args: str, timeout: int = 300) -> StepRun:
    out = cwd / f"out-{time.monotonic_ns()}.json"
    proc = subprocess.run([str(BIN / "mlops-step"), *args, "--output-json", str(out)], cwd=cwd,
                          env=clean_env(), capture_output=True, text=True, timeout=timeout)
    return StepRun(proc, out)


def pid_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return stat != "Z"


def state_of(store: Path, name: str) -> dict:
    return json.loads((store / "endpoints" / name / "state.json").read_text())


def post(port: int, body: bytes | str, headers: dict | None = None, method: str = "POST") -> tuple[int, dict, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request(method, "/score", body, {"Content-Type": "application/json", **(headers or {})})
    resp = conn.getresponse()
    data = resp.read().decode()
    conn.close()
    return resp.status, json.loads(data) if data else None, resp.getheader("azureml-model-deployment")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A store with taxi:1 and taxi:2 (two Ridge models) and sklearn-regression:1 (a plain pickle)."""
    import joblib
    import mlflow.sklearn
    import pandas as pd
    from mlflow.models import infer_signature
    from sklearn.linear_model import Ridge

    from mlops_steps.backends.local import LocalBackend

    root = tmp_path_factory.mktemp("online")
    df = pd.read_csv(TAXI / "data" / "taxi-data.csv", index_col=0).head(2000)
    X, y = df.drop(columns=["cost"]), df["cost"]
    backend = LocalBackend(root / ".mlops")
    for i, alpha in enumerate((1.0, 50.0)):
        model = Ridge(alpha=alpha).fit(X.iloc[i * 500:], y.iloc[i * 500:])
        path = root / f"taxi-{i + 1}"
        mlflow.sklearn.save_model(model, str(path), signature=infer_signature(X, model.predict(X)),
                                  input_example=X.head(2))
        backend.register_model("taxi", path)
    import mlflow.onnx
    from skl2onnx import to_onnx

    onx = to_onnx(model, X.head(1).to_numpy(dtype="float32"), target_opset={"": 17, "ai.onnx.ml": 3})
    mlflow.onnx.save_model(onx, str(root / "taxi-onnx"), input_example=X.head(2).to_numpy(dtype="float32"))
    backend.register_model("taxi-onnx", root / "taxi-onnx")  # taxi:2, converted
    (root / "onnx-expected.json").write_text(json.dumps(model.predict(X.head(1)).tolist()))
    plain = root / "plain" / "model"
    plain.mkdir(parents=True)
    joblib.dump(Ridge().fit(X.to_numpy(), y.to_numpy()), plain / "sklearn_regression_model.pkl")
    backend.register_model("sklearn-regression", plain)
    (root / "one-row.json").write_text(json.dumps(
        {"input_data": {"columns": list(X.columns), "index": [0], "data": X.head(1).values.tolist()}}))
    (root / "azure-sample.json").write_text(json.dumps({"data": X.head(2).values.tolist()}))
    return root


def _cleanup(store: Path, *names: str) -> None:
    for name in names:
        state_file = store / ".mlops" / "endpoints" / name / "state.json"
        if not state_file.exists():
            continue
        res = cli(store, "endpoint", "delete", "--name", name)
        if res.code != 0 and state_file.exists():  # last resort: stop what the state names
            state = json.loads(state_file.read_text())
            for proc in [state.get("router"), *state.get("deployments", {}).values()]:
                if proc and pid_alive(proc["pid"]):
                    os.killpg(proc["pid"], 9)


def _write_yaml(folder: Path, name: str, deployment: str, model: str, code: str | None = None,
                traffic: dict | None = None) -> tuple[Path, Path]:
    ep = folder / f"{name}-endpoint.yml"
    ep.write_text("$schema: https://azuremlschemas.azureedge.net/latest/managedOnlineEndpoint.schema.json\n"
                  f"name: {name}\nauth_mode: key\n"
                  + (("traffic:\n" + "".join(f"  {k}: {v}\n" for k, v in traffic.items())) if traffic else ""))
    dep = folder / f"{name}-{deployment}.yml"
    dep.write_text("$schema: https://azuremlschemas.azureedge.net/latest/managedOnlineDeployment.schema.json\n"
                   f"name: {deployment}\nendpoint_name: {name}\nmodel: azureml:{model}\n"
                   "instance_type: Standard_DS3_v2\ninstance_count: 1\n"
                   + (f"code_configuration:\n  code: {code}\n  scoring_script: score.py\n" if code else ""))
    return ep, dep


@pytest.fixture(scope="module")
def blue(store):
    """Endpoint `taxi-ep` with deployment blue (taxi:1, no scoring script) at 100 %, from YAML."""
    ep, dep = _write_yaml(store, "taxi-ep", "blue", "taxi:1")
    res = cli(store, "deploy-online", "--endpoint-yaml", str(ep), "--deployment-yaml", str(dep))
    try:
        assert res.code == 0, res
        yield res
        state = state_of(store / ".mlops", "taxi-ep")
        pids = [state["router"]["pid"], *(d["pid"] for d in state["deployments"].values())]
        deleted = cli(store, "endpoint", "delete", "--name", "taxi-ep")
        assert deleted.code == 0, deleted
        assert not any(pid_alive(p) for p in pids)  # delete stops the router and every deployment
        assert cli(store, "endpoint", "delete", "--name", "taxi-ep").code == 2
    finally:
        _cleanup(store, "taxi-ep")
    assert not (store / ".mlops" / "endpoints" / "taxi-ep").exists()


def test_first_deploy_outputs_and_idempotent_rerun(store, blue):
    out = blue.outputs
    assert out["endpoint-name"] == "taxi-ep" and out["deployment-name"] == "blue"
    assert out["traffic"] == {"blue": 100} and out["model"] == "taxi:1" and out["changed"] is True
    assert out["scoring-uri"].startswith("http://127.0.0.1:") and out["scoring-uri"].endswith("/score")
    before = state_of(store / ".mlops", "taxi-ep")
    ep, dep = store / "taxi-ep-endpoint.yml", store / "taxi-ep-blue.yml"
    again = cli(store, "deploy-online", "--endpoint-yaml", str(ep), "--deployment-yaml", str(dep))
    assert again.code == 0, again
    assert again.outputs["changed"] is False and again.outputs["scoring-uri"] == out["scoring-uri"]
    after = state_of(store / ".mlops", "taxi-ep")
    assert after["deployments"]["blue"]["pid"] == before["deployments"]["blue"]["pid"]  # no restart
    assert after["router"]["pid"] == before["router"]["pid"]
    assert after["generation"] == before["generation"]  # nothing written


def test_payload_forms_and_malformed_payloads_get_400(store, blue):
    port = state_of(store / ".mlops", "taxi-ep")["router"]["port"]
    example = json.loads((store / "one-row.json").read_text())["input_data"]
    cols, row = example["columns"], example["data"][0]
    status, body, served = post(port, json.dumps({"input_data": example}))
    assert status == 200 and served == "blue" and isinstance(body, list) and len(body) == 1
    expected = body[0]
    forms = [
        {"input_data": [row]},
        {"dataframe_split": {"columns": cols, "data": [row]}},
        {"dataframe_records": [dict(zip(cols, row))]},
        {"inputs": dict(zip(cols, row))},
        {"input_data": {"columns": cols[::-1], "index": [7], "data": [row[::-1]]}},  # column order by name
    ]
    for form in forms:
        status, body, _ = post(port, json.dumps(form))
        assert status == 200, (form, body)
        got = body if isinstance(body, list) else body["predictions"]
        assert got == pytest.approx([expected]), form

    bad = {
        "{not json": "not valid JSON",
        "[1, 2]": "JSON object",
        json.dumps({"rows": [row]}): "expected one of input_data",
        json.dumps({"input_data": {"columns": cols, "data": [row[:3]]}}): "does not have",
        json.dumps({"input_data": [row[:5]]}): "the model expects 20",
        json.dumps({"dataframe_split": {"columns": cols[1:], "data": [row[1:]]}}): "missing column",
        json.dumps({"dataframe_records": [{**dict(zip(cols, row)), "distance": "far"}]}): "distance",
        json.dumps({"dataframe_records": [{**dict(zip(cols, row)), "passengers": None}]}): "passengers",
        json.dumps({"inputs": {"distance": [1, 2], "vendor": [1]}}): "same number",
        json.dumps({"input_data": "text"}): "input_data",
    }
    for payload, needle in bad.items():
        status, body, _ = post(port, payload)
        assert status == 400, (payload, status, body)
        assert needle in body["message"], (payload, body)
    status, body, _ = post(port, json.dumps({"input_data": example}), {"azureml-model-deployment": "nope"})
    assert status == 404 and "nope" in body["message"]
    status, body, _ = post(port, "", method="GET")
    assert status == 405 and "POST" in body["message"]


def test_onnx_deployment_at_zero_traffic_reached_by_header(store, blue):
    res = cli(store, "deploy-online", "--endpoint-name", "taxi-ep", "--deployment-name", "onnx",
              "--model", "taxi-onnx:1", "--traffic", "blue=100")
    try:
        assert res.code == 0, res
        assert res.outputs["traffic"] == {"blue": 100, "onnx": 0}
        state = state_of(store / ".mlops", "taxi-ep")
        assert "engine onnxruntime" in Path(state["deployments"]["onnx"]["log"]).read_text()
        row = json.loads((store / "one-row.json").read_text())["input_data"]["data"]
        status, body, served = post(state["router"]["port"], json.dumps({"input_data": row}),
                                    {"azureml-model-deployment": "onnx"})
        assert status == 200 and served == "onnx" and len(body) == 1
        expected = json.loads((store / "onnx-expected.json").read_text())
        assert body == pytest.approx(expected, abs=1e-3)  # float32 ONNX vs scikit-learn
        status, body, _ = post(state["router"]["port"], json.dumps({"input_data": [["a"] * 20]}),
                               {"azureml-model-deployment": "onnx"})
        assert status == 400 and "message" in body

        onnx_pid = state["deployments"]["onnx"]["pid"]
        split = cli(store, "deploy-online", "--endpoint-name", "taxi-ep", "--deployment-name", "onnx",
                    "--model", "taxi-onnx:1", "--traffic", "blue=50", "--traffic", "onnx=50")
        assert split.code == 0 and split.outputs["changed"] is True, split
        assert state_of(store / ".mlops", "taxi-ep")["deployments"]["onnx"]["pid"] == onnx_pid  # traffic only
        served = [post(state["router"]["port"], json.dumps({"input_data": row}))[2] for _ in range(200)]
        assert 60 <= served.count("onnx") <= 140 and served.count("blue") == 200 - served.count("onnx")
    finally:
        back = cli(store, "deploy-online", "--endpoint-name", "taxi-ep", "--deployment-name", "blue",
                   "--model", "taxi:1", "--traffic", "blue=100")
        assert back.code == 0, back
        gone = cli(store, "endpoint", "delete", "--name", "taxi-ep", "--deployment-name", "onnx")
        assert gone.code == 0, gone
    assert list(state_of(store / ".mlops", "taxi-ep")["deployments"]) == ["blue"]


def test_endpoint_commands_across_invocations(store, blue):
    listed = cli(store, "endpoint", "list")
    assert listed.code == 0, listed
    assert [e["name"] for e in listed.outputs["endpoints"]] == ["taxi-ep"]
    shown = cli(store, "endpoint", "show", "--name", "taxi-ep")
    assert shown.code == 0 and shown.outputs["traffic"] == {"blue": 100}
    assert shown.outputs["endpoint"]["deployments"]["blue"]["running"] is True
    invoked = cli(store, "endpoint", "invoke", "--name", "taxi-ep", "--request-file", str(store / "one-row.json"))
    assert invoked.code == 0, invoked
    assert invoked.outputs["deployment-name"] == "blue" and len(json.loads(invoked.outputs["response"])) == 1
    (store / "bad.json").write_text('{"input_data": {"data": [[1]]}}')
    rejected = cli(store, "endpoint", "invoke", "--name", "taxi-ep", "--request-file", str(store / "bad.json"))
    assert rejected.code == 2 and "HTTP 400" in rejected.stderr and "Traceback" not in rejected.stderr
    logs = cli(store, "endpoint", "logs", "--name", "taxi-ep", "--deployment-name", "blue")
    assert logs.code == 0 and "model loaded" in logs.outputs["logs"]["blue"]
    missing = cli(store, "endpoint", "show", "--name", "nope")
    assert missing.code == 2 and "taxi-ep" in missing.stderr  # names the endpoints that exist


def test_failing_init_is_rolled_back_with_its_log(store, blue):
    code = store / "failing"
    code.mkdir(exist_ok=True)
    (code / "score.py").write_text(FAILING_SCORE_PY)
    before = state_of(store / ".mlops", "taxi-ep")
    res = cli(store, "deploy-online", "--endpoint-name", "taxi-ep", "--deployment-name", "green",
              "--model", "taxi:2", "--code-path", str(code), "--scoring-script", "score.py",
              "--traffic", "green=100", "--startup-timeout", "120")
    assert res.code == 3, res
    assert "init exploded" in res.stderr  # the deployment's own log is shown
    assert "traffic is unchanged (blue=100)" in res.stderr
    after = state_of(store / ".mlops", "taxi-ep")
    assert after["traffic"] == {"blue": 100} and list(after["deployments"]) == ["blue"]
    assert after["deployments"]["blue"]["pid"] == before["deployments"]["blue"]["pid"]
    assert not (store / ".mlops" / "endpoints" / "taxi-ep" / "green").exists() or \
        not list((store / ".mlops" / "endpoints" / "taxi-ep" / "green").glob("code-*"))
    status, _, served = post(after["router"]["port"], (store / "one-row.json").read_text())
    assert status == 200 and served == "blue"


def test_latest_refused_and_bad_inputs(store):
    res = cli(store, "deploy-online", "--endpoint-name", "never", "--deployment-name", "blue",
              "--model", "taxi@latest")
    assert res.code == 2 and "explicit version" in res.stderr and "Traceback" not in res.stderr
    res = cli(store, "deploy-online", "--endpoint-name", "never", "--deployment-name", "blue",
              "--model", "taxi:1", "--traffic", "blue=60", "--traffic", "red=40")
    assert res.code == 2 and "red" in res.stderr
    res = cli(store, "deploy-online", "--endpoint-name", "never", "--deployment-name", "blue",
              "--model", "taxi:9")
    assert res.code == 2 and "taxi" in res.stderr
    assert not (store / ".mlops" / "endpoints" / "never").exists()


def test_azure_documented_score_py_runs_unmodified(store):
    code = store / "onlinescoring"
    code.mkdir(exist_ok=True)
    (code / "score.py").write_text(AZURE_SCORE_PY)
    ep, dep = _write_yaml(store, "script-ep", "blue", "sklearn-regression:1", code="./onlinescoring")
    try:
        res = cli(store, "deploy-online", "--endpoint-yaml", str(ep), "--deployment-yaml", str(dep),
                  "--sample-request", str(store / "azure-sample.json"))
        assert res.code == 0, res
        port = state_of(store / ".mlops", "script-ep")["router"]["port"]
        status, body, served = post(port, (store / "azure-sample.json").read_text())
        assert status == 200 and served == "blue" and len(body) == 2 and all(isinstance(v, float) for v in body)
        status, body, _ = post(port, "{broken")  # the router answers 400 before the script sees it
        assert status == 400 and "JSON" in body["message"]
        logs = cli(store, "endpoint", "logs", "--name", "script-ep")
        assert "Users's init has completed successfully" in logs.outputs["logs"]["blue"]
    finally:
        _cleanup(store, "script-ep")


def test_blue_green_rollout_under_load_loses_no_request(store, blue):
    ep = store / "taxi-ep-endpoint.yml"
    body = (store / "one-row.json").read_text()
    state = state_of(store / ".mlops", "taxi-ep")
    port, blue_pid = state["router"]["port"], state["deployments"]["blue"]["pid"]
    results: list[tuple[int, str]] = []
    stop = threading.Event()

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        while not stop.is_set():
            try:
                conn.request("POST", "/score", body, {"Content-Type": "application/json"})
                resp = conn.getresponse()
                resp.read()
                results.append((resp.status, resp.getheader("azureml-model-deployment")))
            except OSError as exc:
                results.append((0, repr(exc)))
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            time.sleep(0.005)

    threads = [threading.Thread(target=client) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        _, green_dep = _write_yaml(store, "taxi-ep", "green", "taxi:2")
        second = cli(store, "deploy-online", "--endpoint-yaml", str(ep), "--deployment-yaml", str(green_dep),
                     "--traffic", "green=100")
        green_pid = state_of(store / ".mlops", "taxi-ep")["deployments"].get("green", {}).get("pid")
        switched = len(results)
        # a changed deployment (new model version) is replaced in place, still under load
        third = cli(store, "deploy-online", "--endpoint-name", "taxi-ep", "--deployment-name", "green",
                    "--model", "taxi:1", "--traffic", "green=100")
        time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join()
    try:
        assert second.code == 0, second
        assert second.outputs["traffic"] == {"blue": 0, "green": 100}
        failures = [r for r in results if r[0] != 200]
        assert not failures, failures[:5]
        served = [name for _, name in results]
        assert "blue" in served and served[-1] == "green" and len(results) > 50
        assert served.index("green") > served.index("blue")
        assert served[served.index("green"):].count("blue") <= 3  # only requests already in flight
        assert pid_alive(blue_pid)  # blue stays, at 0 %, as in Azure
        assert third.code == 0 and third.outputs["changed"] is True and third.outputs["model"] == "taxi:1", third
        new_green = state_of(store / ".mlops", "taxi-ep")["deployments"]["green"]
        assert new_green["model"] == "taxi:1" and new_green["pid"] != green_pid and not pid_alive(green_pid)
        assert len(results) > switched + 50  # requests kept flowing through the in-place replacement
        refused = cli(store, "endpoint", "delete", "--name", "taxi-ep", "--deployment-name", "green")
        assert refused.code == 2 and "100 %" in refused.stderr
    finally:  # back to blue=100 without green, for the other tests
        green_pid = state_of(store / ".mlops", "taxi-ep")["deployments"].get("green", {}).get("pid")
        back = cli(store, "deploy-online", "--endpoint-name", "taxi-ep", "--deployment-name", "blue",
                   "--model", "taxi:1", "--traffic", "blue=100")
        assert back.code == 0 and back.outputs["changed"] is True, back
        assert state_of(store / ".mlops", "taxi-ep")["deployments"]["blue"]["pid"] == blue_pid
        if green_pid:
            gone = cli(store, "endpoint", "delete", "--name", "taxi-ep", "--deployment-name", "green")
            assert gone.code == 0 and not pid_alive(green_pid), gone
