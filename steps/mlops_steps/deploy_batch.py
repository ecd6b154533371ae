"""deploy-batch: run a batch endpoint deployment over input files, like an Azure ML batch job.

The deployment comes from Azure ML CLI v2 batch endpoint / deployment YAML or options. A scoring
script follows Azure ML's batch contract (`init()` once per worker, `run(mini_batch)` with a list of
file paths, AZUREML_MODEL_DIR set); without one, the MLflow or ONNX model scores CSV/Parquet files
directly, streamed in chunks. Mini-batches run on a pool of worker processes with retries, a
timeout and an error threshold. Each finished mini-batch is written atomically and recorded in a
journal, so a run that was killed resumes where it stopped when started again with the same inputs;
re-running a completed job changes nothing.
"""
from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import selectors
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from . import ci
from .contract import BackendFailed, BadInput, StepInputs, StepResult, describe_input, step_command
from .files import write_json_atomic

OUTPUTS = {
    "job-name": "name of the batch job (resume by running again with the same inputs or job name)",
    "output-path": "the predictions file (append_row) or the output folder (summary_only)",
    "rows-scored": "rows written by the scoring (predictions)",
    "files-scored": "input files in mini-batches that succeeded",
    "failed-files": "input files in mini-batches that failed after their retries",
    "mini-batches": "number of mini-batches",
    "status": "Completed, Failed, or DryRun",
}

DEFAULTS = {"mini_batch_size": 10, "max_concurrency_per_instance": 1, "instance_count": 1,
            "error_threshold": -1, "max_retries": 3, "timeout": 30, "output_action": "append_row",
            "output_file_name": "predictions.csv"}


class Inputs(StepInputs):
    endpoint_yaml: str | None = Field(None, description="Azure ML CLI v2 batch endpoint YAML.")
    deployment_yaml: str | None = Field(None, description="Azure ML CLI v2 batch deployment YAML.")
    endpoint_name: str | None = Field(None, description="Endpoint name (overrides the YAML).")
    deployment_name: str | None = Field(None, description="Deployment name (overrides the YAML; default: default).")
    model: str | None = Field(None, description="Model name:version or MLflow model folder (overrides the YAML).")
    allow_latest: bool = Field(False, description="Accept name@latest as the model.")
    code: str | None = Field(None, description="Folder of the scoring script (overrides the YAML).")
    scoring_script: str | None = Field(None, description="Scoring script file in --code (none: score the model).")
    input: list[str] = Field(default_factory=list, description="Input files, folders or azureml:name:version.")
    output: str | None = Field(None, description="Output folder (default: the job folder under the store).")
    job_name: str | None = Field(None, description="Job name (default: derived from the inputs, so a re-run resumes).")
    mini_batch_size: int | None = Field(None, ge=1, description="Files per mini-batch (default 10).")
    max_concurrency_per_instance: int | None = Field(None, ge=1, description="Worker processes (default 1).")
    instance_count: int | None = Field(None, ge=1, description="Instances; workers = instances x concurrency.")
    error_threshold: int | None = Field(None, ge=-1, description="Failed files tolerated; -1 = any (default -1).")
    max_retries: int | None = Field(None, ge=0, description="Retries of a failed mini-batch (default 3).")
    timeout: int | None = Field(None, ge=1, description="Seconds allowed per mini-batch (default 30).")
    output_action: Literal["append_row", "summary_only"] | None = Field(
        None, description="append_row (one predictions file) or summary_only (default append_row).")
    output_file_name: str | None = Field(None, description="Predictions file name (default predictions.csv).")
    chunk_rows: int = Field(100_000, ge=1, description="Rows per chunk when scoring a model without a script.")

    @model_validator(mode="after")
    def _has_input(self) -> "Inputs":
        if not self.input:
            raise ValueError("give at least one --input (file, folder or azureml:name:version)")
        return self


@dataclass
class Plan:
    """Everything a batch job needs, resolved from YAML, options and defaults."""

    endpoint: str
    deployment: str
    model_ref: str | None
    model_identity: str | None
    model_path: Path | None
    script: Path | None
    files: list[Path]
    settings: dict[str, Any]
    env: dict[str, str] = field(default_factory=dict)


