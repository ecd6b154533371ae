"""train: run an Azure ML CLI v2 job YAML (a command job, or a pipeline job of command nodes).

The YAML is validated with azure-ai-ml's own loader, so the schema is Azure's. On the local
backend each node runs as a subprocess in its `code:` folder with `${{inputs.x}}` and
`${{outputs.y}}` bound to local paths, `azureml:name:version` data inputs resolved from the
local registry, nodes in dependency order, and MLflow environment variables set so the user's
`mlflow.*` calls record into the local store. Logs stream live; a failing node stops the job
(exit 3) with the tail of its log.
"""
from __future__ import annotations

import collections
import graphlib
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from pydantic import Field

from . import ci
from .contract import BackendFailed, BadInput, StepInputs, StepResult, describe_input, step_command
from .refs import parse_ref

OUTPUTS = {
    "job-name": "name of the job (its record is under <store>/jobs/<job-name>)",
    "status": "Completed (a failed job exits 3)",
    "metrics": "JSON: metrics logged to MLflow, by node for a pipeline",
    "outputs": "JSON: job output name -> local path",
    "experiment": "the MLflow experiment the runs were recorded in",
}

JOB_INPUT = describe_input("job")
_BINDING = re.compile(r"\$\{\{\s*(inputs|outputs)\.([A-Za-z0-9_]+)\s*\}\}")
_OPTIONAL = re.compile(r"\$\[\[(.*?)\]\]", re.S)
_PARENT = re.compile(r"^\$\{\{\s*parent\.(inputs|outputs)\.([A-Za-z0-9_]+)\s*\}\}$")
_UPSTREAM = re.compile(r"^\$\{\{\s*parent\.jobs\.([A-Za-z0-9_]+)\.outputs\.([A-Za-z0-9_]+)\s*\}\}$")
LOG_TAIL_LINES = 40


class Inputs(StepInputs):
    job: str = Field(..., description="Azure ML CLI v2 job YAML (command or pipeline job).")
    set_input: dict[str, str] = Field(default_factory=dict,
                                      description="Override a job input: NAME=VALUE.")
    experiment_name: str | None = Field(None, description="Experiment name (default: the YAML's, "
                                        "else its folder name).")
    timeout_minutes: float | None = Field(None, gt=0, description="Fail a node that runs longer "
                                          "(azureml: stop waiting for the job after this long).")
    wait: bool = Field(True, description="azureml: wait for the job to end; --no-wait prints its job-name "
                       "at once (then use job-wait).")
    compute: str | None = Field(None, description="azureml: compute target, overriding the YAML's "
                                "compute / settings.default_compute.")


# -- specs -------------------------------------------------------------------------------------------
def _node_spec(name: str, node: dict[str, Any], base: Path) -> dict[str, Any]:
    """A pipeline node as {command, cwd, inputs, outputs, env, timeout}, components inlined."""
    from .specs import read_yaml

    spec = dict(node)
    comp_base = base
    component = node.get("component")
    if isinstance(component, str):
        comp_file = (base / component.removeprefix("file:")).resolve()
        if component.startswith("azureml:"):
            raise BadInput(JOB_INPUT, f"node {name}: registered components ({component}) are not "
                           "available on the local backend; reference the component YAML file")
        comp = read_yaml(comp_file, JOB_INPUT)
        comp_base = comp_file.parent
        spec = {**comp, **{k: v for k, v in node.items() if k not in ("component",)}}
        defaults = {k: v.get("default") for k, v in (comp.get("inputs") or {}).items()
                    if isinstance(v, dict) and "default" in v}
        spec["inputs"] = {**defaults, **(node.get("inputs") or {})}
        spec["outputs"] = {**{k: None for k in (comp.get("outputs") or {})}, **(node.get("outputs") or {})}
    elif isinstance(component, dict):
        spec = {**component, **{k: v for k, v in node.items() if k != "component"}}
    if spec.get("type", "command") != "command" or not spec.get("command"):
        raise BadInput(JOB_INPUT, f"node {name}: only command nodes run on the local backend "
                       f"(got type {spec.get('type')!r})")
    code = spec.get("code")
    cwd = (comp_base / str(code).removeprefix("file:")).resolve() if code else comp_base
    if not cwd.is_dir():
        raise BadInput(JOB_INPUT, f"node {name}: code folder not found: {cwd}")
    limits = spec.get("limits") or {}
    return {"name": name, "command": spec["command"], "cwd": cwd, "inputs": dict(spec.get("inputs") or {}),
            "outputs": dict(spec.get("outputs") or {}),
            "env": {str(k): str(v) for k, v in (spec.get("environment_variables") or {}).items()},
            "timeout": limits.get("timeout")}


