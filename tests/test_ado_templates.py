"""Azure DevOps templates: the expander's own reference tests, every template expanded and checked
against the azure-pipelines schema, and pipelines run by the small agent on the local backend.

tools/ado_expand.py approximates Azure DevOps' engine for the subset our templates use; it is
checked against the vendored azure-pipelines JSON schema, not against the service.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from act_harness import copy_repo, seed_venvs
from test_actions_act import RAI_POLICY, assert_nothing_happened, hostile, write_project

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import ado_expand as ax  # noqa: E402
import check_wrappers  # noqa: E402

BIN = Path(sys.executable).parent
RESOURCES = check_wrappers.ADO_RESOURCES


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


# -- the expander's reference tests ----------------------------------------------------------------
def test_parameters_types_defaults_and_validation(tmp_path):
    write(tmp_path / "t.yml", """\
        parameters:
          - name: name
            type: string
          - name: count
            type: number
            default: 2
          - name: flag
            type: boolean
            default: false
          - name: size
            type: string
            default: small
            values: [small, large]
          - name: extra
            type: object
            default: {a: 1}
        steps:
          - bash: echo ${{ parameters.name }} ${{ parameters.count }} ${{ parameters.flag }} ${{ parameters.size }}
            env:
              WHOLE: ${{ parameters.flag }}
              A: ${{ parameters.extra.a }}
        """)

    def pipe(params: dict) -> Path:
        return write(tmp_path / "p.yml", yaml.safe_dump({"steps": [{"template": "t.yml", "parameters": params}]}))

    step = ax.expand(pipe({"name": "x"}))["steps"][0]
    assert step["bash"] == "echo x 2 False small"  # embedded booleans read True/False, like Azure
    assert step["env"] == {"WHOLE": "false", "A": "1"}
    assert ax.expand(pipe({"name": "x", "flag": "true", "count": "5"}))["steps"][0]["bash"] == "echo x 5 True small"
    for params, message in [({}, "a value for parameter 'name' must be provided"),
                            ({"name": "x", "nope": 1}, "unexpected parameter(s) nope"),
                            ({"name": "x", "flag": "maybe"}, "'flag' expects a boolean"),
                            ({"name": "x", "count": "many"}, "'count' expects a number"),
                            ({"name": "x", "size": "huge"}, "is not one of"),
                            ({"name": ["a"]}, "'name' expects a string")]:
        with pytest.raises(ax.TemplateError, match=message.replace("(", r"\(").replace(")", r"\)")):
            ax.expand(pipe(params))


def test_if_elseif_else_and_each_in_sequences_and_mappings(tmp_path):
    write(tmp_path / "t.yml", """\
        parameters:
          - name: mode
            type: string
          - name: items
            type: object
            default: [a, b]
        steps:
          - ${{ if eq(parameters.mode, 'one') }}:
            - bash: one
          - ${{ elseif in(parameters.mode, 'two', 'deux') }}:
            - bash: two
          - ${{ else }}:
            - bash: other
          - ${{ each item in parameters.items }}:
            - bash: echo ${{ item }}
              env:
                ${{ if ne(item, 'a') }}:
                  NOT_A: yes-${{ item }}
                ${{ else }}:
                  IS_A: "1"
        """)
    for mode, first in [("one", "one"), ("DEUX", "two"), ("three", "other")]:
        p = write(tmp_path / "p.yml", yaml.safe_dump({"steps": [{"template": "t.yml", "parameters": {"mode": mode}}]}))
        steps = ax.expand(p)["steps"]
        assert [s["bash"] for s in steps] == [first, "echo a", "echo b"]
        assert steps[1]["env"] == {"IS_A": "1"} and steps[2]["env"] == {"NOT_A": "yes-b"}
    write(tmp_path / "bad.yml", "steps:\n  - ${{ else }}:\n    - bash: x\n")
    with pytest.raises(ax.TemplateError, match="without a preceding"):
        ax.expand(tmp_path / "bad.yml")


def test_nested_templates_relative_and_repository_paths(tmp_path):
    lib = tmp_path / "lib"
    write(lib / "jobs" / "j.yml", """\
        parameters:
          - name: who
            type: string
        jobs:
          - job: j_${{ parameters.who }}
            steps:
              - template: ../steps/s.yml
                parameters: {who: "${{ parameters.who }}"}
        """)
    write(lib / "steps" / "s.yml", """\
        parameters:
          - name: who
            type: string
        steps:
          - bash: echo hi ${{ parameters.who }}
        """)
    write(tmp_path / "stages" / "local.yml", "stages:\n  - stage: s1\n    jobs:\n"
          "      - template: jobs/j.yml@lib\n        parameters: {who: bob}\n")
    write(tmp_path / "p.yml", "stages:\n  - template: stages/local.yml\n")
    doc = ax.expand(tmp_path / "p.yml", {"lib": lib})
    job = doc["stages"][0]["jobs"][0]
    assert job["job"] == "j_bob" and job["steps"] == [{"bash": "echo hi bob"}]
    write(tmp_path / "q.yml", "steps:\n  - template: nope.yml@lib\n")
    with pytest.raises(ax.TemplateError, match="not found"):
        ax.expand(tmp_path / "q.yml", {"lib": lib})
    write(tmp_path / "r.yml", "steps:\n  - template: steps/s.yml@other\n")
    with pytest.raises(ax.TemplateError, match="unknown repository alias"):
        ax.expand(tmp_path / "r.yml", {"lib": lib})


def test_agent_runs_steps_with_env_outputs_conditions_and_approvals(tmp_path):
    write(tmp_path / "p.yml", """\
        jobs:
          - job: a
            steps:
              - bash: |
                  echo "##vso[task.setvariable variable=colour;isOutput=true]blue%3Bgreen"
                  echo "##vso[task.setvariable variable=plain]p1"
                name: s
              - bash: echo "plain=$(plain) colour=$(s.colour) env=$MY_ENV" > a.txt
                env:
                  MY_ENV: from-env
              - bash: exit 3
                continueOnError: true
              - bash: touch ran-after-issue
          - job: b
            dependsOn: a
            condition: and(succeeded(), eq(dependencies.a.outputs['s.colour'], 'blue;green'))
            variables:
              got: $[ dependencies.a.outputs['s.colour'] ]
            steps:
              - bash: echo "$(got)" > b.txt
              - bash: exit 1
              - bash: touch skipped
              - bash: touch always
                condition: always()
          - job: c
            dependsOn: b
            steps:
              - bash: touch c-ran
          - job: d
            dependsOn: b
            condition: failed()
            steps:
              - bash: touch d-ran
          - job: review
            pool: server
            steps:
              - task: ManualValidation@1
                inputs: {instructions: "ok?"}
          - job: after_review
            dependsOn: review
            steps:
              - bash: touch after-review
        """)
    rt = ax.Runtime(tmp_path, {"PATH": os.environ["PATH"]}, approvals={"review": False})
    jobs = rt.run(ax.expand(tmp_path / "p.yml"))
    src = tmp_path / "s"
    r = {name: job.result for (_, name), job in jobs.items()}
    assert r == {"a": "SucceededWithIssues", "b": "Failed", "c": "Skipped", "d": "Succeeded",
                 "review": "Failed", "after_review": "Skipped"}
    assert (src / "a.txt").read_text() == "plain=p1 colour=blue;green env=from-env\n"
    assert (src / "ran-after-issue").exists() and (src / "b.txt").read_text() == "blue;green\n"
    assert not (src / "skipped").exists() and (src / "always").exists()
    assert not (src / "c-ran").exists() and (src / "d-ran").exists() and not (src / "after-review").exists()
    assert jobs[("__default", "a")].outputs == {"s.colour": "blue;green"}


# -- our templates: expansion + schema -------------------------------------------------------------
def test_every_template_expands_to_a_schema_valid_pipeline(tmp_path):
    expanded = check_wrappers.expanded_ado_pipelines(tmp_path)
    for path in expanded:
        assert "${{" not in path.read_text(), path.name
    assert len(expanded) >= 2 * len(list((ROOT / "ado-templates" / "steps").glob("*.yml")))
    proc = subprocess.run([str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.azure-pipelines",
                           "--regex-variant", "python", *map(str, expanded)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:]
    azure = yaml.safe_load((tmp_path / "expanded" / "steps-train-1.yml").read_text())["steps"][1]
    assert azure["task"] == "AzureCLI@2" and azure["inputs"]["azureSubscription"] == "conn"
    local = yaml.safe_load((tmp_path / "expanded" / "steps-train-0.yml").read_text())["steps"][1]
    assert local["bash"] == '"$MLOPSSTEPSBIN/mlops-step" train' and local["env"]["MLOPS_JOB"] == "x"


def test_schema_check_rejects_a_broken_expansion(tmp_path):
    broken = tmp_path / "broken.yml"
    broken.write_text(yaml.safe_dump({"steps": [{"bash": "echo", "continueOnError": "perhaps", "nme": "x"}]}))
    proc = subprocess.run([str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.azure-pipelines",
                           "--regex-variant", "python", str(broken)], capture_output=True, text=True)
    assert proc.returncode == 1


# -- running pipelines ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lib(tmp_path_factory) -> Path:
    return copy_repo(tmp_path_factory.mktemp("lib"))


def agent(tmp: Path, lib: Path, project: Path, approvals: dict | None = None) -> ax.Runtime:
    tools = tmp / "tools"
    seed_venvs(lib, tools)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MLOPS_", "GITHUB_", "TF_BUILD", "SYSTEM_", "MLFLOW_", "RUNNER_", "AGENT_"))}
    env.update(AGENT_TOOLSDIRECTORY=str(tools))
    return ax.Runtime(tmp / "agent", env, repos={"self": project, "mlops-templates": lib},
                      approvals=approvals or {})


@pytest.mark.slow
def test_model_ci_review_rejected(tmp_path, lib):
    """jobs/model-ci.yml on the local backend with a policy that asks for review (on_violation: warn):
    the ManualValidation job runs, the reviewer rejects, so nothing is promoted."""
    project = tmp_path / "project"
    project.mkdir()
    write_project(project)
    (project / "rai.yml").write_text(RAI_POLICY.replace('r2: ">=0.5"', 'r2: ">=1.5"')
                                     .replace("on_violation: fail", "on_violation: warn"))
    (project / "data.yml").write_text("type: uri_file\nname: tiny\npath: data.csv\n")
    store = str(tmp_path / "store")
    ci = write(tmp_path / "ci.yml", yaml.safe_dump({"trigger": "none", "resources": RESOURCES, "jobs": [{
        "template": "ado-templates/jobs/model-ci.yml@mlops-templates",
        "parameters": {"data_yaml": "data.yml", "job": "job.yml", "model_name": "tiny-model", "eval_data": "data.csv",
                       "label_column": "y", "rai_policy": "rai.yml", "store": store}}]}, sort_keys=False))
    rt = agent(tmp_path, lib, project, approvals={"rai_review": False})
    jobs = rt.run(ax.expand(ci, {"mlops-templates": lib}))
    result = {name: job.result for (_, name), job in jobs.items()}
    ci_job = jobs[("__default", "model_ci")]
    assert result == {"model_ci": "Succeeded", "rai_review": "Failed", "promote": "Skipped"}, [
        (s.name, s.result, s.output[-2000:]) for s in ci_job.steps if s.result != "Succeeded"]
    out = ci_job.outputs
    assert out["register_model.model-id"] == "tiny-model:1" and out["compare.deploy-flag"] == "true"
    assert out["rai_gate.gate-passed"] == "true" and out["rai_gate.needs-review"] == "true"
    assert out["register_data.version"] == "1" and out["train.status"] == "Completed"
    review = jobs[("__default", "rai_review")].steps[0]
    assert review.kind == "task" and "human review" in review.inputs["instructions"]



@pytest.mark.slow
def test_taxi_example_pipeline_end_to_end(tmp_path, lib):
    """examples/taxi-regression/azure-pipelines.yml on the local backend (pipeline parameters):
    scan stage -> model CI stage (no review needed, promoted) -> approved batch scoring stage that
    takes the model version from the model CI stage's output variable."""
    project = lib / "examples" / "taxi-regression"
    store = str(tmp_path / "store")
    doc = ax.expand(project / "azure-pipelines.yml", {"mlops-templates": lib},
                    {"backend": "local", "store": store})
    rt = agent(tmp_path, lib, project, approvals={"deploy_batch_approval": True})
    jobs = rt.run(doc)
    result = {name: job.result for (_, name), job in jobs.items()}
    failed = [(n, s.name, s.output[-1500:]) for (_, n), j in jobs.items() for s in j.steps if s.result == "Failed"]
    assert result == {"scan": "Succeeded", "model_ci": "Succeeded", "rai_review": "Skipped", "promote": "Succeeded",
                      "deploy_batch_approval": "Succeeded", "deploy_batch": "Succeeded"}, failed
    ci = jobs[("model_ci", "model_ci")].outputs
    model_id = ci["register_model.model-id"]  # the taxi pipeline's register node made a version first
    assert model_id.startswith("taxi-model:") and ci["rai_gate.gate-passed"] == "true"
    assert jobs[("model_ci", "promote")].outputs["promote.new-version"] == model_id.split(":")[1]
    batch = jobs[("deploy_batch", "deploy_batch")].outputs
    rows = len((project / "data" / "taxi-batch.csv").read_text().splitlines()) - 1
    assert batch["deploy_batch.status"] == "Completed" and batch["deploy_batch.rows-scored"] == str(rows)
    approval = jobs[("deploy_batch", "deploy_batch_approval")].steps[0]
    assert approval.kind == "task" and "production" in approval.inputs["instructions"]
    assert jobs[("deploy_batch", "deploy_batch")].steps[-1].result == "Succeeded"


