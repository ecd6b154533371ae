"""manifest: what exactly is installed, for auditors.

Prints the package version, the git commit it was built from, a sha256 of every step
module and (when the templates checkout is at hand) of every action, workflow and Azure
DevOps template file, and the versions of the pinned tools: installed versions next to the
pins of constraints.txt. Not a pipeline step: it reads, never changes anything.
Exit codes: 0 success, 2 bad input (a --root that is not a templates checkout).
"""
from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import click

from . import __version__

PACKAGE = Path(__file__).resolve().parent
BUILD_INFO = PACKAGE / "_build_info.json"  # written by actions/_lib/install.py into the installed copy
TOOLS = ["mlflow", "azure-ai-ml", "azure-identity", "scikit-learn", "pandas", "numpy", "scipy", "onnx",
         "onnxruntime", "skl2onnx", "fairlearn", "pip-audit", "bandit", "azureml-inference-server-http",
         "pydantic", "click", "pyyaml"]
TEMPLATE_GLOBS = ["actions/*/action.yml", "actions/_lib/*.py", ".github/workflows/*.yml", "ado-templates/**/*.yml",
                  "constraints.txt", "pyproject.toml"]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _build_info() -> dict[str, Any]:
    try:
        return json.loads(BUILD_INFO.read_text())
    except (OSError, ValueError):
        return {}


def _git_commit(folder: Path) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def default_root() -> Path | None:
    """The templates checkout this package came from, if it is still there."""
    source = _build_info().get("source")
    candidates = [Path(source)] if source else []
    candidates.append(PACKAGE.parents[1])  # running from the source tree: <root>/steps/mlops_steps
    return next((c for c in candidates if (c / "actions").is_dir() and (c / "pyproject.toml").is_file()), None)


def _pins(root: Path | None) -> dict[str, str]:
    if root is None or not (root / "constraints.txt").is_file():
        return {}
    pins = {}
    for line in (root / "constraints.txt").read_text().splitlines():
        name, sep, version = line.strip().partition("==")
        if sep and not name.startswith("#"):
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    return pins


def build(root: Path | None) -> dict[str, Any]:
    """The manifest as a dict."""
    from .cli import STEPS

    info = _build_info()
    modules = {}
    for name, (module, _) in sorted(STEPS.items()):
        path = PACKAGE / f"{module}.py"
        if path.is_file():
            modules[name] = {"module": f"mlops_steps/{module}.py", "sha256": sha256(path)}
    support = {p.name: sha256(p) for p in sorted(PACKAGE.glob("*.py")) if p.stem not in
               {m for m, _ in STEPS.values()}}
    files = {}
    if root is not None:
        for pattern in TEMPLATE_GLOBS:
            for path in sorted(root.glob(pattern)):
                if path.is_file():
                    files[str(path.relative_to(root))] = sha256(path)
    pins = _pins(root)
    tools = {}
    for tool in TOOLS:
        try:
            installed = metadata.version(tool)
        except metadata.PackageNotFoundError:
            installed = None
        tools[tool] = {"installed": installed, "pinned": pins.get(tool)}
    try:
        from .install_cli import AZURE_CLI_VERSION, ML_EXTENSION_VERSION
        tools["azure-cli"] = {"installed": None, "pinned": AZURE_CLI_VERSION}
        tools["azure-cli-ml-extension"] = {"installed": None, "pinned": ML_EXTENSION_VERSION}
    except ImportError:
        pass
    return {
        "package": "mlops-steps", "version": __version__,
        "commit": info.get("commit") or (_git_commit(root) if root else None),
        "installed_from": info.get("source") or (str(root) if root else None),
        "python": sys.version.split()[0],
        "steps": modules, "support_modules": support, "files": files, "tools": tools,
    }


def to_text(manifest: dict[str, Any]) -> str:
    lines = [f"mlops-steps {manifest['version']} (commit {manifest['commit'] or 'unknown'}), "
             f"Python {manifest['python']}", "", "steps:"]
    lines += [f"  {sha['sha256']}  {name} ({sha['module']})" for name, sha in manifest["steps"].items()]
    if manifest["files"]:
        lines += ["", "files:"] + [f"  {digest}  {path}" for path, digest in manifest["files"].items()]
    lines += ["", "tools (installed / pinned):"]
    for tool, v in manifest["tools"].items():
        flag = "" if v["installed"] in (None, v["pinned"]) or v["pinned"] is None else "  MISMATCH"
        lines.append(f"  {tool}: {v['installed'] or '-'} / {v['pinned'] or '-'}{flag}")
    return "\n".join(lines)


@click.command("manifest", context_settings={"help_option_names": ["-h", "--help"]}, help=__doc__)
@click.option("--root", type=click.Path(file_okay=False, path_type=Path), envvar="MLOPS_ROOT", show_envvar=True,
              help="The templates checkout whose action/template files to hash (default: the one this "
                   "package was installed from, when it is still there).")
@click.option("--format", "fmt", type=click.Choice(["json", "text"]), default="json", show_default=True,
              envvar="MLOPS_FORMAT", show_envvar=True, help="Output format.")
@click.option("--output-json", type=click.Path(dir_okay=False, path_type=Path), envvar="MLOPS_OUTPUT_JSON",
              show_envvar=True, help="Also write the JSON manifest to this file.")
def command(root: Path | None, fmt: str, output_json: Path | None) -> None:
    if root is not None and not ((root / "actions").is_dir() and (root / "pyproject.toml").is_file()):
        click.echo(f"error: manifest: --root (MLOPS_ROOT): {root} is not a mlops-templates checkout "
                   "(no actions/ or pyproject.toml)", err=True)
        sys.exit(2)
    manifest = build(root or default_root())
    text = json.dumps(manifest, indent=2, sort_keys=False)
    if output_json:
        from .files import write_json_atomic
        write_json_atomic(str(output_json), manifest)
    click.echo(text if fmt == "json" else to_text(manifest))
