"""Shared helpers for steps that use models and tables: resolve a model reference or path,
read CSV/Parquet (or a registered data asset) into a DataFrame, with BadInput errors."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .contract import BadInput
from .refs import parse_ref


@dataclass
class ResolvedModel:
    """A model to use: its registry identity (if registered) and a local MLflow model folder."""

    path: Path
    name: str | None = None
    version: str | None = None
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def identity(self) -> str:
        return f"{self.name}:{self.version}" if self.name else str(self.path)


def resolve_model(backend: Any, ref: str, input_name: str, allow_latest: bool = False) -> ResolvedModel:
    """`name:version`, `azureml:name:version`, `name@alias` (or `@latest` if allowed), or a folder."""
    path = Path(ref)
    if path.exists():
        if not (path / "MLmodel").is_file():
            raise BadInput(input_name, f"{path} is not an MLflow model folder (no MLmodel file)")
        return ResolvedModel(path.resolve())
    parsed = parse_ref(ref)
    if parsed is None or (parsed.version is None and parsed.label is None):
        raise BadInput(input_name, f"{ref!r} is neither a model folder nor a name:version reference")
    if parsed.label == "latest" and not allow_latest:
        raise BadInput(input_name, f"{ref} is not an explicit version; give name:version "
                       "(or set allow-latest to accept @latest)")
    from .backends.local import NotFound
    try:
        mv = backend.get_model(parsed, allow_latest=allow_latest)
    except NotFound as exc:
        raise BadInput(input_name, str(exc)) from None
    return ResolvedModel(Path(mv.path), mv.name, mv.version, mv.tags)


def resolve_data_path(backend: Any, ref: str, input_name: str) -> Path:
    """A local path for a file/folder path or a registered data asset (`azureml:name:version`)."""
    if ref.startswith("azureml://") and hasattr(backend, "download_uri"):
        return backend.download_uri(ref)
    if ref.startswith("azureml:"):
        parsed = parse_ref(ref)
        if parsed is None:
            raise BadInput(input_name, f"{ref!r} is not a data asset reference (azureml:name:version)")
        from .backends.local import NotFound
        try:
            return Path(backend.get_data(parsed).uri)
        except NotFound as exc:
            raise BadInput(input_name, str(exc)) from None
    path = Path(ref)
    if not path.exists():
        raise BadInput(input_name, f"file not found: {path}")
    return path


def read_table(backend: Any, ref: str, input_name: str) -> Any:
    """A pandas DataFrame from CSV/Parquet (a file, a folder of them, or a data asset)."""
    import pandas as pd

    path = resolve_data_path(backend, ref, input_name)
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in (".csv", ".parquet")) \
        if path.is_dir() else [path]
    if not files:
        raise BadInput(input_name, f"no .csv or .parquet files in {path}")
    frames = []
    for file in files:
        try:
            if file.suffix.lower() == ".parquet":
                frames.append(pd.read_parquet(file))
            else:
                frames.append(pd.read_csv(file))
        except Exception as exc:  # pandas raises many types for unreadable files
            raise BadInput(input_name, f"cannot read {file}: {exc}") from None
    table = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    return table.drop(columns=[c for c in table.columns if str(c).startswith("Unnamed: ")])
