"""Serving processes behind a local online endpoint (started detached by deploy-online).

    python -m mlops_steps.online_server router --state STATE.json --port N --instance ID
    python -m mlops_steps.online_server model --model-dir DIR --port N --instance ID
    python -m mlops_steps.online_server azmlinfsrv --instance ID -- AZMLINFSRV-ARGS...

`router` is the endpoint: it routes POST /score to a deployment by traffic weight (or by the
`azureml-model-deployment` header) and re-reads the endpoint state when it changes, so a traffic
switch never drops a request. `model` serves an MLflow (sklearn, ONNX, any pyfunc) model with
no scoring script. `azmlinfsrv` runs Azure ML's own inference server bound to 127.0.0.1.
All listen on 127.0.0.1 only and use a small threaded HTTP/1.1 server with keep-alive.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import socket
import socketserver
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

MAX_BODY = 100 * 1024 * 1024
DEPLOYMENT_HEADER = "azureml-model-deployment"
REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
           413: "Payload Too Large", 500: "Internal Server Error", 502: "Bad Gateway",
           503: "Service Unavailable"}

Reply = tuple[int, bytes, dict[str, str]]


class HttpError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def json_reply(status: int, payload: Any, headers: dict[str, str] | None = None) -> Reply:
    return status, json.dumps(payload).encode(), {"Content-Type": "application/json", **(headers or {})}


def error_reply(status: int, message: str) -> Reply:
    return json_reply(status, {"message": message})


# -- a lean threaded HTTP/1.1 server ------------------------------------------------------------
def read_request(rfile: Any) -> tuple[str, str, dict[str, str], bytes, bool] | None:
    """One request (method, path, headers, body, keep_alive), or None at end of stream."""
    line = rfile.readline(65537)
    while line in (b"\r\n", b"\n"):
        line = rfile.readline(65537)
    if not line:
        return None
    parts = line.split()
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
        raise HttpError(400, "malformed HTTP request line")
    headers = read_headers(rfile)
    version = parts[2].decode("latin-1")
    conn = headers.get("connection", "").lower()
    keep = conn != "close" if version == "HTTP/1.1" else conn == "keep-alive"
    body = read_body(rfile, headers, until_close=False)
    return parts[0].decode("latin-1"), parts[1].decode("latin-1"), headers, body, keep


def read_headers(rfile: Any) -> dict[str, str]:
    headers: dict[str, str] = {}
    while True:
        raw = rfile.readline(65537)
        if raw in (b"\r\n", b"\n", b""):
            return headers
        key, _, value = raw.partition(b":")
        headers[key.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")


def read_body(rfile: Any, headers: dict[str, str], until_close: bool) -> bytes:
    """A message body: chunked, Content-Length, or (responses only) up to the end of the stream."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        chunks = []
        while True:
            try:
                size = int(rfile.readline(1024).split(b";")[0].strip() or b"0", 16)
            except ValueError:
                raise HttpError(400, "invalid chunked encoding") from None
            if size == 0:
                while rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(chunks)
            chunks.append(rfile.read(size))
            rfile.readline(3)
    if "content-length" not in headers and until_close:
        return rfile.read()
    try:
        length = int(headers.get("content-length", "0"))
    except ValueError:
        raise HttpError(400, "invalid Content-Length") from None
    if length > MAX_BODY:
        raise HttpError(413, f"body larger than {MAX_BODY} bytes")
    return rfile.read(length) if length > 0 else b""


def encode_reply(reply: Reply, keep: bool) -> bytes:
    status, body, headers = reply
    head = [f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}", f"Content-Length: {len(body)}",
            "Connection: keep-alive" if keep else "Connection: close"]
    head += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


App = Callable[[str, str, dict[str, str], bytes], Reply]


class _Handler(socketserver.StreamRequestHandler):
    disable_nagle_algorithm = True

    def handle(self) -> None:
        app: App = self.server.app  # type: ignore[attr-defined]
        while True:
            try:
                req = read_request(self.rfile)
                if req is None:
                    return
                method, path, headers, body, keep = req
                try:
                    reply = app(method, path, headers, body)
                except HttpError as exc:
                    reply = error_reply(exc.status, str(exc))
                except Exception as exc:  # never let a request kill the connection silently
                    log(f"error: {type(exc).__name__}: {exc}")
                    reply = error_reply(500, f"internal error: {type(exc).__name__}: {exc}")
            except HttpError as exc:
                self.wfile.write(encode_reply(error_reply(exc.status, str(exc)), False))
                return
            except (OSError, ValueError):
                return
            self.wfile.write(encode_reply(reply, keep))
            if not keep:
                return


