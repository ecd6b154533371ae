"""endpoint: manage local online endpoints made by deploy-online (list, show, invoke, logs, delete).

State lives under the store (`.mlops/endpoints/<name>/state.json`), so these commands work across
invocations; the serving processes run detached until `endpoint delete` stops them.
"""
from __future__ import annotations

import http.client
import shutil
import time
from pathlib import Path
from typing import Any

import click
from pydantic import Field

from . import ci
from .contract import BackendFailed, BadInput, StepInputs, StepResult, describe_input, step_command
from .deploy_online import (DEPLOYMENT_HEADER, DRAIN_SECONDS, Endpoint, alive, http_call, list_endpoints,
                            log_tail, stop, wait_router)


class ListInputs(StepInputs):
    pass


class NameInputs(StepInputs):
    name: str = Field(..., description="Endpoint name.")


class InvokeInputs(NameInputs):
    request_file: str = Field(..., description="JSON request body to POST to the scoring URI.")
    deployment_name: str | None = Field(None, description="Send to this deployment (azureml-model-deployment "
                                                          "header) instead of by traffic.")


class LogsInputs(NameInputs):
    deployment_name: str | None = Field(None, description="Deployment whose logs to show (default: all).")
    lines: int = Field(100, ge=1, description="How many of the last lines to show.")


class DeleteInputs(NameInputs):
    deployment_name: str | None = Field(None, description="Delete only this deployment "
                                                          "(it must have 0 % traffic).")


def _require_local(backend: Any) -> None:
    if backend.kind != "local":
        raise BadInput(describe_input("backend"), "endpoint commands support the local backend only so far")


def _open(backend: Any, name: str) -> tuple[Endpoint, dict[str, Any]]:
    _require_local(backend)
    ep = Endpoint(backend.root, name)
    state = ep.load()
    if state is None:
        known = ", ".join(e.name for e in list_endpoints(backend.root)) or "none"
        raise BadInput(describe_input("name"), f"endpoint {name!r} not found (endpoints: {known})")
    return ep, state


def _describe(ep: Endpoint, state: dict[str, Any]) -> dict[str, Any]:
    router = state.get("router") or {}
    return {
        "name": ep.name,
        "scoring_uri": Endpoint.uri(state) if router else None,
        "running": alive(router),
        "traffic": state.get("traffic", {}),
        "deployments": {name: {"model": d["model"], "kind": d["kind"], "port": d["port"], "running": alive(d),
                               "created": d.get("created")} for name, d in state.get("deployments", {}).items()},
    }


def run_list(inputs: ListInputs, backend: Any) -> StepResult:
    _require_local(backend)
    found = [_describe(ep, ep.load() or {}) for ep in list_endpoints(backend.root)]
    rows = [{"endpoint": e["name"], "scoring-uri": e["scoring_uri"], "running": e["running"],
             "traffic": e["traffic"]} for e in found]
    return StepResult({"endpoints": found}, summary=ci.markdown_table(rows, "Online endpoints"))


def run_show(inputs: NameInputs, backend: Any) -> StepResult:
    ep, state = _open(backend, inputs.name)
    info = _describe(ep, state)
    rows = [{"deployment": n, **d, "traffic": state["traffic"].get(n, 0)} for n, d in info["deployments"].items()]
    return StepResult({"scoring-uri": info["scoring_uri"], "traffic": info["traffic"], "endpoint": info},
                      summary=f"Endpoint **{ep.name}** at `{info['scoring_uri']}`\n\n"
                              + ci.markdown_table(rows, "Deployments"))


def run_invoke(inputs: InvokeInputs, backend: Any) -> StepResult:
    ep, state = _open(backend, inputs.name)
    path = Path(inputs.request_file)
    if not path.is_file():
        raise BadInput(describe_input("request_file"), f"file not found: {path}")
    if not alive(state.get("router")):
        raise BackendFailed(f"endpoint {ep.name} is not running (re-run deploy-online to start it)")
    headers = {DEPLOYMENT_HEADER: inputs.deployment_name} if inputs.deployment_name else {}
    try:
        status, body, got = http_call("POST", Endpoint.uri(state), path.read_bytes(), headers, timeout=120)
    except (OSError, http.client.HTTPException) as exc:
        raise BackendFailed(f"endpoint {ep.name} did not answer: {exc}") from None
    text = body.decode(errors="replace")
    if 400 <= status < 500:
        raise BadInput(describe_input("request_file"), f"the endpoint answered HTTP {status}: {text[:2000]}")
    if status >= 300:
        served = got.get(DEPLOYMENT_HEADER, "?")
        raise BackendFailed(f"the endpoint answered HTTP {status} (deployment {served}): {text[:2000]}",
                            logs=log_tail(state["deployments"].get(served, {}).get("log", ""), 50))
    return StepResult({"response": text, "status-code": status, "deployment-name": got.get(DEPLOYMENT_HEADER, "")},
                      summary=f"Response from **{got.get(DEPLOYMENT_HEADER, '')}**:\n\n"
                              f"```json\n{text[:5000]}\n```")


