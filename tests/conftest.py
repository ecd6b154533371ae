"""Shared test fixtures: run the real `mlops-step` CLI in a subprocess, in a temp working dir."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
TAXI = EXAMPLES / "taxi-regression"
BIN = Path(sys.executable).parent


def clean_env(**extra: str) -> dict[str, str]:
    """The environment a step sees: no CI host variables and no MLOPS_* unless given."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MLOPS_", "GITHUB_", "TF_BUILD", "SYSTEM_", "MLFLOW_"))}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


class StepRun:
    def __init__(self, proc: subprocess.CompletedProcess, output_json: Path):
        self.proc = proc
        self.code = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr
        self.output_json = output_json

    @property
    def outputs(self) -> dict:
        return json.loads(self.output_json.read_text())["outputs"]

    def __repr__(self) -> str:
        return f"<StepRun code={self.code}\nstdout={self.stdout[-3000:]}\nstderr={self.stderr[-3000:]}>"


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A temp working directory (the local store lands in ./.mlops)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def step(workdir):
    """Run `mlops-step ARGS...` for real; returns a StepRun with exit code, logs and outputs."""
    counter = {"n": 0}

    def run(*args: str, env: dict[str, str] | None = None, timeout: int = 600) -> StepRun:
        counter["n"] += 1
        out = workdir / f"outputs-{counter['n']}.json"
        cmd = [str(BIN / "mlops-step"), *args]
        if args and not args[0].startswith("-") and "--help" not in args:
            cmd += ["--output-json", str(out)]
        proc = subprocess.run(cmd, cwd=workdir, env=clean_env(**(env or {})), capture_output=True,
                              text=True, timeout=timeout)
        return StepRun(proc, out)

    return run