class Server(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, port: int, app: App):
        self.app = app
        super().__init__(("127.0.0.1", port), _Handler)


def log(message: str) -> None:
    sys.stderr.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")
    sys.stderr.flush()


# -- the router ---------------------------------------------------------------------------------
class Router:
    """Routes /score to deployments; the routing table is replaced atomically on state changes."""

    def __init__(self, state_path: Path, timeout: float = 90.0):
        self.state_path = state_path
        self.timeout = timeout
        self.stamp: tuple[int, int, int] | None = None
        self.table: dict[str, Any] = {"generation": -1, "ports": {}, "names": [], "weights": [],
                                      "timeouts": {}, "scripted": set()}
        self.local = threading.local()
        self.lock = threading.Lock()
        self.reload(force=True)

    def reload(self, force: bool = False) -> dict[str, Any]:
        try:
            st = os.stat(self.state_path)
        except OSError:
            return self.table
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        if not force and stamp == self.stamp:
            return self.table
        with self.lock:
            try:
                state = json.loads(self.state_path.read_text())
            except (OSError, ValueError):
                return self.table  # keep serving with the last good table
            ports = {name: d["port"] for name, d in state.get("deployments", {}).items()}
            traffic = {k: int(v) for k, v in state.get("traffic", {}).items() if k in ports and int(v) > 0}
            self.table = {"generation": state.get("generation", 0), "ports": ports,
                          "names": list(traffic), "weights": list(traffic.values()),
                          "timeouts": {name: d.get("request_timeout_s", self.timeout)
                                       for name, d in state.get("deployments", {}).items()},
                          "scripted": {name for name, d in state.get("deployments", {}).items()
                                       if d.get("kind") == "score_script"}}
            self.stamp = stamp
        return self.table

    def __call__(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Reply:
        route = path.split("?", 1)[0]
        if method == "GET" and route in ("/", "/health"):
            table = self.reload(force=True)
            return json_reply(200, {"status": "Healthy", "generation": table["generation"],
                                    "traffic": dict(zip(table["names"], table["weights"]))})
        table = self.reload()
        if route != "/score":
            raise HttpError(404, f"no route {route}; POST /score")
        if method != "POST":
            raise HttpError(405, "use POST /score")
        name = headers.get(DEPLOYMENT_HEADER)
        if name:
            if name not in table["ports"]:
                raise HttpError(404, f"deployment {name!r} not found in this endpoint")
        elif not table["names"]:
            raise HttpError(503, "no deployment receives traffic; set traffic or send the "
                                 f"{DEPLOYMENT_HEADER} header")
        elif len(table["names"]) == 1:
            name = table["names"][0]
        else:
            name = random.choices(table["names"], table["weights"])[0]
        if name in table["scripted"]:  # Azure's server hands any body to run(); reject non-JSON here
            try:
                json.loads(body)
            except (ValueError, UnicodeDecodeError) as exc:
                raise HttpError(400, f"the body is not valid JSON: {exc}") from None
        status, data, ctype = self.forward(table["ports"][name], table["timeouts"].get(name, self.timeout),
                                           path, headers, body)
        return status, data, {"Content-Type": ctype, DEPLOYMENT_HEADER: name}

    def forward(self, port: int, timeout: float, path: str, headers: dict[str, str],
                body: bytes) -> tuple[int, bytes, str]:
        pool = getattr(self.local, "pool", None)
        if pool is None:
            pool = self.local.pool = {}
        out = {"Content-Type": headers.get("content-type", "application/json")}
        for key in ("authorization", "x-request-id", "x-ms-client-request-id"):
            if key in headers:
                out[key] = headers[key]
        head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {len(body)}\r\n"
                + "".join(f"{k}: {v}\r\n" for k, v in out.items()) + "\r\n").encode("latin-1")
        for attempt in (0, 1):
            upstream = pool.get(port)
            fresh = upstream is None
            try:
                if upstream is None:
                    upstream = pool[port] = Upstream(port, timeout)
                upstream.sock.sendall(head + body)
                line = upstream.rfile.readline(65537)
                if not line:  # the deployment closed an idle keep-alive connection: nothing was processed
                    raise ConnectionResetError("connection closed before a response")
                status = int(line.split(None, 2)[1])
                headers_in = read_headers(upstream.rfile)
                data = read_body(upstream.rfile, headers_in, until_close=True)
                if headers_in.get("connection", "").lower() == "close" or "content-length" not in headers_in:
                    upstream.close()
                    pool.pop(port, None)
                return status, data, headers_in.get("content-type", "application/json")
            except (OSError, ValueError, IndexError, HttpError) as exc:
                if upstream is not None:
                    upstream.close()
                pool.pop(port, None)
                if attempt or fresh or isinstance(exc, TimeoutError):
                    raise HttpError(502, f"deployment on port {port} failed: {type(exc).__name__}: {exc}") \
                        from None
        raise AssertionError("unreachable")


