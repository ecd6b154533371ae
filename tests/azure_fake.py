"""A fake Azure for request-level tests: an azure-core HttpTransport that records every request and
answers like ARM (Azure ML workspace resources, long-running operations) and Blob Storage, in memory.

Use it with a real `MLClient` (fake credential, `transport=`), so the azure-ai-ml SDK builds and sends
its real requests. `install(fake)` also routes the SDK's blob uploads/downloads through the fake.
"""
from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse
from xml.sax.saxutils import escape

from azure.core.credentials import AccessToken
from azure.core.pipeline.transport import HttpTransport
from azure.core.rest._http_response_impl import HttpResponseImpl
from azure.core.utils import case_insensitive_dict

SUB, RG, WS = "00000000-0000-0000-0000-000000000000", "rg-mlops", "ws-dev"
ARM = "https://management.azure.com"
ACCOUNT, CONTAINER = "fakeacct", "azureml-blobstore"
REGION_API = "https://westeurope.api.azureml.ms"


class FakeCredential:
    """What DefaultAzureCredential gives the SDK: a bearer token."""

    def __init__(self) -> None:
        self.scopes: list[str] = []

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        import jwt

        self.scopes.extend(scopes)
        aud = (scopes[0] if scopes else "").removesuffix("/.default")
        token = jwt.encode({"aud": aud, "tid": "tenant-1", "oid": "fake-user"}, "k" * 32, algorithm="HS256")
        return AccessToken(token, int(time.time()) + 3600)


@dataclass
class Request:
    method: str
    url: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes

    @property
    def api_version(self) -> str | None:
        return self.query.get("api-version")

    @property
    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


@dataclass
class Failure:
    method: str
    pattern: str
    status: int
    code: str
    message: str
    times: int | None = None


class _Stream:
    """What a transport's stream download returns: an iterator of chunks that storage can annotate."""

    def __init__(self, data: bytes, response: Any = None) -> None:
        self._chunks = iter([data] if data else [])
        self.response = response
        self.content_length = len(data)

    def __iter__(self) -> "_Stream":
        return self

    def __next__(self) -> bytes:
        return next(self._chunks)


class _Closable:
    def close(self) -> None:
        pass


def response(request: Any, status: int, body: Any = b"", headers: dict[str, str] | None = None) -> Any:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    hdrs = case_insensitive_dict({"Content-Type": "application/json", "x-ms-request-id": "req-1",
                                  **(headers or {})})
    resp = HttpResponseImpl(request=request, internal_response=_Closable(), status_code=status,
                            reason="OK" if status < 400 else "Error", content_type=hdrs.get("Content-Type"),
                            headers=hdrs, stream_download_generator=lambda *a, **k: _Stream(data, k.get("response") or a[1]))
    resp._content = data
    return resp


LRO_KINDS = ("onlineEndpoints", "batchEndpoints", "deployments")


