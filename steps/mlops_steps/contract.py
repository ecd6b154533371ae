"""The step contract: typed inputs, a plain run(), declared outputs, exit codes.

A step module defines an inputs model (a subclass of `StepInputs`), a function
`run(inputs, backend) -> StepResult`, its OUTPUTS, and
`command = step_command(name, Inputs, OUTPUTS, run, help)`. This
module turns the model's fields into click options (each also read from
`MLOPS_<NAME>`), validates them, calls run(), publishes outputs through ci.py,
and maps failures to exit codes:

    0 success, 1 a gate said no, 2 bad input, 3 the backend failed.
"""
from __future__ import annotations

import os
import sys
import traceback
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import click
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from . import ci
from .files import write_json_atomic

EXIT_OK, EXIT_GATE, EXIT_BAD_INPUT, EXIT_BACKEND = 0, 1, 2, 3


class StepError(Exception):
    """A failure with an exit code and, optionally, logs to surface."""

    exit_code = EXIT_BACKEND

    def __init__(self, message: str, logs: str | None = None):
        super().__init__(message)
        self.logs = logs


class BadInput(StepError):
    """The user gave something wrong: exit 2. The message names the input."""

    exit_code = EXIT_BAD_INPUT

    def __init__(self, input_name: str, problem: str, file: str | None = None, line: int | None = None):
        super().__init__(f"{input_name}: {problem}")
        self.input_name, self.file, self.line = input_name, file, line


class BackendFailed(StepError):
    """The backend (MLflow store, Azure, a job, a server) failed: exit 3."""

    exit_code = EXIT_BACKEND


class GateFailed(StepError):
    """A gate said no and there is nothing more to report than the message: exit 1."""

    exit_code = EXIT_GATE


class StepInputs(BaseModel):
    """Inputs every step accepts. Steps subclass this and add their own fields."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    backend: Literal["local", "azureml"] = Field("local", description="Where to run: local or azureml.")
    store: str = Field(".mlops", description="Local backend state folder (MLflow store, data, jobs, endpoints).")
    subscription_id: str | None = Field(None, description="Azure subscription id (azureml backend).")
    resource_group: str | None = Field(None, description="Azure resource group (azureml backend).")
    workspace_name: str | None = Field(None, description="Azure ML workspace (azureml backend).")
    output_json: str | None = Field(None, description="Also write the outputs to this JSON file.")
    dry_run: bool = Field(False, description="Show what would be created or sent (entity YAML) and change "
                          "nothing.")


@dataclass
class StepResult:
    """What run() returns: outputs by declared name, a Markdown summary, and the gate verdict."""

    outputs: dict[str, Any]
    summary: str = ""
    passed: bool = True
    secrets: list[str] = field(default_factory=list)


def env_name(field_name: str) -> str:
    return "MLOPS_" + field_name.upper()


def option_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def describe_input(field_name: str) -> str:
    """How a user names an input: the option and its environment variable."""
    return f"{option_name(field_name)} ({env_name(field_name)})"


def _unwrap(annotation: Any) -> tuple[Any, bool]:
    """Strip Optional[...] and report whether None was allowed."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return annotation, False


def _kind(annotation: Any) -> str:
    ann, _ = _unwrap(annotation)
    origin = typing.get_origin(ann)
    if ann is bool:
        return "bool"
    if origin in (list, tuple) or ann in (list, tuple):
        return "list"
    if origin is dict or ann is dict:
        return "dict"
    return "scalar"


def _split_env_list(value: str) -> list[str]:
    """A list from an env var: one item per line, or whitespace-separated on one line."""
    if "\n" in value.strip():
        return [v.strip() for v in value.splitlines() if v.strip()]
    return value.split()


def _build_params(model: type[StepInputs]) -> list[click.Parameter]:
    params: list[click.Parameter] = []
    for name, info in model.model_fields.items():
        kind = _kind(info.annotation)
        help_text = info.description or ""
        if kind == "bool":
            params.append(click.Option(
                [f"{option_name(name)}/--no-{name.replace('_', '-')}"], default=None,
                help=help_text, envvar=env_name(name), show_envvar=True))
        elif kind == "list":
            params.append(click.Option(
                [option_name(name)], multiple=True, help=help_text + " Repeatable; env: one per line.",
                metavar="VALUE"))
        elif kind == "dict":
            params.append(click.Option(
                [option_name(name)], multiple=True, metavar="KEY=VALUE",
                help=help_text + " Repeatable; env: one KEY=VALUE per line."))
        else:
            ann, _ = _unwrap(info.annotation)
            choices = typing.get_args(ann) if typing.get_origin(ann) is Literal else None
            metavar = "[" + "|".join(map(str, choices)) + "]" if choices else None
            params.append(click.Option(
                [option_name(name)], default=None, help=help_text, envvar=env_name(name),
                show_envvar=True, metavar=metavar))
    return params