# -- specs -----------------------------------------------------------------------------------------
def _load_deployment(path: str) -> Any:
    """A batch deployment via azure-ai-ml; the newer `settings:` block is flattened first."""
    from .specs import _schema_message, read_yaml

    name = describe_input("deployment_yaml")
    data = read_yaml(path, name)
    data.update(data.pop("settings", None) or {})
    import warnings

    import yaml
    from azure.ai.ml import load_batch_deployment

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return load_batch_deployment(source=io.StringIO(yaml.safe_dump(data)), relative_origin=path)
        except Exception as exc:  # the schema said no
            raise BadInput(name, f"{path}: rejected by Azure ML's batch deployment schema: "
                           f"{_schema_message(exc)}", path) from None


def _model_ref(model: Any, base: Path) -> str | None:
    """The deployment's model as a reference or a folder path."""
    if model is None or isinstance(model, str):
        return model
    if getattr(model, "path", None):
        path = Path(str(model.path))
        return str(path if path.is_absolute() else base / path)
    if getattr(model, "name", None):
        return f"{model.name}:{model.version}" if model.version else f"{model.name}@latest"
    return None


def _input_files(backend: Any, refs: list[str]) -> list[Path]:
    """Files of every input: a file, the top-level files of a folder, or a data asset's."""
    from .models import resolve_data_path

    files: list[Path] = []
    for ref in refs:
        path = resolve_data_path(backend, ref, describe_input("input")).resolve()
        if path.is_dir():  # like Azure, nested folders are not explored
            found = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")
                           and p.name not in ("asset.json", "MLTable"))
            if not found:
                raise BadInput(describe_input("input"), f"no files in {path}")
            files += found
        else:
            files.append(path)
    return files


def plan(inputs: Inputs, backend: Any) -> Plan:
    """Resolve the deployment: YAML first, options override, Azure's defaults fill the rest."""
    from .models import resolve_model

    endpoint = deployment = model = code = script = None
    settings: dict[str, Any] = {}
    env: dict[str, str] = {}
    if inputs.endpoint_yaml:
        from .specs import load_spec

        endpoint = load_spec("batch_endpoint", inputs.endpoint_yaml, describe_input("endpoint_yaml")).name
    if inputs.deployment_yaml:
        dep = _load_deployment(inputs.deployment_yaml)
        base = Path(inputs.deployment_yaml).resolve().parent
        deployment, endpoint = dep.name, endpoint or dep.endpoint_name
        model = _model_ref(dep.model, base)
        if dep.code_configuration is not None:
            code = str(base / str(dep.code_configuration.code or "."))
            script = dep.code_configuration.scoring_script
        retry = dep.retry_settings
        settings = {"mini_batch_size": dep.mini_batch_size,
                    "max_concurrency_per_instance": dep.max_concurrency_per_instance,
                    "instance_count": dep.instance_count, "error_threshold": dep.error_threshold,
                    "max_retries": getattr(retry, "max_retries", None), "timeout": getattr(retry, "timeout", None),
                    "output_action": dep.output_action, "output_file_name": dep.output_file_name}
        env = {str(k): str(v) for k, v in (dep.environment_variables or {}).items()}
    for key in DEFAULTS:
        if getattr(inputs, key) is not None:
            settings[key] = getattr(inputs, key)
        if settings.get(key) is None:
            settings[key] = DEFAULTS[key]
    settings["output_action"] = str(settings["output_action"]).lower()
    endpoint = inputs.endpoint_name or endpoint
    if not endpoint:
        raise BadInput(describe_input("endpoint_name"), "give the endpoint name (or --endpoint-yaml)")
    deployment = inputs.deployment_name or deployment or "default"
    code, script = inputs.code or code, inputs.scoring_script or script
    model = inputs.model or model
    script_path = None
    if script:
        script_path = (Path(code) / script) if code else Path(script)
        if not script_path.is_file():
            raise BadInput(describe_input("scoring_script"), f"scoring script not found: {script_path}")
        script_path = script_path.resolve()
    files = _input_files(backend, inputs.input)  # cheap checks before loading the model registry
    model_path = identity = None
    if model:
        resolved = resolve_model(backend, model, describe_input("model"), inputs.allow_latest)
        model_path, identity = resolved.path, resolved.identity
    elif not script_path:
        raise BadInput(describe_input("model"), "give a model (name:version) or a scoring script")
    return Plan(endpoint, deployment, model, identity, model_path, script_path, files, settings, env)