class FakeAzure(HttpTransport):
    """ARM + Blob Storage in memory. Inspect `.requests`; script failures with `.fail()`."""

    def __init__(self, sub: str = SUB, rg: str = RG, ws: str = WS) -> None:
        self.ws_path = (f"/subscriptions/{sub}/resourceGroups/{rg}/providers/"
                        f"Microsoft.MachineLearningServices/workspaces/{ws}")
        self.requests: list[Request] = []
        self.resources: dict[str, dict[str, Any]] = {}
        self.blobs: dict[str, bytes] = {}
        self.blob_meta: dict[str, dict[str, str]] = {}
        self.failures: list[Failure] = []
        self.job_statuses: dict[str, list[str]] = {}
        self.lro_outcome: dict[str, str] = {}   # resource path regex -> "Succeeded" | "Failed"
        self.lro_polls = 1                      # InProgress answers before the outcome
        self.lro_error = {"code": "DeploymentFailed",
                          "message": "Container crashed: ImportError in score.py init()"}
        self._ops: dict[str, dict[str, Any]] = {}
        self.runs: dict[str, dict[str, Any]] = {}  # run history (the data plane view of jobs)
        self.asset_uris: dict[str, str] = {}       # data plane: output asset id -> datastore URI
        self.invoke_response: bytes = b"[11.5]"
        self.logs = "starting\nscoring ready\n"
        self.add_workspace(ws_path=self.ws_path)

    # -- scripting -------------------------------------------------------------------------------
    def add_job(self, name: str, status: str, job_type: str = "Command", parent: str | None = None,
                display_name: str | None = None, log: str | None = None) -> None:
        """A job in ARM (and in run history, with a user log in the artifact store when `log` is given)."""
        path = f"{self.ws_path}/jobs/{name}"
        props: dict[str, Any] = {"jobType": job_type, "status": status, "experimentName": "fake",
                                 "displayName": display_name or name, "inputs": {}, "outputs": {}}
        if job_type == "Command":
            props.update({"command": "python train.py", "environmentId": "azureml:env:1", "computeId": "cpu"})
        else:
            props.update({"jobs": {}, "settings": {}})
        self.resources[path.lower()] = {"id": path, "name": name, "properties": props}
        self.runs[name] = {"runId": name, "parentRunId": parent, "status": status, "displayName": display_name or name,
                           "runType": "azureml.StepRun" if parent else "azureml.PipelineRun", "properties": {},
                           "tags": {}, "outputs": {}}
        if log is not None:
            self.blobs[f"/azureml/ExperimentRun/dcid.{name}/user_logs/std_log.txt"] = log.encode()

    def add_job_output(self, job: str, output: str, files: dict[str, bytes]) -> None:
        """A folder output of a job (in run history, the data plane and the default blob store)."""
        asset = f"azureml://locations/westeurope/workspaces/1111/data/azureml_{job}_output_data_{output}/versions/1"
        self.runs[job]["outputs"][output] = {"assetId": asset, "type": "uri_folder"}
        sub, rg, ws = self.ws_path.split("/")[2], self.ws_path.split("/")[4], self.ws_path.split("/")[-1]
        self.asset_uris[asset] = (f"azureml://subscriptions/{sub}/resourcegroups/{rg}/workspaces/{ws}/datastores/"
                                  f"workspaceblobstore/paths/azureml/{job}/{output}/")
        for name, data in files.items():
            self.blobs[f"/{CONTAINER}/azureml/{job}/{output}/{name}"] = data

    def add_workspace(self, ws_path: str) -> None:
        self.resources[ws_path.lower()] = {
            "id": ws_path, "name": ws_path.rsplit("/", 1)[1], "location": "westeurope",
            "type": "Microsoft.MachineLearningServices/workspaces",
            "properties": {"workspaceId": "11111111-2222-3333-4444-555555555555",
                           "discoveryUrl": f"{REGION_API}/discovery",
                           "mlFlowTrackingUri": f"azureml://westeurope.api.azureml.ms/mlflow/v1.0{ws_path}"}}
        self.resources[ws_path.lower() + "/datastores/workspaceartifactstore"] = {
            "id": ws_path + "/datastores/workspaceartifactstore", "name": "workspaceartifactstore",
            "type": "Microsoft.MachineLearningServices/workspaces/datastores",
            "properties": {"datastoreType": "AzureBlob", "accountName": ACCOUNT, "containerName": "azureml",
                           "endpoint": "core.windows.net", "protocol": "https", "isDefault": False,
                           "credentials": {"credentialsType": "AccountKey"}}}
        self.resources[ws_path.lower() + "/datastores/workspaceblobstore"] = {
            "id": ws_path + "/datastores/workspaceblobstore", "name": "workspaceblobstore",
            "type": "Microsoft.MachineLearningServices/workspaces/datastores",
            "properties": {"datastoreType": "AzureBlob", "accountName": ACCOUNT, "containerName": CONTAINER,
                           "endpoint": "core.windows.net", "protocol": "https", "isDefault": True,
                           "credentials": {"credentialsType": "AccountKey"}}}

    def fail(self, method: str, pattern: str, status: int, code: str, message: str,
             times: int | None = None) -> None:
        """Answer requests whose method matches and whose path matches `pattern` with an ARM error."""
        self.failures.append(Failure(method, pattern, status, code, message, times))

    def arm(self, method: str | None = None, contains: str = "") -> list[Request]:
        return [r for r in self.requests if "management.azure.com" in r.url
                and (method is None or r.method == method) and contains in r.path]

    def writes(self) -> list[Request]:
        return [r for r in self.requests if r.method in ("PUT", "POST", "PATCH", "DELETE")
                and "listSecrets" not in r.path and "/listKeys" not in r.path]

    # -- transport -------------------------------------------------------------------------------
    def __enter__(self) -> "FakeAzure":
        return self

    def __exit__(self, *args: Any) -> None:
        pass

    def open(self) -> None:
        pass

    def sleep(self, duration: float) -> None:
        """Long-running-operation polling waits here: no need to wait for a fake."""

    def close(self) -> None:
        pass

    def send(self, request: Any, **kwargs: Any) -> Any:
        url = urlparse(request.url)
        body = request.body if isinstance(request.body, bytes) else (
            request.body.encode() if isinstance(request.body, str) else b"")
        if not body and getattr(request, "data", None) and not isinstance(request.data, (bytes, str)):
            body = request.data.read() if hasattr(request.data, "read") else b""
        rec = Request(request.method, request.url, unquote(url.path),
                      {k: v[0] for k, v in parse_qs(url.query).items()}, dict(request.headers), body)
        self.requests.append(rec)
        for failure in self.failures:
            if failure.method == rec.method and re.search(failure.pattern, rec.path) and failure.times != 0:
                if failure.times:
                    failure.times -= 1
                return response(request, failure.status, {"error": {"code": failure.code,
                                                                    "message": failure.message}})
        if url.hostname and url.hostname.endswith(".blob.core.windows.net"):
            return self._blob(request, rec)
        if url.hostname and "inference" in url.hostname:
            if rec.path.endswith("/jobs"):
                return self._batch_job(request, rec)
            return response(request, 200, self.invoke_response)
        return self._arm(request, rec)

    # -- ARM -------------------------------------------------------------------------------------
    def _arm(self, request: Any, rec: Request) -> Any:
        path = rec.path.rstrip("/")
        key = path.lower()
        registry = re.match(r"^/registrymanagement/v1.0/registries/([^/]+)/discovery$", path)
        if registry:
            return response(request, 200, {
                "registryName": registry.group(1), "primaryRegion": "westeurope", "regions": ["westeurope"],
                "subscriptionId": self.ws_path.split("/")[2], "resourceGroup": self.ws_path.split("/")[4],
                "primaryRegionResourceProviderUri": "https://cert-westeurope.experiments.azureml.net/"})
        if rec.url.startswith(REGION_API) and path == "/discovery":
            return response(request, 200, {"api": REGION_API, "catalog": REGION_API, "experimentation": REGION_API,
                                           "history": REGION_API, "modelmanagement": REGION_API,
                                           "pipelines": REGION_API, "studiometadata": REGION_API})
        if rec.url.startswith(REGION_API) and path.lower().endswith("/batchgetresolveduris"):
            ids = (rec.json or {}).get("values") or []
            return response(request, 200, {"values": {i: {"uri": self.asset_uris[i], "type": "UriFolder"}
                                                      for i in ids if i in self.asset_uris}})
        if rec.url.startswith(REGION_API) and path.endswith("/rundata"):
            run = self.runs.get((rec.json or {}).get("runId"))
            return response(request, 200 if run else 404, {"runMetadata": run} if run else {
                "error": {"code": "UserError", "message": "run not found"}})
        history = re.match(r"^/history/v1.0/.*/runs/([^/]+)(/children)?$", path)
        if rec.url.startswith(REGION_API) and history:
            run_id, children = history.groups()
            if children:
                return response(request, 200, {"value": [r for r in self.runs.values() if r["parentRunId"] == run_id]})
            if run_id in self.runs:
                return response(request, 200, self.runs[run_id])
            return response(request, 404, {"error": {"code": "UserError", "message": f"Run {run_id} was not found"}})
        if path.startswith("/fake-operations/") and path.endswith("/result"):
            return response(request, 200, b"")  # an import's final result: no body
        if path.startswith("/fake-operations/"):
            return self._operation(request, path.rsplit("/", 1)[1])
        if key.endswith("/listsecrets"):
            return response(request, 200, {"secretsType": "AccountKey", "key": "ZmFrZS1rZXk="})
        if key.endswith("/startpendingupload"):
            blob = f"https://{ACCOUNT}.blob.core.windows.net/code-{path.split('/')[-4]}-{path.split('/')[-2]}"
            return response(request, 200, {"pendingUploadType": "TemporaryBlobReference", "blobReferenceForConsumption": {
                "blobUri": blob, "credential": {"credentialType": "SAS", "sasUri": blob + "?sv=2026&sig=fakesig"}}})
        if key.endswith("/import") and "/registries/" in key:
            return self._import(request, rec, path)
        if key.endswith("/listkeys"):
            return response(request, 200, {"primaryKey": "endpoint-key-1", "secondaryKey": "endpoint-key-2"})
        if key.endswith("/getlogs"):
            return response(request, 200, {"content": self.logs})
        if key.endswith("/invoke"):
            return response(request, 200, {})
        if rec.method == "PUT" or rec.method == "PATCH":
            return self._put(request, rec, path)
        if rec.method == "DELETE":
            self.resources.pop(key, None)
            return response(request, 200, {})
        if rec.method == "GET":
            if key in self.resources:
                return response(request, 200, self._current(key))
            children = [self._current(k) for k in self.resources  # in creation order
                        if k.startswith(key + "/") and "/" not in k[len(key) + 1:]]
            if "desc" in rec.query.get("$orderBy", "").lower():
                children.reverse()
            if rec.query.get("$top"):
                children = children[:int(rec.query["$top"])]
            if children or re.search(r"/(versions|jobs|deployments|onlineendpoints|batchendpoints)$", key):
                return response(request, 200, {"value": children})
        name = path.rsplit("/", 1)[-1]
        return response(request, 404, {"error": {"code": "UserError",
                                                 "message": f"Could not find resource {name}"}})

    def _put(self, request: Any, rec: Request, path: str) -> Any:
        key = path.lower()
        body = rec.json or {}
        old = self.resources.get(key, {})
        props = {**(old.get("properties") or {}), **(body.get("properties") or {})}
        name = path.rsplit("/", 1)[-1]
        res = {**old, **body, "id": path, "name": name, "properties": props,
               "systemData": {"createdAt": "2026-11-23T18:00:00Z", "createdBy": "fake",
                              "lastModifiedAt": "2026-11-23T18:00:00Z", "lastModifiedBy": "fake"}}
        if "/models/" in key and "/versions/" in key:
            props.setdefault("flavors", {})
        if "/onlineendpoints/" in key and "/deployments/" in key:
            props.setdefault("scaleSettings", {"scaleType": "Default"})
        if "/jobs/" in key:
            props["status"] = "NotStarted"
            props.setdefault("services", {"Studio": {"endpoint": f"https://ml.azure.com/runs/{name}"}})
            if props.get("jobType") == "Pipeline":
                for node in (props.get("jobs") or {}).values():
                    node.setdefault("name", node.get("name"))
        versions = re.match(r"(.*/(?:data|models|codes|environments|components))/([^/]+)/versions/([^/]+)$",
                            path, re.I)
        if versions:
            container = f"{versions.group(1)}/{versions.group(2)}".lower()
            latest = self.resources.get(container, {}).get("properties", {}).get("latestVersion", "0")
            version = versions.group(3)
            newest = version if not latest.isdigit() or not version.isdigit() or int(version) > int(latest) \
                else latest
            self.resources[container] = {
                "id": f"{versions.group(1)}/{versions.group(2)}", "name": versions.group(2),
                "properties": {"latestVersion": newest,
                               "nextVersion": str(int(newest) + 1) if newest.isdigit() else None}}
        self.resources[key] = res
        endpoint = re.search(r"/(onlineendpoints|batchendpoints)/([^/]+)$", key)
        if endpoint:
            tail = "score" if endpoint.group(1) == "onlineendpoints" else "jobs"
            props["scoringUri"] = f"https://{endpoint.group(2)}.westeurope.inference.ml.azure.com/{tail}"
        kind = next((k for k in LRO_KINDS if f"/{k.lower()}/" in key), None)
        if kind:
            props["provisioningState"] = "Updating" if old else "Creating"
            op = f"op{len(self._ops) + 1}"
            outcome = next((o for pat, o in self.lro_outcome.items() if re.search(pat, path)), "Succeeded")
            self._ops[op] = {"polls": self.lro_polls, "outcome": outcome, "key": key}
            status = 200 if old else 201
            return response(request, status, res, {
                "Azure-AsyncOperation": f"{ARM}/fake-operations/{op}?api-version={rec.api_version}",
                "Location": f"{ARM}/fake-operations/{op}?api-version={rec.api_version}", "Retry-After": "0"})
        return response(request, 201 if not old else 200, res)

    def _import(self, request: Any, rec: Request, path: str) -> Any:
        """Registry import (copy a workspace asset into a registry): a long-running POST."""
        body = (rec.json or {}).get("properties", {})
        source = re.search(r"/models/([^/]+)/versions/([^/]+)$", body.get("sourceAssetId", ""))
        src = self.resources.get(f"{self.ws_path}/models/{source.group(1)}/versions/{source.group(2)}".lower()) \
            if source else None
        target = f"{path.rsplit('/', 1)[0]}/models/{body.get('destinationName')}/versions/{body.get('destinationVersion')}"
        op = f"op{len(self._ops) + 1}"
        self._ops[op] = {"polls": self.lro_polls, "outcome": "Failed" if src is None else "Succeeded", "key": target.lower()}
        if src is not None:
            registry = target.split("/registries/")[1].split("/")[0]
            asset = f"azureml://registries/{registry}/models/{body['destinationName']}/versions/{body['destinationVersion']}"
            self.resources[target.lower()] = {**src, "id": asset, "name": body["destinationVersion"],
                                              "properties": {**src["properties"], "modelUri": asset}}
        url = f"{ARM}/fake-operations/{op}?api-version={rec.api_version}"
        result = f"{ARM}/fake-operations/{op}/result?api-version={rec.api_version}"
        return response(request, 202, b"", {"Azure-AsyncOperation": url, "Location": result, "Retry-After": "0"})

    def _batch_job(self, request: Any, rec: Request) -> Any:
        """A batch endpoint invocation: creates a pipeline job and answers with it."""
        name = f"batchjob-{len([k for k in self.resources if '/jobs/' in k]) + 1}"
        path = f"{self.ws_path}/jobs/{name}"
        props = {"jobType": "Pipeline", "status": "NotStarted", "experimentName": rec.url.split("//")[1].split(".")[0],
                 "inputs": {}, "outputs": {}, "jobs": {}, "settings": {},
                 "services": {"Studio": {"endpoint": f"https://ml.azure.com/runs/{name}"}}}
        self.resources[path.lower()] = {"id": path, "name": name, "properties": props}
        self.job_statuses.setdefault(name, ["Running", "Completed"])
        return response(request, 200, {"id": path, "name": name, "properties": {
            **(rec.json or {}).get("properties", {}), "status": "NotStarted"}})

    def _operation(self, request: Any, op: str) -> Any:
        state = self._ops[op]
        if state["polls"] > 0:
            state["polls"] -= 1
            return response(request, 200, {"status": "InProgress"}, {"Retry-After": "0"})
        res = self.resources.get(state["key"])
        if res is not None:
            res["properties"]["provisioningState"] = state["outcome"]
        if state["outcome"] == "Failed":
            return response(request, 200, {"status": "Failed", "error": self.lro_error})
        return response(request, 200, {"status": "Succeeded"})

    def _current(self, key: str) -> dict[str, Any]:
        res = self.resources[key]
        if "/jobs/" in key:
            name = res["name"]
            statuses = self.job_statuses.get(name) or self.job_statuses.get("*")
            if statuses:  # scripted: each GET takes the next status, the last one stays
                res["properties"]["status"] = statuses.pop(0) if len(statuses) > 1 else statuses[0]
        return res

    # -- Blob storage ----------------------------------------------------------------------------
    def _blob(self, request: Any, rec: Request) -> Any:
        path = rec.path
        query = rec.query
        hdrs = {"ETag": '"0x1"', "Last-Modified": "Mon, 23 Nov 2026 18:00:00 GMT",
                "Content-Type": "application/octet-stream"}
        if rec.method == "GET" and query.get("comp") == "list":
            prefix = "/" + path.strip("/").split("/")[0] + "/" + query.get("prefix", "")
            items = "".join(
                f"<Blob><Name>{escape(p.split('/', 2)[2])}</Name><Properties><Content-Length>{len(v)}"
                f"</Content-Length><BlobType>BlockBlob</BlobType></Properties><Metadata>"
                + "".join(f"<{k}>{escape(m)}</{k}>" for k, m in self.blob_meta.get(p, {}).items())
                + "</Metadata></Blob>"
                for p, v in sorted(self.blobs.items()) if p.startswith(prefix))
            xml = (f'<?xml version="1.0" encoding="utf-8"?><EnumerationResults ServiceEndpoint='
                   f'"https://{ACCOUNT}.blob.core.windows.net/" ContainerName="{CONTAINER}">'
                   f"<Blobs>{items}</Blobs><NextMarker /></EnumerationResults>")
            return response(request, 200, xml.encode(), {"Content-Type": "application/xml"})
        if rec.method == "PUT" and query.get("comp") == "metadata":
            self.blob_meta[path] = {k[len("x-ms-meta-"):]: v for k, v in rec.headers.items()
                                    if k.lower().startswith("x-ms-meta-")}
            return response(request, 200, b"", hdrs)
        if rec.method == "PUT":
            self.blobs[path] = rec.body
            return response(request, 201, b"", hdrs)
        if rec.method in ("HEAD", "GET"):
            if path not in self.blobs:
                return response(request, 404, b"", {"x-ms-error-code": "BlobNotFound"})
            data = self.blobs[path]
            meta = {f"x-ms-meta-{k}": v for k, v in self.blob_meta.get(path, {}).items()}
            return response(request, 200, b"" if rec.method == "HEAD" else data,
                            {**hdrs, **meta, "Content-Length": str(len(data)), "x-ms-blob-type": "BlockBlob",
                             "Content-Range": f"bytes 0-{max(len(data) - 1, 0)}/{len(data)}"})
        return response(request, 400, b"", {"x-ms-error-code": "UnsupportedByFake"})


