"""promote-model on the local backend (its Azure side is in test_azureml_backend.py): store to store."""
from __future__ import annotations

from pathlib import Path

from mlops_steps.backends.local import LocalBackend
from mlops_steps.refs import AssetRef


def _model(folder: Path, payload: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "MLmodel").write_text("artifact_path: model\nflavors: {}\n")
    (folder / "model.pkl").write_text(payload)
    return folder


def test_copy_between_stores_is_idempotent(step, workdir):
    dev = LocalBackend(workdir / "dev")
    mv = dev.register_model("taxi-model", _model(workdir / "m", "weights"), tags={"run": "r1"})
    first = step("promote-model", "--store", "dev", "--model", f"taxi-model:{mv.version}", "--to-store", "prod")
    assert first.code == 0, first
    assert first.outputs == {"model": "taxi-model:1", "target": str(workdir / "prod"), "asset-id": "taxi-model:1",
                             "created": True}
    prod = LocalBackend(workdir / "prod").get_model(AssetRef("taxi-model", "1"))
    assert (prod.path / "model.pkl").read_text() == "weights"
    assert prod.tags["run"] == "r1" and prod.tags["mlops.promoted_from"].endswith(":taxi-model:1")

    again = step("promote-model", "--store", "dev", "--model", "taxi-model:1", "--to-store", "prod")
    assert again.code == 0 and again.outputs["created"] is False


def test_bad_inputs(step, workdir):
    none = step("promote-model", "--model", "taxi-model:1")
    assert none.code == 2 and "give exactly one of --to-registry, --to-workspace" in none.stderr
    latest = step("promote-model", "--model", "taxi-model@latest", "--to-store", "prod")
    assert latest.code == 2 and "not an explicit version" in latest.stderr
    azure = step("promote-model", "--model", "m:1", "--to-store", "prod", "--backend", "azureml",
                 "--subscription-id", "s", "--resource-group", "r", "--workspace-name", "w")
    assert azure.code == 2 and "--to-store (MLOPS_TO_STORE)" in azure.stderr
