"""deploy-online: deploy a model version to an online endpoint with a safe (blue/green) rollout.

Takes Azure ML CLI v2 managed online endpoint and deployment YAML (or options) and an explicit
model version. On the local backend the endpoint is a real HTTP service on 127.0.0.1 that routes
POST /score to its deployments by traffic weight (the `azureml-model-deployment` header picks one
directly). A deployment serves an MLflow/ONNX model with no scoring script, or the user's score.py
(init()/run(raw_data), AZUREML_MODEL_DIR) under Azure ML's inference server. A new or changed
deployment starts beside the old one at 0 % traffic, is health-checked and smoke-tested, and only
then gets the requested traffic; a failed check removes it, shows its logs and exits 3. Re-running
with the same inputs changes nothing. Manage endpoints with `mlops-step endpoint ...`.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import http.client
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from pydantic import Field, field_validator, model_validator

from . import ci
from .contract import BackendFailed, BadInput, StepInputs, StepResult, describe_input, step_command
from .files import hash_path, locked, write_json_atomic

OUTPUTS = {
    "scoring-uri": "the endpoint's scoring URI (POST JSON to it)",
    "endpoint-name": "the endpoint name",
    "deployment-name": "the deployment that was rolled out",
    "traffic": "traffic split after the rollout (JSON: deployment -> percent)",
    "model": "the deployed model (name:version, or a folder)",
    "changed": "true if a deployment was (re)started or the traffic changed",
}

NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9-]{1,31}$")
DEPLOYMENT_HEADER = "azureml-model-deployment"
DRAIN_SECONDS = 2.0


class Inputs(StepInputs):
    endpoint_yaml: str | None = Field(None, description="Azure ML CLI v2 managed online endpoint YAML.")
    deployment_yaml: str | None = Field(None, description="Azure ML CLI v2 managed online deployment YAML.")
    endpoint_name: str | None = Field(None, description="Endpoint name (overrides the YAML).")
    deployment_name: str | None = Field(None, description="Deployment name, e.g. blue (overrides the YAML).")
    model: str | None = Field(None, description="Model name:version (or an MLflow model folder); "
                                                "overrides the deployment YAML's model.")
    allow_latest: bool = Field(False, description="Accept name@latest instead of an explicit version.")
    code_path: str | None = Field(None, description="Folder with the scoring script (code_configuration.code).")
    scoring_script: str | None = Field(None, description="Scoring script in the code folder, e.g. score.py.")
    environment_variables: dict[str, str] = Field(default_factory=dict,
                                                  description="Extra environment variables for the deployment.")
    traffic: dict[str, str] = Field(default_factory=dict, description="Traffic after rollout, DEPLOYMENT=PERCENT "
                                    "(default: the endpoint YAML's traffic, else 100 to this deployment).")
    sample_request: str | None = Field(None, description="JSON request for the smoke test "
                                       "(default: the model's serving input example).")
    startup_timeout: float = Field(180.0, gt=0, description="Seconds a deployment may take to become healthy.")
    port: int | None = Field(None, ge=1024, le=65535, description="Port for a new endpoint (default: a free one).")

    @field_validator("endpoint_name", "deployment_name")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        if value is not None and not NAME_RE.match(value):
            raise ValueError(f"{value!r} is not a valid name "
                             "(2-32 letters, digits or '-', starting with a letter)")
        return value

    @model_validator(mode="after")
    def _sources(self) -> "Inputs":
        if not self.deployment_yaml and not (self.deployment_name and self.model):
            raise ValueError("give --deployment-yaml, or --deployment-name and --model")
        if bool(self.code_path) != bool(self.scoring_script):
            raise ValueError("give --code-path and --scoring-script together")
        return self


@dataclass
class Spec:
    endpoint: str
    deployment: str
    model_ref: str
    model_input: str
    code: Path | None = None
    script: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    traffic: dict[str, int] | None = None
    request_timeout_s: float = 90.0
    description: str = ""


def _spec(inputs: Inputs) -> Spec:
    """Merge the endpoint/deployment YAML (validated by Azure ML's own schemas) with the options."""
    from .specs import load_spec

    ep_name = dep_name = model_ref = script = None
    code: Path | None = None
    env: dict[str, str] = {}
    traffic: dict[str, int] | None = None
    timeout_s, description = 90.0, ""
    model_input = describe_input("model")
    if inputs.endpoint_yaml:
        ep = load_spec("online_endpoint", inputs.endpoint_yaml, describe_input("endpoint_yaml"))
        ep_name, description = ep.name, ep.description or ""
        if ep.traffic:
            traffic = {str(k): int(v) for k, v in ep.traffic.items()}
    if inputs.deployment_yaml:
        where = describe_input("deployment_yaml")
        dep = load_spec("online_deployment", inputs.deployment_yaml, where)
        base = Path(inputs.deployment_yaml).resolve().parent
        dep_name = dep.name
        if dep.endpoint_name:
            if ep_name and dep.endpoint_name != ep_name and not inputs.endpoint_name:
                raise BadInput(where, f"endpoint_name {dep.endpoint_name!r} does not match the endpoint "
                                      f"YAML's name {ep_name!r}")
            ep_name = ep_name or dep.endpoint_name
        if isinstance(dep.model, str):
            model_ref, model_input = dep.model, where
        elif dep.model is not None:
            path = getattr(dep.model, "path", None)
            if path is None:
                raise BadInput(where, "the model has neither a reference (azureml:name:version) nor a path")
            model_ref, model_input = str((base / path).resolve()), where
        if dep.code_configuration is not None:
            code = (base / str(dep.code_configuration.code)).resolve()
            script = dep.code_configuration.scoring_script
        env = {str(k): str(v) for k, v in (dep.environment_variables or {}).items()}
        if dep.request_settings is not None and dep.request_settings.request_timeout_ms:
            timeout_s = dep.request_settings.request_timeout_ms / 1000
    ep_name = inputs.endpoint_name or ep_name
    dep_name = inputs.deployment_name or dep_name
    if inputs.model:
        model_ref, model_input = inputs.model, describe_input("model")
    if inputs.code_path:
        code, script = Path(inputs.code_path).resolve(), inputs.scoring_script
    env.update(inputs.environment_variables)
    if not ep_name:
        raise BadInput(describe_input("endpoint_name"),
                       "no endpoint name (give --endpoint-name or an endpoint YAML)")
    if not dep_name:
        raise BadInput(describe_input("deployment_name"), "no deployment name")
    for value, name in ((ep_name, "endpoint_name"), (dep_name, "deployment_name")):
        if not NAME_RE.match(value):
            raise BadInput(describe_input(name), f"{value!r} is not a valid name")
    if not model_ref:
        raise BadInput(describe_input("model"), "no model (give --model name:version or model: in the YAML)")
    if code is not None:
        if not code.is_dir():
            raise BadInput(describe_input("code_path"), f"code folder not found: {code}")
        if not (code / str(script)).is_file():
            raise BadInput(describe_input("scoring_script"), f"{script} not found in {code}")
    if inputs.traffic:
        traffic = {}
        for key, value in inputs.traffic.items():
            try:
                traffic[key] = int(value)
            except ValueError:
                raise BadInput(describe_input("traffic"), f"{key}={value}: the percent is not a whole number") \
                    from None
    return Spec(ep_name, dep_name, model_ref, model_input, code, script, env, traffic, timeout_s, description)


# -- endpoint state and processes ---------------------------------------------------------------
class Endpoint:
    """An endpoint's folder under the store: state.json (atomic writes, under a lock) and logs."""

    def __init__(self, root: Path, name: str):
        self.name = name
        self.dir = root / "endpoints" / name
        self.state_path = self.dir / "state.json"

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        with locked(self.dir.parent / f".{self.name}.lock"):
            yield

    def load(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return None

    def save(self, state: dict[str, Any]) -> None:
        state["generation"] = state.get("generation", 0) + 1
        state["updated"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        write_json_atomic(self.state_path, state)

    @staticmethod
    def uri(state: dict[str, Any]) -> str:
        return f"http://127.0.0.1:{state['router']['port']}/score"


def list_endpoints(root: Path) -> list[Endpoint]:
    folder = root / "endpoints"
    return [Endpoint(root, p.name) for p in sorted(folder.iterdir()) if (p / "state.json").is_file()] \
        if folder.is_dir() else []


def alive(proc: dict[str, Any] | None) -> bool:
    """The recorded process runs and is still ours (its command line carries our instance id)."""
    if not proc or not proc.get("pid"):
        return False
    try:
        cmdline = Path(f"/proc/{proc['pid']}/cmdline").read_bytes().split(b"\0")
        status = Path(f"/proc/{proc['pid']}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return status != "Z" and proc["instance"].encode() in cmdline


def running(proc: dict[str, Any] | None) -> bool:
    """Like alive(), but a process this CLI just started is judged by its Popen handle."""
    child = _CHILDREN.get(proc["pid"]) if proc and proc.get("pid") else None
    return child.poll() is None if child is not None else alive(proc)


def stop(proc: dict[str, Any] | None, wait: float = 10.0) -> None:
    """Stop a serving process and its children (it leads its own session/process group)."""
    if not running(proc):
        return
    assert proc is not None
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc["pid"], signal.SIGTERM)
    deadline = time.monotonic() + wait
    while running(proc) and time.monotonic() < deadline:
        time.sleep(0.05)
    if running(proc):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc["pid"], signal.SIGKILL)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def http_call(method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None,
         timeout: float = 30.0) -> tuple[int, bytes, dict[str, str]]:
    """One HTTP request to a loopback URL (no proxy); HTTP error statuses are returned, not raised."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=timeout)
    try:
        conn.request(method, parts.path or "/", body, {"Content-Type": "application/json", **(headers or {})})
        resp = conn.getresponse()
        return resp.status, resp.read(), {k.lower(): v for k, v in resp.getheaders()}
    finally:
        conn.close()


def spawn(cmd: list[str], log: Path, cwd: Path, env: dict[str, str]) -> int:
    """Start a detached serving process (own session, survives this CLI); returns its pid."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as fh:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=fh,
                                stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)
    _CHILDREN[proc.pid] = proc
    return proc.pid


_CHILDREN: dict[int, subprocess.Popen] = {}  # processes started by this invocation


def log_tail(path: str | Path, lines: int = 200) -> str:
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


def wait_healthy(proc: dict[str, Any], timeout: float, check_instance: bool) -> str | None:
    """None once GET / answers 200, else why not (the process exited, or the timeout passed)."""
    deadline = time.monotonic() + timeout
    url = f"http://127.0.0.1:{proc['port']}/"
    while time.monotonic() < deadline:
        if not running(proc):
            return "the process exited during start-up"
        with contextlib.suppress(OSError, ValueError, http.client.HTTPException):
            status, body, _ = http_call("GET", url, timeout=5)
            if status == 200 and (not check_instance or json.loads(body).get("instance") == proc["instance"]):
                return None
        time.sleep(0.2)
    return f"not healthy after {timeout:.0f}s"


def server_cmd(role: str, instance: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "mlops_steps.online_server", role, "--instance", instance, *args]


# CI and cloud variables (tokens, credentials) are not passed on to the serving processes.
_PRIVATE_ENV = ("MLOPS_", "GITHUB_", "ACTIONS_", "RUNNER_", "SYSTEM_", "AGENT_", "BUILD_", "AZURE_", "ARM_")


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The serving processes' environment: this one minus CI/cloud variables, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(_PRIVATE_ENV)}
    env.update({"PYTHONUNBUFFERED": "1", "GUNICORN_CMD_ARGS": "--no-control-socket"})
    env.update(extra or {})
    return env


def ensure_router(ep: Endpoint, state: dict[str, Any], wanted_port: int | None) -> bool:
    """Start the endpoint's router unless it runs; returns True if it was started."""
    router = state.get("router")
    if alive(router):
        return False
    port = router["port"] if router else (wanted_port or free_port())
    if not port_free(port):
        if wanted_port and not router:
            raise BadInput(describe_input("port"), f"port {port} is in use")
        ci.warning(f"endpoint {ep.name}: port {port} is taken; the scoring URI changes")
        port = free_port()
    instance = secrets.token_hex(6)
    log = ep.dir / "router.log"
    proc = {"port": port, "instance": instance, "log": str(log)}
    ep.save(state)  # the router reads the state file at start
    proc["pid"] = spawn(server_cmd("router", instance, "--state", str(ep.state_path), "--port", str(port)),
                        log, ep.dir, child_env())
    problem = wait_healthy(proc, 30, check_instance=False)
    if problem:
        stop(proc)
        raise BackendFailed(f"endpoint {ep.name}: the router {problem}", logs=log_tail(log))
    state["router"] = proc
    ep.save(state)
    return True


def wait_router(state: dict[str, Any], timeout: float = 15.0) -> None:
    """Block until the router serves the state just written (it re-reads the file atomically)."""
    deadline = time.monotonic() + timeout
    url = f"http://127.0.0.1:{state['router']['port']}/"
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError, http.client.HTTPException):
            status, body, _ = http_call("GET", url, timeout=5)
            if status == 200 and json.loads(body).get("generation", -1) >= state["generation"]:
                return
        time.sleep(0.05)
    raise BackendFailed(f"the endpoint router did not load state generation {state['generation']}",
                        logs=log_tail(state["router"]["log"]))