def _resolve_input(value: Any, base: Path, backend: Any, where: str) -> str | None:
    """A job input's local value: a path for data, the literal text otherwise."""
    if isinstance(value, dict):
        if value.get("path") is None:
            return None if value.get("default") is None else str(value["default"])
        value = value["path"]
    if value is None:
        return None
    text = str(value)
    if isinstance(value, bool):
        text = "true" if value else "false"
    if text.startswith("azureml:") and not text.startswith("azureml://"):
        ref = parse_ref(text)
        if ref is None:
            raise BadInput(where, f"{text!r} is not a data asset reference (azureml:name:version)")
        from .backends.local import NotFound
        try:
            return backend.get_data(ref).uri
        except NotFound as exc:
            raise BadInput(where, str(exc)) from None
    if isinstance(value, str) and (text.startswith(("./", "../", "/")) or (base / text).exists()) \
            and "${{" not in text:
        path = (base / text).resolve()
        if not path.exists():
            raise BadInput(where, f"input path not found: {path}")
        return str(path)
    return text


def _render(command: str, values: dict[str, str | None], node: str) -> str:
    """Substitute ${{inputs.x}} / ${{outputs.y}}; drop $[[...]] blocks whose inputs are unset."""
    def optional(match: re.Match) -> str:
        refs = _BINDING.findall(match.group(1))
        return match.group(1) if all(values.get(f"{k}.{n}") is not None for k, n in refs) else ""

    command = _OPTIONAL.sub(optional, command)

    def bind(match: re.Match) -> str:
        key = f"{match.group(1)}.{match.group(2)}"
        if values.get(key) is None:
            raise BadInput(JOB_INPUT, f"node {node}: ${{{{{key}}}}} is not bound to a value")
        return shlex.quote(values[key])

    return _BINDING.sub(bind, " ".join(command.split()))


