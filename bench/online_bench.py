"""Benchmark: a deploy-online endpoint vs `mlflow models serve`, same model, same machine, same client.

Trains a small taxi-fare model, registers it in a temporary store, deploys it with
`mlops-step deploy-online` (measured through the endpoint's router, which is the scoring URI) and
serves the same MLflow model folder with `mlflow models serve --env-manager local` on 127.0.0.1.
Both get the same 1-row `dataframe_split` body from the same client: threads with one keep-alive
http.client connection each, a fixed number of requests, loopback only.

    python bench/online_bench.py [--flavor sklearn|onnx|both] [--requests 2000] [--concurrency 1 4]
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "examples" / "taxi-regression" / "data" / "taxi-data.csv"
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_models(folder: Path) -> dict[str, Path]:
    """A GradientBoosting taxi model as an MLflow sklearn model and as an MLflow ONNX model."""
    import mlflow.onnx
    import mlflow.sklearn
    import pandas as pd
    from mlflow.models import infer_signature
    from skl2onnx import to_onnx
    from sklearn.ensemble import GradientBoostingRegressor

    df = pd.read_csv(DATA, index_col=0).head(3000)
    X, y = df.drop(columns=["cost"]).astype("float64"), df["cost"]
    model = GradientBoostingRegressor(n_estimators=50, max_depth=3, random_state=0).fit(X, y)
    sig = infer_signature(X, model.predict(X))
    mlflow.sklearn.save_model(model, str(folder / "sklearn"), signature=sig, input_example=X.head(2),
                              skops_trusted_types=["sklearn.tree._tree.Tree"])
    onx = to_onnx(model, X.head(1).to_numpy(dtype="float32"), target_opset={"": 17, "ai.onnx.ml": 3})
    mlflow.onnx.save_model(onx, str(folder / "onnx"), input_example=X.head(2).to_numpy(dtype="float32"))
    return {"sklearn": folder / "sklearn", "onnx": folder / "onnx"}


def body_for(model_dir: Path) -> bytes:
    """One row, in the model's own serving example format (dataframe_split or inputs)."""
    example = json.loads((model_dir / "serving_input_example.json").read_text())
    if "dataframe_split" in example:
        example["dataframe_split"]["data"] = example["dataframe_split"]["data"][:1]
        example["dataframe_split"].pop("index", None)
    elif "inputs" in example:
        example["inputs"] = example["inputs"][:1]
    return json.dumps(example).encode()


def load(port: int, path: str, body: bytes, requests: int, concurrency: int) -> dict[str, float]:
    """Fire `requests` POSTs over `concurrency` keep-alive connections; throughput and latency."""
    latencies: list[float] = []
    errors = [0]
    per = requests // concurrency
    lock = threading.Lock()

    def worker() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        mine = []
        for _ in range(per):
            t0 = time.perf_counter()
            conn.request("POST", path, body, {"Content-Type": "application/json"})
            resp = conn.getresponse()
            resp.read()
            mine.append(time.perf_counter() - t0)
            if resp.status != 200:
                errors[0] += 1
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    latencies.sort()
    return {"rps": len(latencies) / elapsed, "p50_ms": latencies[len(latencies) // 2] * 1e3,
            "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1e3,
            "errors": errors[0]}


def wait_up(port: int, path: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server on port {port} exited with {proc.returncode}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", path)
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"server on port {port} not up after {timeout}s")


def step(work: Path, *args: str) -> dict:
    out = work / "out.json"
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run([str(BIN / "mlops-step"), *args, "--store", str(work / ".mlops"),
                           "--output-json", str(out)], cwd=work, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"mlops-step {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(out.read_text())["outputs"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--flavor", choices=["sklearn", "onnx", "both"], default="both")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    import logging
    logging.getLogger("mlflow").setLevel(logging.ERROR)
    from mlops_steps.backends.local import LocalBackend

    work = Path(tempfile.mkdtemp(prefix="online-bench-"))
    results = []
    try:
        models = make_models(work)
        backend = LocalBackend(work / ".mlops")
        flavors = ["sklearn", "onnx"] if args.flavor == "both" else [args.flavor]
        for flavor in flavors:
            mv = backend.register_model(f"taxi-{flavor}", models[flavor])
            body = body_for(models[flavor])
            outputs = step(work, "deploy-online", "--endpoint-name", f"bench-{flavor}",
                           "--deployment-name", "blue", "--model", f"taxi-{flavor}:{mv.version}")
            ours = int(outputs["scoring-uri"].split(":")[2].split("/")[0])
            peer_port = free_port()
            env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
            peer = subprocess.Popen([str(BIN / "mlflow"), "models", "serve", "-m", str(models[flavor]),
                                     "--env-manager", "local", "-h", "127.0.0.1", "-p", str(peer_port)],
                                    env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                    start_new_session=True)
            try:
                wait_up(peer_port, "/ping", peer)
                for port, path in ((ours, "/score"), (peer_port, "/invocations")):  # warm-up, checks
                    load(port, path, body, 200, 1)
                for conc in args.concurrency:
                    for name, port, path in (("deploy-online (router)", ours, "/score"),
                                             ("mlflow models serve", peer_port, "/invocations")):
                        res = load(port, path, body, args.requests, conc)
                        results.append({"model": flavor, "server": name, "concurrency": conc, **res})
                        print(f"{flavor:8} {name:24} c={conc}: {res['rps']:8.0f} req/s"
                              f"  p50 {res['p50_ms']:6.2f} ms  p99 {res['p99_ms']:6.2f} ms"
                              f"  errors {res['errors']}", flush=True)
            finally:
                os.killpg(peer.pid, signal.SIGTERM)
                peer.wait(30)
                step(work, "endpoint", "delete", "--name", f"bench-{flavor}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("\n| model | concurrency | deploy-online req/s | mlflow serve req/s | ratio | ours p50 / p99 ms "
          "| mlflow p50 / p99 ms |\n|---|---|---|---|---|---|---|")
    for i in range(0, len(results), 2):
        a, b = results[i], results[i + 1]
        print(f"| {a['model']} | {a['concurrency']} | {a['rps']:.0f} | {b['rps']:.0f} "
              f"| {a['rps'] / b['rps']:.1f}x "
              f"| {a['p50_ms']:.2f} / {a['p99_ms']:.2f} | {b['p50_ms']:.2f} / {b['p99_ms']:.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
