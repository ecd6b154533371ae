#!/usr/bin/env python3
"""Install mlops-steps from this checkout into a cached virtual environment.

Usage: install.py EXTRAS [--print-venv]

EXTRAS is a comma-separated list of the package's extras ("" for none). The venv
lives under $RUNNER_TOOL_CACHE/mlops-steps/ (or ~/.cache/mlops-steps/) in a folder
named by the package version and a hash of the lock file (constraints.txt),
pyproject.toml, the step sources and the extras: the code that runs is exactly
the code of this checkout, and every dependency is pinned by constraints.txt.
Writes `bin=<venv>/bin` to $GITHUB_OUTPUT (GitHub), sets the `mlopsStepsBin` pipeline
variable (Azure Pipelines), and prints the bin folder.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCE_SUFFIXES = {".py", ".yml", ".yaml", ".json", ".txt", ".csv", ".md"}
STAMP = ".mlops-steps-installed"


def _source_files() -> list[Path]:
    files = [ROOT / "pyproject.toml", ROOT / "constraints.txt"]
    pkg = ROOT / "steps" / "mlops_steps"
    files += sorted(p for p in pkg.rglob("*") if p.is_file() and p.suffix in SOURCE_SUFFIXES
                    and "__pycache__" not in p.parts)
    return files


def venv_key(extras: str) -> str:
    """A hash of everything that decides what gets installed."""
    digest = hashlib.sha256(f"extras={extras}\npython={sys.version_info[:2]}\n".encode())
    for path in _source_files():
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:20]


def venv_dir(extras: str) -> Path:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    base = os.environ.get("RUNNER_TOOL_CACHE") or os.environ.get("AGENT_TOOLSDIRECTORY") or \
        str(Path.home() / ".cache")
    return Path(base) / "mlops-steps" / f"{version}-{venv_key(extras)}"


def _build_info() -> dict[str, str | None]:
    """Where the installed code came from, for `mlops-step manifest`."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"source": str(ROOT), "commit": commit,
            "action_repository": os.environ.get("GITHUB_ACTION_REPOSITORY") or None,
            "action_ref": os.environ.get("GITHUB_ACTION_REF") or None}


def _install(venv: Path, extras: str) -> None:
    """Create the venv and pip-install a clean copy of the package (the checkout stays untouched)."""
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    with tempfile.TemporaryDirectory(prefix="mlops-steps-src-") as tmp:
        src = Path(tmp)
        for name in ("pyproject.toml", "README.md", "LICENSE"):
            if (ROOT / name).is_file():
                shutil.copy2(ROOT / name, src / name)
        if not (src / "README.md").exists():
            (src / "README.md").write_text("mlops-steps\n")
        shutil.copytree(ROOT / "steps", src / "steps",
                        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build"))
        (src / "steps" / "mlops_steps" / "_build_info.json").write_text(json.dumps(_build_info()))
        target = f"{src}[{extras}]" if extras else str(src)
        subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
                        "--disable-pip-version-check", "--no-input", "-c", str(ROOT / "constraints.txt"),
                        target], check=True)


def ensure(extras: str) -> Path:
    """The venv for these extras, installed once per key (a file lock serialises parallel jobs)."""
    venv = venv_dir(extras)
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f"{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        stamp = venv / STAMP
        if not (stamp.is_file() and stamp.read_text() == venv.name):
            print(f"Installing mlops-steps[{extras}] from {ROOT} into {venv}", file=sys.stderr, flush=True)
            _install(venv, extras)
            stamp.write_text(venv.name)
        else:
            print(f"Using cached {venv}", file=sys.stderr, flush=True)
    return venv / "bin"


def main(argv: list[str]) -> int:
    if sys.version_info < (3, 11):
        print(f"mlops-steps needs Python >= 3.11 on the runner, found {sys.version.split()[0]}",
              file=sys.stderr)
        return 2
    if not argv or len(argv) > 2 or (len(argv) == 2 and argv[1] != "--print-venv"):
        print(__doc__, file=sys.stderr)
        return 2
    extras = ",".join(e.strip() for e in argv[0].split(",") if e.strip())
    if argv[1:] == ["--print-venv"]:
        print(venv_dir(extras))
        return 0
    try:
        bin_dir = ensure(extras)
    except subprocess.CalledProcessError as exc:
        print(f"installing mlops-steps failed: {exc}", file=sys.stderr)
        return 3
    if os.environ.get("GITHUB_OUTPUT"):
        with open(os.environ["GITHUB_OUTPUT"], "a", encoding="utf-8") as fh:
            fh.write(f"bin={bin_dir}\n")
    if os.environ.get("TF_BUILD", "").lower() == "true":
        print(f"##vso[task.setvariable variable=mlopsStepsBin]{bin_dir}")
    print(bin_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
