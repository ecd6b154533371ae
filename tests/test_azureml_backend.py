"""The azureml backend at request level: a real MLClient (fake credential) whose HTTP goes to an in-memory
fake of ARM and Blob Storage (tests/azure_fake.py). Steps' run() functions run in-process against it, and
the real CLI runs in a subprocess with MLOPS_AZUREML_CLIENT_FACTORY pointing at the fake."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from azure_fake import SUB, RG, WS, FakeAzure, ml_client, save_state, load_state
from conftest import TAXI, ROOT

from mlops_steps.backends.azureml import AzureMLBackend
from mlops_steps.contract import BackendFailed, BadInput
from mlops_steps.refs import AssetRef

WS_PATH = f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.MachineLearningServices/workspaces/{WS}"
AZ = ["--backend", "azureml", "--subscription-id", SUB, "--resource-group", RG, "--workspace-name", WS]
WORKSPACE = {"backend": "azureml", "subscription_id": SUB, "resource_group": RG, "workspace_name": WS}
CONTENT = "mlops.content_sha256"


def backend_for(fake: FakeAzure, **kwargs) -> AzureMLBackend:
    be = AzureMLBackend(ml_client(fake), subscription_id=SUB, resource_group=RG, workspace_name=WS,
                        factory=lambda **kw: ml_client(fake, subscription_id=kw["subscription_id"],
                                                       resource_group_name=kw["resource_group"],
                                                       workspace_name=kw["workspace_name"],
                                                       registry_name=kw["registry_name"]), **kwargs)
    be.poll_seconds = 0
    return be


def cli_env(workdir: Path) -> dict[str, str]:
    return {"MLOPS_AZUREML_CLIENT_FACTORY": "azure_fake:cli_factory", "FAKE_AZURE_STATE": str(workdir / "azure.json"),
            "PYTHONPATH": str(ROOT / "tests")}


def cli_requests(workdir: Path) -> list:
    return load_state(workdir / "azure.json").requests if (workdir / "azure.json").exists() else []


def shown_yaml(log: str) -> str:
    """The first YAML document a dry run printed (between `---` and `...`)."""
    return log.split("\n---\n", 1)[1].split("\n...\n", 1)[0] + "\n"


def put_bodies(fake: FakeAzure, contains: str) -> list[dict]:
    return [r.json for r in fake.arm("PUT", contains)]


# -- register-data ------------------------------------------------------------------------------------------
def test_register_data_uploads_once_and_is_content_addressed(tmp_path):
    from mlops_steps import register_data

    fake = FakeAzure()
    be = backend_for(fake)
    csv = tmp_path / "taxi-data.csv"
    shutil.copy(TAXI / "data" / "taxi-data.csv", csv)
    inputs = register_data.Inputs(name="taxi-data", path=str(csv), tags={"team": "ml"}, **WORKSPACE)
    first = register_data.run(inputs, be)
    assert first.outputs["version"] == "1" and first.outputs["assets"][0]["created"] is True

    put = fake.arm("PUT", "/data/taxi-data/versions/1")
    assert len(put) == 1 and put[0].api_version == "2023-04-01-preview"
    assert put[0].url.startswith(f"https://management.azure.com{WS_PATH}/data/taxi-data/versions/1?")
    props = put[0].json["properties"]
    assert props["dataType"] == "uri_file" and props["tags"]["team"] == "ml" and len(props["tags"][CONTENT]) == 64
    assert props["dataUri"].startswith("azureml://datastores/workspaceblobstore/paths/LocalUpload/")
    assert props["dataUri"] == first.outputs["uri"]
    uploaded = [r for r in fake.requests if r.method == "PUT" and ".blob.core.windows.net" in r.url
                and r.url.split("?")[0].endswith("/taxi-data.csv") and "comp=metadata" not in r.url]
    assert len(uploaded) == 1 and uploaded[0].body == csv.read_bytes()
    assert all(r.headers.get("Authorization", "").startswith("Bearer ") for r in fake.arm())

    before = len(fake.requests)
    again = register_data.run(inputs, be)
    assert again.outputs["version"] == "1" and again.outputs["assets"][0]["created"] is False
    assert [r.method for r in fake.requests[before:]] == ["GET"]  # one list of versions, nothing written

    with open(csv, "a") as fh:
        fh.write("9999,1.0,0.1,40.7,-73.9,1,40.7,-73.9,0,2,1,1,1,1,1,1,1,1,1,1,1,1\n")
    changed = register_data.run(inputs, be)
    assert changed.outputs["version"] == "2"
    new_props = fake.arm("PUT", "/data/taxi-data/versions/2")[0].json["properties"]
    assert new_props["tags"][CONTENT] != props["tags"][CONTENT] and new_props["dataUri"] != props["dataUri"]


def test_register_data_through_the_cli_and_dry_run(step, workdir):
    shutil.copy(TAXI / "data" / "taxi-data.csv", workdir)
    (workdir / "data.yml").write_text("$schema: https://azuremlschemas.azureedge.net/latest/data.schema.json\n"
                                      "type: uri_file\nname: taxi-data\ndescription: NYC taxi\npath: taxi-data.csv\n")
    env = cli_env(workdir)
    dry = step("register-data", "--data-yaml", "data.yml", "--dry-run", *AZ, env=env)
    assert dry.code == 0, dry
    assert "dry run: would register data asset taxi-data" in dry.stderr and not cli_requests(workdir)
    shown = shown_yaml(dry.stderr)
    from azure.ai.ml import load_data
    spec = yaml.safe_load(shown)
    (workdir / "shown.yml").write_text(shown)
    loaded = load_data(source=str(workdir / "shown.yml"))
    assert loaded.name == "taxi-data" and loaded.type == "uri_file" and loaded.tags[CONTENT] == spec["tags"][CONTENT]
    assert spec.pop("$schema").endswith("/data.schema.json")
    assert loaded._to_dict() == spec  # the printed YAML round-trips through Azure's loader

    first = step("register-data", "--data-yaml", "data.yml", *AZ, env=env)
    assert first.code == 0, first
    assert first.outputs["version"] == "1" and first.outputs["uri"].startswith("azureml://datastores/")
    again = step("register-data", "--data-yaml", "data.yml", *AZ, env=env)
    assert again.code == 0 and again.outputs["version"] == "1" and again.outputs["assets"][0]["created"] is False
    assert len([r for r in cli_requests(workdir) if r.method == "PUT" and "/data/" in r.path]) == 1

    fake = load_state(workdir / "azure.json")
    fake.fail("GET", r"/data/taxi-data/versions$", 403, "AuthorizationFailed", "The client 'abc' has no access.")
    save_state(fake, workdir / "azure.json")
    denied = step("register-data", "--data-yaml", "data.yml", *AZ, env=env)
    assert denied.code == 3 and "permission denied (HTTP 403): AuthorizationFailed: The client 'abc' has no " \
        "access." in denied.stderr and "Traceback" not in denied.stderr


def execute_step(module, fake: FakeAzure, monkeypatch, capsys, **kwargs) -> tuple[int, str]:
    """Run a step the way the CLI does (validation, run, error mapping) in-process against `fake`."""
    from mlops_steps import contract

    monkeypatch.setattr(contract, "open_backend", lambda inputs: backend_for(fake, dry_run=inputs.dry_run))
    name = module.command.name
    code = contract.execute(name, module.Inputs, module.OUTPUTS, module.run, {**WORKSPACE, **kwargs})
    return code, capsys.readouterr().err


@pytest.mark.parametrize("status,code,message,expect", [
    (401, "InvalidAuthenticationToken", "The access token is invalid.", "authentication failed (HTTP 401)"),
    (403, "AuthorizationFailed", "The client 'abc' does not have authorization to perform action "
     "'Microsoft.MachineLearningServices/workspaces/data/versions/write'", "permission denied (HTTP 403)"),
    (404, "ResourceNotFound", "The Resource 'Microsoft.MachineLearningServices/workspaces/ws-dev' was not found.",
     "not found (HTTP 404)"),
    (409, "Conflict", "Asset x:1 already exists with different content.", "conflict (HTTP 409)"),
])
def test_azure_errors_exit_3_with_azures_message(tmp_path, monkeypatch, capsys, status, code, message, expect):
    from mlops_steps import register_data

    (tmp_path / "x.csv").write_text("a\n1\n")
    fake = FakeAzure()
    fake.fail("PUT", r"/data/x/versions/", status, code, message)
    exit_code, err = execute_step(register_data, fake, monkeypatch, capsys, name="x", path=str(tmp_path / "x.csv"))
    assert exit_code == 3, err
    assert f"register data asset x: {expect}: {code}: {message}" in err
    assert "Traceback" not in err and "Bearer" not in err


def test_missing_workspace_input_is_bad_input(step, workdir):
    (workdir / "x.csv").write_text("a\n1\n")
    res = step("register-data", "--name", "x", "--path", "x.csv", "--backend", "azureml", "--subscription-id", SUB,
               "--resource-group", RG)
    assert res.code == 2 and "--workspace-name (MLOPS_WORKSPACE_NAME): required with --backend azureml" in res.stderr


def test_no_credential_is_exit_3_with_a_hint(step, workdir):
    (workdir / "x.csv").write_text("a\n1\n")
    res = step("register-data", "--name", "x", "--path", "x.csv", *AZ,
               env={"AZURE_CONFIG_DIR": str(workdir / "no-az"), "IDENTITY_ENDPOINT": "", "MSI_ENDPOINT": "",
                    "PATH": "/usr/bin:/bin"})
    assert res.code == 3, res
    assert "authentication failed" in res.stderr and "azure/login" in res.stderr and "Traceback" not in res.stderr


# -- models: register, download, alias tags ---------------------------------------------------------------
def _model_dir(root: Path, payload: str = "weights-1") -> Path:
    model = root / "model"
    model.mkdir(parents=True, exist_ok=True)
    (model / "MLmodel").write_text("artifact_path: model\nflavors:\n  python_function:\n    loader_module: x\n")
    (model / "model.pkl").write_text(payload)
    return model


def test_register_model_get_model_and_alias_tags(tmp_path):
    fake = FakeAzure()
    be = backend_for(fake)
    model = _model_dir(tmp_path)
    mv = be.register_model("taxi-model", model, tags={"run": "r1"}, description="fare model")
    assert mv.version == "1" and mv.created
    put = fake.arm("PUT", "/models/taxi-model/versions/1")
    assert len(put) == 1 and put[0].api_version == "2023-08-01-preview"
    props = put[0].json["properties"]
    assert props["modelType"] == "mlflow_model" and props["description"] == "fare model"
    assert props["tags"]["run"] == "r1" and len(props["tags"][CONTENT]) == 64
    assert props["modelUri"].startswith("azureml://subscriptions/") and "/paths/LocalUpload/" in props["modelUri"]

    again = be.register_model("taxi-model", model, tags={"run": "r1"})
    assert again.version == "1" and not again.created and len(fake.arm("PUT", "/models/")) == 1
    (model / "model.pkl").write_text("weights-2")
    assert be.register_model("taxi-model", model).version == "2"

    got = be.get_model(AssetRef("taxi-model", "1"))
    assert (got.path / "MLmodel").is_file() and (got.path / "model.pkl").read_text() == "weights-1"
    with pytest.raises(BadInput):
        be.get_model(AssetRef("taxi-model", label="latest"))
    assert be.get_model(AssetRef("taxi-model", label="latest"), allow_latest=True).version == "2"

    assert be.alias_version("taxi-model", "champion") is None
    be.set_alias("taxi-model", "champion", "1")
    assert be.alias_version("taxi-model", "champion") == "1"
    be.set_alias("taxi-model", "champion", "2")
    assert be.alias_version("taxi-model", "champion") == "2"
    v1 = fake.arm("PUT", "/models/taxi-model/versions/1")[-1].json["properties"]["tags"]
    assert "mlops.alias.champion" not in v1 and v1["run"] == "r1"  # cleared from the old holder, tags kept
    assert be.get_model(AssetRef("taxi-model", label="champion")).version == "2"

    fake.resources[f"{WS_PATH}/models/taxi-model/versions/1".lower()]["properties"]["tags"]["mlops.alias.champion"] = "true"
    with pytest.raises(BackendFailed, match="versions 1, 2 all hold the tag mlops.alias.champion"):
        be.alias_version("taxi-model", "champion")


# -- train / job-wait ---------------------------------------------------------------------------------------
PIPELINE = TAXI / "pipeline.yml"


def test_train_submits_the_pipeline_and_waits(tmp_path):
    from mlops_steps import train

    fake = FakeAzure()
    fake.job_statuses["*"] = ["NotStarted", "Running", "Running", "Completed"]
    be = backend_for(fake)
    inputs = train.Inputs(job=str(PIPELINE), set_input={"n_estimators": "7", "raw_data": "azureml:taxi-data:2"},
                          experiment_name="taxi-ci", **WORKSPACE)
    result = train.run(inputs, be)
    assert result.outputs["status"] == "Completed" and result.outputs["experiment"] == "taxi-ci"
    name = result.outputs["job-name"]
    assert result.outputs["outputs"]["trained_model"] == f"azureml://jobs/{name}/outputs/trained_model"

    put = fake.arm("PUT", f"/jobs/{name}")
    assert len(put) == 1 and put[0].api_version == "2024-01-01-preview"
    props = put[0].json["properties"]
    assert props["jobType"] == "Pipeline" and props["experimentName"] == "taxi-ci"
    assert props["inputs"]["n_estimators"] == {"jobInputType": "literal", "value": "7"}
    assert props["inputs"]["raw_data"]["uri"] == f"{WS_PATH}/data/taxi-data/versions/2"
    assert set(props["jobs"]) == {"prep_data", "train_model", "evaluate_model", "register_model"}
    assert props["settings"]["default_compute"].endswith("/computes/cpu-cluster")
    code = fake.arm("PUT", "/codes/")
    assert code and all(r.json["properties"]["codeUri"].endswith("/src") for r in code)
    assert len(fake.arm("GET", f"/jobs/{name}")) == 4  # polled until Completed


def test_train_no_wait_then_job_wait(tmp_path):
    from mlops_steps import job_wait, train

    fake = FakeAzure()
    fake.job_statuses["*"] = ["Running", "Running", "Completed"]
    be = backend_for(fake)
    inputs = train.Inputs(job=str(PIPELINE), **WORKSPACE).model_copy(update={"wait": False})
    submitted = train.run(inputs, be)
    name = submitted.outputs["job-name"]
    assert submitted.outputs["status"] == "NotStarted" and not fake.arm("GET", f"/jobs/{name}")

    done = job_wait.run(job_wait.Inputs(job_name=name, **WORKSPACE), be)
    assert done.outputs["status"] == "Completed" and done.outputs["job-name"] == name
    assert len(fake.arm("GET", f"/jobs/{name}")) == 3


def test_failed_job_and_timeout_exit_3(monkeypatch, capsys):
    from mlops_steps import job_wait

    fake = FakeAzure()
    fake.resources[f"{WS_PATH}/jobs/job-1".lower()] = {
        "id": f"{WS_PATH}/jobs/job-1", "name": "job-1",
        "properties": {"jobType": "Command", "status": "Running", "command": "python train.py",
                       "environmentId": "azureml:env:1", "computeId": "cpu", "experimentName": "x"}}
    fake.job_statuses["job-1"] = ["Running", "Failed"]
    code, err = execute_step(job_wait, fake, monkeypatch, capsys, job_name="job-1")
    assert code == 3 and "job job-1 ended Failed" in err and "Traceback" not in err, err

    fake.job_statuses["job-1"] = ["Running"]
    code, err = execute_step(job_wait, fake, monkeypatch, capsys, job_name="job-1", timeout_minutes=0.00001)
    assert code == 3 and "still Running after" in err and "keeps running in Azure" in err, err

    code, err = execute_step(job_wait, fake, monkeypatch, capsys, job_name="nope")
    assert code == 3 and "not found (HTTP 404)" in err and "Could not find resource nope" in err, err


def test_train_dry_run_prints_job_yaml_that_round_trips(tmp_path, capsys):
    from azure.ai.ml import load_job
    from mlops_steps import train

    be = AzureMLBackend(subscription_id=SUB, resource_group=RG, workspace_name=WS, dry_run=True)
    result = train.run(train.Inputs(job=str(PIPELINE), set_input={"n_estimators": "9"}, dry_run=True, **WORKSPACE), be)
    assert result.outputs["status"] == "DryRun"
    text = shown_yaml(capsys.readouterr().err)
    spec = yaml.safe_load(text)
    assert spec["type"] == "pipeline" and spec["inputs"]["n_estimators"] == 9
    copy = shutil.copytree(TAXI, tmp_path / "taxi", ignore=shutil.ignore_patterns("data"))
    (copy / "shown.yml").write_text(text)  # beside the original so code: paths resolve
    again = load_job(source=str(copy / "shown.yml"))._to_dict()
    assert again["jobs"].keys() == spec["jobs"].keys() and again["inputs"] == spec["inputs"]


# -- promote-model --------------------------------------------------------------------------------------
def test_promote_model_to_registry_and_to_prod_workspace(tmp_path):
    from mlops_steps import promote_model

    fake = FakeAzure()
    be = backend_for(fake)
    be.register_model("taxi-model", _model_dir(tmp_path), tags={"run": "r1"})
    prod = WS_PATH.replace(WS, "ws-prod")
    fake.add_workspace(prod)

    to_reg = promote_model.Inputs(model="taxi-model:1", to_registry="mlops-registry", **WORKSPACE)
    first = promote_model.run(to_reg, be)
    assert first.outputs == {"model": "taxi-model:1", "target": "registry mlops-registry", "created": True,
                             "asset-id": "azureml://registries/mlops-registry/models/taxi-model/versions/1"}
    (imp,) = [r for r in fake.requests if r.path.endswith("/registries/mlops-registry/import")]
    assert imp.method == "POST" and imp.api_version == "2021-10-01-dataplanepreview"
    assert imp.json["properties"] == {
        "referenceType": "Id", "destinationName": "taxi-model", "destinationVersion": "1",
        "sourceAssetId": "azureml://locations/westeurope/workspaces/11111111-2222-3333-4444-555555555555"
                         "/models/taxi-model/versions/1"}
    assert any("/fake-operations/" in r.path for r in fake.requests)  # the import LRO was polled
    again = promote_model.run(to_reg, be)
    assert again.outputs["created"] is False
    assert len([r for r in fake.requests if r.path.endswith("/import")]) == 1

    to_prod = promote_model.Inputs(model="taxi-model:1", to_workspace="ws-prod", **WORKSPACE)
    copied = promote_model.run(to_prod, be)
    assert copied.outputs["created"] is True and copied.outputs["asset-id"] == "azureml:taxi-model:1"
    (put,) = [r for r in fake.arm("PUT", "/ws-prod/models/taxi-model/versions/1")]
    tags = put.json["properties"]["tags"]
    assert tags["run"] == "r1" and tags["mlops.promoted_from"].endswith(f"/{WS}/taxi-model:1")
    assert tags[CONTENT] == fake.arm("PUT", f"/{WS}/models/taxi-model/versions/1")[0].json["properties"]["tags"][CONTENT]
    assert promote_model.run(to_prod, be).outputs["created"] is False

    (tmp_path / "model" / "model.pkl").write_text("other weights")
    be.register_model("taxi-model", tmp_path / "model")
    clash = promote_model.Inputs(model="taxi-model:2", to_workspace="ws-prod", to_version="1", **WORKSPACE)
    with pytest.raises(BackendFailed, match="already has model taxi-model:1 with different content"):
        promote_model.run(clash, be)


# -- deploy-online --------------------------------------------------------------------------------------
ONLINE_ENDPOINT = """$schema: https://azuremlschemas.azureedge.net/latest/managedOnlineEndpoint.schema.json
name: taxi-online
auth_mode: key
"""
ONLINE_DEPLOYMENT = """$schema: https://azuremlschemas.azureedge.net/latest/managedOnlineDeployment.schema.json
name: {name}
endpoint_name: taxi-online
model: azureml:taxi-model:{version}
instance_type: Standard_DS3_v2
instance_count: 1
"""


def _online_inputs(tmp_path: Path, name: str, version: str, **kwargs):
    from mlops_steps import deploy_online

    (tmp_path / "endpoint.yml").write_text(ONLINE_ENDPOINT)
    (tmp_path / f"{name}.yml").write_text(ONLINE_DEPLOYMENT.format(name=name, version=version))
    (tmp_path / "sample.json").write_text('{"input_data": {"columns": ["distance"], "data": [[3.2]]}}')
    return deploy_online.Inputs(endpoint_yaml=str(tmp_path / "endpoint.yml"), deployment_yaml=str(tmp_path / f"{name}.yml"),
                                sample_request=str(tmp_path / "sample.json"), **{**WORKSPACE, **kwargs})


def test_deploy_online_zero_traffic_smoke_test_then_traffic(tmp_path):
    fake = FakeAzure()
    be = backend_for(fake)
    blue = be.deploy_online(_online_inputs(tmp_path, "blue", "1"))
    assert blue.outputs == {"scoring-uri": "https://taxi-online.westeurope.inference.ml.azure.com/score",
                            "endpoint-name": "taxi-online", "deployment-name": "blue", "traffic": {"blue": 100},
                            "model": "azureml:taxi-model:1", "changed": True}
    dep = fake.arm("PUT", "/onlineEndpoints/taxi-online/deployments/blue")
    assert len(dep) == 1 and dep[0].api_version == "2023-04-01-preview"
    assert dep[0].json["properties"]["model"] == f"{WS_PATH}/models/taxi-model/versions/1"
    assert dep[0].json["properties"]["instanceType"] == "Standard_DS3_v2" and dep[0].json["sku"]["capacity"] == 1
    eps = fake.arm("PUT", "/onlineEndpoints/taxi-online")
    eps = [r for r in eps if r.path.endswith("/taxi-online")]
    assert [r.json["properties"].get("traffic") for r in eps] == [None, {"blue": 100}]  # traffic only after the test
    order = [r for r in fake.requests if r.method in ("PUT", "POST") and "listKeys" not in r.path]
    smoke = next(i for i, r in enumerate(order) if "inference.ml.azure.com" in r.url)
    assert order[smoke].headers["azureml-model-deployment"] == "blue"
    assert order[smoke].headers["Authorization"] == "Bearer endpoint-key-1"
    assert smoke < next(i for i, r in enumerate(order) if (r.json or {}).get("properties", {}).get("traffic"))

    before = len(fake.writes())
    again = be.deploy_online(_online_inputs(tmp_path, "blue", "1"))
    assert again.outputs["changed"] is False and len(fake.writes()) == before  # idempotent: nothing sent

    green = be.deploy_online(_online_inputs(tmp_path, "green", "2", traffic={"blue": "90", "green": "10"}))
    assert green.outputs["traffic"] == {"blue": 90, "green": 10}


def test_deploy_online_failed_lro_keeps_traffic_and_prints_logs(tmp_path, monkeypatch, capsys):
    from mlops_steps import deploy_online

    fake = FakeAzure()
    be = backend_for(fake)
    be.deploy_online(_online_inputs(tmp_path, "blue", "1"))
    fake.lro_outcome[r"/deployments/green$"] = "Failed"
    fake.logs = "Traceback in score.py\nImportError: No module named 'sklearn'\n"
    inputs = _online_inputs(tmp_path, "green", "2")
    monkeypatch.setattr("mlops_steps.contract.open_backend", lambda _: be)
    from mlops_steps import contract
    code = contract.execute("deploy-online", deploy_online.Inputs, deploy_online.OUTPUTS,
                            lambda i, b: b.deploy_online(i), inputs.model_dump())
    err = capsys.readouterr().err
    assert code == 3, err
    assert "DeploymentFailed: Container crashed: ImportError in score.py init()" in err
    assert "traffic left at {'blue': 100}" in err and "No module named 'sklearn'" in err and "Traceback in" in err
    assert fake.resources[f"{WS_PATH}/onlineendpoints/taxi-online".lower()]["properties"]["traffic"] == {"blue": 100}
    assert any(r.path.endswith("/deployments/green/getLogs") for r in fake.requests)


def test_deploy_online_dry_run_yaml_round_trips(tmp_path, capsys):
    from azure.ai.ml import load_online_deployment

    be = AzureMLBackend(subscription_id=SUB, resource_group=RG, workspace_name=WS, dry_run=True)
    res = be.deploy_online(_online_inputs(tmp_path, "blue", "3", dry_run=True))
    assert res.outputs["model"] == "azureml:taxi-model:3" and res.outputs["changed"] is False
    err = capsys.readouterr().err
    documents = [d.split("\n...\n")[0] for d in err.split("\n---\n")[1:]]
    endpoint, deployment = (yaml.safe_load(d) for d in documents)
    assert endpoint["name"] == "taxi-online" and endpoint["$schema"].endswith("/managedOnlineEndpoint.schema.json")
    (tmp_path / "shown.yml").write_text(documents[1])
    loaded = load_online_deployment(source=str(tmp_path / "shown.yml"))
    deployment.pop("$schema")
    assert loaded._to_dict() == deployment and deployment["model"] == "azureml:taxi-model:3"
    assert "would then set traffic" in err


# -- deploy-batch ---------------------------------------------------------------------------------------
def test_deploy_batch_endpoint_deployment_invoke_and_wait(tmp_path):
    from mlops_steps import deploy_batch

    (tmp_path / "endpoint.yml").write_text("name: taxi-batch\n")
    (tmp_path / "deployment.yml").write_text(
        "$schema: https://azuremlschemas.azureedge.net/latest/modelBatchDeployment.schema.json\n"
        "name: classic\nendpoint_name: taxi-batch\ntype: model\nmodel: azureml:taxi-model:1\n"
        "compute: azureml:cpu-cluster\nresources:\n  instance_count: 2\nsettings:\n  mini_batch_size: 5\n"
        "  output_action: append_row\n  output_file_name: predictions.csv\n")
    fake = FakeAzure()
    fake.job_statuses["*"] = ["Running", "Completed"]
    be = backend_for(fake)
    inputs = deploy_batch.Inputs(endpoint_yaml=str(tmp_path / "endpoint.yml"),
                                 deployment_yaml=str(tmp_path / "deployment.yml"), input=["azureml:taxi-batch:1"],
                                 **WORKSPACE)
    result = be.deploy_batch(inputs)
    job = result.outputs["job-name"]
    assert result.outputs == {"job-name": job, "status": "Completed",
                              "output-path": f"azureml://jobs/{job}/outputs/score"}
    (dep,) = fake.arm("PUT", "/batchEndpoints/taxi-batch/deployments/classic")
    assert dep.api_version == "2024-01-01-preview"
    props = dep.json["properties"]
    assert props["model"] == {"assetId": f"{WS_PATH}/models/taxi-model/versions/1", "referenceType": "Id"}
    assert props["miniBatchSize"] == 5 and props["outputAction"] == "AppendRow" and props["compute"].endswith(
        "/computes/cpu-cluster") and props["resources"]["instanceCount"] == 2
    defaults = [r.json["properties"].get("defaults") for r in fake.arm("PUT", "/batchEndpoints/taxi-batch")
                if r.path.endswith("/taxi-batch")]
    assert defaults == [None, {"deploymentName": "classic"}]
    (invoke,) = [r for r in fake.requests if r.url.startswith("https://taxi-batch.westeurope.inference.ml.azure.com/jobs")]
    assert invoke.method == "POST" and invoke.headers["azureml-model-deployment"] == "classic"
    assert invoke.json["properties"]["inputData"]["input"] == {
        "jobInputType": "UriFolder", "uri": f"{WS_PATH}/data/taxi-batch/versions/1"}

    writes = len(fake.arm("PUT"))
    second = be.deploy_batch(inputs)  # unchanged deployment: only a new invocation
    assert len(fake.arm("PUT")) == writes and second.outputs["job-name"] != job


def test_register_model_from_a_job_output_in_place(tmp_path):
    fake = FakeAzure()
    be = backend_for(fake)
    fake.resources[f"{WS_PATH}/jobs/train-1".lower()] = {
        "id": f"{WS_PATH}/jobs/train-1", "name": "train-1",
        "properties": {"jobType": "Command", "status": "Completed", "command": "python train.py",
                       "environmentId": "azureml:env:1", "computeId": "cpu", "experimentName": "x",
                       "outputs": {"trained_model": {"jobOutputType": "mlflow_model", "mode": "ReadWriteMount"}}}}
    from types import SimpleNamespace
    inputs = SimpleNamespace(model_name="taxi-model", job_name="train-1", job_output="trained_model",
                             tags={"stage": "dev"}, description="")
    first = be.register_job_model(inputs)
    assert first.outputs == {"model-name": "taxi-model", "model-version": "1", "model-id": "taxi-model:1",
                             "created": True}
    (put,) = fake.arm("PUT", "/models/taxi-model/versions/1")
    assert put.json["properties"]["modelUri"] == "azureml://jobs/train-1/outputs/trained_model"
    assert put.json["properties"]["tags"] == {"stage": "dev", "mlops.job_name": "train-1",
                                              "mlops.job_output": "trained_model"}
    assert not [r for r in fake.requests if ".blob.core.windows.net" in r.url]  # nothing uploaded
    assert be.register_job_model(inputs).outputs["created"] is False
    with pytest.raises(BadInput, match="has no output 'model'"):
        be.register_job_model(SimpleNamespace(**{**inputs.__dict__, "job_output": "model"}))


def test_failed_pipeline_names_the_failing_node_and_shows_its_log_tail(monkeypatch, capsys):
    from mlops_steps import job_wait

    fake = FakeAzure()
    fake.add_job("pipe-1", "Failed", "Pipeline")
    fake.add_job("pipe-1-prep", "Completed", parent="pipe-1", display_name="prep_data", log="prepared\n")
    fake.add_job("pipe-1-train", "Failed", parent="pipe-1", display_name="train_model",
                 log="".join(f"epoch {i}\n" for i in range(100)) + "ValueError: n_estimators must be > 0\n")
    code, err = execute_step(job_wait, fake, monkeypatch, capsys, job_name="pipe-1")
    assert code == 3, err
    assert "job pipe-1 ended Failed (failing node: train_model)" in err
    assert "ValueError: n_estimators must be > 0" in err and "epoch 99" in err and "epoch 50\n" not in err
    assert "Traceback" not in err
    logs = [r for r in fake.requests if r.url.split("?")[0].endswith("/dcid.pipe-1-train/user_logs/std_log.txt")]
    assert logs and logs[0].method == "GET"


def test_get_data_downloads_the_asset_for_local_steps(tmp_path):
    from mlops_steps.models import read_table

    fake = FakeAzure()
    be = backend_for(fake)
    csv = tmp_path / "taxi.csv"
    csv.write_text("distance,cost\n1.5,7.0\n3.0,12.5\n")
    be.register_data("taxi-small", csv, "uri_file")
    asset = be.get_data(AssetRef("taxi-small", "1"))
    assert Path(asset.uri).read_bytes() == csv.read_bytes() and asset.sha256 == be.register_data(
        "taxi-small", csv, "uri_file").sha256
    table = read_table(be, "azureml:taxi-small:1", "--data")
    assert list(table.columns) == ["distance", "cost"] and table["cost"].sum() == 19.5
    from mlops_steps.backends.local import NotFound
    with pytest.raises(NotFound, match="data asset nope:1 not found"):
        be.get_data(AssetRef("nope", "1"))


def test_job_output_uri_is_downloaded_for_local_gates(tmp_path):
    fake = FakeAzure()
    fake.add_job("train-1", "Completed", "Pipeline")
    fake.add_job_output("train-1", "test_data", {"test.csv": b"distance,cost\n1.0,6.5\n2.0,9.0\n"})
    be = backend_for(fake)
    local = be.download_uri("azureml://jobs/train-1/outputs/test_data")
    assert (local / "test.csv").read_bytes() == b"distance,cost\n1.0,6.5\n2.0,9.0\n"
    resolved = [r for r in fake.requests if r.path.endswith("/dataversion/batchGetResolvedUris")]
    assert resolved and resolved[0].method == "POST" and resolved[0].json["values"][0].endswith(
        "/data/azureml_train-1_output_data_test_data/versions/1")
    with pytest.raises(BackendFailed, match="has no downloadable output 'nope'"):
        be.download_uri("azureml://jobs/train-1/outputs/nope")


# -- through the steps' own run() / the CLI (the azureml branches in the step modules) --------------------
def test_train_no_wait_and_job_wait_through_the_cli(step, workdir):
    shutil.copytree(TAXI, workdir / "taxi", ignore=shutil.ignore_patterns("data"))
    fake = FakeAzure()
    fake.job_statuses["*"] = ["Running", "Completed"]
    save_state(fake, workdir / "azure.json")
    env = {**cli_env(workdir), "MLOPS_AZUREML_POLL_SECONDS": "0"}
    submitted = step("train", "--job", "taxi/pipeline.yml", "--no-wait", "--compute", "gpu-cluster", *AZ, env=env)
    assert submitted.code == 0, submitted
    name = submitted.outputs["job-name"]
    assert submitted.outputs["status"] == "NotStarted"
    (put,) = [r for r in cli_requests(workdir) if r.method == "PUT" and r.path.endswith(f"/jobs/{name}")]
    assert put.json["properties"]["settings"]["default_compute"].endswith("/computes/gpu-cluster")
    assert not [r for r in cli_requests(workdir) if r.method == "GET" and r.path.endswith(f"/jobs/{name}")]

    done = step("job-wait", "--job-name", name, *AZ, env=env)
    assert done.code == 0, done
    assert done.outputs["status"] == "Completed" and f"job {name}: Running" in done.stderr


def test_step_modules_route_to_the_azureml_backend(tmp_path):
    from mlops_steps import deploy_batch, deploy_online, register_model
    from mlops_steps.models import read_table

    fake = FakeAzure()
    be = backend_for(fake)
    online = deploy_online.run(_online_inputs(tmp_path, "blue", "1"), be)
    assert online.outputs["scoring-uri"].startswith("https://taxi-online.") and online.outputs["traffic"] == {"blue": 100}

    (tmp_path / "bd.yml").write_text("name: classic\nendpoint_name: taxi-batch\ntype: model\n"
                                     "model: azureml:taxi-model:1\ncompute: azureml:cpu-cluster\n")
    batch = deploy_batch.run(deploy_batch.Inputs(deployment_yaml=str(tmp_path / "bd.yml"), input=["azureml:scoring:1"],
                                                 **WORKSPACE), be)
    assert batch.outputs["status"] == "Completed" and batch.outputs["output-path"].endswith("/outputs/score")

    fake.add_job("train-9", "Completed", "Pipeline")
    fake.resources[f"{WS_PATH}/jobs/train-9".lower()]["properties"]["outputs"] = {
        "trained_model": {"jobOutputType": "mlflow_model"}}
    fake.add_job_output("train-9", "test_data", {"test.csv": b"distance,cost\n1.0,6.5\n"})
    reg = register_model.run(register_model.Inputs(model_name="taxi-model", job_name="train-9", **WORKSPACE), be)
    assert reg.outputs["model-id"] == "taxi-model:1" and reg.outputs["created"] is True
    table = read_table(be, "azureml://jobs/train-9/outputs/test_data", "--eval-data")
    assert table.to_dict("list") == {"distance": [1.0], "cost": [6.5]}
