"""The azureml backend: the same step inputs, run against an Azure Machine Learning workspace.

Credentials come from `DefaultAzureCredential`, so the OIDC login done by `azure/login` (GitHub) or
a workload-identity service connection (`AzureCLI@2` on Azure DevOps) is picked up; no client secret
is read or printed. Every Azure error (HTTP 401/403/404/409, a failed long-running operation, a
failed job) becomes `BackendFailed` (exit 3) carrying Azure's own message.

Data and model versions are content-addressed like the local backend: the sha256 of the uploaded
content is kept in the `mlops.content_sha256` tag, and registering identical content again returns the
existing version. Aliases (`champion`) are model-version tags `mlops.alias.<alias>=true`.

With `--dry-run` nothing is created or changed: each entity is printed as the Azure ML CLI v2 YAML
that would be sent (steps that only write send no request at all; gates may still read models/data).
"""
from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from .. import ci
from ..contract import BackendFailed, BadInput, StepError, StepResult, describe_input
from ..files import hash_path
from ..refs import AssetRef
from .local import CONTENT_TAG, DataAsset, ModelVersion, NotFound

ALIAS_TAG = "mlops.alias."
TERMINAL = ("Completed", "Failed", "Canceled", "NotResponding")
# Tests only: "module:function" returning an MLClient for (subscription_id, resource_group, workspace_name,
# registry_name) keyword arguments, so the real CLI can be pointed at a fake transport.
CLIENT_FACTORY_ENV = "MLOPS_AZUREML_CLIENT_FACTORY"
DRY_RUN = "(dry run)"
SCHEMAS = {"Data": "data", "Model": "model", "PipelineJob": "pipelineJob", "CommandJob": "commandJob",
           "ManagedOnlineEndpoint": "managedOnlineEndpoint", "ManagedOnlineDeployment": "managedOnlineDeployment",
           "BatchEndpoint": "batchEndpoint", "ModelBatchDeployment": "modelBatchDeployment",
           "BatchDeployment": "batchDeployment"}


def azure_message(exc: BaseException) -> str:
    """Azure's own error text: `Code: message` from an ARM error body, else the exception's text."""
    error = getattr(exc, "error", None)
    code, message = getattr(error, "code", None), getattr(error, "message", None)
    if message:
        return f"{code}: {message}" if code else str(message)
    text = getattr(exc, "message", None) or str(exc)
    return " ".join(str(text).split())[:2000]


@contextlib.contextmanager
def azure_errors(action: str) -> Iterator[None]:
    """Map SDK and HTTP failures to BackendFailed (exit 3) with Azure's message and no traceback."""
    from azure.core.exceptions import AzureError, ClientAuthenticationError, HttpResponseError

    _quiet_sdk()
    try:
        with contextlib.redirect_stdout(sys.stderr):  # the SDK prints progress; stdout is for CI commands
            yield
    except StepError:
        raise
    except ClientAuthenticationError as exc:
        status = getattr(exc, "status_code", None)
        hint = "" if status else (" (no Azure credential: run azure/login with OIDC on GitHub, or an "
                                  "AzureCLI@2 task with a workload-identity service connection on ADO)")
        raise BackendFailed(f"{action}: authentication failed{f' (HTTP {status})' if status else ''}: "
                            f"{azure_message(exc)}{hint}") from None
    except HttpResponseError as exc:
        status = getattr(exc, "status_code", None)
        what = {401: "not authenticated", 403: "permission denied", 404: "not found",
                409: "conflict"}.get(status or 0, "Azure returned an error")
        where = f"HTTP {status} " if status else ""
        raise BackendFailed(f"{action}: {what} ({where.strip() or 'failed'}): {azure_message(exc)}") from None
    except AzureError as exc:
        raise BackendFailed(f"{action}: {azure_message(exc)}") from None
    except Exception as exc:
        from azure.ai.ml.exceptions import MlException
        if isinstance(exc, MlException):
            raise BackendFailed(f"{action}: {azure_message(exc)}") from None
        raise


def status_of(entity: Any) -> str:
    """A job's status as plain text (the SDK returns a str enum)."""
    status = getattr(entity, "status", None)
    return str(getattr(status, "value", status) or "Unknown")


def entity_yaml(entity: Any) -> str:
    """An azure-ai-ml entity as Azure ML CLI v2 YAML (what `az ml ... show` prints)."""
    import yaml

    data = json.loads(json.dumps(entity._to_dict(), default=str))  # OrderedDicts -> plain data
    schema = SCHEMAS.get(type(entity).__name__)
    if schema and "$schema" not in data:
        data = {"$schema": f"https://azuremlschemas.azureedge.net/latest/{schema}.schema.json", **data}
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, explicit_start=True, explicit_end=True)


def _quiet_sdk() -> None:
    """Silence the SDK's own INFO logging (some of its loggers have their own stderr handlers)."""
    logging.getLogger("azure").setLevel(logging.ERROR)
    for name, logger in list(logging.root.manager.loggerDict.items()):
        if name.startswith("azure") and isinstance(logger, logging.Logger):
            logger.setLevel(logging.ERROR)
    import warnings
    warnings.filterwarnings("ignore", module="azure")


