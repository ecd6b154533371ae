"""Benchmark: drift-check on 1,000,000 rows x 50 numeric columns (reference and current both that size).

Columns: a seeded mix of normal, log-normal, exponential, uniform and integer-valued (tied) data; the
current data shifts or rescales every other column. Measured in the same process:

1. drift-check's compute (`drift_check.compare`: type inference, NaN handling, every metric, verdict)
   on DataFrames already in memory; budget 3 s;
2. a straightforward per-column scipy implementation of the same metrics (scipy.stats.wasserstein_distance
   / std, scipy.spatial.distance.jensenshannon on np.histogram, scipy.stats.ks_2samp, PSI with numpy),
   and the largest difference between the two;
3. end to end: `run()` reading both tables from Parquet, hashing them, comparing, writing the report and
   charts (and, with --cli, the `mlops-step drift-check` command in a subprocess).

The machine is shared, so wall time is printed with process CPU time and the load average.

    python bench/drift_bench.py [--rows 1000000] [--cols 50] [--runs 3] [--baseline-cols 50] [--cli]
                                [--compute-only]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUDGET_S = 3.0


def make_tables(rows: int, cols: int, seed: int = 7):
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    ref, cur = {}, {}
    for i in range(cols):
        shift = i % 2 == 1
        kind = i % 5
        if kind == 0:
            ref[f"normal_{i}"] = rng.normal(10, 2, rows)
            cur[f"normal_{i}"] = rng.normal(10.5 if shift else 10, 2, rows)
        elif kind == 1:
            ref[f"lognormal_{i}"] = rng.lognormal(0, 1, rows)
            cur[f"lognormal_{i}"] = rng.lognormal(0, 1.3 if shift else 1, rows)
        elif kind == 2:
            ref[f"exponential_{i}"] = rng.exponential(3, rows)
            cur[f"exponential_{i}"] = rng.exponential(3.6 if shift else 3, rows)
        elif kind == 3:
            ref[f"uniform_{i}"] = rng.uniform(0, 100, rows)
            cur[f"uniform_{i}"] = rng.uniform(5 if shift else 0, 100, rows)
        else:
            ref[f"count_{i}"] = rng.poisson(4, rows).astype("int64")
            cur[f"count_{i}"] = rng.poisson(4.6 if shift else 4, rows).astype("int64")
    return pd.DataFrame(ref), pd.DataFrame(cur)


def scipy_column(a, b) -> dict[str, float]:
    """The same metrics, the straightforward way: one scipy call per metric and column."""
    import math

    import numpy as np
    from scipy.spatial.distance import jensenshannon
    from scipy.stats import ks_2samp, wasserstein_distance

    lo, hi = min(a.min(), b.min()), max(a.max(), b.max())
    bins = math.ceil(math.log2(min(len(a), len(b))) + 1)
    ha = np.histogram(a, bins=bins, range=(lo, hi))[0]
    hb = np.histogram(b, bins=bins, range=(lo, hi))[0]
    p, q = (ha + 1) / len(a), (hb + 1) / len(b)
    return {
        "normalized_wasserstein_distance": wasserstein_distance(a, b) / max(np.std(a, ddof=1), 0.001),
        "jensen_shannon_distance": float(jensenshannon(ha, hb, base=2)),
        "population_stability_index": float(((q - p) * np.log(q / p)).sum()),
        "kolmogorov_smirnov_statistic": float(ks_2samp(a, b).statistic),
        "out_of_range_share": float(((b < a.min()) | (b > a.max())).mean()),
    }


def timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--cols", type=int, default=50)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--baseline-cols", type=int, default=50, help="columns timed with scipy (scaled up)")
    ap.add_argument("--cli", action="store_true", help="also time the CLI in a subprocess")
    ap.add_argument("--compute-only", action="store_true", help="only the in-memory compute (no scipy, no files)")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "steps"))
    from mlops_steps.backends.local import LocalBackend
    from mlops_steps.drift_check import Inputs, compare, run

    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs; "
          f"{args.rows:,} rows x {args.cols} numeric columns, reference and current")
    ref, cur = make_tables(args.rows, args.cols)
    work = Path(tempfile.mkdtemp(prefix="drift-bench-"))
    inputs = Inputs(reference=str(work / "ref.parquet"), current=str(work / "cur.parquet"),
                    report_dir=str(work / "report"))
    compare(inputs, ref.head(1000), cur.head(1000))  # warm-up: imports

    walls, cpus = [], []
    for _ in range(args.runs):
        report, wall, cpu = timed(lambda: compare(inputs, ref, cur))
        walls.append(wall)
        cpus.append(cpu)
    ours = {f["name"]: f["metrics"] for f in report["features"]}
    best = min(walls)
    print(f"drift-check compute (in memory): best {best:.2f} s, median {statistics.median(walls):.2f} s "
          f"wall; CPU {min(cpus):.2f} s; budget {BUDGET_S:.0f} s -> {'OK' if best <= BUDGET_S else 'OVER'}")
    print(f"  verdict: drift_detected={report['drift_detected']}, {report['summary']['drifting']} of "
          f"{report['summary']['columns']} columns drift")

    if args.compute_only:
        return 0
    names = list(ref.columns)[:max(1, min(args.baseline_cols, args.cols))]
    worst: dict[str, float] = {}

    def baseline():
        for name in names:
            a, b = ref[name].to_numpy(float), cur[name].to_numpy(float)
            for metric, value in scipy_column(a, b).items():
                worst[metric] = max(worst.get(metric, 0.0), abs(value - ours[name][metric]))

    _, s_wall, s_cpu = timed(baseline)
    scale = args.cols / len(names)
    print(f"scipy per column: {s_wall * scale:.2f} s wall, CPU {s_cpu * scale:.2f} s"
          + (f" (measured on {len(names)} columns, scaled)" if scale != 1 else "")
          + f"; ratio scipy / drift-check: {s_cpu / min(cpus) * scale:.1f}x in CPU time, "
          f"{s_wall * scale / best:.1f}x in wall time (sensitive to other load)")
    print("  largest |drift-check - scipy| per metric: "
          + ", ".join(f"{m} {v:.1e}" for m, v in worst.items()))

    _, w, _ = timed(lambda: (ref.to_parquet(inputs.reference), cur.to_parquet(inputs.current)))
    print(f"(wrote the Parquet files in {w:.1f} s, {os.path.getsize(inputs.reference) / 1e6:.0f} MB each)")
    backend = LocalBackend(work / ".mlops")
    result, e_wall, e_cpu = timed(lambda: run(inputs, backend))
    import json
    timings = json.loads((work / "report" / "drift.json").read_text())["timings_s"]
    print(f"end to end run() from Parquet: {e_wall:.2f} s wall, CPU {e_cpu:.2f} s "
          f"(read+hash {timings['read']:.2f}, compare {timings['compare']:.2f}, report+charts "
          f"{timings['charts']:.2f}); exit {0 if result.passed else 1}")
    if args.cli:
        t = time.perf_counter()
        proc = subprocess.run([str(Path(sys.executable).parent / "mlops-step"), "drift-check",
                               "--reference", inputs.reference, "--current", inputs.current,
                               "--report-dir", str(work / "report-cli")], capture_output=True, text=True)
        print(f"CLI subprocess (interpreter start, imports, everything): {time.perf_counter() - t:.2f} s, "
              f"exit {proc.returncode}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
