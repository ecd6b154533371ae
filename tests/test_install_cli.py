"""install-cli against a fake `az` (a script that keeps its versions in a state file and logs every call),
and a fake azure-cli wheel installed by the real pip from a local folder (no network)."""
from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
import sys
import zipfile
from pathlib import Path

import pytest

FAKE_AZ = '''#!{python}
"""A fake Azure CLI: `version`, `extension add/remove`; state in $FAKE_AZ_STATE, calls logged to $FAKE_AZ_LOG."""
import json, os, sys
state_file = os.environ["FAKE_AZ_STATE"]
state = json.load(open(state_file))
with open(os.environ["FAKE_AZ_LOG"], "a") as log:
    log.write(json.dumps([os.path.abspath(sys.argv[0])] + sys.argv[1:]) + "\\n")
args = sys.argv[1:]
cli = os.environ.get("FAKE_AZ_CLI_VERSION") or state["azure-cli"]
if args[:1] == ["version"]:
    print(json.dumps({{"azure-cli": cli, "azure-cli-core": cli, "extensions": state["extensions"]}}, indent=2))
elif args[:2] == ["extension", "remove"]:
    state["extensions"].pop(args[args.index("--name") + 1], None)
elif args[:2] == ["extension", "add"]:
    if not state.get("broken"):
        state["extensions"][args[args.index("--name") + 1]] = args[args.index("--version") + 1]
else:
    print("unknown command", args, file=sys.stderr)
    sys.exit(2)
json.dump(state, open(state_file, "w"))
'''


def _fake_az(folder: Path, workdir: Path, cli: str, extensions: dict[str, str], broken: bool = False) -> dict[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    az = folder / "az"
    az.write_text(FAKE_AZ.format(python=sys.executable))
    az.chmod(az.stat().st_mode | stat.S_IEXEC)
    state = workdir / "az-state.json"
    state.write_text(json.dumps({"azure-cli": cli, "extensions": extensions, "broken": broken}))
    return {"FAKE_AZ_STATE": str(state), "FAKE_AZ_LOG": str(workdir / "az-calls.log"),
            "PATH": f"{folder}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}/usr/bin:/bin"}


def _calls(workdir: Path) -> list[list[str]]:
    log = workdir / "az-calls.log"
    return [json.loads(line)[1:] for line in log.read_text().splitlines()] if log.exists() else []


def _wheel(dist: Path, version: str) -> Path:
    """A minimal azure-cli wheel whose `az` console script is the fake CLI (reporting `version`)."""
    name = f"azure_cli-{version}"
    files = {
        "fake_azure_cli.py": ("import os, runpy, sys\n"
                              "def main():\n"
                              f"    os.environ['FAKE_AZ_CLI_VERSION'] = '{version}'\n"
                              "    sys.argv[0] = __file__\n"
                              "    runpy.run_path(os.environ['FAKE_AZ_SCRIPT'], run_name='__main__')\n"),
        f"{name}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: azure-cli\nVersion: {version}\n",
        f"{name}.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        f"{name}.dist-info/entry_points.txt": "[console_scripts]\naz = fake_azure_cli:main\n",
    }
    dist.mkdir(parents=True, exist_ok=True)
    path = dist / f"{name}-py3-none-any.whl"
    record = []
    with zipfile.ZipFile(path, "w") as zf:
        for arc, text in files.items():
            data = text.encode()
            zf.writestr(arc, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append(f"{arc},sha256={digest},{len(data)}")
        record.append(f"{name}.dist-info/RECORD,,")
        zf.writestr(f"{name}.dist-info/RECORD", "\n".join(record) + "\n")
    return path


def test_noop_when_the_pinned_versions_are_present(step, workdir):
    env = _fake_az(workdir / "bin", workdir, "2.91.0", {"ml": "2.44.1"})
    res = step("install-cli", env=env)
    assert res.code == 0, res
    assert res.outputs == {"azure-cli-version": "2.91.0", "ml-extension-version": "2.44.1",
                           "az-path": str(workdir / "bin" / "az"), "changed": False}
    assert all(call[0] == "version" for call in _calls(workdir))  # nothing but `az version`


def test_wrong_extension_is_replaced_by_the_pinned_one_never_latest(step, workdir):
    env = _fake_az(workdir / "bin", workdir, "2.91.0", {"ml": "2.45.0", "azure-cli-ml": "1.41.0"})
    res = step("install-cli", env=env)
    assert res.code == 0, res
    assert res.outputs["ml-extension-version"] == "2.44.1" and res.outputs["changed"] is True
    changes = [c for c in _calls(workdir) if c[0] != "version"]
    assert changes == [["extension", "remove", "--name", "azure-cli-ml"],
                       ["extension", "remove", "--name", "ml"],
                       ["extension", "add", "--name", "ml", "--version", "2.44.1", "--yes"]]
    assert not any("update" in c for c in _calls(workdir))

    override = step("install-cli", "--ml-extension-version", "2.40.0", env=env)
    assert override.code == 0 and override.outputs["ml-extension-version"] == "2.40.0"


def test_verification_failure_exits_3(step, workdir):
    env = _fake_az(workdir / "bin", workdir, "2.91.0", {"ml": "2.30.0"}, broken=True)
    res = step("install-cli", env=env)
    assert res.code == 3, res
    assert "reports azure-cli 2.91.0 and ml None; expected 2.91.0 and 2.44.1" in res.stderr and "Traceback" not in res.stderr


def test_bad_version_is_bad_input(step, workdir):
    res = step("install-cli", "--azure-cli-version", "latest")
    assert res.code == 2 and "--azure-cli-version (MLOPS_AZURE_CLI_VERSION)" in res.stderr


def test_dry_run_changes_nothing(step, workdir):
    env = _fake_az(workdir / "bin", workdir, "2.80.0", {})
    res = step("install-cli", "--dry-run", "--install-dir", str(workdir / "tools"), env=env)
    assert res.code == 0, res
    assert "would install azure-cli==2.91.0" in res.stderr and "would add the ml extension 2.44.1" in res.stderr
    assert not (workdir / "tools").exists()
    assert all(call[0] == "version" for call in _calls(workdir))


@pytest.mark.slow
def test_other_cli_on_path_installs_the_pinned_one_with_pip_and_prepends_path(step, workdir):
    """A different az on PATH (like a hosted runner's) is left alone; the pinned one goes in a venv."""
    env = _fake_az(workdir / "bin", workdir, "2.60.0", {"ml": "2.44.1"})
    wheels = workdir / "wheels"
    _wheel(wheels, "2.91.0")
    github_path = workdir / "github_path"
    env.update({"FAKE_AZ_SCRIPT": str(workdir / "bin" / "az"), "PIP_NO_INDEX": "1",
                "PIP_FIND_LINKS": str(wheels), "GITHUB_ACTIONS": "true", "GITHUB_PATH": str(github_path)})
    tools = workdir / "tools"
    res = step("install-cli", "--install-dir", str(tools), env=env)
    assert res.code == 0, res
    venv_az = tools / "azure-cli-2.91.0" / "bin" / "az"
    assert res.outputs["az-path"] == str(venv_az) and res.outputs["azure-cli-version"] == "2.91.0"
    assert github_path.read_text() == f"{venv_az.parent}\n"
    assert json.loads((workdir / "az-state.json").read_text())["azure-cli"] == "2.60.0"  # system az untouched

    again = step("install-cli", "--install-dir", str(tools), env=env)  # the venv is found: no reinstall
    assert again.code == 0 and again.outputs["changed"] is False