def _plan(inputs: Inputs, backend: Any, job_dir: Path) -> tuple[list[dict[str, Any]], dict[str, str], str]:
    """Validate the job and bind every node: (nodes in order, job outputs -> paths, experiment)."""
    from .specs import load_spec, read_yaml

    load_spec("job", inputs.job, JOB_INPUT)
    raw = read_yaml(inputs.job, JOB_INPUT)
    base = Path(inputs.job).resolve().parent
    kind = raw.get("type", "command")
    experiment = inputs.experiment_name or raw.get("experiment_name") or base.name
    declared = dict(raw.get("inputs") or {})
    unknown = set(inputs.set_input) - set(declared)
    if unknown:
        raise BadInput(describe_input("set_input"), f"the job declares no input {sorted(unknown)[0]!r} "
                       f"(inputs: {', '.join(sorted(declared)) or 'none'})")
    declared.update(inputs.set_input)
    job_inputs = {k: _resolve_input(v, base, backend, f"{JOB_INPUT} input {k}") for k, v in declared.items()}
    job_outputs = {k: str(job_dir / "outputs" / k) for k in (raw.get("outputs") or {})}

    if kind == "command":
        node = _node_spec("main", {**raw, "inputs": {k: f"${{{{parent.inputs.{k}}}}}" for k in declared},
                                   "outputs": {k: f"${{{{parent.outputs.{k}}}}}" for k in job_outputs}},
                          base)
        nodes = {"main": node}
    elif kind == "pipeline":
        jobs = raw.get("jobs") or {}
        if not jobs:
            raise BadInput(JOB_INPUT, "the pipeline has no jobs")
        nodes = {name: _node_spec(name, dict(spec or {}), base) for name, spec in jobs.items()}
    else:
        raise BadInput(JOB_INPUT, f"job type {kind!r} does not run on the local backend "
                       "(command and pipeline jobs do)")

    graph: dict[str, set[str]] = {}
    for name, node in nodes.items():
        graph[name] = set()
        for value in node["inputs"].values():
            up = _UPSTREAM.match(str(value)) if isinstance(value, str) else None
            if up:
                if up.group(1) not in nodes:
                    raise BadInput(JOB_INPUT, f"node {name}: refers to unknown job {up.group(1)!r}")
                graph[name].add(up.group(1))
    try:
        order = list(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as exc:
        raise BadInput(JOB_INPUT, f"the pipeline's jobs depend on each other in a cycle: {exc.args[1]}") from None

    bound: list[dict[str, Any]] = []
    out_paths: dict[str, dict[str, str]] = {}
    for name in order:
        node = nodes[name]
        values: dict[str, str | None] = {}
        for key, value in node["inputs"].items():
            where = f"{JOB_INPUT} node {name} input {key}"
            text = str(value) if isinstance(value, str) else None
            parent = _PARENT.match(text) if text else None
            up = _UPSTREAM.match(text) if text else None
            if parent and parent.group(1) == "inputs":
                if parent.group(2) not in job_inputs:
                    raise BadInput(where, f"the pipeline declares no input {parent.group(2)!r}")
                values[f"inputs.{key}"] = job_inputs[parent.group(2)]
            elif up:
                produced = out_paths[up.group(1)]
                if up.group(2) not in produced:
                    raise BadInput(where, f"job {up.group(1)} has no output {up.group(2)!r}")
                values[f"inputs.{key}"] = produced[up.group(2)]
            else:
                values[f"inputs.{key}"] = _resolve_input(value, node["cwd"], backend, where)
        produced = {}
        for key, value in node["outputs"].items():
            parent = _PARENT.match(str(value)) if isinstance(value, str) else None
            if parent and parent.group(1) == "outputs":
                if parent.group(2) not in job_outputs:
                    raise BadInput(f"{JOB_INPUT} node {name}", f"the pipeline declares no output "
                                   f"{parent.group(2)!r}")
                path = job_outputs[parent.group(2)]
            else:
                path = str(job_dir / "nodes" / name / "outputs" / key)
            produced[key] = path
            values[f"outputs.{key}"] = path
        out_paths[name] = produced
        bound.append({**node, "rendered": _render(node["command"], values, name), "produced": produced})
    return bound, job_outputs, experiment


# -- running -----------------------------------------------------------------------------------------
def _run_node(node: dict[str, Any], env: dict[str, str], log_file: Path, timeout: float | None) -> None:
    """Run one node's command, streaming its log; raise BackendFailed with the log tail on failure."""
    tail: collections.deque[str] = collections.deque(maxlen=LOG_TAIL_LINES)
    for path in node["produced"].values():
        Path(path).mkdir(parents=True, exist_ok=True)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with open(log_file, "w", encoding="utf-8") as log, ci.group(f"node {node['name']}: {node['rendered']}"):
        proc = subprocess.Popen(["/bin/bash", "-c", node["rendered"]], cwd=node["cwd"], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                errors="replace", start_new_session=True)
        timed_out = False
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            tail.append(line.rstrip("\n"))
            ci.log(f"[{node['name']}] {line.rstrip()}")
            if timeout and time.monotonic() - started > timeout:
                timed_out = True
                os.killpg(proc.pid, signal.SIGKILL)
                break
        try:
            code = proc.wait(timeout=max(1.0, (timeout or 0) - (time.monotonic() - started)) if timeout else None)
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(proc.pid, signal.SIGKILL)
            code = proc.wait()
    if timed_out:
        raise BackendFailed(f"node {node['name']} timed out after {timeout:.0f} s", logs="\n".join(tail))
    if code != 0:
        raise BackendFailed(f"node {node['name']} failed with exit code {code} (log: {log_file})",
                            logs="\n".join(tail))


def run(inputs: Inputs, backend: Any) -> StepResult:
    if backend.kind != "local":
        return backend.run_job(inputs)
    job_name = backend.new_job_name(Path(inputs.job).stem)
    job_dir = backend.job_dir(job_name)
    nodes, job_outputs, experiment = _plan(inputs, backend, job_dir)
    if inputs.dry_run:
        rows = [{"node": n["name"], "cwd": str(n["cwd"]), "command": n["rendered"]} for n in nodes]
        return StepResult({"job-name": job_name, "status": "DryRun", "outputs": job_outputs,
                           "experiment": experiment}, summary=ci.markdown_table(rows, "Job plan (dry run)"))

    backend.ensure_store()
    client = backend.client
    exp_id = backend.experiment_id(experiment)
    parent = client.create_run(exp_id, run_name=job_name, tags={"mlops.job_name": job_name})
    record = {"name": job_name, "status": "Running", "experiment": experiment, "spec": str(Path(inputs.job).resolve()),
              "outputs": job_outputs, "nodes": {}, "run_id": parent.info.run_id}
    backend.save_job(record)
    base_env = {**os.environ, **backend.mlflow_env(), "MLFLOW_EXPERIMENT_ID": exp_id,
                "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
                "PYTHONUNBUFFERED": "1"}
    timeout = inputs.timeout_minutes * 60 if inputs.timeout_minutes else None
    metrics: dict[str, dict[str, float]] = {}
    status = "Failed"
    try:
        for node in nodes:
            node_run = client.create_run(exp_id, run_name=f"{job_name}.{node['name']}",
                                         tags={"mlflow.parentRunId": parent.info.run_id,
                                               "mlops.node": node["name"]})
            run_id = node_run.info.run_id
            record["nodes"][node["name"]] = {"run_id": run_id, "status": "Running", "outputs": node["produced"]}
            backend.save_job(record)
            env = {**base_env, **node["env"], "MLFLOW_RUN_ID": run_id, "AZUREML_RUN_ID": f"{job_name}.{node['name']}"}
            try:
                _run_node(node, env, job_dir / "logs" / f"{node['name']}.log", node["timeout"] or timeout)
            except BackendFailed:
                record["nodes"][node["name"]]["status"] = "Failed"
                client.set_terminated(run_id, "FAILED")
                raise
            client.set_terminated(run_id, "FINISHED")
            record["nodes"][node["name"]]["status"] = "Completed"
            metrics[node["name"]] = dict(client.get_run(run_id).data.metrics)
        status = "Completed"
    finally:
        record["status"] = status
        record["metrics"] = metrics
        backend.save_job(record)
        client.set_terminated(parent.info.run_id, "FINISHED" if status == "Completed" else "FAILED")
    flat = metrics.get("main", {}) if list(metrics) == ["main"] else metrics
    rows = [{"output": k, "path": v} for k, v in job_outputs.items()]
    summary = (f"### Job `{job_name}`: {status}\n\nExperiment `{experiment}`, "
               f"{len(nodes)} node(s).\n\n" + ci.markdown_table(rows))
    return StepResult({"job-name": job_name, "status": status, "metrics": flat, "outputs": job_outputs,
                       "experiment": experiment}, summary=summary)


command = step_command("train", Inputs, OUTPUTS, run, __doc__ or "")
