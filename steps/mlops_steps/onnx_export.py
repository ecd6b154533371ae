"""onnx-export: convert a registered MLflow scikit-learn model to ONNX and register it.

The ONNX graph has one named input per column (numeric columns as doubles, or
floats when an operator needs them; string columns as strings). Predictions of
ONNX Runtime and scikit-learn are compared on sample rows (--data, or the
model's input example); the ONNX model is registered as a new model version
(MLflow onnx flavor) only when they agree within --tolerance, else exit 1.
Re-exporting the same model returns the same version.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pydantic import Field

from .ci import markdown_table
from .contract import BadInput, StepInputs, StepResult, describe_input, step_command

OUTPUTS = {
    "model-name": "name of the registered ONNX model",
    "model-version": "its version (the existing one when the same export was registered before)",
    "model-path": "local path of the registered ONNX MLflow model folder",
    "created": "true when a new version was registered",
    "source-model": "the scikit-learn model that was converted (name:version or path)",
    "input-type": "tensor type used for numeric columns: double or float",
    "rows-checked": "number of sample rows in the parity check",
    "max-abs-diff": "largest absolute difference of predictions/probabilities, ONNX vs scikit-learn",
    "label-mismatches": "rows whose predicted label differs (classifiers; 0 for regressors)",
    "speedup": "scikit-learn predict time / ONNX Runtime time on the sample rows",
}

NUMERIC_KINDS = "fiub"


class Inputs(StepInputs):
    model: str = Field(..., description="Source model: name:version (registered MLflow sklearn model) or folder.")
    allow_latest: bool = Field(False, description="Accept name@latest as the source model.")
    name: str | None = Field(None, description="Registered name of the ONNX model (default: <source name>-onnx).")
    data: str | None = Field(None, description="Sample rows for the parity check: CSV/Parquet file, folder or "
                                               "azureml:name:version (default: the model's input example).")
    target: list[str] = Field(default_factory=list, description="Columns of --data to drop (labels).")
    rows: int = Field(1000, ge=1, description="Sample rows used for the parity check and the speed-up.")
    tolerance: float = Field(1e-5, ge=0, description="Max absolute difference allowed (predictions/probabilities).")
    opset: int | None = Field(None, ge=9, description="ONNX opset of the default domain (default: skl2onnx's).")
    description: str = Field("", description="Description of the registered ONNX model version.")


# -- ONNX helpers shared with the batch runner ----------------------------------------------------
_NP_TYPES = {"tensor(double)": "float64", "tensor(float)": "float32", "tensor(int64)": "int64",
             "tensor(int32)": "int32", "tensor(bool)": "bool", "tensor(string)": "object"}


def onnx_feeds(session: Any, frame: Any) -> dict[str, Any]:
    """ONNX Runtime feeds for a DataFrame: one 1-D array per named input, or the whole frame
    as one 2-D tensor when the model has a single multi-column input."""
    import numpy as np

    inputs = session.get_inputs()
    if len(inputs) == 1 and inputs[0].name not in frame.columns:
        dtype = _NP_TYPES.get(inputs[0].type, "float32")
        return {inputs[0].name: frame.to_numpy(dtype=np.dtype(dtype))}
    missing = [i.name for i in inputs if i.name not in frame.columns]
    if missing:
        raise ValueError(f"missing input column(s): {', '.join(missing)}")
    feeds = {}
    for inp in inputs:
        array = frame[inp.name].to_numpy(dtype=np.dtype(_NP_TYPES.get(inp.type, "float32")))
        feeds[inp.name] = array.reshape(-1, 1) if len(inp.shape or []) == 2 else array
    return feeds


def onnx_predict(session: Any, frame: Any) -> Any:
    """The first output (labels or values) as a 1-D array."""
    return session.run([session.get_outputs()[0].name], onnx_feeds(session, frame))[0].reshape(-1)


def _session(model_bytes: bytes) -> Any:
    import onnxruntime as ort

    return ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])


# -- conversion ------------------------------------------------------------------------------------
def _estimator_names(model: Any) -> list[str]:
    """Class names of a model and every estimator nested in it (pipelines, column transformers)."""
    names = [type(model).__name__]
    for attr in ("steps", "transformers", "estimators"):
        for item in getattr(model, attr, None) or []:
            sub = item[1] if isinstance(item, tuple) else item
            if not isinstance(sub, str):
                names += _estimator_names(sub)
    return names


def _by_name(model: Any) -> bool:
    """Whether the model selects its input columns by name (starts with a ColumnTransformer)."""
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline

    first = model.steps[0][1] if isinstance(model, Pipeline) else model
    return isinstance(first, ColumnTransformer)


def _one_input_per_column(onx: Any, columns: list[str], elem: int) -> None:
    """Give the graph one 1-D input per column: [N] -> Unsqueeze -> [N, 1] -> (Concat ->) model."""
    import onnx
    from onnx import helper

    graph = onx.graph
    opset = next(o.version for o in onx.opset_import if o.domain in ("", "ai.onnx"))
    old_inputs = {i.name: i for i in graph.input}
    renamed = {name: f"{name}__2d" for name in old_inputs}
    for node in graph.node:
        node.input[:] = [renamed.get(n, n) for n in node.input]
    if opset >= 13:  # Unsqueeze takes axes as an input from opset 13, as an attribute before
        graph.initializer.append(helper.make_tensor("mlops_axes_1", onnx.TensorProto.INT64, [1], [1]))

    def unsqueeze(name: str, out: str) -> Any:
        if opset >= 13:
            return helper.make_node("Unsqueeze", [name, "mlops_axes_1"], [out], name=f"unsqueeze_{name}")
        return helper.make_node("Unsqueeze", [name], [out], axes=[1], name=f"unsqueeze_{name}")

    if set(old_inputs) == set(columns):
        front = [unsqueeze(name, renamed[name]) for name in columns]
    else:  # one tensor input: concatenate the columns in training order
        (single,) = old_inputs
        front = [unsqueeze(name, f"{name}__col") for name in columns]
        front.append(helper.make_node("Concat", [f"{c}__col" for c in columns], [renamed[single]],
                                      axis=1, name="concat_columns"))
    del graph.input[:]
    for name in columns:
        col_elem = old_inputs[name].type.tensor_type.elem_type if name in old_inputs else elem
        graph.input.append(helper.make_tensor_value_info(name, col_elem, ["N"]))
    for i, node in enumerate(front):
        graph.node.insert(i, node)
    onnx.checker.check_model(onx)


def convert(model: Any, sample: Any, precision: str, opset: int | None) -> Any:
    """skl2onnx conversion with one named input per column of `sample` (a DataFrame)."""
    import onnx
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType, StringTensorType

    num_type = DoubleTensorType if precision == "double" else FloatTensorType
    elem = onnx.TensorProto.DOUBLE if precision == "double" else onnx.TensorProto.FLOAT
    columns = list(sample.columns)
    is_classifier = hasattr(model, "predict_proba")
    options = {id(model): {"zipmap": False}} if is_classifier else None
    if _by_name(model):
        types = [(c, num_type([None, 1]) if sample[c].dtype.kind in NUMERIC_KINDS else StringTensorType([None, 1]))
                 for c in columns]
    else:
        strings = [c for c in columns if sample[c].dtype.kind not in NUMERIC_KINDS]
        tensor = StringTensorType if strings and len(strings) == len(columns) else num_type
        types = [("features", tensor([None, len(columns)]))]
        if tensor is StringTensorType:
            elem = onnx.TensorProto.STRING
    onx = to_onnx(model, initial_types=types, options=options, target_opset=opset)
    _one_input_per_column(onx, columns, elem)
    return onx


def _unsupported(exc: Exception) -> str | None:
    """The estimator skl2onnx has no converter for, if that is what the error says."""
    import re

    match = re.search(r"for type '<class '([\w.]+)'>'", str(exc))
    if match:
        return match.group(1).rsplit(".", 1)[-1]
    return None


def _convert_best(model: Any, sample: Any, opset: int | None, input_name: str) -> tuple[Any, str]:
    """Double precision when ONNX Runtime runs it, else float; BadInput if neither converts."""
    errors = []
    for precision in ("double", "float"):
        try:
            onx = convert(model, sample, precision, opset)
            _session(onx.SerializeToString())
            return onx, precision
        except Exception as exc:  # skl2onnx / onnxruntime raise many types
            name = _unsupported(exc)
            if name:
                raise BadInput(input_name, f"skl2onnx cannot convert the estimator {name} "
                               f"(model: {' > '.join(_estimator_names(model))})") from None
            errors.append(f"{precision}: {' '.join(str(exc).split())[:300]}")
    raise BadInput(input_name, f"skl2onnx cannot convert {type(model).__name__} "
                   f"({' > '.join(_estimator_names(model))}): {'; '.join(errors)}")


# -- sample rows and parity ------------------------------------------------------------------------
def _feature_columns(model: Any, mlmodel: Any) -> list[str] | None:
    names = getattr(model, "feature_names_in_", None)
    if names is not None:
        return [str(n) for n in names]
    signature = getattr(mlmodel, "signature", None)
    if signature is not None and signature.inputs is not None and signature.inputs.has_input_names():
        return list(signature.inputs.input_names())
    return None


def _sample(inputs: Inputs, backend: Any, model: Any, mlmodel: Any, model_path: Path) -> Any:
    """The sample rows as a DataFrame with the model's feature columns, in training order."""
    import pandas as pd

    from .models import read_table

    if inputs.data:
        table = read_table(backend, inputs.data, describe_input("data"))
        where = describe_input("data")
    else:
        where = describe_input("data")
        try:
            table = mlmodel.load_input_example(str(model_path))
        except Exception as exc:
            raise BadInput(where, f"cannot read the model's input example: {exc}") from None
        if table is None:
            raise BadInput(where, "the model has no input example; give sample rows with --data")
        if not isinstance(table, pd.DataFrame):
            table = pd.DataFrame(table)
    table = table.drop(columns=[c for c in inputs.target if c in table.columns])
    columns = _feature_columns(model, mlmodel) or [str(c) for c in table.columns]
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise BadInput(where, f"sample rows lack the model's column(s): {', '.join(missing)}")
    table = table[columns].head(inputs.rows).reset_index(drop=True)
    if table.empty:
        raise BadInput(where, "no sample rows: the parity check cannot run")
    return table


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def _timed(fn: Any, repeat: int = 5) -> float:
    """Best wall time of `repeat` calls, in seconds."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def parity(model: Any, session: Any, sample: Any) -> dict[str, Any]:
    """Compare scikit-learn and ONNX Runtime on the sample: diffs, mismatches, worst rows, timing."""
    import numpy as np

    feeds = onnx_feeds(session, sample)
    outputs = session.run(None, feeds)
    expected = np.asarray(model.predict(sample))
    got = np.asarray(outputs[0]).reshape(expected.shape)
    result: dict[str, Any] = {"rows": len(sample), "label_mismatches": 0}
    if hasattr(model, "predict_proba") and len(outputs) > 1:
        mismatch = got.astype(str) != expected.astype(str)
        result["label_mismatches"] = int(mismatch.sum())
        diff = np.abs(np.asarray(outputs[1], dtype=np.float64) - model.predict_proba(sample)).max(axis=1)
    else:
        diff = np.abs(got.astype(np.float64) - expected.astype(np.float64)).reshape(len(sample), -1).max(axis=1)
        mismatch = np.zeros(len(sample), dtype=bool)
    result["max_abs_diff"] = float(diff.max())
    worst = np.argsort(-(diff + mismatch))[:5]
    result["worst"] = [{"row": int(i), "sklearn": _plain(expected[i]), "onnx": _plain(got[i]),
                        "abs diff": float(diff[i])} for i in worst]
    t_sk = _timed(lambda: model.predict(sample))
    t_onnx = _timed(lambda: session.run(None, feeds))
    result.update(sklearn_ms=t_sk * 1000, onnx_ms=t_onnx * 1000, speedup=t_sk / t_onnx if t_onnx else 0.0)
    return result


# -- registration ----------------------------------------------------------------------------------
def _save(onx: Any, folder: Path, sample: Any, source: str, precision: str) -> None:
    """Save an MLflow onnx-flavor model whose files depend only on the content (for idempotency)."""
    import hashlib

    import mlflow.onnx
    from mlflow.models import Model, infer_signature

    session = _session(onx.SerializeToString())
    example = sample.head(5).copy()
    for inp in session.get_inputs():  # the example and signature carry the ONNX input types
        if inp.name in example.columns and inp.type in _NP_TYPES:
            example[inp.name] = example[inp.name].to_numpy(dtype=_NP_TYPES[inp.type])
    preds = onnx_predict(session, example)
    import onnx
    import onnxruntime

    requirements = [f"onnx=={onnx.__version__}", f"onnxruntime=={onnxruntime.__version__}"]
    mlflow.onnx.save_model(onx, str(folder), signature=infer_signature(example, preds),
                           input_example=example, pip_requirements=requirements,
                           metadata={"source_model": source, "input_type": precision})
    meta = Model.load(str(folder / "MLmodel"))
    digest = hashlib.sha256(onx.SerializeToString()).hexdigest()
    meta.model_uuid = digest[:32]
    meta.utc_time_created = "1970-01-01 00:00:00"
    meta.save(str(folder / "MLmodel"))


def run(inputs: Inputs, backend: Any) -> StepResult:
    import logging
    import tempfile
    import warnings

    from .models import resolve_model

    warnings.filterwarnings("ignore")
    logging.getLogger("skl2onnx").setLevel(logging.ERROR)
    resolved = resolve_model(backend, inputs.model, describe_input("model"), inputs.allow_latest)
    name = inputs.name or (f"{resolved.name}-onnx" if resolved.name else None)
    if not name:
        raise BadInput(describe_input("name"), "give the registered name of the ONNX model "
                       "(the source is a folder, not a registered model)")
    import mlflow.sklearn
    from mlflow.models import Model

    mlmodel = Model.load(str(resolved.path / "MLmodel"))
    if "sklearn" not in mlmodel.flavors:
        raise BadInput(describe_input("model"), f"{resolved.identity} is not a scikit-learn MLflow model "
                       f"(flavors: {', '.join(mlmodel.flavors)})")
    try:
        model = mlflow.sklearn.load_model(str(resolved.path))
    except Exception as exc:
        raise BadInput(describe_input("model"), f"cannot load {resolved.identity}: {exc}") from None
    sample = _sample(inputs, backend, model, mlmodel, resolved.path)
    onx, precision = _convert_best(model, sample, inputs.opset, describe_input("model"))
    check = parity(model, _session(onx.SerializeToString()), sample)
    passed = check["max_abs_diff"] <= inputs.tolerance and check["label_mismatches"] == 0
    outputs: dict[str, Any] = {
        "model-name": name, "source-model": resolved.identity, "input-type": precision,
        "rows-checked": check["rows"], "max-abs-diff": check["max_abs_diff"],
        "label-mismatches": check["label_mismatches"], "speedup": round(check["speedup"], 2),
    }
    figures = [{"check": "rows", "value": check["rows"]},
               {"check": "max abs diff", "value": f"{check['max_abs_diff']:.3g} (limit {inputs.tolerance:g})"},
               {"check": "label mismatches", "value": check["label_mismatches"]},
               {"check": "sklearn predict", "value": f"{check['sklearn_ms']:.2f} ms"},
               {"check": "ONNX Runtime", "value": f"{check['onnx_ms']:.2f} ms"},
               {"check": "speed-up", "value": f"{check['speedup']:.1f}x"}]
    summary = markdown_table(figures, f"ONNX export of {resolved.identity} ({precision} inputs)")
    if not passed:
        summary += "\n\n" + markdown_table(check["worst"], "Parity failed: worst rows")
        summary += "\n\nThe ONNX model was not registered."
        return StepResult(outputs, summary=summary, passed=False)
    if inputs.dry_run:
        summary += f"\n\nDry run: **{name}** was not registered."
        return StepResult(outputs, summary=summary, passed=True)
    tags = {"mlops.source_model": resolved.identity, "mlops.flavor": "onnx",
            "mlops.parity_max_abs_diff": f"{check['max_abs_diff']:.3g}",
            "mlops.onnx_input_type": precision}
    with tempfile.TemporaryDirectory(prefix="onnx-export-") as tmp:
        folder = Path(tmp) / "model"
        _save(onx, folder, sample, resolved.identity, precision)
        mv = backend.register_model(name, folder, tags=tags, description=inputs.description
                                    or f"ONNX export of {resolved.identity}")
    outputs.update({"model-version": mv.version, "model-path": str(mv.path), "created": mv.created})
    summary += f"\n\nRegistered **{mv.name}:{mv.version}**" + ("" if mv.created else " (already registered)")
    return StepResult(outputs, summary=summary, passed=True)


command = step_command("onnx-export", Inputs, OUTPUTS, run, __doc__ or "")
