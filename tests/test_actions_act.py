"""The composite actions and reusable workflows, run for real by nektos/act in host mode.

Each test has its own temp dir (library copy, consumer workspace, HOME, tool cache). Workflows
use the library the way a user repo does: `org/mlops-templates/actions/<step>@vX.Y.Z`.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from act_harness import REF, REPO, ActEnv, copy_repo, record_step

ROOT = Path(__file__).resolve().parents[1]
ACTIONS = sorted(p.parent.name for p in (ROOT / "actions").glob("*/action.yml"))
CHECKOUT = "actions/checkout@11bd71901bbe5b1630ceea73d27597364c9af683"  # v4.2.2

TRAIN_PY = """
import argparse, mlflow, pandas as pd
from sklearn.linear_model import LinearRegression
p = argparse.ArgumentParser(); p.add_argument("--data"); p.add_argument("--model_output")
a = p.parse_args()
df = pd.read_csv(a.data)
X, y = df[["x", "g"]], df["y"]
m = LinearRegression().fit(X, y)
mlflow.log_metric("r2", m.score(X, y))
mlflow.sklearn.save_model(m, a.model_output, input_example=X.head(3), pip_requirements=["scikit-learn"])
"""
JOB_YML = """\
$schema: https://azuremlschemas.azureedge.net/latest/commandJob.schema.json
type: command
code: src
command: python train.py --data ${{inputs.data}} --model_output ${{outputs.trained_model}}
environment: azureml:sklearn-env:1
experiment_name: act
inputs:
  data:
    type: uri_file
    path: azureml:tiny:1
outputs:
  trained_model:
    type: mlflow_model
"""
RAI_POLICY = """\
task: regression
label: y
sensitive_features:
  - name: g
min_group_size: 5
performance:
  r2: ">=0.5"
