#!/usr/bin/env python3
"""Verify (or rewrite) the self-references to this repository's release tag.

Reusable workflows, examples and docs reference this library as
`org/mlops-templates/...@vX.Y.Z` (GitHub) and `ref: refs/tags/vX.Y.Z` (Azure DevOps
repository resources). Every one must name the version in pyproject.toml, so a
workflow at tag vX.Y.Z runs the actions of vX.Y.Z and nothing else.

    python tools/check_refs.py                    # exit 1 listing every stale reference
    python tools/check_refs.py --set-version 2.1.0  # rewrite them (the release does this)
"""
from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REPO = "org/mlops-templates"
USES = re.compile(r"(?P<head>\b" + re.escape(REPO) + r"/[^@\s'\"]+@)(?P<ref>[^\s'\"#`)]+)")
ADO_REF = re.compile(r"(?P<head>\bref:\s*refs/tags/)(?P<ref>v[^\s'\"#]+)")
GLOBS = [".github/workflows/*.yml", "actions/*/README.md", "ado-templates/**/*.yml", "examples/**/*.yml",
         "examples/**/*.yaml", "docs/**/*.md", "README.md"]


def files() -> list[Path]:
    found: set[Path] = set()
    for pattern in GLOBS:
        found.update(p for p in ROOT.glob(pattern) if p.is_file() and ".venv" not in p.parts)
    return sorted(found)


def version() -> str:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def refs(text: str) -> list[tuple[int, str, str]]:
    """(line, kind, ref) of every self-reference in a text."""
    out = []
    for kind, pattern in (("uses", USES), ("ado", ADO_REF)):
        for m in pattern.finditer(text):
            out.append((text.count("\n", 0, m.start()) + 1, kind, m.group("ref")))
    return out


def allowed(ref: str, want: str) -> bool:
    """The release tag itself; docs may also show the major tag or a SHA placeholder."""
    return ref == f"v{want}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set-version", metavar="X.Y.Z", help="rewrite every self-reference to vX.Y.Z")
    args = parser.parse_args(argv)
    if args.set_version:
        if not re.fullmatch(r"\d+\.\d+\.\d+", args.set_version):
            parser.error("--set-version wants X.Y.Z")
        for path in files():
            text = path.read_text()
            new = USES.sub(lambda m: m.group("head") + f"v{args.set_version}"
                           if m.group("ref").startswith("v") else m.group(0), text)
            new = ADO_REF.sub(lambda m: m.group("head") + f"v{args.set_version}", new)
            if new != text:
                path.write_text(new)
                print(f"rewrote {path.relative_to(ROOT)}")
        return 0
    want, bad = version(), []
    for path in files():
        is_doc = path.suffix == ".md"
        for line, kind, ref in refs(path.read_text()):
            if allowed(ref, want) or (is_doc and (ref in (f"v{want.split('.')[0]}", "vX.Y.Z") or ref.startswith("<"))):
                continue
            bad.append(f"{path.relative_to(ROOT)}:{line}: {kind} reference @{ref}, expected v{want}")
    for line in bad:
        print(line)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