class Upstream:
    """A keep-alive connection from the router to one deployment."""

    def __init__(self, port: int, timeout: float):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.rfile = self.sock.makefile("rb")

    def close(self) -> None:
        self.rfile.close()
        self.sock.close()


# -- the no-script model server -----------------------------------------------------------------
NUMERIC = {"double", "float", "long", "integer", "boolean"}


class PayloadError(ValueError):
    """A request body that does not fit the model: HTTP 400."""


class Scorer:
    """An MLflow model loaded once; predicts from plain rows (no pandas on the fast paths)."""

    def __init__(self, model_dir: Path):
        from mlflow.models import Model

        self.dir = model_dir
        meta = Model.load(str(model_dir / "MLmodel"))
        schema = meta.get_input_schema()
        self.columns: list[str] | None = None
        self.types: list[str] = []
        if schema is not None and schema.has_input_names() and not schema.is_tensor_spec():
            self.columns = schema.input_names()
            self.types = [str(getattr(t, "name", t)).lower() for t in schema.input_types()]
        self.flavors = meta.flavors
        self.engine = "pyfunc"
        self.predict_rows: Callable[[list[list[Any]]], list[Any]] = self._pyfunc_rows
        self._pyfunc = None
        self.example = self._example()
        if "onnx" in self.flavors:
            self._setup_onnx()
        elif "sklearn" in self.flavors and self.columns and all(t in NUMERIC for t in self.types):
            self._setup_sklearn()
        if self.engine == "pyfunc":
            self._load_pyfunc()

    def _example(self) -> dict[str, Any] | None:
        for name in ("serving_input_example.json",):
            path = self.dir / name
            if path.is_file():
                try:
                    return json.loads(path.read_text())
                except ValueError:
                    return None
        return None

    def _load_pyfunc(self) -> Any:
        if self._pyfunc is None:
            import mlflow.pyfunc
            self._pyfunc = mlflow.pyfunc.load_model(str(self.dir))
        return self._pyfunc

    def _pyfunc_rows(self, rows: list[list[Any]]) -> list[Any]:
        import pandas as pd

        frame = pd.DataFrame(rows, columns=self.columns) if self.columns else pd.DataFrame(rows)
        return to_list(self._load_pyfunc().predict(frame))

    def _setup_sklearn(self) -> None:
        import warnings

        import mlflow.sklearn
        import numpy as np

        model = mlflow.sklearn.load_model(str(self.dir))
        order = [str(c) for c in getattr(model, "feature_names_in_", self.columns)]
        if set(order) != set(self.columns or []):
            return  # the signature does not describe the fitted columns: stay on pyfunc
        index = [self.columns.index(c) for c in order]  # type: ignore[union-attr]
        identity = index == list(range(len(index)))
        warnings.filterwarnings("ignore", message="X does not have valid feature names")

        def predict(rows: list[list[Any]]) -> list[Any]:
            if not identity:
                rows = [[r[i] for i in index] for r in rows]
            return model.predict(np.asarray(rows, dtype=np.float64)).tolist()

        def reference(rows: list[list[Any]]) -> list[Any]:
            import pandas as pd
            return to_list(model.predict(pd.DataFrame(rows, columns=self.columns)))

        self._verify(predict, "sklearn", reference)

    def _setup_onnx(self) -> None:
        import numpy as np
        import onnxruntime as ort

        conf = self.flavors["onnx"]
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        sess = ort.InferenceSession(str(self.dir / conf.get("data", "model.onnx")), opts,
                                    providers=["CPUExecutionProvider"])
        inputs = sess.get_inputs()
        output = sess.get_outputs()[0].name
        dtypes = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(int64)": np.int64,
                  "tensor(int32)": np.int32, "tensor(string)": object, "tensor(bool)": np.bool_}
        names = [i.name for i in inputs]
        if self.columns and set(names) <= set(self.columns):
            spec = [(i.name, self.columns.index(i.name), dtypes.get(i.type, np.float32), len(i.shape or [0, 0]))
                    for i in inputs]

            def predict(rows: list[list[Any]]) -> list[Any]:
                feeds = {}
                for name, idx, dtype, rank in spec:  # one input per column, shaped (n,) or (n, 1)
                    column = np.array([r[idx] for r in rows], dtype=dtype)
                    feeds[name] = column if rank == 1 else column.reshape(-1, 1)
                return np.asarray(sess.run([output], feeds)[0]).ravel().tolist()
        elif len(inputs) == 1:
            name, dtype = inputs[0].name, dtypes.get(inputs[0].type, np.float32)

            def predict(rows: list[list[Any]]) -> list[Any]:
                return np.asarray(sess.run([output], {name: np.asarray(rows, dtype=dtype)})[0]).ravel().tolist()
        else:
            return
        self.predict_rows, self.engine = predict, "onnxruntime"  # the same runtime MLflow's onnx flavor uses

    def _verify(self, predict: Callable[[list[list[Any]]], list[Any]], engine: str,
                reference: Callable[[list[list[Any]]], list[Any]] | None = None) -> None:
        """Use a fast path only if it predicts what the model predicts on a DataFrame of the input example."""
        rows = None
        if self.example is not None:
            try:
                rows, _ = self.rows(self.example)
            except PayloadError:
                rows = None
        if rows:
            import numpy as np
            expected = (reference or self._pyfunc_rows)(rows)
            got = predict(rows)
            try:
                same = np.allclose(np.asarray(expected, dtype=float), np.asarray(got, dtype=float),
                                   rtol=1e-6, atol=1e-6)
            except (TypeError, ValueError):
                same = expected == got
            if not same:
                log(f"fast path {engine} disagrees with pyfunc on the input example; using pyfunc")
                return
        self.predict_rows, self.engine = predict, engine

    # -- payloads -----------------------------------------------------------------------------
    def rows(self, payload: Any) -> tuple[list[list[Any]], bool]:
        """Rows in signature column order, and whether the payload was Azure ML's input_data."""
        if not isinstance(payload, dict):
            raise PayloadError("the body must be a JSON object with input_data, dataframe_split, "
                               "dataframe_records or inputs")
        if "input_data" in payload:
            return self._table(payload["input_data"], "input_data"), True
        if "dataframe_split" in payload:
            split = payload["dataframe_split"]
            if not isinstance(split, dict):
                raise PayloadError("dataframe_split must be an object with columns and data")
            return self._table(split, "dataframe_split"), False
        if "dataframe_records" in payload:
            records = payload["dataframe_records"]
            if not isinstance(records, list):
                raise PayloadError("dataframe_records must be a list of objects")
            return self._table(records, "dataframe_records"), False
        if "inputs" in payload:
            inputs = payload["inputs"]
            if isinstance(inputs, dict):
                inputs = self._columns_to_records(inputs)
            return self._table(inputs, "inputs"), False
        raise PayloadError("expected one of input_data, dataframe_split, dataframe_records or inputs; "
                           f"got keys {sorted(payload)[:5]}")

    @staticmethod
    def _columns_to_records(columns: dict[str, Any]) -> list[dict[str, Any]]:
        lists = {k: v if isinstance(v, list) else [v] for k, v in columns.items()}
        lengths = {len(v) for v in lists.values()}
        if len(lengths) > 1:
            raise PayloadError("inputs: every column must have the same number of values")
        n = lengths.pop() if lengths else 0
        return [{k: v[i] for k, v in lists.items()} for i in range(n)]

    def _table(self, data: Any, where: str) -> list[list[Any]]:
        if isinstance(data, dict):
            if "data" not in data:
                raise PayloadError(f"{where}: expected columns/index/data (split form) or a list of rows")
            rows, columns = data["data"], data.get("columns")
            if not isinstance(rows, list):
                raise PayloadError(f"{where}.data must be a list of rows")
            if columns is not None:
                if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
                    raise PayloadError(f"{where}.columns must be a list of column names")
                return self._reorder(rows, columns, where)
            return self._check_rows(rows, where)
        if not isinstance(data, list):
            raise PayloadError(f"{where} must be an object (split form) or a list of rows")
        if data and all(isinstance(r, dict) for r in data):
            columns = self.columns or list(data[0])
            missing = sorted({c for r in data for c in columns if c not in r})
            if missing:
                raise PayloadError(f"{where}: missing column(s) {missing}")
            return [[r[c] for c in columns] for r in data]
        return self._check_rows(data, where)

    def _check_rows(self, rows: list[Any], where: str) -> list[list[Any]]:
        if not rows:
            raise PayloadError(f"{where}: no rows")
        width = len(self.columns) if self.columns else None
        for i, row in enumerate(rows):
            if not isinstance(row, list):
                raise PayloadError(f"{where}: row {i} is not a list")
            if width is not None and len(row) != width:
                raise PayloadError(f"{where}: row {i} has {len(row)} values, the model expects {width} "
                                   f"({', '.join(self.columns or [])})")
        return rows

    def _reorder(self, rows: list[Any], columns: list[str], where: str) -> list[list[Any]]:
        if not rows:
            raise PayloadError(f"{where}: no rows")
        for i, row in enumerate(rows):
            if not isinstance(row, list) or len(row) != len(columns):
                raise PayloadError(f"{where}: row {i} does not have {len(columns)} values (one per column)")
        if not self.columns or columns == self.columns:
            return rows
        missing = [c for c in self.columns if c not in columns]
        if missing:
            raise PayloadError(f"{where}: missing column(s) {missing}")
        index = [columns.index(c) for c in self.columns]
        return [[r[i] for i in index] for r in rows]

    def check_types(self, rows: list[list[Any]]) -> None:
        for col, kind in zip(self.columns or [], self.types):
            if kind in NUMERIC:
                idx = self.columns.index(col)  # type: ignore[union-attr]
                for i, row in enumerate(rows):
                    value = row[idx]
                    if not isinstance(value, (int, float)):
                        raise PayloadError(f"column {col!r} expects a number; row {i} has {value!r}")

    def __call__(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Reply:
        route = path.split("?", 1)[0]
        if method == "GET" and route in ("/", "/health"):
            return json_reply(200, {"status": "Healthy", "engine": self.engine, "instance": INSTANCE})
        if route != "/score":
            raise HttpError(404, f"no route {route}; POST /score")
        if method != "POST":
            raise HttpError(405, "use POST /score")
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise HttpError(400, f"the body is not valid JSON: {exc}") from None
        try:
            rows, azure = self.rows(payload)
            try:
                predictions = self.predict_rows(rows)
            except (ValueError, TypeError) as exc:
                self.check_types(rows)  # a clearer message for the common mistake
                raise PayloadError(f"the model rejected the input: {exc}") from None
        except PayloadError as exc:
            raise HttpError(400, str(exc)) from None
        except (KeyError, IndexError) as exc:
            raise HttpError(400, f"the input does not match the model: {exc}") from None
        except Exception as exc:
            if type(exc).__name__ not in ("MlflowException", "InvalidArgument"):  # schema / ORT input checks
                raise
            raise HttpError(400, f"the input does not match the model: {exc}") from None
        return json_reply(200, predictions if azure else {"predictions": predictions})


def to_list(result: Any) -> list[Any]:
    """Predictions as plain JSON-able values."""
    if hasattr(result, "to_dict") and hasattr(result, "columns"):
        return result.to_dict(orient="records")
    if hasattr(result, "tolist"):
        return result.tolist()
    return list(result)


INSTANCE = ""


# -- Azure's inference server, bound to loopback ------------------------------------------------
def run_azmlinfsrv(args: list[str]) -> None:
    import azureml_inference_server_http.constants as constants

    constants.DEFAULT_HOST = "127.0.0.1"
    from azureml_inference_server_http import amlserver

    amlserver.DEFAULT_HOST = "127.0.0.1"
    sys.argv = ["azmlinfsrv", *args]
    amlserver.run()


def main(argv: list[str] | None = None) -> None:
    global INSTANCE
    parser = argparse.ArgumentParser(prog="mlops_steps.online_server")
    parser.add_argument("role", choices=["router", "model", "azmlinfsrv"])
    parser.add_argument("--instance", required=True)
    parser.add_argument("--port", type=int)
    parser.add_argument("--state")
    parser.add_argument("--model-dir")
    argv = list(sys.argv[1:] if argv is None else argv)
    rest = argv[argv.index("--") + 1:] if "--" in argv else []
    args = parser.parse_args(argv[:len(argv) - len(rest) - (1 if "--" in argv else 0)])
    INSTANCE = args.instance
    if args.role == "azmlinfsrv":
        run_azmlinfsrv(rest)
        return
    if args.role == "router":
        app: App = Router(Path(args.state))
    else:
        import logging
        logging.getLogger("mlflow").setLevel(logging.ERROR)
        started = time.monotonic()
        scorer = Scorer(Path(args.model_dir))
        log(f"model loaded from {args.model_dir} in {time.monotonic() - started:.1f}s; engine {scorer.engine}")
        app = scorer
    server = Server(args.port, app)
    log(f"{args.role} listening on http://127.0.0.1:{args.port} (instance {args.instance})")
    try:
        server.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
