"""Parsing of asset references: `azureml:name:version`, `name:version`, `name@label`."""
from __future__ import annotations

import re
from dataclasses import dataclass

_NAME = r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,254}"
_REF = re.compile(rf"^(?:azureml:)?(?P<name>{_NAME})(?::(?P<version>[A-Za-z0-9_.\-]+)|@(?P<label>[A-Za-z0-9_\-]+))?$")


@dataclass(frozen=True)
class AssetRef:
    name: str
    version: str | None = None
    label: str | None = None  # "latest" or an alias such as "champion"

    def __str__(self) -> str:
        if self.version:
            return f"{self.name}:{self.version}"
        return f"{self.name}@{self.label}" if self.label else self.name


def parse_ref(text: str) -> AssetRef | None:
    """An AssetRef, or None when the text is not a reference (for example a path)."""
    m = _REF.match(text.strip())
    if not m:
        return None
    return AssetRef(m["name"], m["version"], m["label"])


def is_asset_uri(text: str) -> bool:
    return text.strip().startswith("azureml:")