# -- the rollout ----------------------------------------------------------------------------------
def _config(spec: Spec, model: Any) -> dict[str, Any]:
    """Everything that defines a deployment; equal configs mean nothing to restart."""
    return {
        "model": model.identity,
        "model_content": model.tags.get("mlops.content_sha256") or hash_path(model.path),
        "code": hash_path(spec.code) if spec.code else None,
        "scoring_script": spec.script,
        "environment_variables": dict(sorted(spec.env.items())),
        "request_timeout_s": spec.request_timeout_s,
    }


def _sample(inputs: Inputs, model: Any, scripted: bool) -> bytes | None:
    if inputs.sample_request:
        path = Path(inputs.sample_request)
        if not path.is_file():
            raise BadInput(describe_input("sample_request"), f"file not found: {path}")
        body = path.read_bytes()
        try:
            json.loads(body)
        except ValueError as exc:
            raise BadInput(describe_input("sample_request"), f"{path} is not valid JSON: {exc}") from None
        return body
    example = Path(model.path) / "serving_input_example.json"
    if not scripted and example.is_file():
        return example.read_bytes()
    return None


def _start(ep: Endpoint, spec: Spec, model: Any, instance: str) -> dict[str, Any]:
    dep_dir = ep.dir / spec.deployment
    log = dep_dir / f"{instance}.log"
    port = free_port()
    proc: dict[str, Any] = {"port": port, "instance": instance, "log": str(log)}
    env = child_env(spec.env)
    if spec.code is None:
        cmd = server_cmd("model", instance, "--model-dir", str(model.path), "--port", str(port))
        cwd = dep_dir
        dep_dir.mkdir(parents=True, exist_ok=True)
    else:
        # Azure's layout: AZUREML_MODEL_DIR holds the model folder; the code is a snapshot.
        model_dir = dep_dir / f"model-{instance}"
        model_dir.mkdir(parents=True)
        (model_dir / Path(model.path).name).symlink_to(Path(model.path).resolve(), target_is_directory=True)
        cwd = dep_dir / f"code-{instance}"
        shutil.copytree(spec.code, cwd)
        env.update({"AZUREML_MODEL_DIR": str(model_dir), "AML_APP_ROOT": str(cwd)})
        cmd = server_cmd("azmlinfsrv", instance, "--", "--entry_script", str(cwd / str(spec.script)),
                         "--port", str(port))
    proc["pid"] = spawn(cmd, log, cwd, env)
    return proc


