"""scan helpers: what to audit (requirements, conda, pyproject, MLflow model, environment) and an
offline OSV advisory-database service for pip-audit.

Every dependency keeps where it was declared (file, line) so findings and SARIF point at it. A
dependency that cannot be audited (unpinned, URL, conda package, ...) is kept with the reason.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import yaml
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from .contract import BadInput


@dataclass(frozen=True)
class Dep:
    """A declared or installed package; `problem` says why it cannot be audited (None: auditable)."""

    name: str
    version: str | None
    file: str | None = None
    line: int | None = None
    origin: str = "pip"  # pip | conda | environment
    problem: str | None = None


# ---------------------------------------------------------------- YAML with line numbers

class LineStr(str):
    line: int = 0


class LineDict(dict):
    line: int = 0


class _LineLoader(yaml.SafeLoader):
    pass


def _str(loader: yaml.SafeLoader, node: yaml.Node) -> LineStr:
    s = LineStr(loader.construct_scalar(node))  # type: ignore[arg-type]
    s.line = node.start_mark.line + 1
    return s


def _map(loader: yaml.SafeLoader, node: yaml.Node) -> LineDict:
    d = LineDict(loader.construct_mapping(node, deep=True))  # type: ignore[arg-type]
    d.line = node.start_mark.line + 1
    return d


_LineLoader.add_constructor("tag:yaml.org,2002:str", _str)
_LineLoader.add_constructor("tag:yaml.org,2002:map", _map)


def load_yaml_lines(path: Path, input_name: str) -> Any:
    """YAML whose strings and mappings carry `.line`; unreadable or invalid files are BadInput."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInput(input_name, f"cannot read {path}: {exc}", file=str(path)) from None
    try:
        return yaml.load(text, Loader=_LineLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise BadInput(input_name, f"{path} line {line}: invalid YAML: {problem}",
                       file=str(path), line=line) from None


# ---------------------------------------------------------------- requirement lines

def _pin(req: Requirement) -> str | None:
    """The exact version a requirement pins (`==X` / `===X`, no wildcard), else None."""
    specs = list(req.specifier)
    if len(specs) == 1 and specs[0].operator in ("==", "===") and "*" not in specs[0].version:
        return specs[0].version
    return None


def dep_from_requirement(req: Requirement, file: str | None, line: int | None, origin: str = "pip") -> Dep | None:
    """A Dep for one parsed requirement, or None when its environment marker excludes it here."""
    if req.marker is not None and not req.marker.evaluate():
        return None
    name = canonicalize_name(req.name)
    if req.url:
        return Dep(name, None, file, line, origin, f"URL requirement ({req.url}) has no version to audit")
    version = _pin(req)
    if version is None:
        spec = str(req.specifier) or "no version"
        return Dep(name, None, file, line, origin, f"not pinned to an exact version ({spec})")
    return Dep(name, version, file, line, origin)


def parse_requirement_line(text: str, file: str, line: int | None, input_name: str) -> Requirement:
    try:
        return Requirement(text)
    except InvalidRequirement as exc:
        raise BadInput(input_name, f"{file} line {line}: unparseable requirement {text!r}: {exc}",
                       file=file, line=line) from None


def from_requirements(path: Path, input_name: str) -> list[Dep]:
    """Dependencies of a requirements file (and the files it includes with -r)."""
    from pip_requirements_parser import RequirementsFile

    if not path.is_file():
        raise BadInput(input_name, f"requirements file not found: {path}", file=str(path))
    try:
        rf = RequirementsFile.from_file(str(path), include_nested=True)
    except Exception as exc:  # pip_requirements_parser raises InstallationError for unreadable files
        raise BadInput(input_name, f"cannot read {path}: {str(exc).splitlines()[0]}", file=str(path)) from None
    if rf.invalid_lines:
        bad = rf.invalid_lines[0]
        raise BadInput(input_name, f"{bad.filename} line {bad.line_number}: unparseable requirement "
                       f"{bad.line!r}: {bad.error_message.splitlines()[0]}",
                       file=bad.filename, line=bad.line_number)
    deps = []
    for req in rf.requirements:
        where = req.requirement_line
        file, line = where.filename, where.line_number
        if req.is_editable or req.req is None:
            name = canonicalize_name(req.name) if req.name else where.line
            deps.append(Dep(name, None, file, line, "pip", f"editable/URL requirement {where.line!r} has no version"))
            continue
        dep = dep_from_requirement(req.req, file, line)
        if dep:
            deps.append(dep)
    return deps


# ---------------------------------------------------------------- conda / pyproject / MLflow model

_CONDA_NAME = re.compile(r"^(?:[\w.-]+::)?([A-Za-z0-9_.-]+)")
NOT_AUDITED_CONDA = {"python"}  # the interpreter itself, not a package


def from_conda(path: Path, input_name: str) -> list[Dep]:
    """The `pip:` section of a conda environment file; conda packages are listed as not auditable."""
    if not path.is_file():
        raise BadInput(input_name, f"conda file not found: {path}", file=str(path))
    data = load_yaml_lines(path, input_name)
    deps_list = data.get("dependencies") if isinstance(data, dict) else None
    if not isinstance(deps_list, list):
        raise BadInput(input_name, f"{path}: not a conda environment file (no 'dependencies' list)",
                       file=str(path))
    deps: list[Dep] = []
    for item in deps_list:
        if isinstance(item, dict) and "pip" in item:
            for line_text in item["pip"] or []:
                deps.extend(_conda_pip_line(str(line_text).strip(), getattr(line_text, "line", None),
                                            path, input_name))
        elif isinstance(item, str):
            m = _CONDA_NAME.match(item.strip())
            if not m:
                raise BadInput(input_name, f"{path} line {item.line}: unparseable conda dependency {item!r}",
                               file=str(path), line=getattr(item, "line", None))
            name = m.group(1).lower()
            if name not in NOT_AUDITED_CONDA:
                deps.append(Dep(name, None, str(path), getattr(item, "line", None), "conda",
                                f"conda package {item.strip()!r}: conda packages are not audited"))
        else:
            line = getattr(item, "line", None)
            raise BadInput(input_name, f"{path} line {line}: unexpected conda dependency entry {item!r}",
                           file=str(path), line=line)
    return deps


def _conda_pip_line(text: str, line: int | None, conda_file: Path, input_name: str) -> list[Dep]:
    if text.startswith(("-r ", "--requirement ")):
        return from_requirements(conda_file.parent / text.split(None, 1)[1].strip(), input_name)
    if text.startswith(("-e ", "--editable ")):
        return [Dep(text, None, str(conda_file), line, "pip", f"editable requirement {text!r} has no version")]
    if text.startswith("-"):
        return []  # pip options such as --index-url
    dep = dep_from_requirement(parse_requirement_line(text, str(conda_file), line, input_name),
                               str(conda_file), line)
    return [dep] if dep else []


def from_pyproject(path: Path, input_name: str) -> list[Dep]:
    """[project] dependencies, optional-dependencies and [dependency-groups] of a pyproject.toml."""
    import tomllib

    if not path.is_file():
        raise BadInput(input_name, f"pyproject file not found: {path}", file=str(path))
    try:
        text = path.read_text(encoding="utf-8")
        data = tomllib.loads(text)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise BadInput(input_name, f"cannot read {path}: {exc}", file=str(path)) from None
    project = data.get("project") or {}
    own = canonicalize_name(str(project.get("name", "")))
    texts = list(project.get("dependencies") or [])
    for group in (project.get("optional-dependencies") or {}).values():
        texts += list(group)
    for group in (data.get("dependency-groups") or {}).values():
        texts += [g for g in group if isinstance(g, str)]
    lines = text.splitlines()
    deps = []
    for req_text in texts:
        line = next((i + 1 for i, ln in enumerate(lines) if f'"{req_text}"' in ln or f"'{req_text}'" in ln), None)
        req = parse_requirement_line(req_text, str(path), line, input_name)
        if canonicalize_name(req.name) == own:
            continue  # a self-reference such as "pkg[extra]"
        dep = dep_from_requirement(req, str(path), line)
        if dep:
            deps.append(dep)
    return deps


def from_model_dir(path: Path, input_name: str) -> list[Dep]:
    """An MLflow model directory: its requirements.txt, else its conda.yaml."""
    if not (path / "MLmodel").is_file():
        raise BadInput(input_name, f"{path} is not an MLflow model directory (no MLmodel file)", file=str(path))
    if (path / "requirements.txt").is_file():
        return from_requirements(path / "requirements.txt", input_name)
    if (path / "conda.yaml").is_file():
        return from_conda(path / "conda.yaml", input_name)
    raise BadInput(input_name, f"{path}: the model has neither requirements.txt nor conda.yaml", file=str(path))


_LIST_DISTS = ("import json, importlib.metadata as m; "
               "print(json.dumps(sorted({(d.metadata['Name'] or '', d.version) for d in m.distributions()})))")


def from_environment(python: str, input_name: str) -> list[Dep]:
    """Packages installed for a Python interpreter ('current' is the one running this step)."""
    import sys

    exe = sys.executable if python == "current" else python
    try:
        proc = subprocess.run([exe, "-c", _LIST_DISTS], capture_output=True, text=True, timeout=120)
    except OSError as exc:
        raise BadInput(input_name, f"cannot run {python}: {exc}") from None
    if proc.returncode != 0:
        raise BadInput(input_name, f"{python} failed to list its packages: {proc.stderr.strip()[-500:]}")
    return [Dep(canonicalize_name(n), v, None, None, "environment") for n, v in json.loads(proc.stdout) if n]


# ---------------------------------------------------------------- offline OSV database

def _version(text: Any) -> Version | None:
    try:
        return Version(str(text))
    except InvalidVersion:
        return None


def _in_range(version: Version, events: list[dict]) -> bool:
    """OSV ECOSYSTEM range evaluation (introduced / fixed / last_affected), per the OSV spec."""
    parsed = []
    for event in events:
        for kind in ("introduced", "fixed", "last_affected"):
            if kind in event:
                value = str(event[kind])
                v = Version("0") if (kind == "introduced" and value == "0") else _version(value)
                if v is not None:
                    parsed.append((v, kind))
    parsed.sort(key=lambda item: item[0])
    vulnerable = False
    for v, kind in parsed:
        if kind == "introduced" and version >= v:
            vulnerable = True
        elif kind == "fixed" and version >= v:
            vulnerable = False
        elif kind == "last_affected" and version > v:
            vulnerable = False
    return vulnerable


def affects(affected: dict, version: Version) -> bool:
    """Whether one OSV `affected[]` entry covers this version (ECOSYSTEM ranges, or `versions`).

    `versions` is compared as text first; it is parsed (slow: hundreds of versions) only when there is
    no ECOSYSTEM range, since then the list is the only evidence (GIT-only advisories).
    """
    ranges = [r for r in affected.get("ranges") or [] if r.get("type") in ("ECOSYSTEM", "SEMVER")]
    if any(_in_range(version, r.get("events") or []) for r in ranges):
        return True
    listed = [str(v) for v in affected.get("versions") or []]
    if str(version) in listed:
        return True
    return not ranges and any(_version(v) == version for v in listed)


def severity_of(vuln: dict) -> tuple[str, float | None]:
    """(low|medium|high|critical|unknown, CVSS base score) from OSV `severity` or database_specific."""
    from cvss import CVSS2, CVSS3, CVSS4

    entries = list(vuln.get("severity") or [])
    for aff in vuln.get("affected") or []:
        entries += list(aff.get("severity") or [])
    for entry in entries:
        kind, vector = str(entry.get("type", "")), str(entry.get("score", ""))
        calc = {"CVSS_V4": CVSS4, "CVSS_V3": CVSS3, "CVSS_V2": CVSS2}.get(kind)
        if calc is None:
            continue
        try:
            score = float(calc(vector).base_score)
        except Exception:  # noqa: BLE001 - a malformed vector: try the next entry
            continue
        level = "critical" if score >= 9 else "high" if score >= 7 else "medium" if score >= 4 else "low"
        return level, score
    word = str((vuln.get("database_specific") or {}).get("severity", "")).lower()
    word = {"moderate": "medium"}.get(word, word)
    return (word, None) if word in ("low", "medium", "high", "critical") else ("unknown", None)


def pip_audit_interface() -> Any:
    """pip-audit's service interface module, without running `pip_audit._service/__init__`.

    That package __init__ imports its PyPI/OSV services, whose cache module imports pip-api, which runs
    `python -m pip --version` at import (0.4-1.5 s). The offline scan needs none of it. If the package
    is imported later (osv/pypi service), it reuses this very module from sys.modules.
    """
    import importlib
    import importlib.util
    import sys

    name = "pip_audit._service.interface"
    if name in sys.modules:
        return sys.modules[name]
    package = importlib.import_module("pip_audit")  # only sets __version__
    spec = importlib.util.spec_from_file_location(name, Path(package.__file__).parent / "_service" / "interface.py")
    if spec is None or spec.loader is None:  # an unexpected pip-audit layout: take the normal route
        return importlib.import_module(name)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


_FAST = getattr(yaml, "CBaseLoader", yaml.BaseLoader)  # plain strings only: the fastest safe loader


def make_offline_service(root: Path, input_name: str) -> Any:
    """A pip-audit VulnerabilityService over an OSV advisory directory (e.g. PyPA's advisory-database)."""
    interface = pip_audit_interface()
    ResolvedDependency, VulnerabilityResult = interface.ResolvedDependency, interface.VulnerabilityResult
    VulnerabilityService = interface.VulnerabilityService

    class OsvDirectoryService(VulnerabilityService):
        """Indexes `<db>/vulns/<package>/*.yaml` (or a flat folder of OSV .json/.yaml files)."""

        def __init__(self, root: Path):
            self.root = root / "vulns" if (root / "vulns").is_dir() else root
            self.by_package: dict[str, list[Path]] = {}
            self.severity: dict[str, tuple[str, float | None]] = {}
            flat: list[Path] = []
            if not self.root.is_dir():
                raise BadInput(input_name, f"advisory database directory not found: {root}", file=str(root))
            for entry in os.scandir(self.root):
                if entry.is_dir() and not entry.name.startswith("."):
                    files = sorted(p for p in Path(entry.path).iterdir() if p.suffix in (".yaml", ".yml", ".json"))
                    if files:
                        self.by_package.setdefault(canonicalize_name(entry.name), []).extend(files)
                elif entry.is_file() and entry.name.endswith((".yaml", ".yml", ".json")):
                    flat.append(Path(entry.path))
            if not self.by_package and not flat:
                raise BadInput(input_name, f"{root} is not an OSV advisory database: no OSV .yaml/.json files "
                               "(expected vulns/<package>/<ID>.yaml or <ID>.json)", file=str(root))
            first = flat[0] if flat else next(iter(self.by_package.values()))[0]
            self._load(first)  # fail early, naming the file, when the folder is not OSV
            for path in sorted(flat):  # a flat folder (osv.dev export) has to be indexed by content
                for aff in self._load(path).get("affected") or []:
                    name = (aff.get("package") or {}).get("name")
                    if name:
                        self.by_package.setdefault(canonicalize_name(name), []).append(path)

        def _load(self, path: Path) -> dict:
            try:
                text = path.read_text(encoding="utf-8")
                data = json.loads(text) if path.suffix == ".json" else yaml.load(text, Loader=_FAST)  # noqa: S506
            except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as exc:
                raise BadInput(input_name, f"{path}: not a readable OSV advisory: {exc}", file=str(path)) from None
            if not (isinstance(data, dict) and isinstance(data.get("id"), str) and "modified" in data
                    and isinstance(data.get("affected", []), list)):
                raise BadInput(input_name, f"{path}: not an OSV advisory (needs 'id', 'modified' and an "
                               "'affected' list); is this an OSV-format database?", file=str(path))
            return data

        def _published(self, value: Any) -> Any:
            try:
                return self._parse_rfc3339(str(value)) if value else None
            except ValueError:
                return None

        def query(self, spec: Any) -> tuple[Any, list[Any]]:
            if spec.is_skipped():
                return spec, []
            assert isinstance(spec, ResolvedDependency)
            results = []
            for path in self.by_package.get(spec.canonical_name, []):
                vuln = self._load(path)
                if vuln.get("withdrawn"):
                    continue
                mine = [a for a in vuln.get("affected") or []
                        if (a.get("package") or {}).get("ecosystem") == "PyPI"
                        and canonicalize_name(str((a.get("package") or {}).get("name", ""))) == spec.canonical_name]
                if not any(affects(a, spec.version) for a in mine):
                    continue
                fixes = {v for a in mine for r in a.get("ranges") or [] if r.get("type") == "ECOSYSTEM"
                         for e in r.get("events") or [] if "fixed" in e
                         for v in [_version(e["fixed"])] if v is not None and v > spec.version}
                description = (vuln.get("summary") or vuln.get("details") or "N/A").replace("\n", " ")
                ids = [vuln["id"], *[str(a) for a in vuln.get("aliases") or []]]
                result = VulnerabilityResult.create(ids=list(ids), description=description,
                                                    fix_versions=sorted(fixes),
                                                    published=self._published(vuln.get("published")))
                level = severity_of(vuln)
                for vid in ids:
                    self.severity[vid] = level
                results.append(result)
            return spec, results

    return OsvDirectoryService(root)


def iter_unique(deps: list[Dep]) -> Iterator[Dep]:
    """Each (name, version, origin, problem) once, first declaration wins."""
    seen = set()
    for dep in deps:
        key = (dep.name, dep.version, dep.origin, dep.problem)
        if key not in seen:
            seen.add(key)
            yield dep
