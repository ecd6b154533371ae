"""job-wait: wait for a job submitted earlier (`train --no-wait`) and report how it ended.

On Azure ML this polls the job until it is Completed, Failed or Canceled, so a long job need not hold
one hosted agent for its whole run: submit with `train --no-wait`, then wait in a later job (or a
later pipeline stage with a longer timeout, or an agentless wait). A job that fails exits 3 with the
failing node's log tail; a job still running at the timeout exits 3 and keeps running in Azure.
On the local backend it reads the job record under `<store>/jobs/<job-name>`.
"""
from __future__ import annotations

import time
from typing import Any

from pydantic import Field

from .contract import BackendFailed, BadInput, StepInputs, StepResult, describe_input, step_command

OUTPUTS = {
    "job-name": "name of the job",
    "status": "Completed (a failed job exits 3)",
    "metrics": "JSON: metrics of the job (local backend)",
    "outputs": "JSON: job output name -> path or azureml:// URI",
    "experiment": "the experiment the job ran in",
}


class Inputs(StepInputs):
    job_name: str = Field(..., description="Name of the job to wait for (the job-name output of train).")
    timeout_minutes: float | None = Field(None, gt=0, description="Give up waiting after this long "
                                          "(the job itself keeps running).")


def _wait_local(inputs: Inputs, backend: Any) -> StepResult:
    from . import ci
    from .backends.local import NotFound

    started = time.monotonic()
    while True:
        try:
            record = backend.get_job(inputs.job_name)
        except NotFound as exc:
            raise BadInput(describe_input("job_name"), str(exc)) from None
        if record.get("status") not in ("Running", "NotStarted", "Queued"):
            break
        if inputs.timeout_minutes and time.monotonic() - started > inputs.timeout_minutes * 60:
            raise BackendFailed(f"job {inputs.job_name} is still {record['status']} after "
                                f"{inputs.timeout_minutes:g} min")
        time.sleep(1.0)
    if record["status"] != "Completed":
        failed = [n for n, v in (record.get("nodes") or {}).items() if v.get("status") == "Failed"]
        raise BackendFailed(f"job {inputs.job_name} ended {record['status']}"
                            + (f" (failing node: {failed[0]})" if failed else ""))
    metrics = record.get("metrics") or {}
    flat = metrics.get("main", {}) if list(metrics) == ["main"] else metrics
    rows = [{"output": k, "path": v} for k, v in (record.get("outputs") or {}).items()]
    return StepResult({"job-name": record["name"], "status": record["status"], "metrics": flat,
                       "outputs": record.get("outputs") or {}, "experiment": record.get("experiment")},
                      summary=f"### Job `{record['name']}`: {record['status']}\n\n" + ci.markdown_table(rows))


def run(inputs: Inputs, backend: Any) -> StepResult:
    if backend.kind == "azureml":
        if inputs.dry_run:
            return StepResult({"job-name": inputs.job_name, "status": "DryRun"},
                              summary=f"Would wait for job `{inputs.job_name}`.")
        return backend.wait_job(inputs.job_name, inputs.timeout_minutes * 60 if inputs.timeout_minutes else None)
    return _wait_local(inputs, backend)


command = step_command("job-wait", Inputs, OUTPUTS, run, __doc__ or "")