on_violation: fail
"""


def write_project(ws: Path) -> None:
    """A consumer project: data, a train job, an RAI policy."""
    rows = ["x,y,g"] + [f"{i},{2 * i + (i % 3) * 0.1:.2f},{i % 2}" for i in range(40)]
    (ws / "data.csv").write_text("\n".join(rows) + "\n")
    (ws / "src").mkdir(exist_ok=True)
    (ws / "src" / "train.py").write_text(TRAIN_PY)
    (ws / "job.yml").write_text(JOB_YML)
    (ws / "rai.yml").write_text(RAI_POLICY)


@pytest.fixture(scope="module")
def lib(tmp_path_factory) -> Path:
    return copy_repo(tmp_path_factory.mktemp("lib"))


@pytest.fixture
def act(tmp_path, lib) -> ActEnv:
    return ActEnv(tmp_path, lib)


def action(step: str) -> str:
    return f"{REPO}/actions/{step}@{REF}"


def job(job_id: str, steps: list[dict], **extra) -> dict:
    return {"runs-on": "ubuntu-latest", **extra,
            "steps": [{"uses": CHECKOUT}, *steps]}


def test_register_data_action_outputs_and_idempotency(act):
    """The action end to end: inputs via env (a multi-line dict too), outputs, --output-json."""
    write_project(act.ws)
    store = str(act.tmp / "store")
    steps = [
        {"id": "data", "uses": action("register-data"),
         "with": {"store": store, "name": "tiny", "path": "data.csv", "tags": "source=act\nteam=ml"}},
        {"id": "again", "uses": action("register-data"),
         "with": {"store": store, "name": "tiny", "path": "data.csv", "output-json": str(act.tmp / "again.json")}},
        record_step("data", "data"), record_step("again", "again"),
    ]
    run = act.run(yaml.safe_dump({"on": "push", "permissions": {}, "jobs": {"rd": job("rd", steps)}}))
    assert run.code == 0, run
    first, again = run.results["data"]["outputs"], run.results["again"]["outputs"]
    assert first["name"] == "tiny" and first["version"] == "1"
    asset = json.loads(first["assets"])[0]
    assert asset["created"] is True and Path(first["uri"]).read_bytes() == (act.ws / "data.csv").read_bytes()
    assert json.loads((Path(store) / "data" / "tiny" / "1" / "asset.json").read_text())["tags"] == {
        "source": "act", "team": "ml"}
    assert again["version"] == "1" and json.loads(again["assets"])[0]["created"] is False
    saved = json.loads((act.tmp / "again.json").read_text())
    assert saved["outputs"]["version"] == "1" and saved["passed"] is True


@pytest.mark.slow
def test_taxi_example_workflow_end_to_end(act, lib):
    """examples/taxi-regression/.github/workflows/mlops.yml as its repository would run it, on the
    local backend (repository variables): scan -> model-ci (the taxi pipeline, compare, RAI gate,
    promote in the model-registry environment's job) -> batch scoring with the new version."""
    shutil.copytree(lib / "examples" / "taxi-regression", act.ws, dirs_exist_ok=True)
    workflow = act.ws / ".github" / "workflows" / "mlops.yml"
    text = workflow.read_text()
    workflow.unlink()
    store = act.tmp / "store"  # shared by the jobs, as on a self-hosted runner
    text += textwrap.indent(textwrap.dedent("""
        report:
          needs: [model-ci, batch-scoring]
          runs-on: ubuntu-latest
          steps:
            - shell: bash
              env:
                CI: ${{ toJSON(needs.model-ci.outputs) }}
                BATCH: ${{ toJSON(needs.batch-scoring.outputs) }}
              run: for n in CI BATCH; do printf "%s" "${!n}" > "$RESULTS/$n.json"; done
        """), "  ")
    run = act.run(text, extra_args=("--var", "MLOPS_BACKEND=local", "--var", f"MLOPS_STORE={store}"),
                  timeout=600)
    assert run.code == 0, run
    for job in ("security scan", "model CI", "promote (approved)", "batch scoring (production)"):
        assert f"/{job}] 🏁  Job succeeded" in run.log, job
    ci = run.results["CI"]
    # the taxi pipeline's own register node registers a version first; register-model adds ours
    assert ci["model-name"] == "taxi-model" and ci["model-version"].isdigit()
    assert ci["deploy-flag"] == "true" and ci["gate-passed"] == "true"
    assert ci["champion-version"] == ci["model-version"]
    batch = run.results["BATCH"]
    rows = len((act.ws / "data" / "taxi-batch.csv").read_text().splitlines()) - 1
    assert batch["status"] == "Completed" and batch["rows-scored"] == str(rows)
    assert Path(batch["output-path"]).is_file()
    assert not act.stub_calls("azure/login")  # local backend: no Azure login
    assert len(act.stub_calls("github/codeql-action")) == 1  # the scan's SARIF was uploaded


def test_scan_workflow_uploads_sarif_even_when_the_gate_fails(act):
    (act.ws / "app").mkdir()
    (act.ws / "app" / "main.py").write_text("import subprocess\nsubprocess.call('ls', shell=True)\n")
    wf = {"on": "push", "permissions": {}, "jobs": {
        "scan": {"uses": f"{REPO}/.github/workflows/scan.yml@{REF}",
                 "permissions": {"contents": "read", "security-events": "write"}, "with": {"paths": "app"}}}}
    run = act.run(yaml.safe_dump(wf, sort_keys=False))
    assert run.code != 0 and "Job 'security scan' failed" in run.log, run  # the policy said no
    assert "B602" in run.log and "::error::scan: gate failed" in run.log
    uploads = act.stub_calls("github/codeql-action")
    assert len(uploads) == 1, run
    sent = json.loads(uploads[0].split(": ", 1)[1])
    assert sent["sarif_file"].endswith("scan.sarif") and sent["category"] == "mlops-scan"


def job_log(log: str, job_id: str) -> str:
    """The lines act logged for one job (its prefix is padded to the longest job name)."""
    return "\n".join(ln for ln in log.splitlines() if re.match(rf"\[test\.yml/{job_id}\s*\]", ln))


def _bad_value(step: str, required: list[str]) -> dict[str, str]:
    return {name: "does-not-exist.yml" for name in required}


def test_every_action_runs_its_step_and_reports_bad_input(act):
    """One job per action, required inputs pointing at missing files: the step itself answers
    (exit 2, the message names the input's MLOPS_* variable) and the job sees the failure."""
    jobs = {}
    for step in ACTIONS:
        spec = yaml.safe_load((ROOT / "actions" / step / "action.yml").read_text())
        required = [n for n, i in spec["inputs"].items() if i.get("required")]
        with_ = _bad_value(step, required) or {"backend": "nowhere"}
        jid = step.replace("-", "_")
        jobs[jid] = job(jid, [{"id": "s", "uses": action(step), "with": with_, "continue-on-error": True},
                              record_step(jid, "s")])
    run = act.run(yaml.safe_dump({"on": "push", "permissions": {}, "jobs": jobs}, sort_keys=False))
    assert run.code == 0, run
    for step in ACTIONS:
        jid = step.replace("-", "_")
        assert run.results[jid]["outcome"] == "failure", (step, run)
        text = job_log(run.log, jid)
        assert "exit status 2" in text, (step, text[-3000:])
        assert "Traceback" not in text
        assert f"::error::{step}: " in text, (step, text[-3000:])  # the step's own one-line answer


@pytest.mark.slow
def test_installer_builds_the_venv_from_the_checkout(tmp_path, lib):
    """The real installer (no seeding): a venv keyed on the lock file, holding this checkout's code."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GITHUB_", "RUNNER_", "MLOPS_"))}
    env.update(RUNNER_TOOL_CACHE=str(tmp_path / "tools"), GITHUB_OUTPUT=str(tmp_path / "out"))
    script = lib / "actions" / "_lib" / "install.py"
    first = subprocess.run([sys.executable, str(script), ""], env=env, capture_output=True, text=True,
                           timeout=240)
    assert first.returncode == 0, first.stderr
    bin_dir = Path(first.stdout.strip().splitlines()[-1])
    assert (tmp_path / "out").read_text() == f"bin={bin_dir}\n"
    installed = subprocess.run([str(bin_dir / "python"), "-c",
                                "import mlops_steps.contract as c, importlib.metadata as m; "
                                "print(c.__file__); print(m.version('click'))"],
                               capture_output=True, text=True, check=True).stdout.split()
    assert Path(installed[0]).read_bytes() == (lib / "steps" / "mlops_steps" / "contract.py").read_bytes()
    assert "site-packages" in installed[0]  # a real install, not a link to the checkout
    pinned = [ln for ln in (lib / "constraints.txt").read_text().splitlines() if ln.startswith("click==")]
    assert pinned == [f"click=={installed[1]}"]
    assert not list((lib / "steps").glob("*.egg-info"))  # the checkout is left untouched
    manifest = json.loads(subprocess.run([str(bin_dir / "mlops-step"), "manifest"], capture_output=True, text=True,
                                         check=True).stdout)
    assert manifest["installed_from"] == str(lib) and manifest["version"] == REF[1:]
    assert manifest["steps"]["register-data"]["sha256"] == hashlib.sha256(
        (lib / "steps" / "mlops_steps" / "register_data.py").read_bytes()).hexdigest()
    assert manifest["files"]["actions/register-data/action.yml"] == hashlib.sha256(
        (lib / "actions" / "register-data" / "action.yml").read_bytes()).hexdigest()
    again = subprocess.run([sys.executable, str(script), ""], env=env, capture_output=True, text=True)
    assert again.returncode == 0 and "Using cached" in again.stderr
    (lib / "constraints.txt").write_text((lib / "constraints.txt").read_text() + "\n")
    try:
        moved = subprocess.run([sys.executable, str(script), "", "--print-venv"], env=env,
                               capture_output=True, text=True).stdout.strip()
    finally:
        (lib / "constraints.txt").write_text((lib / "constraints.txt").read_text()[:-1])
    assert Path(moved) != bin_dir.parent  # a changed lock file means a new venv


def hostile(tmp: Path) -> str:
    """One string with every trick: command substitution, backticks, quote breaking, workflow
    commands on their own lines, an ADO logging command, a GITHUB_OUTPUT-style line."""
    return (f'x$(touch {tmp}/PWNED1)`touch {tmp}/PWNED2`"; rm -rf {tmp}/canary; echo "'
            f"\n::set-output name=forged::1\n::error::forged\nforged=1\n"
            f"##vso[task.setvariable variable=forged;isOutput=true]1\n'; touch {tmp}/PWNED3; '")


def assert_nothing_happened(tmp: Path, outputs: list[dict], log: str) -> None:
    assert not list(tmp.glob("PWNED*")), "an input was executed"
    assert (tmp / "canary" / "keep").is_file(), "an input was executed"
    for out in outputs:
        assert "forged" not in out, f"output forged: {out}"
        assert not any(v == "1" for v in out.values()), out
    assert not re.search(r"::set-output::\s*forged", log), "a workflow command from an input was obeyed"
    assert not re.search(r"(?m)❗\s+::error::forged$", log), "a workflow command from an input was obeyed"


def test_hostile_inputs_through_every_input_of_every_action_and_reusable_workflow(act):
    (act.tmp / "canary").mkdir()
    (act.tmp / "canary" / "keep").write_text("still here")
    evil = hostile(act.tmp)
    jobs = {}
    for step in ACTIONS:
        spec = yaml.safe_load((ROOT / "actions" / step / "action.yml").read_text())
        jid = step.replace("-", "_")
        jobs[jid] = job(jid, [{"id": "s", "uses": action(step), "continue-on-error": True,
                               "with": {name: evil for name in spec["inputs"]}},
                              record_step(jid, "s")])
    reusable = {}
    for path in sorted((ROOT / ".github" / "workflows").glob("*.yml")):
        on = yaml.safe_load(path.read_text())[True]  # YAML 1.1 reads the key `on` as True
        call = on.get("workflow_call") if isinstance(on, dict) else None
        if call is None:
            continue
        jid = "wf_" + path.stem.replace("-", "_")
        reusable[jid] = path.name
        jobs[jid] = {"uses": f"{REPO}/.github/workflows/{path.name}@{REF}",
                     "permissions": {"contents": "read", "id-token": "write", "security-events": "write"},
                     "with": {n: (False if i["type"] == "boolean" else evil) for n, i in call["inputs"].items()}}
    assert set(reusable.values()) >= {"model-ci.yml", "deploy-online.yml", "deploy-batch.yml", "scan.yml"}
    # control: the classic mistake (an input pasted into run:) is caught by this very test
    (act.tmp / "control").mkdir()
    (act.ws / "unsafe").mkdir()
    (act.ws / "unsafe" / "action.yml").write_text(yaml.safe_dump({
        "name": "unsafe", "description": "pastes its input into the script",
        "inputs": {"x": {"description": "x", "required": True}},
        "runs": {"using": "composite", "steps": [{"shell": "bash", "run": 'echo "${{ inputs.x }}"'}]}}))
    jobs["control"] = job("control", [{"uses": "./unsafe", "continue-on-error": True,
                                       "with": {"x": hostile(act.tmp / "control")}}])
    run = act.run(yaml.safe_dump({"on": "push", "permissions": {}, "jobs": jobs}, sort_keys=False))
    assert (act.tmp / "control" / "PWNED1").exists()  # the unsafe pattern really is exploitable here
    assert re.search(r"::set-output::\s*forged", job_log(run.log, "control"))
    log = "\n".join(ln for ln in run.log.splitlines() if not re.match(r"\[test\.yml/control\s*\]", ln))
    assert run.code != 0  # the reusable workflows failed on bad input, as they must
    for step in ACTIONS:
        res = run.results[step.replace("-", "_")]
        assert res["outcome"] == "failure", (step, run)
    assert all("exit status 2" in job_log(run.log, s.replace("-", "_")) for s in ACTIONS), run
    # the reusable workflows failed on bad input too, inside their first job (a job name that shows
    # the hostile environment input spans lines in act's log, so count rather than match prefixes)
    failed_inner = [ln for ln in run.log.splitlines() if ln.endswith("🏁  Job failed") and "[test.yml/" not in ln]
    assert len(failed_inner) == len(reusable), run
    outputs = [r["outputs"] for r in run.results.values()]
    assert_nothing_happened(act.tmp, outputs, log)
