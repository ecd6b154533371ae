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
    "install-cli": ("install_cli", "Install the Azure CLI and ml extension, pinned."),
    "job-wait": ("job_wait", "Wait for a job started with train --no-wait."),
    "promote-model": ("promote_model", "Copy a model version to a registry or workspace."),
    "train": ("train", "Run an Azure ML CLI v2 command or pipeline job."),
    "register-model": ("register_model", "Register an MLflow model folder as a version."),
    "deploy-online": ("deploy_online", "Deploy a model version to an online endpoint."),
    "endpoint": ("endpoint", "Local online endpoints: list, show, invoke, logs, delete."),
    "rai-gate": ("rai_gate", "Responsible-AI gate: performance, fairness, features."),
    "drift-check": ("drift_check", "Data drift gate with Azure ML monitoring metrics."),
    "onnx-export": ("onnx_export", "Convert to ONNX, check parity, register the version."),
    "deploy-batch": ("deploy_batch", "Score files with a batch endpoint deployment."),
    "compare": ("compare", "Champion/challenger gate against the champion alias."),
    "promote": ("promote", "Move the champion alias to an explicit version."),
    "scan": ("scan", "Dependency and code security scan, SARIF."),
    "manifest": ("manifest", "Audit manifest: version, commit, file hashes, tools."),
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
