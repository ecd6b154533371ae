"""A deploy-batch worker process: Azure ML's batch entry-script contract on one worker.

Started by deploy-batch as `python -m mlops_steps.batch_runner CONFIG_JSON PROTOCOL_FD`. It calls
the scoring script's `init()` once, then for each task read from stdin (one JSON line: mini-batch
index, file paths, part file) calls `run(mini_batch)` and writes the results to the part file
atomically, then answers one JSON line on PROTOCOL_FD. stdout/stderr (the user's prints) go to the
worker log. With no scoring script, a built-in scorer streams CSV/Parquet files in chunks through an
ONNX or MLflow model and returns one `file,prediction` row per input row.
"""
from __future__ import annotations

import csv
import importlib.util
import io
import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any, Callable, Iterator


def _die_with_parent(parent: int) -> None:
    """Ask Linux to kill this worker when deploy-batch dies (no orphans after SIGKILL)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:
        os._exit(1)


# -- result serialisation ------------------------------------------------------------------------
def _rows_of(result: Any) -> Iterator[list[Any]]:
    """The rows of what run() returned: DataFrame rows, or one row per list/array element."""
    if result is None:
        return iter(())
    if hasattr(result, "itertuples"):  # DataFrame: no header, like Azure's append_row
        return (list(row) for row in result.itertuples(index=False, name=None))
    if hasattr(result, "tolist") and not isinstance(result, (str, bytes)):
        result = result.tolist()
    if isinstance(result, (str, bytes)) or not hasattr(result, "__iter__"):
        result = [result]
    return (list(item) if isinstance(item, (list, tuple)) else [item] for item in result)


def write_atomic(path: Path, write: Callable[[Any], int]) -> int:
    """Call write(binary file) on a temp file, fsync, rename to path; return write()'s count."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            count = write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return count


def write_result(result: Any, part: Path | None) -> int:
    """Append-row output of run(): CSV rows to the part file; returns the row count."""
    if part is None:
        if hasattr(result, "__len__") and not isinstance(result, (str, bytes)):
            return len(result)
        return sum(1 for _ in _rows_of(result))

    def write(fh: Any) -> int:
        text = io.TextIOWrapper(fh, encoding="utf-8", newline="")
        writer = csv.writer(text)
        count = 0
        for row in _rows_of(result):
            writer.writerow(row)
            count += 1
        text.flush()
        text.detach()
        return count

    return write_atomic(part, write)