def run_logs(inputs: LogsInputs, backend: Any) -> StepResult:
    ep, state = _open(backend, inputs.name)
    deployments = state.get("deployments", {})
    if inputs.deployment_name and inputs.deployment_name not in deployments:
        raise BadInput(describe_input("deployment_name"), f"no deployment {inputs.deployment_name!r} in {ep.name} "
                                                          f"(deployments: {', '.join(deployments) or 'none'})")
    names = [inputs.deployment_name] if inputs.deployment_name else sorted(deployments)
    parts = [f"### {name}\n\n```\n{log_tail(deployments[name]['log'], inputs.lines)}\n```" for name in names]
    return StepResult({"logs": {name: log_tail(deployments[name]["log"], inputs.lines) for name in names},
                       "log-paths": {name: deployments[name]["log"] for name in names}},
                      summary="\n\n".join(parts))


def run_delete(inputs: DeleteInputs, backend: Any) -> StepResult:
    ep, _ = _open(backend, inputs.name)
    with ep.locked():
        state = ep.load()
        if state is None:
            raise BadInput(describe_input("name"), f"endpoint {inputs.name!r} not found")
        if inputs.deployment_name:
            dep = state["deployments"].get(inputs.deployment_name)
            if dep is None:
                raise BadInput(describe_input("deployment_name"), f"no deployment {inputs.deployment_name!r}")
            if state["traffic"].get(inputs.deployment_name, 0) > 0:
                raise BadInput(describe_input("deployment_name"),
                               f"{inputs.deployment_name} still receives "
                               f"{state['traffic'][inputs.deployment_name]} % "
                               "of the traffic; move it first")
            del state["deployments"][inputs.deployment_name]
            state["traffic"].pop(inputs.deployment_name, None)
            ep.save(state)
            if alive(state.get("router")):
                wait_router(state)
                time.sleep(DRAIN_SECONDS)  # requests already sent to it (by header) complete
            stop(dep)
            shutil.rmtree(ep.dir / inputs.deployment_name, ignore_errors=True)
            deleted = [inputs.deployment_name]
        else:
            for dep in state.get("deployments", {}).values():
                stop(dep)
            stop(state.get("router"))
            shutil.rmtree(ep.dir, ignore_errors=True)
            deleted = [ep.name]
    return StepResult({"deleted": deleted}, summary=f"Deleted {', '.join(deleted)}")


OUT_LIST = {"endpoints": "JSON list of endpoints with scoring URI, traffic and deployments"}
OUT_SHOW = {"scoring-uri": "the scoring URI", "traffic": "traffic split (JSON)",
            "endpoint": "the endpoint: deployments, models, ports, running (JSON)"}
OUT_INVOKE = {"response": "the response body", "status-code": "HTTP status",
              "deployment-name": "the deployment that answered"}
OUT_LOGS = {"logs": "last log lines per deployment (JSON)", "log-paths": "log file per deployment (JSON)"}
OUT_DELETE = {"deleted": "what was deleted (JSON list)"}

command = click.Group("endpoint", help=__doc__, context_settings={"help_option_names": ["-h", "--help"]},
                      commands=[
                          step_command("list", ListInputs, OUT_LIST, run_list, "List local online endpoints."),
                          step_command("show", NameInputs, OUT_SHOW, run_show,
                                       "Show an endpoint and its deployments."),
                          step_command("invoke", InvokeInputs, OUT_INVOKE, run_invoke,
                                       "POST a JSON request file to an endpoint's scoring URI."),
                          step_command("logs", LogsInputs, OUT_LOGS, run_logs, "Show deployment logs."),
                          step_command("delete", DeleteInputs, OUT_DELETE, run_delete,
                                       "Delete an endpoint (stopping its processes) or one deployment."),
                      ])