def _remove_files(ep: Endpoint, deployment: str, proc: dict[str, Any]) -> None:
    dep_dir = ep.dir / deployment
    for name in (f"model-{proc['instance']}", f"code-{proc['instance']}"):
        shutil.rmtree(dep_dir / name, ignore_errors=True)


def _rollout(ep: Endpoint, state: dict[str, Any], spec: Spec, model: Any, config: dict[str, Any],
             digest: str, sample: bytes | None, timeout: float) -> dict[str, Any] | None:
    """Start the deployment beside any old one, check it, and put it in the state at 0 % (new)
    or in place of the old one. Returns the replaced process (to stop after draining)."""
    instance = secrets.token_hex(6)
    old = state["deployments"].get(spec.deployment)
    proc = _start(ep, spec, model, instance)
    entry = {**proc, "kind": "score_script" if spec.code else "model", "model": model.identity,
             "model_path": str(model.path), "config": config, "config_hash": digest,
             "request_timeout_s": spec.request_timeout_s,
             "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    added = False
    try:
        problem = wait_healthy(proc, timeout, check_instance=spec.code is None)
        if problem:
            raise BackendFailed(f"deployment {spec.deployment} failed its health check: {problem}")
        if old is None:  # a new deployment joins the endpoint at 0 % and is tested through the router
            state["deployments"][spec.deployment] = entry
            state["traffic"].setdefault(spec.deployment, 0)
            added = True
            ep.save(state)
            wait_router(state)
            url, headers = Endpoint.uri(state), {DEPLOYMENT_HEADER: spec.deployment}
        else:  # a changed deployment is tested on its own port before it replaces the old one
            url, headers = f"http://127.0.0.1:{proc['port']}/score", {}
        if sample is not None:
            try:
                status, body, _ = http_call("POST", url, sample, headers,
                                            timeout=max(spec.request_timeout_s, 5))
            except (OSError, http.client.HTTPException) as exc:
                status, body = 0, str(exc).encode()
            if not 200 <= status < 300:
                raise BackendFailed(f"deployment {spec.deployment} failed its smoke test: HTTP {status}: "
                                    f"{body[:500].decode(errors='replace')}")
            ci.log(f"smoke test passed: HTTP {status} {body[:200].decode(errors='replace')}")
        else:
            ci.warning(f"deployment {spec.deployment}: no sample request (--sample-request), "
                       "so only the health check ran")
    except BackendFailed as exc:
        logs = log_tail(proc["log"])
        stop(proc)
        if added:
            state["deployments"].pop(spec.deployment, None)
            state["traffic"].pop(spec.deployment, None)
            ep.save(state)
            with contextlib.suppress(BackendFailed):
                wait_router(state)
        _remove_files(ep, spec.deployment, proc)
        Path(proc["log"]).unlink(missing_ok=True)
        kept = ", ".join(f"{k}={v}" for k, v in state["traffic"].items()) or "none"
        raise BackendFailed(f"{exc}; it was removed and the endpoint's traffic is unchanged ({kept})",
                            logs=logs) from None
    if old is not None:
        state["deployments"][spec.deployment] = entry
    return old


def _traffic(spec: Spec, state: dict[str, Any]) -> dict[str, int]:
    names = set(state["deployments"]) | {spec.deployment}
    wanted = spec.traffic if spec.traffic else {spec.deployment: 100}
    where = describe_input("traffic") if spec.traffic else "traffic"
    unknown = sorted(set(wanted) - names)
    if unknown:
        raise BadInput(where, f"no deployment named {', '.join(unknown)} in endpoint {spec.endpoint} "
                              f"(deployments: {', '.join(sorted(names))})")
    if any(not 0 <= v <= 100 for v in wanted.values()):
        raise BadInput(where, "each percent must be between 0 and 100")
    total = sum(wanted.values())
    if total not in (0, 100):
        raise BadInput(where, f"the percents add up to {total}, not 100")
    return {name: int(wanted.get(name, 0)) for name in sorted(names)}


def run(inputs: Inputs, backend: Any) -> StepResult:
    from .models import resolve_model

    if backend.kind == "azureml":
        return backend.deploy_online(inputs)
    spec = _spec(inputs)
    model = resolve_model(backend, spec.model_ref, spec.model_input, inputs.allow_latest)
    if spec.code is None and not (Path(model.path) / "MLmodel").is_file():
        raise BadInput(spec.model_input, f"{model.identity} is not an MLflow model; give a scoring script")
    sample = _sample(inputs, model, scripted=spec.code is not None)
    config = _config(spec, model)
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()
    backend.ensure_store()
    ep = Endpoint(backend.root, spec.endpoint)
    with ep.locked():
        state = ep.load() or {"name": spec.endpoint, "generation": 0, "description": spec.description,
                              "traffic": {}, "deployments": {}, "mirror_traffic": {}}
        wanted = _traffic(spec, state)
        current = state["deployments"].get(spec.deployment)
        replaced = None
        try:
            changed = ensure_router(ep, state, inputs.port)
            if current and current["config_hash"] == digest and running(current):
                ci.log(f"deployment {spec.deployment} already serves {model.identity} with this configuration")
            else:
                if current and not running(current):
                    ci.warning(f"deployment {spec.deployment} is not running; starting it again")
                replaced = _rollout(ep, state, spec, model, config, digest, sample, inputs.startup_timeout)
                changed = True
                ep.save(state)
                wait_router(state)
        except BackendFailed:
            if not state["deployments"]:  # a new endpoint whose first deployment failed: leave nothing
                stop(state.get("router"))
                shutil.rmtree(ep.dir, ignore_errors=True)
            raise
        if state["traffic"] != wanted:
            state["traffic"] = wanted
            ep.save(state)
            wait_router(state)
            changed = True
        if replaced is not None:
            time.sleep(DRAIN_SECONDS)  # in-flight requests on the old process complete
            stop(replaced)
            _remove_files(ep, spec.deployment, replaced)
    rows = [{"deployment": name, "model": d["model"], "kind": d["kind"], "traffic": f"{wanted.get(name, 0)} %",
             "port": d["port"], "running": running(d)} for name, d in sorted(state["deployments"].items())]
    summary = (f"Endpoint **{spec.endpoint}** at `{Endpoint.uri(state)}`"
               f" ({'changed' if changed else 'unchanged'})\n\n" + ci.markdown_table(rows, "Deployments"))
    return StepResult({"scoring-uri": Endpoint.uri(state), "endpoint-name": spec.endpoint,
                       "deployment-name": spec.deployment, "traffic": wanted, "model": model.identity,
                       "changed": changed}, summary=summary)


command = step_command("deploy-online", Inputs, OUTPUTS, run, __doc__ or "")