# -- the built-in scorer for models without a scoring script -------------------------------------
class ModelScorer:
    """Scores CSV/Parquet files with an MLflow model folder (ONNX Runtime for the onnx flavor)."""

    def __init__(self, model_path: str, chunk_rows: int):
        import yaml

        self.chunk_rows = chunk_rows
        flavors = yaml.safe_load((Path(model_path) / "MLmodel").read_text()).get("flavors", {})
        self.session = None
        if "onnx" in flavors:
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = 1  # one core per worker; concurrency comes from workers
            options.inter_op_num_threads = 1
            model_file = Path(model_path) / flavors["onnx"].get("data", "model.onnx")
            self.session = ort.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])
        else:
            import mlflow.pyfunc

            self.model = mlflow.pyfunc.load_model(model_path)

    def _arrow_types(self) -> dict[str, Any] | None:
        """Column types for the streaming CSV reader: the ONNX inputs (others are not read)."""
        import pyarrow as pa

        if self.session is None:
            return None
        kinds = {"tensor(double)": pa.float64(), "tensor(float)": pa.float32(), "tensor(int64)": pa.int64(),
                 "tensor(string)": pa.string(), "tensor(int32)": pa.int32(), "tensor(bool)": pa.bool_()}
        inputs = self.session.get_inputs()
        if len(inputs) < 2 and len((inputs[0].shape or [])) == 2:
            return None  # one 2-D tensor input: read every column
        if any(i.type not in kinds for i in inputs):
            return None
        return {i.name: kinds[i.type] for i in inputs}

    def chunks(self, file: str) -> Iterator[Any]:
        """DataFrames (or Arrow record batches) of bounded size, streamed from a CSV or Parquet file."""
        suffix = Path(file).suffix.lower()
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            for batch in pq.ParquetFile(file).iter_batches(batch_size=self.chunk_rows):
                yield batch.to_pandas()
            return
        if suffix != ".csv":
            raise ValueError(f"file type {suffix or '(none)'!r} is not supported: {file}")
        types = self._arrow_types()
        if types is not None:
            import pyarrow.csv as pcsv

            reader = pcsv.open_csv(file, read_options=pcsv.ReadOptions(block_size=1 << 22),
                                   convert_options=pcsv.ConvertOptions(column_types=types,
                                                                       include_columns=list(types)))
            yield from reader  # Arrow record batches, fed to ONNX Runtime without pandas
            return
        import pandas as pd

        for frame in pd.read_csv(file, chunksize=self.chunk_rows):
            yield frame.drop(columns=[c for c in frame.columns if str(c).startswith("Unnamed: ")])

    def predict(self, frame: Any) -> Any:
        """Predictions for a chunk: a 1-D array (ONNX first output) or what pyfunc returns."""
        if self.session is not None and hasattr(frame, "schema"):  # an Arrow record batch
            names = [i.name for i in self.session.get_inputs()]
            feeds = {n: frame.column(n).to_numpy(zero_copy_only=False) for n in names}
            return self.session.run([self.session.get_outputs()[0].name], feeds)[0].reshape(-1)
        if self.session is not None:
            from .onnx_export import onnx_predict

            return onnx_predict(self.session, frame)
        return self.model.predict(frame)

    def score(self, files: list[str], part: Path | None) -> int:
        """Score every file of a mini-batch; `file,prediction` rows go to the part file."""
        import pyarrow.csv as pcsv

        def write(fh: Any) -> int:
            count = 0
            for file in files:
                name = os.path.basename(file)
                for frame in self.chunks(file):
                    if len(frame) == 0:
                        continue
                    preds = self.predict(frame)
                    count += len(frame)
                    if fh is None:
                        continue
                    table = self._table(name, preds)
                    pcsv.write_csv(table, fh, pcsv.WriteOptions(include_header=False, quoting_style="needed"))
            return count

        return write(None) if part is None else write_atomic(part, write)

    @staticmethod
    def _table(name: str, preds: Any) -> Any:
        import numpy as np
        import pyarrow as pa

        if hasattr(preds, "columns"):  # a pyfunc DataFrame: keep every column
            cols = {"file": [name] * len(preds)}
            cols.update({str(c): preds[c].to_numpy() for c in preds.columns})
            return pa.table(cols)
        values = np.asarray(preds)
        if values.ndim > 1:
            values = values.reshape(len(values), -1)[:, 0] if values.shape[1] == 1 else values.tolist()
        return pa.table({"file": pa.repeat(name, len(values)), "prediction": pa.array(values)})


# -- the worker loop -----------------------------------------------------------------------------
def _load_script(path: str) -> Any:
    folder = str(Path(path).parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    spec = importlib.util.spec_from_file_location(Path(path).stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def main(config_path: str, proto_fd: int) -> int:
    config = json.loads(Path(config_path).read_text())
    _die_with_parent(int(config["parent_pid"]))
    proto = os.fdopen(proto_fd, "w", encoding="utf-8", buffering=1)

    def answer(**message: Any) -> None:
        proto.write(json.dumps(message) + "\n")
        proto.flush()

    try:
        if config.get("scoring_script"):
            module = _load_script(config["scoring_script"])
            if hasattr(module, "init"):
                module.init()
            score = lambda files, part: write_result(module.run(files), part)  # noqa: E731
        else:
            scorer = ModelScorer(config["model_path"], int(config.get("chunk_rows", 100_000)))
            score = scorer.score
    except BaseException:
        answer(init_error=traceback.format_exc())
        return 1
    answer(ready=True)
    for line in sys.stdin:
        task = json.loads(line)
        part = Path(task["part"]) if task.get("part") else None
        try:
            rows = score(task["files"], part)
            answer(index=task["index"], ok=True, rows=int(rows))
        except Exception:
            message = traceback.format_exc()
            print(f"mini-batch {task['index']} failed:\n{message}", file=sys.stderr, flush=True)
            answer(index=task["index"], ok=False, error=message)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(sys.argv[2])))
