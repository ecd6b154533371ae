"""job-wait on the local backend (its Azure side is in test_azureml_backend.py): job records under the store."""
from __future__ import annotations

from mlops_steps.backends.local import LocalBackend


def _record(store, name: str, status: str, **extra) -> None:
    LocalBackend(store).save_job({"name": name, "status": status, "experiment": "taxi",
                                  "outputs": {"model": f"/jobs/{name}/outputs/model"}, **extra})


def test_completed_failed_and_unknown_jobs(step, workdir):
    _record(workdir / ".mlops", "job-ok", "Completed", metrics={"main": {"rmse": 3.2}})
    ok = step("job-wait", "--job-name", "job-ok")
    assert ok.code == 0, ok
    assert ok.outputs == {"job-name": "job-ok", "status": "Completed", "metrics": {"rmse": 3.2},
                          "outputs": {"model": "/jobs/job-ok/outputs/model"}, "experiment": "taxi"}

    _record(workdir / ".mlops", "job-bad", "Failed", nodes={"prep": {"status": "Completed"},
                                                            "train": {"status": "Failed"}})
    bad = step("job-wait", "--job-name", "job-bad")
    assert bad.code == 3 and "job job-bad ended Failed (failing node: train)" in bad.stderr

    missing = step("job-wait", "--job-name", "nope")
    assert missing.code == 2 and "--job-name (MLOPS_JOB_NAME)" in missing.stderr

    _record(workdir / ".mlops", "job-running", "Running")
    slow = step("job-wait", "--job-name", "job-running", "--timeout-minutes", "0.02")
    assert slow.code == 3 and "still Running after 0.02 min" in slow.stderr