def ml_client(fake: FakeAzure, credential: FakeCredential | None = None, **kwargs: Any) -> Any:
    """A real MLClient whose HTTP goes to `fake`; blob clients the SDK creates use `fake` too."""
    from azure.ai.ml import MLClient

    install(fake)
    workspace = kwargs.pop("workspace_name", WS)
    if kwargs.get("registry_name"):
        workspace = None
    return MLClient(credential or FakeCredential(), kwargs.pop("subscription_id", SUB),
                    kwargs.pop("resource_group_name", RG), workspace, transport=fake, show_progress=False,
                    **kwargs)


def install(fake: FakeAzure) -> None:
    """Make the SDK's internally created blob clients send through `fake`."""
    import functools

    import azure.ai.ml._artifacts._blob_storage_helper as helper
    from azure.storage.blob import BlobServiceClient, ContainerClient

    class _Container:
        @staticmethod
        def from_container_url(url: str, credential: Any = None, **kwargs: Any) -> Any:
            return ContainerClient.from_container_url(url, credential, transport=fake, **kwargs)

    helper.BlobServiceClient = functools.partial(BlobServiceClient, transport=fake)
    helper.ContainerClient = _Container


# -- for the real CLI in a subprocess: MLOPS_AZUREML_CLIENT_FACTORY=azure_fake:cli_factory -------------
STATE_ENV = "FAKE_AZURE_STATE"
_CLI_FAKE: FakeAzure | None = None


