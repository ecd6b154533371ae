"""Start-up time of `mlops-step --help` against `mlflow --version`, measured in the same run.

Target (issue 2): mlops-step --help <= 100 ms and <= 0.1x mlflow --version.
Usage: .venv/bin/python bench/cli_startup.py [--runs N]
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def timed(cmd: list[str], runs: int) -> float:
    """Median wall time of a command, in seconds (one warm-up run first)."""
    subprocess.run(cmd, capture_output=True, check=True)
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(cmd, capture_output=True, check=True)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    ours = timed([str(BIN / "mlops-step"), "--help"], args.runs)
    step_help = timed([str(BIN / "mlops-step"), "train", "--help"], args.runs)
    peer = timed([str(BIN / "mlflow"), "--version"], max(3, args.runs // 3))
    print(f"mlops-step --help        {ours * 1000:8.1f} ms   (target <= 100 ms)")
    print(f"mlops-step train --help  {step_help * 1000:8.1f} ms")
    print(f"mlflow --version         {peer * 1000:8.1f} ms")
    print(f"ratio                    {ours / peer:8.3f}x   (target <= 0.1x)")


if __name__ == "__main__":
    main()
