"""The step contract and CI host reporting: outputs in GitHub and ADO formats, exit codes, masking."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import BIN, clean_env
from pydantic import Field

from mlops_steps import ci
from mlops_steps.contract import (BackendFailed, BadInput, StepInputs, StepResult, execute)

OUTS = {"value": "a value", "ok": "a boolean"}


class GateInputs(StepInputs):
    threshold: float = Field(0.5, description="t")
    names: list[str] = Field(default_factory=list, description="n")


def _gate(inputs: GateInputs, backend) -> StepResult:
    return StepResult({"value": inputs.threshold, "ok": inputs.threshold < 1}, passed=inputs.threshold < 1,
                      summary="| a | b |\n|---|---|\n| 1 | 2 |")


def _raises(exc):
    def run(inputs, backend):
        raise exc
    return run


@pytest.fixture
def github(tmp_path, monkeypatch):
    for var in ("TF_BUILD",):
        monkeypatch.delenv(var, raising=False)
    out, summary = tmp_path / "gh_output", tmp_path / "gh_summary"
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    monkeypatch.setenv("GITHUB_OUTPUT", str(out))
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    return out, summary


def _parse_github_output(text: str) -> dict[str, str]:
    values, lines = {}, iter(text.splitlines())
    for line in lines:
        name, _, delim = line.partition("<<")
        body = []
        for inner in lines:
            if inner == delim:
                break
            body.append(inner)
        values[name] = "\n".join(body)
    return values


def test_exit_codes(monkeypatch):
    monkeypatch.delenv("GITHUB_ACTIONS", raising=False)
    monkeypatch.delenv("TF_BUILD", raising=False)
    assert execute("t", GateInputs, OUTS, _gate, {"threshold": "0.2"}) == 0
    assert execute("t", GateInputs, OUTS, _gate, {"threshold": "2"}) == 1
    assert execute("t", GateInputs, OUTS, _gate, {"threshold": "abc"}) == 2
    assert execute("t", GateInputs, OUTS, _raises(BadInput("--x", "wrong")), {}) == 2
    assert execute("t", GateInputs, OUTS, _raises(BackendFailed("down", logs="log")), {}) == 3


def test_github_outputs_summary_and_annotations(github, capsys):
    out, summary = github
    assert execute("t", GateInputs, OUTS, _gate, {"threshold": "2"}) == 1
    assert _parse_github_output(out.read_text()) == {"value": "2.0", "ok": "false"}
    assert "| 1 | 2 |" in summary.read_text()
    assert "::error::t: gate failed" in capsys.readouterr().out


def test_bad_input_names_the_option_and_env_var(github, capsys):
    assert execute("t", GateInputs, OUTS, _gate, {"threshold": "abc"}) == 2
    assert "::error::t: --threshold (MLOPS_THRESHOLD): Input should be a valid number" in capsys.readouterr().out


def test_azure_devops_logging_commands(monkeypatch, capsys, tmp_path):
    monkeypatch.delenv("GITHUB_ACTIONS", raising=False)
    monkeypatch.setenv("TF_BUILD", "True")
    monkeypatch.setenv("AGENT_TEMPDIRECTORY", str(tmp_path))
    assert execute("t", GateInputs, OUTS, _gate, {"threshold": "0.25"}) == 0
    out = capsys.readouterr().out.splitlines()
    assert "##vso[task.setvariable variable=value;isOutput=true]0.25" in out
    assert "##vso[task.setvariable variable=ok;isOutput=true]true" in out
    upload = [line for line in out if line.startswith("##vso[task.uploadsummary]")]
    assert upload and "| 1 | 2 |" in open(upload[0].split("]", 1)[1]).read()
    ci.mask("s3cret;value")
    ci.error("bad\nthing")
    out = capsys.readouterr().out
    assert "issecret=true]s3cret%3Bvalue" in out
    assert "##vso[task.logissue type=error]bad%0Athing" in out


def test_hostile_values_cannot_forge_commands(github, capsys, monkeypatch):
    out, _ = github
    hostile = "x\n::set-output name=ok::true\n##vso[task.setvariable variable=ok]true"

    def run(inputs, backend):
        return StepResult({"value": hostile})

    assert execute("t", GateInputs, OUTS, run, {}) == 0
    assert _parse_github_output(out.read_text()) == {"value": hostile}  # one output, intact
    ci.log(hostile)
    err = capsys.readouterr().err
    assert "\n::set-output" not in err and "##vso[" not in err
    monkeypatch.delenv("GITHUB_ACTIONS")
    monkeypatch.setenv("TF_BUILD", "True")
    ci.set_output("value", hostile)
    lines = capsys.readouterr().out.splitlines()
    # one line, our command first; the embedded one has its "]" escaped so it is only data
    assert len(lines) == 1 and lines[0].startswith("##vso[task.setvariable variable=value;isOutput=true]")
    assert "variable=ok]" not in lines[0] and "variable=ok%5Dtrue" in lines[0]


def test_list_inputs_from_env(monkeypatch):
    monkeypatch.setenv("MLOPS_NAMES", "a b\n c d \n")
    seen = {}

    def run(inputs, backend):
        seen["names"] = inputs.names
        return StepResult({})

    assert execute("t", GateInputs, OUTS, run, {}) == 0
    assert seen["names"] == ["a b", "c d"]


def test_help_is_fast_and_imports_nothing_heavy():
    code = ("import sys; from mlops_steps.cli import main\n"
            "try:\n main(['--help'])\nexcept SystemExit: pass\n"
            "heavy = [m for m in ('mlflow', 'sklearn', 'pandas', 'azure.ai.ml', 'pydantic') if m in sys.modules]\n"
            "print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=clean_env())
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stderr
    from mlops_steps.cli import STEPS
    for name in STEPS:
        code = (f"import sys; from mlops_steps.cli import main\n"
                f"try:\n main(['{name}', '--help'])\nexcept SystemExit: pass\n"
                "print([m for m in ('mlflow', 'sklearn', 'pandas', 'azure.ai.ml', 'onnxruntime', 'fairlearn')"
                " if m in sys.modules])")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=clean_env())
        assert out.stdout.strip().splitlines()[-1] == "[]", (name, out.stderr[-2000:])


def test_version_and_output_json(step, workdir):
    res = subprocess.run([str(BIN / "mlops-step"), "--version"], capture_output=True, text=True)
    assert res.returncode == 0 and "2.0.0" in res.stdout
    (workdir / "x.csv").write_text("a\n1\n")
    run = step("register-data", "--name", "x", "--path", "x.csv")
    data = json.loads(run.output_json.read_text())
    assert data["step"] == "register-data" and data["passed"] is True and data["outputs"]["version"] == "1"
