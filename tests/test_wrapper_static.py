"""Static checks of the wrappers, and that each check really catches what it is for."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import check_wrappers  # noqa: E402
from act_harness import copy_repo  # noqa: E402


@pytest.mark.parametrize("name", list(check_wrappers.CHECKS))
def test_static_check_passes(name):
    ok, report = check_wrappers.CHECKS[name]()
    assert ok, report


def test_every_action_is_a_thin_env_only_wrapper():
    """composite, bash everywhere, no `${{ }}` in any run:, every input reaches env as MLOPS_*."""
    for path in sorted((ROOT / "actions").glob("*/action.yml")):
        spec = yaml.safe_load(path.read_text())
        assert spec["runs"]["using"] == "composite", path
        steps = spec["runs"]["steps"]
        for step in steps:
            assert step.get("shell") == "bash", (path, step)
            assert "${{" not in step.get("run", ""), (path, step)
            assert "uses" not in step, f"{path}: remote actions inside our actions are avoided"
        env = steps[-1]["env"]
        for name in spec["inputs"]:
            assert env["MLOPS_" + name.upper().replace("-", "_")] == f"${{{{ inputs.{name} }}}}", (path, name)
        assert "$GITHUB_ACTION_PATH/../_lib/install.py" in steps[0]["run"]
        for name, out in (spec.get("outputs") or {}).items():
            assert out["value"] == f"${{{{ steps.run.outputs.{name} }}}}"


@pytest.fixture(scope="module")
def lib(tmp_path_factory) -> Path:
    return copy_repo(tmp_path_factory.mktemp("lib"))


def test_generator_detects_stale_readme_and_action(lib):
    gen = [sys.executable, str(lib / "tools" / "gen_actions.py")]
    assert subprocess.run([*gen, "--check"], capture_output=True, text=True).returncode == 0
    readme = lib / "actions" / "register-data" / "README.md"
    readme.write_text(readme.read_text().replace("| `path` |", "| `the-path` |"))
    model = lib / "steps" / "mlops_steps" / "promote.py"
    model.write_text(model.read_text().replace('"changed": "', '"changed": "renamed: '))
    stale = subprocess.run([*gen, "--check"], capture_output=True, text=True)
    assert stale.returncode == 1
    assert "actions/register-data/README.md" in stale.stdout and "actions/promote/action.yml" in stale.stdout
    assert subprocess.run(gen, capture_output=True, text=True).returncode == 0
    assert subprocess.run([*gen, "--check"], capture_output=True, text=True).returncode == 0
    assert "renamed: " in (lib / "actions" / "promote" / "README.md").read_text()


def test_contract_check_catches_undeclared_and_missing_inputs(tmp_path):
    wf = tmp_path / "wf.yml"
    wf.write_text(yaml.safe_dump({"on": "push", "jobs": {
        "a": {"runs-on": "ubuntu-latest", "steps": [
            {"uses": "org/mlops-templates/actions/promote@v2.0.0", "with": {"modle": "m:1"}}]},
        "b": {"uses": "org/mlops-templates/.github/workflows/model-ci.yml@v2.0.0",
              "with": {"job": "j.yml"}, "secrets": {"AZURE_CLIENT_ID": "x", "GH_TOKEN": "y"}},
        "c": {"uses": "org/mlops-templates/.github/workflows/model-ci.yml@v2.0.0", "secrets": "inherit"}}}))
    problems = "\n".join(check_wrappers.contract_problems_github(wf))
    assert "has no input 'modle'" in problems and "needs input 'model'" in problems
    assert "needs input 'model-name'" in problems and "declares no secret 'GH_TOKEN'" in problems
    assert "not `inherit`" in problems


def test_refs_check_catches_a_floating_self_reference(lib):
    wf = lib / ".github" / "workflows" / "model-ci.yml"
    wf.write_text(wf.read_text().replace("actions/train@v2.0.0", "actions/train@main", 1))
    proc = subprocess.run([sys.executable, str(lib / "tools" / "check_refs.py")], capture_output=True, text=True)
    assert proc.returncode == 1 and "model-ci.yml" in proc.stdout and "@main" in proc.stdout
    subprocess.run([sys.executable, str(lib / "tools" / "check_refs.py"), "--set-version", "2.0.0"], check=True)
    assert subprocess.run([sys.executable, str(lib / "tools" / "check_refs.py")]).returncode == 1  # main is not a version
    wf.write_text(wf.read_text().replace("actions/train@main", "actions/train@v2.0.0"))
    subprocess.run([sys.executable, str(lib / "tools" / "check_refs.py"), "--set-version", "2.1.0"], check=True)
    assert "actions/train@v2.1.0" in wf.read_text() and "@v2.0.0" not in wf.read_text()
