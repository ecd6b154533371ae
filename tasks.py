#!/usr/bin/env python3
"""Project tasks with nothing but Python: `python3 tasks.py demo | test | check | lock`.

Each task first makes sure `.venv` holds the package and the pinned tools from
constraints.txt (re-installed when pyproject.toml or constraints.txt change).
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = Path(os.environ.get("MLOPS_VENV", ROOT / ".venv"))
BIN = VENV / "bin"


def sh(*cmd: str, **kw) -> None:
    print("+", " ".join(cmd), flush=True)
    code = subprocess.call(cmd, cwd=kw.pop("cwd", ROOT), **kw)
    if code:
        sys.exit(code)


def bootstrap() -> None:
    """Create/refresh .venv from the lock file; a no-op when nothing changed."""
    stamp = VENV / ".mlops-installed"
    digest = hashlib.sha256(b"".join((ROOT / f).read_bytes() for f in ("pyproject.toml", "constraints.txt")))
    if stamp.is_file() and stamp.read_text() == digest.hexdigest():
        return
    if not (BIN / "python").exists():
        venv.create(VENV, with_pip=True)
    sh(str(BIN / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
       "-c", "constraints.txt", "-e", ".[dev]")
    stamp.write_text(digest.hexdigest())


def demo() -> None:
    """The taxi example end to end on the local backend."""
    sh(str(BIN / "python"), str(ROOT / "examples" / "taxi-regression" / "demo.py"))


def test() -> None:
    """The whole test suite, two workers."""
    sh(str(BIN / "python"), "-m", "pytest", "-n", "2", "-q", *sys.argv[2:])


def check() -> None:
    """Static checks of the actions, workflows and ADO templates (tools/check_wrappers.py)."""
    sh(str(BIN / "python"), str(ROOT / "tools" / "check_wrappers.py"), *sys.argv[2:])


def lock() -> None:
    """Re-resolve every extra and rewrite constraints.txt."""
    fresh = ROOT / ".lock-venv"
    venv.create(fresh, with_pip=True, clear=True)
    sh(str(fresh / "bin" / "pip"), "install", "-q", "-e", ".[dev]")
    frozen = subprocess.check_output([str(fresh / "bin" / "pip"), "freeze", "--exclude-editable"], text=True)
    (ROOT / "constraints.txt").write_text(
        "# Pinned versions of every package any extra of mlops-steps installs (pip install -c constraints.txt).\n"
        "# Regenerate: python3 tasks.py lock\n" + frozen)


TASKS = {"demo": demo, "test": test, "check": check, "lock": lock}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in TASKS:
        sys.exit(f"usage: python3 tasks.py {{{'|'.join(TASKS)}}}")
    if sys.argv[1] != "lock":
        bootstrap()
    TASKS[sys.argv[1]]()