class AzureMLBackend:
    kind = "azureml"
    poll_seconds = 15.0

    def __init__(self, ml_client: Any = None, *, subscription_id: str | None = None,
                 resource_group: str | None = None, workspace_name: str | None = None,
                 registry_name: str | None = None, dry_run: bool = False,
                 factory: Callable[..., Any] | None = None):
        self.subscription_id = subscription_id
        self.resource_group = resource_group
        self.workspace_name = workspace_name
        self.registry_name = registry_name
        self.dry_run = dry_run
        self._factory = factory
        self._client = ml_client
        self._downloads: list[tempfile.TemporaryDirectory] = []

    @classmethod
    def from_inputs(cls, inputs: Any) -> "AzureMLBackend":
        """The backend for a step's inputs; the workspace inputs are required."""
        for name in ("subscription_id", "resource_group", "workspace_name"):
            if not getattr(inputs, name, None):
                raise BadInput(describe_input(name), "required with --backend azureml")
        factory = None
        spec = os.environ.get(CLIENT_FACTORY_ENV, "").strip()
        if spec:
            module, _, func = spec.partition(":")
            factory = getattr(importlib.import_module(module), func)
        backend = cls(subscription_id=inputs.subscription_id, resource_group=inputs.resource_group,
                      workspace_name=inputs.workspace_name, registry_name=getattr(inputs, "registry_name", None),
                      dry_run=bool(getattr(inputs, "dry_run", False)), factory=factory)
        if os.environ.get("MLOPS_AZUREML_POLL_SECONDS"):
            try:
                backend.poll_seconds = float(os.environ["MLOPS_AZUREML_POLL_SECONDS"])
            except ValueError:
                raise BadInput("MLOPS_AZUREML_POLL_SECONDS", "not a number of seconds") from None
        return backend

    # -- clients --------------------------------------------------------------------------------
    def make_client(self, *, subscription_id: str | None = None, resource_group: str | None = None,
                    workspace_name: str | None = None, registry_name: str | None = None) -> Any:
        """An MLClient for a workspace (default: this backend's) or, with registry_name, a registry."""
        _quiet_sdk()
        sub = subscription_id or self.subscription_id
        rg = resource_group or self.resource_group
        ws = None if registry_name else (workspace_name or self.workspace_name)
        if self._factory is not None:
            return self._factory(subscription_id=sub, resource_group=rg, workspace_name=ws,
                                 registry_name=registry_name)
        from azure.ai.ml import MLClient
        from azure.identity import DefaultAzureCredential

        credential = DefaultAzureCredential(exclude_interactive_browser_credential=True)
        return MLClient(credential, sub, rg, ws, registry_name=registry_name, show_progress=False)

    @property
    def client(self) -> Any:
        """The workspace MLClient. In a dry run only reads use it (models and data that gates evaluate)."""
        if self._client is None:
            self._client = self.make_client()
        return self._client

    @property
    def workspace_label(self) -> str:
        return f"workspace {self.workspace_name} (resource group {self.resource_group})"

    def show(self, what: str, entity: Any) -> str:
        """Print the YAML an operation would send (dry run); return it."""
        text = entity_yaml(entity)
        with ci.group(f"dry run: would {what}"):
            ci.log(text.rstrip())
        return text

    def _download_dir(self, prefix: str) -> Path:
        tmp = tempfile.TemporaryDirectory(prefix=f"mlops-{prefix}-")
        self._downloads.append(tmp)
        return Path(tmp.name)

    # -- data assets -------------------------------------------------------------------------------
    def _data_versions(self, name: str) -> list[Any]:
        from azure.core.exceptions import ResourceNotFoundError
        try:
            return list(self.client.data.list(name=name))
        except ResourceNotFoundError:
            return []

    def register_data(self, name: str, source: Path, type: str, description: str = "",
                      tags: dict[str, str] | None = None) -> DataAsset:
        """Upload and register content as a data asset; identical content returns the existing version."""
        from azure.ai.ml.entities import Data

        digest = hash_path(source)
        all_tags = {**(tags or {}), CONTENT_TAG: digest}
        if self.dry_run:
            self.show(f"register data asset {name} in {self.workspace_label}",
                      Data(name=name, path=str(source), type=type, description=description or None,
                           tags=all_tags))
            return DataAsset(name, DRY_RUN, type, str(source), digest, description, all_tags, False)
        with azure_errors(f"register data asset {name}"):
            versions = self._data_versions(name)
            for asset in versions:
                if (asset.tags or {}).get(CONTENT_TAG) == digest and asset.type == type:
                    return DataAsset(name, str(asset.version), asset.type, str(asset.path), digest,
                                     asset.description or "", dict(asset.tags or {}), False)
            version = str(max([int(a.version) for a in versions if str(a.version).isdigit()] or [0]) + 1)
            made = self.client.data.create_or_update(Data(
                name=name, version=version, path=str(source), type=type, description=description or None,
                tags=all_tags))
        return DataAsset(name, str(made.version), made.type, str(made.path), digest, description,
                         dict(made.tags or {}), True)

    def get_data(self, ref: AssetRef) -> DataAsset:
        """A data asset, downloaded to a temporary folder so local steps can read it (uri = local path)."""
        from azure.ai.ml._artifacts._artifact_utilities import download_artifact_from_aml_uri
        from azure.core.exceptions import ResourceNotFoundError

        if ref.label not in (None, "latest") and not ref.version:
            raise NotFound(f"data asset {ref.name!r} has no label {ref.label!r} (use a version or @latest)")
        with azure_errors(f"get data asset {ref}"):
            try:
                asset = self.client.data.get(ref.name, version=ref.version) if ref.version else \
                    self.client.data.get(ref.name, label="latest")
            except ResourceNotFoundError as exc:
                raise NotFound(f"data asset {ref} not found in {self.workspace_label}: "
                               f"{azure_message(exc)}") from None
            dest = self._download_dir("data")
            download_artifact_from_aml_uri(str(asset.path), str(dest), self.client.datastores)
        local = dest / Path(str(asset.path).rstrip("/")).name
        uri = local if asset.type == "uri_file" and local.exists() else dest
        return DataAsset(asset.name, str(asset.version), asset.type, str(uri),
                         (asset.tags or {}).get(CONTENT_TAG, ""), asset.description or "",
                         dict(asset.tags or {}), False)

    def download_uri(self, uri: str) -> Path:
        """A local copy of `azureml://jobs/<job>/outputs/<name>` or `azureml://datastores/<ds>/paths/<path>`."""
        import re

        from azure.ai.ml._artifacts._artifact_utilities import download_artifact_from_aml_uri

        job_output = re.match(r"^azureml://jobs/([^/]+)/outputs/([^/]+)/?$", uri)
        dest = self._download_dir("uri")
        with azure_errors(f"download {uri}"):
            if job_output:
                job, output = job_output.groups()
                self.client.jobs.download(job, output_name=output, download_path=str(dest))
                local = dest / "named-outputs" / output
                if not local.exists():
                    raise BackendFailed(f"job {job} has no downloadable output {output!r}")
                return local
            download_artifact_from_aml_uri(uri, str(dest), self.client.datastores)
        return dest

    # -- models ------------------------------------------------------------------------------------
    def _model_versions(self, name: str, client: Any = None) -> list[Any]:
        from azure.core.exceptions import ResourceNotFoundError
        try:
            return list((client or self.client).models.list(name=name))
        except ResourceNotFoundError:
            return []

    def _to_model_version(self, model: Any, path: Path, created: bool = False) -> ModelVersion:
        tags = dict(model.tags or {})
        aliases = [k[len(ALIAS_TAG):] for k, v in tags.items() if k.startswith(ALIAS_TAG) and v == "true"]
        return ModelVersion(model.name, str(model.version), path, tags, aliases, created)

    def register_model(self, name: str, model_dir: Path, tags: dict[str, str] | None = None,
                       description: str = "") -> ModelVersion:
        """Upload and register a model folder (MLflow if it has an MLmodel file); idempotent by content."""
        from azure.ai.ml.entities import Model

        model_dir = Path(model_dir)
        digest = hash_path(model_dir)
        kind = "mlflow_model" if (model_dir / "MLmodel").is_file() else "custom_model"
        all_tags = {**(tags or {}), CONTENT_TAG: digest}
        if self.dry_run:
            self.show(f"register model {name} in {self.workspace_label}",
                      Model(name=name, path=str(model_dir), type=kind, description=description or None,
                            tags=all_tags))
            return ModelVersion(name, DRY_RUN, model_dir, all_tags, [], False)
        with azure_errors(f"register model {name}"):
            versions = self._model_versions(name)
            for model in versions:
                if (model.tags or {}).get(CONTENT_TAG) == digest:
                    return self._to_model_version(model, model_dir)
            version = str(max([int(m.version) for m in versions if str(m.version).isdigit()] or [0]) + 1)
            made = self.client.models.create_or_update(Model(
                name=name, version=version, path=str(model_dir), type=kind, description=description or None,
                tags=all_tags))
        return self._to_model_version(made, model_dir, created=True)

    def get_model(self, ref: AssetRef, allow_latest: bool = False) -> ModelVersion:
        """A model version (by version, alias tag, or latest if allowed), downloaded to a temp folder."""
        from azure.core.exceptions import ResourceNotFoundError

        with azure_errors(f"get model {ref}"):
            try:
                if ref.version:
                    model = self.client.models.get(ref.name, version=ref.version)
                elif ref.label in (None, "latest"):
                    if not allow_latest:
                        raise BadInput("model", f"{ref} does not name a version; give name:version "
                                       "(or allow latest explicitly)")
                    model = self.client.models.get(ref.name, label="latest")
                else:
                    version = self.alias_version(ref.name, ref.label)
                    if version is None:
                        raise NotFound(f"no version of model {ref.name!r} holds alias {ref.label!r} "
                                       f"in {self.workspace_label}")
                    model = self.client.models.get(ref.name, version=version)
            except ResourceNotFoundError as exc:
                raise NotFound(f"model {ref} not found in {self.workspace_label}: {azure_message(exc)}") \
                    from None
            dest = self._download_dir("model")
            self.client.models.download(model.name, str(model.version), download_path=str(dest))
        mlmodel = sorted(dest.rglob("MLmodel"), key=lambda p: len(p.parts))
        path = mlmodel[0].parent if mlmodel else dest
        return self._to_model_version(model, path)

    def _set_model_tags(self, model: Any, tags: dict[str, str]) -> None:
        model.tags = tags
        self.client.models.create_or_update(model)

    def set_alias(self, name: str, alias: str, version: str) -> None:
        """Give `version` the alias tag and clear it from every other version."""
        key = ALIAS_TAG + alias
        if self.dry_run:
            ci.log(f"dry run: would tag model {name}:{version} {key}=true and clear it from other versions")
            return
        with azure_errors(f"set alias {alias} on model {name}:{version}"):
            for model in self._model_versions(name):
                tags = dict(model.tags or {})
                if str(model.version) == str(version):
                    if tags.get(key) != "true":
                        self._set_model_tags(model, {**tags, key: "true"})
                elif key in tags:
                    tags.pop(key)
                    self._set_model_tags(model, tags)

    def alias_version(self, name: str, alias: str) -> str | None:
        """The version holding the alias tag; fails if more than one does."""
        key = ALIAS_TAG + alias
        with azure_errors(f"find alias {alias} of model {name}"):
            holders = [str(m.version) for m in self._model_versions(name) if (m.tags or {}).get(key) == "true"]
        if len(holders) > 1:
            raise BackendFailed(f"model {name}: versions {', '.join(sorted(holders))} all hold the tag "
                                f"{key}; fix the tags in the workspace so exactly one holds it")
        return holders[0] if holders else None

    def register_job_model(self, inputs: Any) -> StepResult:
        """register-model --job-name on Azure: register the job's output in place (no download/upload)."""
        from azure.ai.ml.entities import Model

        job_name, output = inputs.job_name, inputs.job_output
        path = f"azureml://jobs/{job_name}/outputs/{output}"
        tags = {**inputs.tags, "mlops.job_name": job_name, "mlops.job_output": output}
        model = Model(name=inputs.model_name, path=path, type="mlflow_model", description=inputs.description or None,
                      tags=tags)
        if self.dry_run:
            self.show(f"register model {inputs.model_name} from job {job_name} in {self.workspace_label}", model)
            return StepResult({"model-name": inputs.model_name}, summary=f"Would register `{path}`.")
        with azure_errors(f"register model {inputs.model_name} from job {job_name}"):
            job = self.client.jobs.get(job_name)
            if status_of(job) != "Completed":
                raise BadInput(describe_input("job_name"), f"job {job_name} is {status_of(job)}, not Completed")
            if output not in (job.outputs or {}):
                raise BadInput(describe_input("job_output"), f"job {job_name} has no output {output!r} "
                               f"(outputs: {', '.join(sorted(job.outputs or {})) or 'none'})")
            versions = self._model_versions(inputs.model_name)
            same = [m for m in versions if (m.tags or {}).get("mlops.job_name") == job_name
                    and (m.tags or {}).get("mlops.job_output") == output]
            created = not same
            if same:
                made = same[0]
            else:
                model.version = str(max([int(m.version) for m in versions if str(m.version).isdigit()] or [0]) + 1)
                made = self.client.models.create_or_update(model)
        state = "registered" if created else "already registered from this job output"
        return StepResult({"model-name": made.name, "model-version": str(made.version),
                           "model-id": f"{made.name}:{made.version}", "created": created},
                          summary=ci.markdown_table([{"model": made.name, "version": made.version, "state": state,
                                                      "source": path}], "Model"))

    # -- jobs --------------------------------------------------------------------------------------
    def run_job(self, inputs: Any) -> StepResult:
        """train on Azure: submit the job YAML; wait for it unless `--no-wait`."""
        import yaml

        from ..specs import _schema_message, load_spec, read_yaml

        where = describe_input("job")
        load_spec("job", inputs.job, where)  # schema errors as BadInput naming the file
        raw = read_yaml(inputs.job, where)
        declared = dict(raw.get("inputs") or {})
        overrides: list[dict[str, Any]] = []
        for key, value in (getattr(inputs, "set_input", None) or {}).items():
            if key not in declared:
                raise BadInput(describe_input("set_input"), f"the job declares no input {key!r} "
                               f"(inputs: {', '.join(sorted(declared)) or 'none'})")
            if isinstance(declared[key], dict):
                overrides.append({f"inputs.{key}.path": value})
            else:
                overrides.append({f"inputs.{key}": yaml.safe_load(value) if value else value})
        if getattr(inputs, "experiment_name", None):
            overrides.append({"experiment_name": inputs.experiment_name})
        compute = getattr(inputs, "compute", None)
        if compute:
            key = "settings.default_compute" if raw.get("type") == "pipeline" else "compute"
            overrides.append({key: compute if compute.startswith(("azureml:", "/subscriptions/"))
                              else f"azureml:{compute}"})
        from azure.ai.ml import load_job
        try:
            job = load_job(source=inputs.job, params_override=overrides)
        except Exception as exc:  # the overrides broke the schema
            where = describe_input("set_input") if getattr(inputs, "set_input", None) else describe_input("compute")
            raise BadInput(where, f"{inputs.job}: {_schema_message(exc)}") from None
        experiment = job.experiment_name or Path(inputs.job).resolve().parent.name
        if self.dry_run:
            self.show(f"submit a {job.type} job to {self.workspace_label}", job)
            return StepResult({"job-name": DRY_RUN, "status": "DryRun", "experiment": experiment},
                              summary=f"### Job (dry run)\n\nWould submit `{inputs.job}` to {self.workspace_label}.")
        with azure_errors(f"submit job {inputs.job}"):
            made = self.client.jobs.create_or_update(job, experiment_name=experiment)
        studio = getattr((made.services or {}).get("Studio"), "endpoint", None)
        ci.log(f"submitted job {made.name} ({status_of(made)})" + (f": {studio}" if studio else ""))
        if not getattr(inputs, "wait", True):
            return self._job_result(made, experiment, "submitted, not waited for")
        timeout = getattr(inputs, "timeout_minutes", None)
        return self.wait_job(made.name, timeout * 60 if timeout else None)

    def _job_result(self, job: Any, experiment: str | None, note: str = "") -> StepResult:
        outputs = {k: f"azureml://jobs/{job.name}/outputs/{k}" for k in (job.outputs or {})}
        studio = getattr((job.services or {}).get("Studio"), "endpoint", None)
        summary = (f"### Job `{job.name}`: {status_of(job)}\n\n" + (f"{note}. " if note else "")
                   + (f"[Open in Azure ML studio]({studio})\n\n" if studio else "\n")
                   + ci.markdown_table([{"output": k, "uri": v} for k, v in outputs.items()]))
        return StepResult({"job-name": job.name, "status": status_of(job), "metrics": {}, "outputs": outputs,
                           "experiment": experiment or job.experiment_name}, summary=summary)

    def wait_job(self, name: str, timeout_seconds: float | None = None) -> StepResult:
        """Poll a job until it ends; a job ending Failed/Canceled raises BackendFailed with its log tail."""
        started = time.monotonic()
        last = None
        while True:
            with azure_errors(f"get job {name}"):
                job = self.client.jobs.get(name)
            status = status_of(job)
            if status != last:
                ci.log(f"job {name}: {status}")
                last = status
            if status in TERMINAL:
                break
            if timeout_seconds is not None and time.monotonic() - started > timeout_seconds:
                raise BackendFailed(f"job {name} is still {status} after {timeout_seconds / 60:.0f} min; it "
                                    f"keeps running in Azure - wait again with `mlops-step job-wait --job-name {name}`")
            time.sleep(self.poll_seconds)
        if status != "Completed":
            node, logs = self._failure_details(job)
            raise BackendFailed(f"job {name} ended {status}" + (f" (failing node: {node})" if node else ""),
                                logs=logs)
        return self._job_result(job, job.experiment_name)

    def _failure_details(self, job: Any) -> tuple[str | None, str | None]:
        """The failing child job's name and the tail of its user log, best effort."""
        target, node = job, None
        try:
            if job.type == "pipeline":
                children = list(self.client.jobs.list(parent_job_name=job.name))
                failed = [c for c in children if status_of(c) in ("Failed", "Canceled")]
                if failed:
                    target = failed[0]
                    node = getattr(target, "display_name", None) or target.name
            dest = self._download_dir("logs")
            self.client.jobs.download(target.name, download_path=str(dest), all=False)
            logs = sorted(dest.rglob("std_log*.txt")) or sorted(dest.rglob("*.txt"))
            if logs:
                lines = logs[0].read_text(errors="replace").splitlines()[-40:]
                return node, "\n".join(lines)
        except Exception as exc:  # logs are a courtesy; the failure itself is reported regardless
            return node, f"(could not fetch the job's logs: {azure_message(exc)})"
        return node, None

    # -- promote-model ----------------------------------------------------------------------------
    def promote_model(self, inputs: Any) -> StepResult:
        """Copy a model version from this workspace to an Azure ML registry or another workspace."""
        from azure.core.exceptions import ResourceNotFoundError

        from ..refs import parse_ref

        ref = parse_ref(inputs.model)
        if ref is None or (not ref.version and ref.label in (None, "latest")):
            raise BadInput(describe_input("model"), f"{inputs.model!r}: give name:version (or name@alias)")
        target_label = f"registry {inputs.to_registry}" if inputs.to_registry else f"workspace {inputs.to_workspace}"
        if self.dry_run:
            name, version = ref.name, ref.version or f"@{ref.label}"
            to = f"{inputs.to_name or name}:{inputs.to_version or version}"
            ci.log(f"dry run: would copy model {name}:{version} from {self.workspace_label} to {target_label} as {to}")
            return StepResult({"model": to, "target": target_label, "created": False},
                              summary=f"Would copy `{name}:{version}` to {target_label} as `{to}`.")
        with azure_errors(f"promote model {inputs.model} to {target_label}"):
            version = ref.version or self.alias_version(ref.name, ref.label)
            if version is None:
                raise BadInput(describe_input("model"), f"no version of {ref.name} holds alias {ref.label}")
            try:
                source = self.client.models.get(ref.name, version=version)
            except ResourceNotFoundError as exc:
                raise BadInput(describe_input("model"), f"model {ref.name}:{version} not found in "
                               f"{self.workspace_label}: {azure_message(exc)}") from None
            name, to_version = inputs.to_name or source.name, inputs.to_version or str(source.version)
            digest = (source.tags or {}).get(CONTENT_TAG)
            target = self.make_client(subscription_id=inputs.to_subscription_id,
                                      resource_group=inputs.to_resource_group, workspace_name=inputs.to_workspace,
                                      registry_name=inputs.to_registry)
            try:
                existing = target.models.get(name, version=to_version)
            except ResourceNotFoundError:
                existing = None
            if existing is not None:
                if digest and (existing.tags or {}).get(CONTENT_TAG) == digest:
                    created = False
                else:
                    raise BackendFailed(f"{target_label} already has model {name}:{to_version} with different "
                                        "content; give --to-version to promote under a new version")
            elif inputs.to_registry:
                self._import_to_registry(source, target, name, to_version)
                created = True
            else:
                self._copy_to_workspace(source, target, name, to_version)
                created = True
        if inputs.to_registry:
            asset = f"azureml://registries/{inputs.to_registry}/models/{name}/versions/{to_version}"
        else:
            asset = f"azureml:{name}:{to_version}"
        summary = (f"### Model promoted\n\n`{ref.name}:{version}` from {self.workspace_label} -> {target_label} as "
                   f"`{name}:{to_version}` ({'copied' if created else 'already there, unchanged'}).")
        return StepResult({"model": f"{name}:{to_version}", "target": target_label, "asset-id": asset,
                           "created": created}, summary=summary)

    def _import_to_registry(self, source: Any, registry: Any, name: str, version: str) -> None:
        """What `az ml model share` does: import the workspace asset into the registry (a long-running POST)."""
        from azure.ai.ml.entities._assets.workspace_asset_reference import WorkspaceAssetReference

        ws = self.client.workspaces.get(self.workspace_name)
        asset_id = (f"azureml://locations/{ws.location}/workspaces/{ws._workspace_id}/models/"
                    f"{source.name}/versions/{source.version}")
        registry.models.create_or_update(WorkspaceAssetReference(name=name, version=version, asset_id=asset_id))

    def _copy_to_workspace(self, source: Any, target: Any, name: str, version: str) -> None:
        """Download the version and register it in the target workspace with the same tags."""
        from azure.ai.ml.entities import Model

        dest = self._download_dir("promote")
        self.client.models.download(source.name, str(source.version), download_path=str(dest))
        folders = [p for p in (dest / source.name).iterdir()] if (dest / source.name).is_dir() else []
        path = folders[0] if len(folders) == 1 else dest / source.name
        tags = {**(source.tags or {}), "mlops.promoted_from":
                f"{self.subscription_id}/{self.resource_group}/{self.workspace_name}/{source.name}:{source.version}"}
        tags = {k: v for k, v in tags.items() if not k.startswith(ALIAS_TAG)}  # aliases stay per workspace
        target.models.create_or_update(Model(name=name, version=version, path=str(path), type=source.type,
                                             description=source.description, tags=tags))

    # -- endpoints -----------------------------------------------------------------------------------
    def _model_reference(self, ref: str, where: str, allow_latest: bool) -> str:
        """`azureml:name:version` for an explicit version or alias; @latest only if allowed; paths unchanged."""
        from ..refs import parse_ref

        if ref.startswith("azureml://") or Path(ref).exists():
            return ref
        parsed = parse_ref(ref)
        if parsed is None or (parsed.version is None and parsed.label is None):
            raise BadInput(where, f"{ref!r} is neither a model folder nor a name:version reference")
        if parsed.version:
            return f"azureml:{parsed.name}:{parsed.version}"
        if parsed.label == "latest":
            if not allow_latest:
                raise BadInput(where, f"{ref} is not an explicit version; give name:version "
                               "(or set allow-latest to accept @latest)")
            if self.dry_run:
                return f"azureml:{parsed.name}@latest"
            with azure_errors(f"get the latest version of model {parsed.name}"):
                return f"azureml:{parsed.name}:{self.client.models.get(parsed.name, label='latest').version}"
        if self.dry_run:
            return f"azureml:{parsed.name}@{parsed.label}"
        version = self.alias_version(parsed.name, parsed.label)
        if version is None:
            raise BadInput(where, f"no version of model {parsed.name} holds alias {parsed.label}")
        return f"azureml:{parsed.name}:{version}"

    @staticmethod
    def _config_hash(entity: Any, code: Path | None) -> str:
        """A fingerprint of a deployment's spec (and its code folder): equal means nothing to update."""
        import hashlib

        text = entity_yaml(entity) + (hash_path(code) if code and code.is_dir() else "")
        return hashlib.sha256(text.encode()).hexdigest()

    def _ensure_endpoint(self, ops: Any, endpoint: Any, kind: str) -> tuple[Any, bool]:
        """The endpoint as it is in the workspace, created first if missing; and whether it was."""
        current = self._get_or_none(ops, endpoint.name)
        if current is not None:
            return current, False
        ci.log(f"creating {kind} endpoint {endpoint.name}")
        ops.begin_create_or_update(endpoint).result()
        return ops.get(endpoint.name), True

    def _get_or_none(self, operations: Any, *args: Any, **kwargs: Any) -> Any:
        from azure.core.exceptions import ResourceNotFoundError
        try:
            return operations.get(*args, **kwargs)
        except ResourceNotFoundError:
            return None

    def deploy_online(self, inputs: Any) -> StepResult:
        """Managed online endpoint + deployment: new deployment at 0 %, smoke test, then traffic."""
        from azure.ai.ml.entities import CodeConfiguration, ManagedOnlineDeployment, ManagedOnlineEndpoint

        from ..specs import load_spec

        endpoint = load_spec("online_endpoint", inputs.endpoint_yaml, describe_input("endpoint_yaml")) \
            if inputs.endpoint_yaml else None
        if inputs.deployment_yaml:
            where = describe_input("deployment_yaml")
            deployment = load_spec("online_deployment", inputs.deployment_yaml, where)
        else:
            where = describe_input("model")
            deployment = ManagedOnlineDeployment(name=inputs.deployment_name, instance_type="Standard_DS3_v2",
                                                 instance_count=1)
        name = inputs.endpoint_name or (endpoint.name if endpoint else None) or deployment.endpoint_name
        if not name:
            raise BadInput(describe_input("endpoint_name"), "no endpoint name (give --endpoint-name or an endpoint YAML)")
        if endpoint is None:
            endpoint = ManagedOnlineEndpoint(name=name, auth_mode="key")
        wanted_traffic = {k: int(v) for k, v in (inputs.traffic or endpoint.traffic or {}).items()}
        endpoint.name, endpoint.traffic = name, None
        deployment.endpoint_name = name
        deployment.name = inputs.deployment_name or deployment.name
        if inputs.model:
            deployment.model = self._model_reference(inputs.model, describe_input("model"), inputs.allow_latest)
        elif isinstance(deployment.model, str):
            deployment.model = self._model_reference(deployment.model, where, inputs.allow_latest)
        if deployment.model is None:
            raise BadInput(describe_input("model"), "no model (give --model name:version or model: in the YAML)")
        code = None
        if inputs.code_path:
            deployment.code_configuration = CodeConfiguration(code=inputs.code_path, scoring_script=inputs.scoring_script)
        if deployment.code_configuration is not None:
            code = Path(str(deployment.code_configuration.code))
            if inputs.deployment_yaml and not code.is_absolute():
                code = Path(inputs.deployment_yaml).resolve().parent / code
        if inputs.environment_variables:
            deployment.environment_variables = {**(deployment.environment_variables or {}),
                                                **inputs.environment_variables}
        wanted_traffic = wanted_traffic or {deployment.name: 100}
        if sum(wanted_traffic.values()) not in (0, 100) or any(not 0 <= v <= 100 for v in wanted_traffic.values()):
            raise BadInput(describe_input("traffic"), f"percents must be 0-100 and add up to 100: {wanted_traffic}")
        digest = self._config_hash(deployment, code)
        deployment.tags = {**(deployment.tags or {}), "mlops.config_sha256": digest}
        model_label = str(deployment.model) if isinstance(deployment.model, str) else "(local model folder)"
        if self.dry_run:
            self.show(f"create or update online endpoint {name} in {self.workspace_label}", endpoint)
            self.show(f"create or update deployment {deployment.name} (at 0 % traffic until its smoke test passes)",
                      deployment)
            ci.log(f"dry run: would then set traffic {json.dumps(wanted_traffic, sort_keys=True)}")
            return StepResult({"endpoint-name": name, "deployment-name": deployment.name, "traffic": wanted_traffic,
                               "model": model_label, "changed": False},
                              summary=f"### Online endpoint {name} (dry run)\n\nWould deploy `{model_label}` as "
                                      f"`{deployment.name}`, then traffic {wanted_traffic}.")
        ops = None
        changed = False
        with azure_errors(f"deploy online endpoint {name}"):
            ops = self.client.online_endpoints
            current, changed = self._ensure_endpoint(ops, endpoint, "online")
            traffic_before = dict(current.traffic or {})
            names = set(traffic_before) | {deployment.name}
            unknown = sorted(set(wanted_traffic) - names)
            if unknown:
                raise BadInput(describe_input("traffic"), f"no deployment named {', '.join(unknown)} in endpoint "
                               f"{name} (deployments: {', '.join(sorted(names))})")
            existing = self._get_or_none(self.client.online_deployments, deployment.name, name)
            if existing is not None and (existing.tags or {}).get("mlops.config_sha256") == digest \
                    and str(getattr(existing.provisioning_state, "value", existing.provisioning_state)) == "Succeeded":
                ci.log(f"deployment {deployment.name} already has this configuration")
            else:
                ci.log(f"creating or updating deployment {deployment.name} (traffic stays {traffic_before})")
                try:
                    with azure_errors(f"deployment {deployment.name} of endpoint {name}"):
                        self.client.online_deployments.begin_create_or_update(deployment).result()
                except BackendFailed as exc:
                    raise BackendFailed(f"{exc}; traffic left at {traffic_before}",
                                        logs=self._deployment_logs(deployment.name, name)) from None
                changed = True
                self._smoke_test(inputs, name, deployment.name, traffic_before)
            full = {d: int(wanted_traffic.get(d, 0)) for d in sorted(names)}
            if {k: int(v) for k, v in traffic_before.items() if int(v)} != {k: v for k, v in full.items() if v}:
                current.traffic = full
                ci.log(f"setting traffic {full}")
                ops.begin_create_or_update(current).result()
                changed = True
            final = ops.get(name)
        summary = (f"### Online endpoint {name}\n\n`{model_label}` as `{deployment.name}` "
                   f"({'changed' if changed else 'unchanged'})\n\n"
                   + ci.markdown_table([{"deployment": d, "traffic": f"{p} %"} for d, p in full.items()]))
        return StepResult({"scoring-uri": final.scoring_uri, "endpoint-name": name, "deployment-name": deployment.name,
                           "traffic": full, "model": model_label, "changed": changed}, summary=summary)

    def _deployment_logs(self, deployment: str, endpoint: str) -> str:
        try:
            with azure_errors("get deployment logs"):
                return self.client.online_deployments.get_logs(deployment, endpoint, lines=200) or "(no logs)"
        except BackendFailed as exc:
            return f"(could not fetch the deployment's logs: {exc})"

    def _smoke_test(self, inputs: Any, endpoint: str, deployment: str, traffic_before: dict) -> None:
        """Invoke the new deployment directly (it has 0 % traffic); failure leaves traffic as it was."""
        if not inputs.sample_request:
            ci.warning(f"no --sample-request: deployment {deployment} was not smoke-tested before getting traffic")
            return
        if not Path(inputs.sample_request).is_file():
            raise BadInput(describe_input("sample_request"), f"file not found: {inputs.sample_request}")
        try:
            with azure_errors(f"smoke test of deployment {deployment}"):
                answer = self.client.online_endpoints.invoke(endpoint, request_file=inputs.sample_request,
                                                             deployment_name=deployment)
        except BackendFailed as exc:
            raise BackendFailed(f"{exc}; traffic left at {traffic_before}",
                                logs=self._deployment_logs(deployment, endpoint)) from None
        ci.log(f"smoke test of {deployment}: {str(answer)[:200]}")

    def deploy_batch(self, inputs: Any) -> StepResult:
        """Batch endpoint + model deployment (create or update), then invoke it on the input and wait."""
        from azure.ai.ml import Input
        from azure.ai.ml.entities import BatchEndpoint, CodeConfiguration, ModelBatchDeployment

        from ..specs import load_spec

        endpoint = load_spec("batch_endpoint", inputs.endpoint_yaml, describe_input("endpoint_yaml")) \
            if inputs.endpoint_yaml else None
        if inputs.deployment_yaml:
            from ..deploy_batch import _load_deployment
            where = describe_input("deployment_yaml")
            deployment = _load_deployment(inputs.deployment_yaml)
        else:
            where = describe_input("model")
            compute = getattr(inputs, "compute", None)
            if not compute:
                raise BadInput(describe_input("deployment_yaml"), "with --backend azureml give a batch deployment "
                               "YAML (it names the compute cluster)")
            deployment = ModelBatchDeployment(name=inputs.deployment_name or "default", compute=compute)
        name = inputs.endpoint_name or (endpoint.name if endpoint else None) or deployment.endpoint_name
        if not name:
            raise BadInput(describe_input("endpoint_name"), "no endpoint name (give --endpoint-name or an endpoint YAML)")
        endpoint = endpoint or BatchEndpoint(name=name)
        endpoint.name = name
        deployment.endpoint_name = name
        deployment.name = inputs.deployment_name or deployment.name or "default"
        if inputs.model:
            deployment.model = self._model_reference(inputs.model, describe_input("model"), inputs.allow_latest)
        elif isinstance(deployment.model, str):
            deployment.model = self._model_reference(deployment.model, where, inputs.allow_latest)
        code = None
        if inputs.code:
            deployment.code_configuration = CodeConfiguration(code=inputs.code, scoring_script=inputs.scoring_script)
        if deployment.code_configuration is not None:
            code = Path(str(deployment.code_configuration.code))
        for key in ("mini_batch_size", "max_concurrency_per_instance", "error_threshold", "output_action",
                    "output_file_name"):
            if getattr(inputs, key, None) is not None:
                setattr(deployment.settings if hasattr(deployment, "settings") and deployment.settings else deployment,
                        key, getattr(inputs, key))
        if len(inputs.input) != 1:
            raise BadInput(describe_input("input"), "with --backend azureml give exactly one input "
                           "(a data asset azureml:name:version, a folder or a file)")
        source = inputs.input[0]
        if source.startswith("azureml:") and not source.startswith("azureml://"):
            job_input = Input(type="uri_folder", path=source)
        else:
            job_input = Input(type="uri_file" if Path(source).is_file() else "uri_folder", path=source)
        digest = self._config_hash(deployment, code)
        deployment.tags = {**(deployment.tags or {}), "mlops.config_sha256": digest}
        if self.dry_run:
            self.show(f"create or update batch endpoint {name} in {self.workspace_label}", endpoint)
            self.show(f"create or update batch deployment {deployment.name}", deployment)
            ci.log(f"dry run: would then invoke {name}/{deployment.name} on {source} and wait for the job")
            return StepResult({"job-name": DRY_RUN, "status": "DryRun"},
                              summary=f"### Batch endpoint {name} (dry run)\n\nWould invoke on `{source}`.")
        with azure_errors(f"deploy batch endpoint {name}"):
            ops = self.client.batch_endpoints
            current, _ = self._ensure_endpoint(ops, endpoint, "batch")
            existing = self._get_or_none(self.client.batch_deployments, deployment.name, name)
            if existing is None or (existing.tags or {}).get("mlops.config_sha256") != digest:
                ci.log(f"creating or updating batch deployment {deployment.name}")
                self.client.batch_deployments.begin_create_or_update(deployment).result()
            default = getattr(current.defaults, "deployment_name", None) if current.defaults else None
            if default != deployment.name:
                current.defaults = {"deployment_name": deployment.name}
                ops.begin_create_or_update(current).result()
            job = ops.invoke(name, deployment_name=deployment.name, inputs={"input": job_input})
        ci.log(f"batch job {job.name} started")
        timeout = getattr(inputs, "timeout_minutes", None)
        result = self.wait_job(job.name, timeout * 60 if timeout else None)
        output = f"azureml://jobs/{job.name}/outputs/score"
        return StepResult({"job-name": job.name, "status": result.outputs["status"], "output-path": output},
                          summary=f"### Batch job `{job.name}`: {result.outputs['status']}\n\nEndpoint `{name}`, "
                                  f"deployment `{deployment.name}`; output `{output}`.")
