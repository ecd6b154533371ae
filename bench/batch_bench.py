"""Benchmark deploy-batch: rows/s over CSV files vs raw ONNX Runtime on the same rows in memory,
and peak memory (RSS of deploy-batch and its workers) as the input grows.

    python bench/batch_bench.py --rows 1000000 4000000 --workdir /tmp/batch-bench

The model is the taxi fare regressor (examples/taxi-regression) exported to ONNX by onnx-export's
converter; input rows are taxi-batch.csv repeated, in CSV files of --file-rows rows. Both sides get
the same cores: deploy-batch runs one single-threaded ONNX Runtime session per worker
(--workers), the baseline one session with --workers intra-op threads.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TAXI = ROOT / "examples" / "taxi-regression" / "data"
BIN = Path(sys.executable).parent


def build_model(work: Path, kind: str) -> Path:
    """Train the taxi model and save it as an MLflow onnx-flavor folder."""
    import pandas as pd
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    sys.path.insert(0, str(ROOT / "steps"))
    from mlops_steps.onnx_export import _save, convert

    folder = work / f"model-{kind}"
    if (folder / "MLmodel").is_file():
        return folder
    data = pd.read_csv(TAXI / "taxi-data.csv").drop(columns=["Unnamed: 0"])
    y = data.pop("cost")
    if kind == "forest":
        model, precision = RandomForestRegressor(n_estimators=50, max_depth=10, random_state=0, n_jobs=-1), "float"
    else:
        model, precision = make_pipeline(StandardScaler(), Ridge()), "double"
    model.fit(data, y)
    _save(convert(model, data.head(100), precision, None), folder, data.head(100), f"taxi-{kind}", precision)
    return folder


def make_inputs(work: Path, rows: int, file_rows: int) -> Path:
    """CSV files holding `rows` rows of taxi-batch.csv, repeated."""
    import pyarrow as pa
    import pyarrow.csv as pcsv

    folder = work / f"input-{rows}"
    if folder.is_dir():
        return folder
    tmp = work / f".input-{rows}"
    tmp.mkdir(parents=True, exist_ok=True)
    base = pcsv.read_csv(TAXI / "taxi-batch.csv")
    reps = -(-file_rows // base.num_rows)
    block = pa.concat_tables([base] * reps).slice(0, file_rows)
    for i in range(-(-rows // file_rows)):
        n = min(file_rows, rows - i * file_rows)
        pcsv.write_csv(block.slice(0, n), tmp / f"part-{i:04d}.csv")
    tmp.rename(folder)
    return folder


def raw_onnx(model: Path, folder: Path, threads: int) -> tuple[int, float]:
    """Rows and seconds for ONNX Runtime alone on every row, already in memory (per-file frames)."""
    import onnxruntime as ort
    import pandas as pd

    sys.path.insert(0, str(ROOT / "steps"))
    from mlops_steps.onnx_export import onnx_feeds

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(model / "model.onnx"), options, providers=["CPUExecutionProvider"])
    frames = [pd.read_csv(f) for f in sorted(folder.glob("*.csv"))]
    feeds = [onnx_feeds(session, f) for f in frames]
    name = session.get_outputs()[0].name
    start = time.perf_counter()
    for feed in feeds:
        session.run([name], feed)
    return sum(len(f) for f in frames), time.perf_counter() - start


def deploy_batch(model: Path, folder: Path, work: Path, workers: int) -> dict:
    """Run the real CLI; wall time, the job's scoring time, and peak RSS of its process tree."""
    import psutil

    job = f"bench-{folder.name}-{model.name}-{time.time_ns()}"
    out = work / f"out-{job}.json"
    cmd = [str(BIN / "mlops-step"), "deploy-batch", "--store", str(work / ".mlops"), "--endpoint-name", "bench",
           "--model", str(model), "--input", str(folder), "--mini-batch-size", "1", "--timeout", "3600",
           "--max-concurrency-per-instance", str(workers), "--job-name", job, "--output-json", str(out)]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLOPS_", "GITHUB_", "TF_BUILD"))}
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    root, peak_total, peak_one = psutil.Process(proc.pid), 0, 0
    while proc.poll() is None:
        try:
            rss = [p.memory_info().rss for p in [root, *root.children(recursive=True)]]
        except psutil.Error:
            rss = []
        if rss:
            peak_total, peak_one = max(peak_total, sum(rss)), max(peak_one, max(rss))
        time.sleep(0.05)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"deploy-batch failed ({proc.returncode}):\n{proc.stderr.read()[-3000:]}")
    outputs = json.loads(out.read_text())["outputs"]
    record = json.loads((work / ".mlops" / "batch" / "bench" / job / "job.json").read_text())
    Path(outputs["output-path"]).unlink()  # keep the disk tidy
    return {"rows": outputs["rows-scored"], "wall": wall, "scoring": record["scoring_seconds"],
            "peak_total_mb": peak_total / 2**20, "peak_process_mb": peak_one / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 4_000_000])
    parser.add_argument("--file-rows", type=int, default=250_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--model", choices=["ridge", "forest"], nargs="+", default=["ridge", "forest"])
    parser.add_argument("--workdir", default="/tmp/batch-bench")
    args = parser.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    print(f"cores: {os.cpu_count()}, workers: {args.workers}, rows per file: {args.file_rows}")
    for kind in args.model:
        model = build_model(work, kind)
        for rows in args.rows:
            folder = make_inputs(work, rows, args.file_rows)
            n, seconds = raw_onnx(model, folder, args.workers)
            run = deploy_batch(model, folder, work, args.workers)
            assert run["rows"] == n, (run["rows"], n)
            raw, e2e, scoring = n / seconds, n / run["wall"], n / run["scoring"]
            print(f"{kind:6} {rows:>10,} rows | raw ONNX Runtime {raw:>12,.0f} rows/s | deploy-batch "
                  f"{e2e:>10,.0f} rows/s end-to-end ({run['wall']:.1f} s), {scoring:>10,.0f} rows/s scoring "
                  f"phase | overhead {raw / e2e - 1:+.0%} e2e, {raw / scoring - 1:+.0%} scoring | peak RSS "
                  f"{run['peak_total_mb']:.0f} MB total, {run['peak_process_mb']:.0f} MB largest process",
                  flush=True)


if __name__ == "__main__":
    main()
