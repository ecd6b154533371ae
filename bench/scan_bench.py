"""Benchmark `mlops-step scan` on a 150-package environment against an offline OSV database.

Prints our wall time (the real CLI in a subprocess, best of 3) beside pip-audit's own default
resolve-and-query mode (`pip-audit -r FILE`: pip resolves into a temporary venv, then PyPI's JSON API
is queried) and its no-resolve mode (`--no-deps --disable-pip`), measured in the same run, with the
ratio. The peer's numbers are only printed when it really audited something: when it could not
reach its service or skipped every package, the bench says so instead of inventing a figure.

    python bench/scan_bench.py [--db ../shared/data/pypa-advisory-db] [--packages 150] [--peer-timeout 900]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from importlib.metadata import distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def environment_pins(n: int) -> list[str]:
    """n `name==version` pins from this environment (sorted by name, this project excluded)."""
    pins = sorted({(d.metadata["Name"].lower(), d.version) for d in distributions()
                   if d.metadata["Name"] and d.metadata["Name"].lower() not in ("mlops-steps", "pip")})
    if len(pins) < n:
        raise SystemExit(f"this environment has only {len(pins)} packages, {n} asked")
    return [f"{name}=={version}" for name, version in pins[:n]]


def timed(cmd: list[str], cwd: Path, timeout: float) -> tuple[float, subprocess.CompletedProcess | None]:
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return time.perf_counter() - start, None
    return time.perf_counter() - start, proc


def ours(reqs: Path, db: Path, work: Path, repeat: int = 3) -> tuple[float, dict]:
    times, report = [], {}
    for i in range(repeat):
        out = work / f"ours-{i}"
        seconds, proc = timed([str(BIN / "mlops-step"), "scan", "--requirements", str(reqs), "--advisory-db",
                               str(db), "--out-dir", str(out)], work, 300)
        if proc is None or proc.returncode not in (0, 1):
            raise SystemExit(f"mlops-step scan failed: {proc.stderr[-2000:] if proc else 'timeout'}")
        times.append(seconds)
        report = json.loads((out / "scan.json").read_text())
    return min(times), report


def peer(name: str, args: list[str], reqs: Path, work: Path, timeout: float) -> tuple[float | None, str]:
    """pip-audit in one mode: (seconds, note). seconds is None when it could not be measured."""
    out = work / f"{name}.json"
    seconds, proc = timed([str(BIN / "pip-audit"), *args, "-r", str(reqs), "-f", "json", "-o", str(out),
                           "--progress-spinner", "off"], work, timeout)
    if proc is None:
        return None, f"did not finish within {timeout:.0f} s"
    if not out.is_file():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return None, f"failed (exit {proc.returncode}): {tail[0][:200]}"
    deps = json.loads(out.read_text()).get("dependencies", [])
    skipped = [d for d in deps if "skip_reason" in d]
    audited = len(deps) - len(skipped)
    note = f"{audited} of {len(deps)} packages audited"
    if audited == 0:
        reason = skipped[0]["skip_reason"] if skipped else "nothing resolved"
        return None, (f"ran {seconds:.1f} s but audited nothing ({note}; first skip: {reason[:120]}); "
                      "its 'No known vulnerabilities found' is not a result, so no time is compared")
    return seconds, note


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", default=str(ROOT.parent / "shared" / "data" / "pypa-advisory-db"))
    parser.add_argument("--packages", type=int, default=150)
    parser.add_argument("--peer-timeout", type=float, default=900)
    parser.add_argument("--skip-peer", action="store_true", help="only time mlops-step scan")
    args = parser.parse_args()
    db = Path(args.db).resolve()
    if not db.is_dir():
        raise SystemExit(f"advisory database not found: {db}")

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        reqs = work / "requirements.txt"
        reqs.write_text("\n".join(environment_pins(args.packages)) + "\n")
        ours_s, report = ours(reqs, db, work)
        counts = report["counts"]
        print(f"environment: {counts['dependencies']} pinned packages from {sys.prefix}")
        print(f"database:    {db}")
        print(f"mlops-step scan (offline OSV database): {ours_s:.2f} s  "
              f"[{counts['vulnerabilities']} vulnerabilities, {counts['unaudited']} not audited; "
              f"target <= 2 s: {'met' if ours_s <= 2 else 'MISSED'}]")
        if args.skip_peer:
            return
        for name, mode_args, label in (
                ("default", [], "pip-audit default (resolve with pip + PyPI JSON API)"),
                ("nodeps", ["--no-deps", "--disable-pip"], "pip-audit --no-deps --disable-pip (PyPI JSON API)")):
            seconds, note = peer(name, mode_args, reqs, work, args.peer_timeout)
            if seconds is None:
                print(f"{label}: NOT MEASURED - {note}")
            else:
                print(f"{label}: {seconds:.2f} s [{note}]; ratio peer/ours = {seconds / ours_s:.1f}x")


if __name__ == "__main__":
    main()