# -- the job folder: fingerprint, lock, journal ---------------------------------------------------
def fingerprint(p: Plan, output: str | None) -> str:
    """What determines the job's results: model, code, inputs and output settings."""
    from .files import hash_path

    code = hash_path(p.script.parent) if p.script else None
    files = [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in p.files]
    payload = {"endpoint": p.endpoint, "deployment": p.deployment, "model": p.model_identity, "code": code,
               "files": files, "output": output, "mini_batch_size": p.settings["mini_batch_size"],
               "output_action": p.settings["output_action"], "output_file_name": p.settings["output_file_name"]}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name)


def read_journal(path: Path) -> dict[int, dict[str, Any]]:
    """Committed mini-batches by index (a torn last line from a crash is ignored)."""
    done: dict[int, dict[str, Any]] = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            done[int(record["index"])] = record
    return done


class Journal:
    """Append-only record of committed mini-batches, fsynced line by line."""

    def __init__(self, path: Path):
        self.path = path
        self.fh = open(path, "a", encoding="utf-8")

    def commit(self, record: dict[str, Any]) -> None:
        self.fh.write(json.dumps(record, sort_keys=True) + "\n")
        self.fh.flush()
        os.fsync(self.fh.fileno())

    def close(self) -> None:
        self.fh.close()


# -- the worker pool -------------------------------------------------------------------------------
class Worker:
    """One worker process (batch_runner) and its protocol pipe."""

    def __init__(self, number: int, config: Path, log: Path, env: dict[str, str]):
        self.number, self.task, self.deadline = number, None, 0.0
        read_fd, write_fd = os.pipe()
        self.log = open(log, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlops_steps.batch_runner", str(config), str(write_fd)],
            stdin=subprocess.PIPE, stdout=self.log, stderr=subprocess.STDOUT, pass_fds=(write_fd,), env=env)
        os.close(write_fd)
        self.reader = os.fdopen(read_fd, "r", encoding="utf-8")
        self.ready = False

    def send(self, task: dict[str, Any], timeout: int) -> None:
        self.task, self.deadline = task, time.monotonic() + timeout
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(task) + "\n").encode())
        self.proc.stdin.flush()

    def stop(self, kill: bool = False) -> None:
        if kill:
            self.proc.kill()
        else:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.close()
            except OSError:
                pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.reader.close()
        self.log.close()


def _tail(path: Path, limit: int = 4000) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")[-limit:]
    except OSError:
        return ""