def save_state(fake: FakeAzure, path: str | Path) -> None:
    import base64
    Path(path).write_text(json.dumps({
        "resources": fake.resources, "blobs": {k: base64.b64encode(v).decode() for k, v in fake.blobs.items()},
        "blob_meta": fake.blob_meta, "failures": [f.__dict__ for f in fake.failures],
        "job_statuses": fake.job_statuses, "lro_outcome": fake.lro_outcome, "runs": fake.runs,
        "requests": [{**r.__dict__, "body": r.body.decode("utf-8", "replace")} for r in fake.requests]}))


def load_state(path: str | Path) -> FakeAzure:
    import base64
    fake = FakeAzure()
    if Path(path).is_file():
        state = json.loads(Path(path).read_text())
        fake.resources = state["resources"]
        fake.blobs = {k: base64.b64decode(v) for k, v in state["blobs"].items()}
        fake.blob_meta = state["blob_meta"]
        fake.failures = [Failure(**f) for f in state["failures"]]
        fake.job_statuses = state["job_statuses"]
        fake.lro_outcome = state["lro_outcome"]
        fake.runs = state.get("runs", {})
        fake.requests = [Request(**{**r, "body": r["body"].encode()}) for r in state.get("requests", [])]
    return fake


def cli_factory(*, subscription_id: str, resource_group: str, workspace_name: str | None = None,
                registry_name: str | None = None) -> Any:
    """An MLClient on a fake whose state lives in $FAKE_AZURE_STATE (saved when the process exits)."""
    import atexit
    import os

    global _CLI_FAKE
    if _CLI_FAKE is None:
        path = os.environ[STATE_ENV]
        _CLI_FAKE = load_state(path)
        atexit.register(save_state, _CLI_FAKE, path)
    return ml_client(_CLI_FAKE, subscription_id=subscription_id, resource_group_name=resource_group,
                     workspace_name=workspace_name, registry_name=registry_name)
