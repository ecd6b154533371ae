"""promote-model: copy a model version across environments (dev workspace -> registry or prod workspace).

On Azure ML, `--to-registry` imports the version into an Azure ML registry (what `az ml model share`
does), so every workspace that uses the registry can deploy the same bytes; `--to-workspace` downloads it
and registers it in another workspace (optionally another resource group / subscription) with its tags
and a `mlops.promoted_from` tag. The target version defaults to the source version. Re-running is a
no-op when the target already holds the same content; a different model under that version fails (exit 3).
On the local backend, `--to-store` copies the version into another local store.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from .contract import BadInput, StepInputs, StepResult, describe_input, step_command

OUTPUTS = {
    "model": "name:version in the target",
    "target": "where it was copied to",
    "asset-id": "reference to use in the target (azureml://registries/... or azureml:name:version)",
    "created": "true if copied now, false if the target already had it",
}


class Inputs(StepInputs):
    model: str = Field(..., description="Model to copy: name:version (or name@alias).")
    to_registry: str | None = Field(None, description="Azure ML registry to copy into.")
    to_workspace: str | None = Field(None, description="Workspace to copy into (azureml backend).")
    to_resource_group: str | None = Field(None, description="Target resource group (default: the source's).")
    to_subscription_id: str | None = Field(None, description="Target subscription (default: the source's).")
    to_store: str | None = Field(None, description="Local backend: the store to copy into.")
    to_name: str | None = Field(None, description="Model name in the target (default: the same).")
    to_version: str | None = Field(None, description="Version in the target (default: the same; azureml).")

    @model_validator(mode="after")
    def _one_target(self) -> "Inputs":
        targets = [t for t in (self.to_registry, self.to_workspace, self.to_store) if t]
        if len(targets) != 1:
            raise ValueError("give exactly one of --to-registry, --to-workspace (azureml) or --to-store (local)")
        return self


def _run_local(inputs: Inputs, backend: Any) -> StepResult:
    from .backends.local import LocalBackend
    from .models import resolve_model

    if not inputs.to_store:
        raise BadInput(describe_input("to_store"), "the local backend copies between stores; give --to-store")
    source = resolve_model(backend, inputs.model, describe_input("model"))
    if source.name is None:
        raise BadInput(describe_input("model"), "give a registered model as name:version")
    if inputs.dry_run:
        return StepResult({"model": source.identity, "target": inputs.to_store, "created": False},
                          summary=f"Would copy `{source.identity}` to store `{inputs.to_store}`.")
    target = LocalBackend(inputs.to_store)
    tags = {k: v for k, v in source.tags.items() if not k.startswith("mlops.content")}
    tags["mlops.promoted_from"] = f"{backend.root}:{source.identity}"
    mv = target.register_model(inputs.to_name or source.name, Path(source.path), tags)
    return StepResult({"model": f"{mv.name}:{mv.version}", "target": str(target.root),
                       "asset-id": f"{mv.name}:{mv.version}", "created": mv.created},
                      summary=f"### Model promoted\n\n`{source.identity}` -> `{mv.name}:{mv.version}` in "
                              f"`{target.root}` ({'copied' if mv.created else 'already there, unchanged'}).")


def run(inputs: Inputs, backend: Any) -> StepResult:
    if backend.kind == "azureml":
        if inputs.to_store:
            raise BadInput(describe_input("to_store"), "with --backend azureml give --to-registry or --to-workspace")
        return backend.promote_model(inputs)
    return _run_local(inputs, backend)


command = step_command("promote-model", Inputs, OUTPUTS, run, __doc__ or "")