def _collect(model: type[StepInputs], kwargs: dict[str, Any]) -> dict[str, Any]:
    """Raw values for the model: CLI first, then MLOPS_* env for lists and dicts."""
    data: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        kind = _kind(info.annotation)
        value = kwargs.get(name)
        if kind in ("list", "dict"):
            items = list(value or ())
            if not items and os.environ.get(env_name(name), "").strip():
                items = _split_env_list(os.environ[env_name(name)]) if kind == "list" else [
                    v.strip() for v in os.environ[env_name(name)].splitlines() if v.strip()]
            if not items:
                continue
            if kind == "dict":
                pairs = {}
                for item in items:
                    if "=" not in item:
                        raise BadInput(describe_input(name), f"expected KEY=VALUE, got {item!r}")
                    key, _, val = item.partition("=")
                    pairs[key.strip()] = val.strip()
                data[name] = pairs
            else:
                data[name] = items
        elif value is not None and not (isinstance(value, str) and value.strip() == ""):
            data[name] = value  # an empty action input means "not given"
    return data


def validate_inputs(model: type[StepInputs], data: dict[str, Any]) -> StepInputs:
    """Validate raw values; the first problem becomes a BadInput naming the input."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = [str(p) for p in err.get("loc", ())]
        name = loc[0] if loc else "inputs"
        where = describe_input(name) if name in model.model_fields else name
        msg = err.get("msg", "invalid value").removeprefix("Value error, ")
        raise BadInput(where, msg) from None


def open_backend(inputs: StepInputs) -> Any:
    """The backend object for these inputs (its heavy imports happen on first use)."""
    if inputs.backend == "azureml":
        from .backends.azureml import AzureMLBackend
        return AzureMLBackend.from_inputs(inputs)
    from .backends.local import LocalBackend
    return LocalBackend(inputs.store)


def publish(step: str, outputs_decl: dict[str, str], result: StepResult, output_json: str | None) -> None:
    """Write a result's outputs and summary to the host and, if asked, a JSON file."""
    unknown = set(result.outputs) - set(outputs_decl)
    if unknown:
        raise AssertionError(f"step {step} returned undeclared outputs: {sorted(unknown)}")
    for secret in result.secrets:
        ci.mask(secret)
    for name in outputs_decl:
        if name in result.outputs:
            ci.set_output(name, result.outputs[name])
    ci.summary(result.summary, name=step)
    if output_json:
        write_json_atomic(output_json, {
            "step": step, "passed": result.passed,
            "outputs": {k: result.outputs[k] for k in outputs_decl if k in result.outputs},
        })


def execute(step: str, model: type[StepInputs], outputs_decl: dict[str, str],
            run: Callable[[Any, Any], StepResult], kwargs: dict[str, Any]) -> int:
    """Validate, run, publish; return the exit code. Never raises for user mistakes."""
    try:
        inputs = validate_inputs(model, _collect(model, kwargs))
        for name, info in model.model_fields.items():
            value = getattr(inputs, name)
            if isinstance(value, SecretStr):
                ci.mask(value.get_secret_value())
        result = run(inputs, open_backend(inputs))
        publish(step, outputs_decl, result, inputs.output_json)
    except StepError as exc:
        if exc.logs:
            with ci.group(f"{step}: logs"):
                ci.log(exc.logs.rstrip())
        file = getattr(exc, "file", None)
        ci.error(f"{step}: {exc}", file=file, line=getattr(exc, "line", None))
        return exc.exit_code
    except KeyboardInterrupt:
        ci.error(f"{step}: interrupted")
        return 130
    except Exception:  # a bug in the step, not a user mistake: show it
        ci.log(traceback.format_exc())
        ci.error(f"{step}: internal error (see the traceback above)")
        return EXIT_BACKEND
    if not result.passed:
        ci.error(f"{step}: gate failed")
        return EXIT_GATE
    return EXIT_OK


def step_command(name: str, model: type[StepInputs], outputs: dict[str, str],
                 run: Callable[[Any, Any], StepResult], help: str) -> click.Command:
    """The click command for a step; `run` stays a plain function for tests and other steps."""

    def callback(**kwargs: Any) -> None:
        sys.exit(execute(name, model, outputs, run, kwargs))

    epilog = "Outputs: " + "; ".join(f"{k} ({v})" for k, v in outputs.items())
    return click.Command(name, callback=callback, params=_build_params(model), help=help,
                         epilog=epilog, context_settings={"help_option_names": ["-h", "--help"]})
