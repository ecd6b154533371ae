"""install-cli: the Azure CLI and its `ml` extension at pinned versions, verified with `az version`.

When `az version` already reports the pinned versions nothing is changed. Otherwise the pinned
azure-cli is installed from PyPI (or your pip mirror: PIP_INDEX_URL etc. are honoured) into its own
virtual environment under --install-dir and put first on PATH for later steps of the job; the `ml`
extension is added at its pinned version (an installed different version is removed first). Nothing
is ever updated to "latest". The versions are inputs, so a project can move its pin deliberately.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from pydantic import Field

from . import ci
from .contract import BackendFailed, StepInputs, StepResult, step_command

AZURE_CLI_VERSION = "2.91.0"
ML_EXTENSION_VERSION = "2.44.1"
VERSION = r"^\d+\.\d+\.\d+$"

OUTPUTS = {
    "azure-cli-version": "azure-cli version now on PATH (from `az version`)",
    "ml-extension-version": "ml extension version (from `az version`)",
    "az-path": "full path of the az executable",
    "changed": "true if anything was installed or replaced",
}


class Inputs(StepInputs):
    azure_cli_version: str = Field(AZURE_CLI_VERSION, pattern=VERSION, description="azure-cli version to have.")
    ml_extension_version: str = Field(ML_EXTENSION_VERSION, pattern=VERSION,
                                      description="Azure ML (`ml`) CLI extension version to have.")
    install_dir: str = Field("~/.mlops/azure-cli", description="Where a pinned azure-cli is installed "
                             "(one virtual environment per version) when the one on PATH differs.")


def _az(az: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "AZURE_CORE_COLLECT_TELEMETRY": "no", "AZURE_CORE_ONLY_SHOW_ERRORS": "yes"}
    try:
        proc = subprocess.run([az, *args], capture_output=True, text=True, env=env, timeout=900)
    except OSError as exc:
        raise BackendFailed(f"cannot run {az}: {exc}") from None
    if check and proc.returncode != 0:
        raise BackendFailed(f"`az {' '.join(args)}` failed with exit code {proc.returncode}",
                            logs=(proc.stdout + proc.stderr)[-4000:])
    return proc


def az_versions(az: str) -> tuple[str | None, dict[str, str]]:
    """(azure-cli version, {extension: version}) as reported by `az version -o json`."""
    proc = _az(az, "version", "--output", "json")
    try:
        data = json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise BackendFailed(f"`{az} version` did not print JSON", logs=proc.stdout[-2000:]) from None
    return data.get("azure-cli"), dict(data.get("extensions") or {})


def _venv_bin(venv: Path) -> Path:
    return venv / ("Scripts" if os.name == "nt" else "bin")


def _install_cli(venv: Path, version: str) -> None:
    """azure-cli==version into a fresh virtual environment; removed again if anything fails."""
    ci.log(f"installing azure-cli=={version} into {venv}")
    try:
        for cmd in ([sys.executable, "-m", "venv", str(venv)],
                    [str(_venv_bin(venv) / "python"), "-m", "pip", "install", "--disable-pip-version-check",
                     "--quiet", f"azure-cli=={version}"]):
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
            if proc.returncode != 0:
                raise BackendFailed(f"installing azure-cli=={version} failed ({' '.join(cmd[-3:])})",
                                    logs=(proc.stdout + proc.stderr)[-4000:])
    except BaseException:
        shutil.rmtree(venv, ignore_errors=True)
        raise


def _prepend_path(folder: Path) -> None:
    """Put a folder first on PATH for later steps of this job."""
    where = ci.host()
    if where == ci.GITHUB and os.environ.get("GITHUB_PATH"):
        with open(os.environ["GITHUB_PATH"], "a", encoding="utf-8") as fh:
            fh.write(f"{folder}\n")
    elif where == ci.AZURE:
        sys.stdout.write(f"##vso[task.prependpath]{folder}\n")
        sys.stdout.flush()
    else:
        ci.log(f"add {folder} to PATH to use this az: export PATH=\"{folder}:$PATH\"")


def run(inputs: Inputs, backend: Any) -> StepResult:
    want_cli, want_ml = inputs.azure_cli_version, inputs.ml_extension_version
    venv = Path(inputs.install_dir).expanduser().resolve() / f"azure-cli-{want_cli}"
    pinned_az = _venv_bin(venv) / "az"
    on_path = shutil.which("az")
    actions: list[str] = []

    az = None
    for candidate in (on_path, str(pinned_az) if pinned_az.is_file() else None):
        if not candidate:
            continue
        try:
            version = az_versions(candidate)[0]
        except BackendFailed as exc:  # a broken az is as good as none: install the pinned one
            ci.warning(f"{candidate} is not usable ({exc})")
            continue
        if version == want_cli:
            az = candidate
            break
    if az is None:
        actions.append(f"install azure-cli=={want_cli} into {venv}")
    if inputs.dry_run:
        cli, exts = az_versions(az) if az else (None, {})
        if exts.get("ml") != want_ml:
            actions.append(f"add the ml extension {want_ml}" + (f" (replacing {exts['ml']})" if exts.get("ml") else ""))
        return StepResult({"changed": bool(actions)},
                          summary="### install-cli (dry run)\n\n" + "\n".join(f"- would {a}" for a in actions or
                                                                              ["change nothing"]))
    if az is None:
        if venv.exists():
            shutil.rmtree(venv)  # a broken or partial earlier install
        _install_cli(venv, want_cli)
        az = str(pinned_az)
    _, extensions = az_versions(az)
    if "azure-cli-ml" in extensions:  # the retired v1 extension conflicts with `ml`
        _az(az, "extension", "remove", "--name", "azure-cli-ml")
        actions.append("remove the retired azure-cli-ml extension")
    if extensions.get("ml") != want_ml:
        if "ml" in extensions:
            _az(az, "extension", "remove", "--name", "ml")
        _az(az, "extension", "add", "--name", "ml", "--version", want_ml, "--yes")
        actions.append(f"add the ml extension {want_ml}" + (f" (was {extensions['ml']})" if "ml" in extensions else ""))

    cli, extensions = az_versions(az)
    if cli != want_cli or extensions.get("ml") != want_ml:
        raise BackendFailed(f"after installing, `az version` reports azure-cli {cli} and ml "
                            f"{extensions.get('ml')}; expected {want_cli} and {want_ml}")
    az_dir = Path(az).resolve().parent
    if not on_path or Path(on_path).resolve() != Path(az).resolve():
        _prepend_path(az_dir)
    rows = [{"component": "azure-cli", "version": cli}, {"component": "ml extension", "version": extensions["ml"]}]
    summary = (f"### Azure CLI\n\n`{az}`: " + ("; ".join(actions) if actions else "already at the pinned versions")
               + "\n\n" + ci.markdown_table(rows))
    return StepResult({"azure-cli-version": cli, "ml-extension-version": extensions["ml"], "az-path": az,
                       "changed": bool(actions)}, summary=summary)


command = step_command("install-cli", Inputs, OUTPUTS, run, __doc__ or "")
