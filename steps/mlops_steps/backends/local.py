"""The local backend: MLflow tracking + model registry in SQLite, data assets and jobs on disk.

Layout of the store (default `.mlops/` in the working directory, `--store` / MLOPS_STORE):

    mlflow.db            MLflow tracking and model registry (SQLite)
    artifacts/           MLflow artifacts
    data/<name>/<ver>/   registered data assets (immutable copies) + asset.json
    jobs/<job-name>/     job records, node logs and outputs
    endpoints/           online endpoint state (deploy-online)
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..contract import BackendFailed, BadInput
from ..files import copy_into, hash_path, locked, write_json_atomic
from ..refs import AssetRef, parse_ref

STORE_INPUT = "--store (MLOPS_STORE)"
CONTENT_TAG = "mlops.content_sha256"


class NotFound(LookupError):
    """A data asset, model or job that does not exist in the store."""


@dataclass
class DataAsset:
    name: str
    version: str
    type: str
    uri: str
    sha256: str
    description: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    created: bool = False


@dataclass
class ModelVersion:
    name: str
    version: str
    path: Path
    tags: dict[str, str]
    aliases: list[str]
    created: bool = False


class LocalBackend:
    kind = "local"

    def __init__(self, store: str | os.PathLike = ".mlops"):
        self.root = Path(store).expanduser().resolve()
        self._client = None

    # -- the store ---------------------------------------------------------------------------
    def ensure_store(self) -> Path:
        """Create the store folder, or fail with a clear bad-input error if it can't be written."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.root, prefix=".probe"):
                pass
        except OSError as exc:
            raise BadInput(STORE_INPUT, f"cannot write to {self.root}: {exc.strerror or exc}") from None
        return self.root

    @property
    def tracking_uri(self) -> str:
        return f"sqlite:///{self.root / 'mlflow.db'}"

    @property
    def client(self):
        """An MlflowClient on the store (mlflow is imported here, not at start-up)."""
        if self._client is None:
            self.ensure_store()
            os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
            for name in ("mlflow", "alembic"):
                logging.getLogger(name).setLevel(logging.WARNING)
            from mlflow import MlflowClient
            try:
                self._client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
                self._client.search_experiments(max_results=1)  # runs migrations on a new store
            except Exception as exc:
                raise BackendFailed(f"cannot open the MLflow store {self.tracking_uri}: {exc}") from None
        return self._client

    def mlflow_env(self) -> dict[str, str]:
        """Environment for a user process so that `mlflow.*` calls record into this store."""
        return {"MLFLOW_TRACKING_URI": self.tracking_uri, "MLFLOW_REGISTRY_URI": self.tracking_uri}

    def experiment_id(self, name: str) -> str:
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        return self.client.create_experiment(name, artifact_location=(self.root / "artifacts" / name).as_uri())

    # -- data assets -------------------------------------------------------------------------
    def _data_versions(self, name: str) -> list[DataAsset]:
        folder = self.root / "data" / name
        assets = []
        if folder.is_dir():
            for meta in folder.glob("*/asset.json"):
                assets.append(DataAsset(**json.loads(meta.read_text())))
        return sorted(assets, key=lambda a: int(a.version) if a.version.isdigit() else 0)

    def register_data(self, name: str, source: Path, type: str, description: str = "",
                      tags: dict[str, str] | None = None) -> DataAsset:
        """Register content as a data asset; identical content returns the existing version."""
        self.ensure_store()
        digest = hash_path(source)
        with locked(self.root / "data" / f".{name}.lock"):
            versions = self._data_versions(name)
            for asset in versions:
                if asset.sha256 == digest and asset.type == type:
                    return asset
            version = str(max([int(a.version) for a in versions if a.version.isdigit()] or [0]) + 1)
            dest = self.root / "data" / name / version
            copy_into(source, dest)
            uri = dest if source.is_dir() else dest / source.name
            asset = DataAsset(name, version, type, str(uri), digest, description, dict(tags or {}), True)
            write_json_atomic(dest / "asset.json", {k: v for k, v in asdict(asset).items() if k != "created"})
            return asset

    def get_data(self, ref: AssetRef) -> DataAsset:
        versions = self._data_versions(ref.name)
        if not versions:
            raise NotFound(f"data asset {ref.name!r} is not registered in {self.root}")
        if ref.version:
            for asset in versions:
                if asset.version == ref.version:
                    return asset
            known = ", ".join(a.version for a in versions)
            raise NotFound(f"data asset {ref.name!r} has no version {ref.version} (versions: {known})")
        if ref.label in (None, "latest"):
            return versions[-1]
        raise NotFound(f"data asset {ref.name!r} has no label {ref.label!r} (use a version or @latest)")

    # -- models ------------------------------------------------------------------------------
    def _model_dir(self, mv: Any) -> Path:
        """A local folder holding a model version's files (used in place: the store is local)."""
        from urllib.parse import unquote, urlparse

        source = str(mv.source)
        if source.startswith("models:/m-"):  # an MLflow 3 logged model (mlflow.<flavor>.log_model)
            source = self.client.get_logged_model(source.removeprefix("models:/")).artifact_location
        if source.startswith("file://"):
            return Path(unquote(urlparse(source).path))
        if source.startswith("/"):
            return Path(source)
        raise NotFound(f"model {mv.name}:{mv.version} has a non-local source {source}")

    def _to_model_version(self, mv: Any, created: bool = False) -> ModelVersion:
        return ModelVersion(mv.name, str(mv.version), self._model_dir(mv), dict(mv.tags or {}),
                            list(getattr(mv, "aliases", []) or []), created)

    def register_model(self, name: str, model_dir: Path, tags: dict[str, str] | None = None,
                       description: str = "") -> ModelVersion:
        """Register an MLflow model folder; identical content returns the existing version."""
        from mlflow.exceptions import MlflowException

        if not Path(model_dir).is_dir():  # an MLflow model, or a custom model folder for a score.py
            raise NotFound(f"model folder not found: {model_dir}")
        digest = hash_path(model_dir)
        client = self.client
        with locked(self.root / "models" / f".{name}.lock"):
            try:
                client.get_registered_model(name)
            except MlflowException:
                client.create_registered_model(name)
            existing = client.search_model_versions(f"name='{name}' and tag.`{CONTENT_TAG}`='{digest}'")
            if existing:
                return self._to_model_version(existing[0])
            run = client.create_run(self.experiment_id("model-registry"), run_name=f"register-{name}")
            client.log_artifacts(run.info.run_id, str(model_dir), "model")
            client.set_terminated(run.info.run_id)
            all_tags = {**(tags or {}), CONTENT_TAG: digest}
            mv = client.create_model_version(name, source=f"{run.info.artifact_uri}/model",
                                             run_id=run.info.run_id, tags=all_tags,
                                             description=description or None)
            return self._to_model_version(client.get_model_version(name, mv.version), created=True)

    def get_model(self, ref: AssetRef, allow_latest: bool = False) -> ModelVersion:
        """A model version by `name:version`, `name@alias` or (if allowed) `name@latest`."""
        from mlflow.exceptions import MlflowException

        client = self.client
        try:
            if ref.version:
                mv = client.get_model_version(ref.name, ref.version)
            elif ref.label == "latest" or ref.label is None:
                if not allow_latest:
                    raise BadInput("model", f"{ref} does not name a version; give name:version "
                                   "(or allow latest explicitly)")
                versions = client.search_model_versions(f"name='{ref.name}'")
                if not versions:
                    raise NotFound(f"model {ref.name!r} has no versions")
                mv = max(versions, key=lambda v: int(v.version))
            else:
                mv = client.get_model_version_by_alias(ref.name, ref.label)
        except MlflowException as exc:
            raise NotFound(f"model {ref} not found in {self.root}: {exc.message}") from None
        return self._to_model_version(mv)

    def set_alias(self, name: str, alias: str, version: str) -> None:
        self.client.set_registered_model_alias(name, alias, version)

    def alias_version(self, name: str, alias: str) -> str | None:
        """The version holding `alias`; None only when the model or the alias does not exist."""
        from mlflow.exceptions import MlflowException
        try:
            return str(self.client.get_model_version_by_alias(name, alias).version)
        except MlflowException as exc:
            if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                return None
            raise BackendFailed(f"cannot read alias {alias!r} of model {name!r}: {exc.message}") from None

    # -- jobs ----------------------------------------------------------------------------------
    def job_dir(self, job_name: str) -> Path:
        return self.root / "jobs" / job_name

    def save_job(self, record: dict[str, Any]) -> None:
        write_json_atomic(self.job_dir(record["name"]) / "job.json", record)

    def get_job(self, job_name: str) -> dict[str, Any]:
        path = self.job_dir(job_name) / "job.json"
        if not path.is_file():
            raise NotFound(f"job {job_name!r} not found in {self.root / 'jobs'}")
        return json.loads(path.read_text())

    @staticmethod
    def new_job_name(prefix: str) -> str:
        safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in prefix)[:40] or "job"
        return f"{safe}-{time.strftime('%Y%m%d-%H%M%S')}-{os.urandom(3).hex()}"
