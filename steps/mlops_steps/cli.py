"""The `mlops-step` command: a click group whose subcommands load lazily.

`mlops-step --help` imports nothing but click: each step module (and the heavy
libraries it uses) is imported only when that step is invoked.
"""
from __future__ import annotations

import importlib

import click

from . import __version__

# step name -> (module under mlops_steps, one-line help). Add a line here to add a step.
STEPS: dict[str, tuple[str, str]] = {
    "register-data": ("register_data", "Register data assets (content-addressed versions)."),
    "train": ("train", "Run an Azure ML CLI v2 command or pipeline job."),
    "register-model": ("register_model", "Register an MLflow model directory as a model version."),
}


class LazyGroup(click.Group):
    """A group that imports a step module only when its command is used."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(STEPS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in STEPS:
            return None
        module = importlib.import_module(f"mlops_steps.{STEPS[name][0]}")
        return module.command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, STEPS[name][1]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mlops-step")
def main() -> None:
    """MLOps steps for Azure Machine Learning, with a local backend.

    Every option can also be set as an environment variable MLOPS_<NAME>
    (for example --model-name as MLOPS_MODEL_NAME). Exit codes: 0 success,
    1 a gate said no, 2 bad input, 3 the backend failed.
    """