def test_hostile_parameters_through_every_step_template(tmp_path, lib):
    """Every string parameter of every step template gets the hostile value (booleans must stay
    booleans: the template refuses anything else at compile time)."""
    project = tmp_path / "project"
    project.mkdir()
    (tmp_path / "canary").mkdir()
    (tmp_path / "canary" / "keep").write_text("still here")
    evil = hostile(tmp_path)
    steps = []
    for path in sorted((ROOT / "ado-templates" / "steps").glob("*.yml")):
        params = {}
        for p in yaml.safe_load(path.read_text())["parameters"]:
            if p["name"] in ("stepName", "templatesPath", "workingDirectory", "condition", "backend"):
                continue  # our own plumbing, not user input
            params[p["name"]] = False if p["type"] == "boolean" else evil
        params.update(stepName=path.stem.replace("-", "_"), continueOnError=True)
        steps.append({"template": f"ado-templates/steps/{path.name}@mlops-templates", "parameters": params})
    pipe = write(tmp_path / "p.yml", yaml.safe_dump({"resources": RESOURCES, "steps": [
        {"checkout": "mlops-templates", "path": "s/mlops-templates"}, *steps]}))
    rt = agent(tmp_path, lib, project)
    jobs = rt.run(ax.expand(pipe, {"mlops-templates": lib}))
    job = jobs[("__default", "Job")]
    runs = [s for s in job.steps if s.kind == "bash" and not s.name.startswith("Install")]
    assert len(runs) == len(steps)
    assert all(s.exit_code == 2 for s in runs), [(s.name, s.exit_code, s.output[-500:]) for s in runs]
    assert_nothing_happened(tmp_path, [job.outputs], "\n".join(s.output for s in runs).replace("##vso[", ""))
    assert not any("forged" in k for k in job.outputs)
    assert "forged" not in {k.split(".")[-1] for k in job.outputs}
