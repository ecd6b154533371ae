"""onnx-export on the local backend: a taxi regressor and an adult-income classifier with string
columns are converted, checked against scikit-learn and registered; gates and bad input."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import TAXI
from mlops_steps.onnx_export import onnx_feeds, onnx_predict

ADULT = Path(__file__).parent / "data" / "onnx" / "adult-sample.csv"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Registered sklearn models: taxi:1 (regressor), adult:1 (string columns), kernel:1 (no converter)."""
    import mlflow.sklearn
    from sklearn.compose import ColumnTransformer
    from sklearn.kernel_ridge import KernelRidge
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import Pipeline, make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    from mlops_steps.backends.local import LocalBackend

    root = tmp_path_factory.mktemp("onnx-store")
    backend = LocalBackend(root / ".mlops")
    taxi = pd.read_csv(TAXI / "data" / "taxi-data.csv").drop(columns=["Unnamed: 0"]).head(3000)
    cost = taxi.pop("cost")
    regressor = make_pipeline(StandardScaler(), Ridge()).fit(taxi, cost)
    mlflow.sklearn.save_model(regressor, root / "taxi", pip_requirements=["scikit-learn"])
    backend.register_model("taxi", root / "taxi")

    adult = pd.read_csv(ADULT)
    income = adult.pop("income")
    strings = [c for c in adult.columns if adult[c].dtype.kind not in "fiub"]
    numbers = [c for c in adult.columns if c not in strings]
    classifier = Pipeline([
        ("prep", ColumnTransformer([("cat", OneHotEncoder(handle_unknown="ignore"), strings),
                                    ("num", StandardScaler(), numbers)])),
        ("clf", LogisticRegression(max_iter=1000)),
    ]).fit(adult, income)
    mlflow.sklearn.save_model(classifier, root / "adult", input_example=adult.head(20),
                             pip_requirements=["scikit-learn"])
    backend.register_model("adult", root / "adult")

    kernel = KernelRidge().fit(taxi.head(50), cost.head(50))
    mlflow.sklearn.save_model(kernel, root / "kernel", input_example=taxi.head(5),
                              pip_requirements=["scikit-learn"])
    backend.register_model("kernel", root / "kernel")
    return {"store": str(root / ".mlops"), "taxi": regressor, "adult": classifier, "strings": strings}


def _session(model_path: str):
    import onnxruntime as ort

    return ort.InferenceSession(str(Path(model_path) / "model.onnx"))


def test_regressor_export_parity_registration_and_idempotency(step, workdir, store):
    args = ("onnx-export", "--store", store["store"], "--model", "taxi:1",
            "--data", str(TAXI / "data" / "taxi-data.csv"), "--target", "cost", "--rows", "500")
    res = step(*args)
    assert res.code == 0, res
    out = res.outputs
    assert out["model-name"] == "taxi-onnx" and out["model-version"] == "1" and out["created"] is True
    assert out["source-model"] == "taxi:1" and out["input-type"] == "double"
    assert out["rows-checked"] == 500 and out["max-abs-diff"] <= 1e-5 and out["label-mismatches"] == 0
    assert out["speedup"] > 0

    session = _session(out["model-path"])
    model = store["taxi"]
    assert [i.name for i in session.get_inputs()] == list(model.feature_names_in_)  # one input per column
    batch = pd.read_csv(TAXI / "data" / "taxi-batch.csv")  # other rows, other column order
    np.testing.assert_allclose(onnx_predict(session, batch), model.predict(batch[model.feature_names_in_]),
                               atol=1e-6)
    mlmodel = (Path(out["model-path"]) / "MLmodel").read_text()
    assert "onnx:" in mlmodel and "source_model: taxi:1" in mlmodel

    from mlops_steps.backends.local import LocalBackend
    from mlops_steps.refs import parse_ref
    version = LocalBackend(store["store"]).get_model(parse_ref("taxi-onnx:1"))
    assert version.tags["mlops.source_model"] == "taxi:1"

    again = step(*args)  # the same export again: the same version, nothing new registered
    assert again.code == 0 and again.outputs["model-version"] == "1" and again.outputs["created"] is False


def test_classifier_with_string_columns_uses_the_input_example(step, workdir, store):
    res = step("onnx-export", "--store", store["store"], "--model", "adult:1", "--name", "adult-income-onnx")
    assert res.code == 0, res
    out = res.outputs
    assert out["rows-checked"] == 20 and out["label-mismatches"] == 0 and out["max-abs-diff"] <= 1e-5
    session = _session(out["model-path"])
    types = {i.name: i.type for i in session.get_inputs()}
    assert all(types[c] == "tensor(string)" for c in store["strings"]) and types["age"] in (
        "tensor(double)", "tensor(float)")
    rows = pd.read_csv(ADULT).drop(columns=["income"]).tail(300)  # pandas 3 string columns
    labels, probabilities = session.run(None, onnx_feeds(session, rows))
    assert list(labels) == list(store["adult"].predict(rows))
    np.testing.assert_allclose(probabilities, store["adult"].predict_proba(rows), atol=1e-5)


def test_parity_gate_fails_closed_and_registers_nothing(step, workdir, store):
    res = step("onnx-export", "--store", store["store"], "--model", "adult:1", "--name", "adult-gate",
               "--tolerance", "0")
    assert res.code == 1, res
    assert res.outputs["max-abs-diff"] > 0 and "model-version" not in res.outputs
    assert "Parity failed: worst rows" in res.stderr and "not registered" in res.stderr
    from mlflow.exceptions import MlflowException

    from mlops_steps.backends.local import LocalBackend
    with pytest.raises(MlflowException):
        LocalBackend(store["store"]).client.get_registered_model("adult-gate")


def test_unsupported_estimator_and_bad_inputs_exit_2(step, workdir, store):
    kernel = step("onnx-export", "--store", store["store"], "--model", "kernel:1")
    assert kernel.code == 2, kernel
    assert "cannot convert the estimator KernelRidge" in kernel.stderr and "Traceback" not in kernel.stderr

    latest = step("onnx-export", "--store", store["store"], "--model", "taxi@latest")
    assert latest.code == 2 and "allow-latest" in latest.stderr

    (workdir / "few.csv").write_text("distance,passengers\n1.0,1\n")
    columns = step("onnx-export", "--store", store["store"], "--model", "taxi:1", "--data", "few.csv")
    assert columns.code == 2 and "--data" in columns.stderr and "dropoff_latitude" in columns.stderr

    no_example = step("onnx-export", "--store", store["store"], "--model", "taxi:1")  # saved without one
    assert no_example.code == 2 and "no input example" in no_example.stderr
