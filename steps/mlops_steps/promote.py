"""promote: move the `champion` alias to an explicit model version.

Run it after the candidate was deployed successfully: the version holding the alias is the
champion that the next `compare` measures candidates against. The version must exist (exit 2
otherwise); promoting the version that is already champion changes nothing.
"""
from __future__ import annotations

from typing import Any

from pydantic import Field

from .ci import markdown_table
from .contract import BadInput, StepInputs, StepResult, describe_input, step_command

OUTPUTS = {
    "model-name": "the registered model",
    "previous-version": "version that held the alias before (empty if none)",
    "new-version": "version that holds the alias now",
    "changed": "true when the alias moved (or would move, with --dry-run), false when the version already held it",
}


class Inputs(StepInputs):
    model: str = Field(..., description="Model version to promote: name:version (explicit version).")
    alias: str = Field("champion", pattern=r"^[A-Za-z0-9_\-]+$",
                       description="Registry alias to move (latest is reserved).")


def run(inputs: Inputs, backend: Any) -> StepResult:
    from .backends.local import NotFound
    from .refs import AssetRef, parse_ref

    where = describe_input("model")
    ref = parse_ref(inputs.model)
    if ref is None or not ref.version:
        raise BadInput(where, f"{inputs.model!r} is not name:version; promote takes an explicit version")
    if inputs.alias.lower() == "latest":
        raise BadInput(describe_input("alias"), "'latest' is reserved and cannot be an alias")
    try:  # the version must exist: an alias on nothing would leave no champion
        backend.get_model(AssetRef(ref.name, ref.version))
    except NotFound as exc:
        raise BadInput(where, str(exc)) from None
    previous = backend.alias_version(ref.name, inputs.alias)
    changed = previous != ref.version
    dry_run = getattr(inputs, "dry_run", False)
    if changed and not dry_run:
        backend.set_alias(ref.name, inputs.alias, ref.version)
    row = {"model": ref.name, "alias": inputs.alias, "previous": previous or "(none)",
           "new": ref.version, "changed": changed}
    title = f"Promoted {ref.name}:{ref.version} to {inputs.alias}" if changed else \
        f"{ref.name}:{ref.version} already holds {inputs.alias}"
    if dry_run and changed:
        title = f"Dry run: would promote {ref.name}:{ref.version} to {inputs.alias} (nothing changed)"
    return StepResult({"model-name": ref.name, "previous-version": previous or "",
                       "new-version": ref.version, "changed": changed},
                      summary=markdown_table([row], title))


command = step_command("promote", Inputs, OUTPUTS, run, __doc__ or "")
