"""register-data: register data assets from Azure ML CLI v2 data YAML or from options.

Versions are content-addressed: registering identical content again returns the
existing version; changed content gets the next version.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from .ci import markdown_table
from .contract import BadInput, StepInputs, StepResult, describe_input, step_command

OUTPUTS = {
    "name": "name of the (last) registered asset",
    "version": "its version",
    "uri": "its URI (local path or azureml:// URI)",
    "assets": "JSON list of every asset registered: name, version, uri, created",
}


class Inputs(StepInputs):
    data_yaml: list[str] = Field(default_factory=list, description="Azure ML CLI v2 data YAML file(s).")
    name: str | None = Field(None, description="Asset name (when not using --data-yaml).")
    path: str | None = Field(None, description="Local file or folder to register (with --name).")
    type: Literal["uri_file", "uri_folder", "mltable"] | None = Field(
        None, description="Asset type; default uri_file for a file, uri_folder for a folder.")
    description: str = Field("", description="Asset description.")
    tags: dict[str, str] = Field(default_factory=dict, description="Tags KEY=VALUE.")

    @model_validator(mode="after")
    def _one_source(self) -> "Inputs":
        if not self.data_yaml and not (self.name and self.path):
            raise ValueError("give --data-yaml, or --name and --path")
        if self.data_yaml and (self.name or self.path):
            raise ValueError("give either --data-yaml or --name/--path, not both")
        return self


def _specs(inputs: Inputs) -> list[dict[str, Any]]:
    """Each asset to register as a plain dict, validated by Azure ML's data schema."""
    from .specs import load_spec

    specs = []
    if inputs.data_yaml:
        for file in inputs.data_yaml:
            data = load_spec("data", file, describe_input("data_yaml"))
            if not data.name:
                raise BadInput(describe_input("data_yaml"), f"{file}: the data asset has no name")
            specs.append({"name": data.name, "path": str(data.path), "type": data.type,
                          "description": data.description or "", "tags": dict(data.tags or {}),
                          "source": file})
    else:
        path = Path(inputs.path or "")
        kind = inputs.type or ("uri_folder" if path.is_dir() else "uri_file")
        specs.append({"name": inputs.name, "path": str(path), "type": kind,
                      "description": inputs.description, "tags": dict(inputs.tags),
                      "source": describe_input("path")})
    for spec in specs:
        _check_source(spec)
    return specs


def _check_source(spec: dict[str, Any]) -> None:
    path = Path(spec["path"])
    where = spec["source"]
    if spec["path"].startswith(("azureml:", "https:", "wasbs:", "abfss:", "azureml://")):
        raise BadInput(where, f"{spec['path']} is a cloud path; the local backend registers local files")
    if not path.exists():
        raise BadInput(where, f"data path not found: {path}")
    if spec["type"] == "uri_file" and not path.is_file():
        raise BadInput(where, f"type uri_file needs a file, {path} is a folder")
    if spec["type"] in ("uri_folder", "mltable") and not path.is_dir():
        raise BadInput(where, f"type {spec['type']} needs a folder, {path} is a file")
    if spec["type"] == "mltable" and not (path / "MLTable").is_file():
        raise BadInput(where, f"type mltable needs an MLTable file in {path}")


def run(inputs: Inputs, backend: Any) -> StepResult:
    specs = _specs(inputs)
    if inputs.dry_run and backend.kind == "local":
        rows = [{"name": s["name"], "type": s["type"], "path": s["path"]} for s in specs]
        return StepResult({"assets": rows}, summary=markdown_table(rows, "Data assets (dry run)"))
    registered = []
    for spec in specs:
        asset = backend.register_data(spec["name"], Path(spec["path"]), spec["type"],
                                      spec["description"], spec["tags"])
        registered.append({"name": asset.name, "version": asset.version, "uri": asset.uri,
                           "type": asset.type, "created": asset.created})
    last = registered[-1]
    return StepResult({"name": last["name"], "version": last["version"], "uri": last["uri"],
                       "assets": registered}, summary=markdown_table(registered, "Data assets"))


command = step_command("register-data", Inputs, OUTPUTS, run, __doc__ or "")