class Pool:
    """Runs mini-batches on worker processes with retries, per-mini-batch timeouts and a threshold."""

    def __init__(self, p: Plan, job_dir: Path, config: Path, journal: Journal, progress: ci.Progress):
        self.plan, self.job_dir, self.config, self.journal, self.progress = p, job_dir, config, journal, progress
        self.settings = p.settings
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLOPS_")}
        if p.model_path:
            env["AZUREML_MODEL_DIR"] = str(p.model_path.parent)
        env["AZUREML_BI_OUTPUT_PATH"] = str(job_dir / "custom-output")
        env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH", "")])
        env.update(p.env)
        self.env = env
        (job_dir / "custom-output").mkdir(exist_ok=True)
        self.selector = selectors.DefaultSelector()
        self.workers: dict[int, Worker] = {}
        self.failed_files, self.rows = 0, 0
        self.errors: list[str] = []

    def _start(self, number: int) -> Worker:
        log = self.job_dir / "logs" / f"worker-{number}.log"
        worker = Worker(number, self.config, log, self.env)
        self.workers[number] = worker
        self.selector.register(worker.reader, selectors.EVENT_READ, worker)
        return worker

    def _retire(self, worker: Worker, kill: bool) -> None:
        self.selector.unregister(worker.reader)
        worker.stop(kill=kill)
        del self.workers[worker.number]

    def run(self, tasks: list[dict[str, Any]]) -> None:
        pending = deque(tasks)
        attempts: dict[int, int] = {}
        count = min(len(tasks), self.settings["max_concurrency_per_instance"] * self.settings["instance_count"])
        try:
            while pending or any(w.task for w in self.workers.values()):
                for number in range(count):  # (re)start workers while there is work for them
                    if number not in self.workers and len(pending) > sum(1 for w in self.workers.values()
                                                                          if not w.task):
                        self._start(number)
                for worker in list(self.workers.values()):
                    if worker.ready and worker.task is None and pending:
                        worker.send(pending.popleft(), self.settings["timeout"])
                busy = [w.deadline for w in self.workers.values() if w.task]
                wait = max(0.0, min(busy) - time.monotonic()) if busy else 1.0
                for key, _ in self.selector.select(timeout=min(wait, 1.0)):
                    self._on_message(key.data, pending, attempts)
                now = time.monotonic()
                for worker in list(self.workers.values()):
                    if worker.task and now > worker.deadline:
                        task = worker.task
                        self._retire(worker, kill=True)
                        self._failed(task, f"timed out after {self.settings['timeout']} s", pending, attempts)
        finally:
            for worker in list(self.workers.values()):
                self._retire(worker, kill=bool(worker.task))

    def _on_message(self, worker: Worker, pending: deque, attempts: dict[int, int]) -> None:
        line = worker.reader.readline()
        if not line:  # the worker died (crash, os._exit, OOM kill)
            task = worker.task
            self._retire(worker, kill=True)
            if not worker.ready:
                raise BackendFailed(f"worker {worker.number} exited during init()",
                                    logs=_tail(self.job_dir / "logs" / f"worker-{worker.number}.log"))
            if task:
                self._failed(task, f"worker exited with code {worker.proc.returncode}", pending, attempts)
            return
        message = json.loads(line)
        if "init_error" in message:
            self._retire(worker, kill=True)
            raise BackendFailed(f"the scoring script's init() failed on worker {worker.number}",
                                logs=message["init_error"])
        if message.get("ready"):
            worker.ready = True
            return
        task, worker.task = worker.task, None
        if message.get("ok"):
            record = {"index": task["index"], "files": len(task["files"]), "rows": message["rows"],
                      "attempts": attempts.get(task["index"], 0) + 1}
            self.journal.commit(record)
            self.rows += record["rows"]
            self.progress.advance(1, f"mini-batches, {self.rows} rows")
        else:
            self._failed(task, message.get("error", "failed"), pending, attempts)

    def _failed(self, task: dict[str, Any], error: str, pending: deque, attempts: dict[int, int]) -> None:
        index = task["index"]
        attempts[index] = attempts.get(index, 0) + 1
        if attempts[index] <= self.settings["max_retries"]:
            ci.log(f"mini-batch {index} failed (attempt {attempts[index]}), retrying: {error.strip().splitlines()[-1]}")
            pending.append(task)
            return
        self.failed_files += len(task["files"])
        self.errors.append(f"mini-batch {index} ({', '.join(Path(f).name for f in task['files'])}): {error}")
        self.progress.advance(1, f"mini-batches, {self.rows} rows, {self.failed_files} failed files")
        threshold = self.settings["error_threshold"]
        if threshold != -1 and self.failed_files > threshold:
            raise BackendFailed(f"{self.failed_files} failed file(s) exceed the error threshold {threshold}",
                                logs="\n".join(self.errors))


# -- the step ----------------------------------------------------------------------------------------
def _lock(job_dir: Path) -> Any:
    fh = open(job_dir / ".lock", "a+")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        raise BadInput(describe_input("job_name"), f"job {job_dir.name} is running in another process") from None
    return fh


def _assemble(job_dir: Path, tasks: list[dict[str, Any]], done: dict[int, Any], target: Path) -> None:
    """The predictions file from the committed parts, in mini-batch order, written atomically."""
    import shutil

    from .batch_runner import write_atomic

    def write(fh: Any) -> int:
        for task in tasks:
            if task["index"] in done:
                with open(task["part"], "rb") as part:
                    shutil.copyfileobj(part, fh, 1 << 20)
        return 0

    target.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(target, write)


def _result(record: dict[str, Any]) -> StepResult:
    outputs = {k: record[k] for k in OUTPUTS if k in record}
    rows = [{"job": record["job-name"], "status": record["status"], "mini-batches": record["mini-batches"],
             "files scored": record["files-scored"], "failed files": record["failed-files"],
             "rows": record["rows-scored"], "output": record["output-path"]}]
    summary = ci.markdown_table(rows, f"Batch job {record['endpoint']}/{record['deployment']}")
    if record.get("errors"):
        summary += "\n\n**Failed mini-batches**\n\n```\n" + "\n".join(e[-800:] for e in record["errors"]) + "\n```"
    return StepResult(outputs, summary=summary)


