"""register-model: register an MLflow model folder (a path or a job output) as a model version.

Identical content is not registered twice: the content hash is kept as a version tag, and
re-registering the same folder returns the existing version. Outputs always name an explicit
version, never "latest".
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from . import ci
from .contract import BadInput, StepInputs, StepResult, describe_input, step_command

OUTPUTS = {
    "model-name": "registered model name",
    "model-version": "the explicit version registered (or found identical)",
    "model-id": "name:version, ready for deploy steps",
    "created": "true when a new version was created, false when identical content existed",
}


class Inputs(StepInputs):
    model_name: str = Field(..., pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,254}$",
                            description="Registered model name.")
    model_path: str | None = Field(None, description="MLflow model folder to register.")
    job_name: str | None = Field(None, description="Take the model from this job's output instead.")
    job_output: str = Field("trained_model", description="Which output of --job-name holds the model.")
    tags: dict[str, str] = Field(default_factory=dict, description="Version tags KEY=VALUE.")
    description: str = Field("", description="Version description.")

    @model_validator(mode="after")
    def _one_source(self) -> "Inputs":
        if bool(self.model_path) == bool(self.job_name):
            raise ValueError("give exactly one of --model-path or --job-name")
        return self


def _model_folder(inputs: Inputs, backend: Any) -> tuple[Path, dict[str, str]]:
    """The folder to register and provenance tags."""
    if inputs.model_path:
        path, where, tags = Path(inputs.model_path), describe_input("model_path"), {}
    else:
        from .backends.local import NotFound
        try:
            job = backend.get_job(inputs.job_name)
        except NotFound as exc:
            raise BadInput(describe_input("job_name"), str(exc)) from None
        outputs = job.get("outputs", {})
        if inputs.job_output not in outputs:
            raise BadInput(describe_input("job_output"), f"job {inputs.job_name} has no output "
                           f"{inputs.job_output!r} (outputs: {', '.join(sorted(outputs)) or 'none'})")
        if job.get("status") != "Completed":
            raise BadInput(describe_input("job_name"), f"job {inputs.job_name} is {job.get('status')}, "
                           "not Completed")
        path, where = Path(outputs[inputs.job_output]), describe_input("job_output")
        tags = {"mlops.job_name": inputs.job_name, "mlops.job_output": inputs.job_output}
    if not path.is_dir():
        raise BadInput(where, f"model folder not found: {path}")
    if not (path / "MLmodel").is_file():
        raise BadInput(where, f"{path} is not an MLflow model folder (no MLmodel file)")
    return path.resolve(), tags


def run(inputs: Inputs, backend: Any) -> StepResult:
    if backend.kind == "azureml" and inputs.job_name:
        return backend.register_job_model(inputs)
    folder, provenance = _model_folder(inputs, backend)
    if inputs.dry_run and backend.kind == "local":
        row = {"model": inputs.model_name, "source": str(folder), "tags": {**provenance, **inputs.tags}}
        return StepResult({"model-name": inputs.model_name},
                          summary=ci.markdown_table([row], "Model to register (dry run)"))
    mv = backend.register_model(inputs.model_name, folder, {**provenance, **inputs.tags}, inputs.description)
    state = "registered" if mv.created else "already registered (identical content)"
    summary = ci.markdown_table([{"model": mv.name, "version": mv.version, "state": state,
                                  "source": str(folder)}], "Model")
    return StepResult({"model-name": mv.name, "model-version": mv.version,
                       "model-id": f"{mv.name}:{mv.version}", "created": mv.created}, summary=summary)


command = step_command("register-model", Inputs, OUTPUTS, run, __doc__ or "")
