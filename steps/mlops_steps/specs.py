"""Loading Azure ML CLI v2 YAML specs with azure-ai-ml's own loaders (so the schema is Azure's)."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from .contract import BadInput


def read_yaml(path: str | Path, input_name: str) -> dict[str, Any]:
    """A YAML mapping from a file, or BadInput naming the input, the file and the line."""
    file = Path(path)
    if not file.is_file():
        raise BadInput(input_name, f"file not found: {file}")
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise BadInput(input_name, f"{file}: invalid YAML{where}: {problem}", str(file),
                       mark.line + 1 if mark else None) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInput(input_name, f"cannot read {file}: {exc}") from None
    if not isinstance(data, dict):
        raise BadInput(input_name, f"{file}: expected a YAML mapping, got {type(data).__name__}")
    return data


def _schema_message(exc: Exception) -> str:
    """The useful part of an azure-ai-ml validation error: the JSON of field errors."""
    text = str(exc)
    match = re.search(r"\{.*\}", text, re.S)
    if match:
        try:
            errors = json.loads(match.group(0))
            return "; ".join(f"{k}: {_flatten(v)}" for k, v in errors.items())
        except json.JSONDecodeError:
            pass
    return " ".join(text.split())[:500]


def _flatten(value: Any) -> str:
    if isinstance(value, list):
        return " ".join(_flatten(v) for v in value)
    if isinstance(value, dict):
        return "; ".join(f"{k}: {_flatten(v)}" for k, v in value.items())
    return str(value)


def load_spec(kind: str, path: str | Path, input_name: str) -> Any:
    """Load a spec with azure.ai.ml's loader for `kind` (data, job, model, online_endpoint, ...)."""
    read_yaml(path, input_name)  # clear errors for missing files and YAML syntax first
    import logging
    import warnings

    warnings.filterwarnings("ignore", module="azure")
    import azure.ai.ml as aml

    for name in ("azure", "azure.ai.ml", "azure.ai.ml._utils._experimental"):
        logging.getLogger(name).setLevel(logging.ERROR)  # "experimental class" notices on stderr

    loader = getattr(aml, f"load_{kind}")
    try:
        return loader(source=str(path))
    except Exception as exc:  # marshmallow / azure ValidationException: the schema said no
        raise BadInput(input_name, f"{path}: rejected by Azure ML's {kind} schema: {_schema_message(exc)}",
                       str(path)) from None