def run(inputs: Inputs, backend: Any) -> StepResult:
    if backend.kind == "azureml":
        return backend.deploy_batch(inputs)
    p = plan(inputs, backend)
    digest = fingerprint(p, inputs.output)
    job = inputs.job_name or f"{_safe(p.deployment)}-{digest[:12]}"
    if _safe(job) != job:
        raise BadInput(describe_input("job_name"), f"{job!r} may only contain letters, digits, '-', '_' and '.'")
    job_dir = backend.root / "batch" / _safe(p.endpoint) / job
    if inputs.dry_run:
        batches = -(-len(p.files) // p.settings["mini_batch_size"])
        rows = [{"setting": k, "value": v} for k, v in p.settings.items()]
        rows += [{"setting": "model", "value": p.model_identity or ""},
                 {"setting": "scoring script", "value": str(p.script or "(none: score the model)")},
                 {"setting": "input files", "value": len(p.files)}, {"setting": "mini-batches", "value": batches}]
        return StepResult({"job-name": job, "mini-batches": batches, "status": "DryRun"},
                          summary=ci.markdown_table(rows, f"Batch job {job} (dry run: nothing was run)"))
    backend.ensure_store()
    (job_dir / "parts").mkdir(parents=True, exist_ok=True)
    (job_dir / "logs").mkdir(exist_ok=True)
    lock = _lock(job_dir)
    try:
        record_path = job_dir / "job.json"
        record = json.loads(record_path.read_text()) if record_path.is_file() else None
        if record and record.get("fingerprint") != digest:
            raise BadInput(describe_input("job_name"), f"job {job} exists with different inputs; "
                           "give another --job-name")
        if record and record.get("status") == "Completed":
            ci.log(f"job {job} already completed; nothing to do")
            return _result(record)
        return _run_job(inputs, p, job, job_dir, digest)
    finally:
        lock.close()


def _run_job(inputs: Inputs, p: Plan, job: str, job_dir: Path, digest: str) -> StepResult:
    s = p.settings
    append = s["output_action"] == "append_row"
    size = s["mini_batch_size"]
    tasks = [{"index": i, "files": [str(f) for f in p.files[start:start + size]],
              "part": str(job_dir / "parts" / f"{i:06d}.csv") if append else None}
             for i, start in enumerate(range(0, len(p.files), size))]
    output_dir = Path(inputs.output).resolve() if inputs.output else job_dir / "outputs"
    output_path = output_dir / s["output_file_name"] if append else output_dir
    record: dict[str, Any] = {"job-name": job, "endpoint": p.endpoint, "deployment": p.deployment,
                              "model": p.model_identity, "scoring_script": str(p.script or ""),
                              "fingerprint": digest, "settings": s, "status": "Running",
                              "output-path": str(output_path), "mini-batches": len(tasks)}
    write_json_atomic(job_dir / "job.json", record)
    config = job_dir / "worker.json"
    write_json_atomic(config, {"parent_pid": os.getpid(), "scoring_script": str(p.script or ""),
                               "model_path": str(p.model_path or ""), "chunk_rows": inputs.chunk_rows})
    journal_path = job_dir / "journal.jsonl"
    done = read_journal(journal_path)
    todo = [t for t in tasks if t["index"] not in done]
    if done:
        ci.log(f"resuming job {job}: {len(done)} of {len(tasks)} mini-batches already committed")
    progress = ci.Progress(f"deploy-batch {job}", total=len(tasks))
    progress.done = len(done)
    journal = Journal(journal_path)
    pool = Pool(p, job_dir, config, journal, progress)
    started = time.monotonic()
    try:
        pool.run(todo)
    except BackendFailed:
        record.update(status="Failed", errors=pool.errors)
        write_json_atomic(job_dir / "job.json", record)
        raise
    finally:
        journal.close()
    done = read_journal(journal_path)
    if append:
        _assemble(job_dir, tasks, done, output_path)
    else:
        output_dir.mkdir(parents=True, exist_ok=True)
    record.update({"status": "Completed", "rows-scored": sum(r["rows"] for r in done.values()),
                   "files-scored": sum(r["files"] for r in done.values()), "failed-files": pool.failed_files,
                   "errors": pool.errors, "scoring_seconds": round(time.monotonic() - started, 3)})
    write_json_atomic(job_dir / "job.json", record)
    return _result(record)


command = step_command("deploy-batch", Inputs, OUTPUTS, run, __doc__ or "")
