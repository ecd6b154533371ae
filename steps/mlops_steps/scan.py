"""scan: dependency (pip-audit) and code (bandit) security scan with a fail-closed policy.

Audits requirements files, conda environment files, pyproject.toml, MLflow model directories and
installed environments against PyPI, OSV or an offline OSV advisory database directory, and scans
source paths with bandit. A dependency that could not be audited fails the scan unless the policy
allows it. Writes SARIF 2.1.0, a JSON report and a Markdown summary; exit 1 when the policy fails.
"""
from __future__ import annotations

import fnmatch
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from . import ci
from .ci import markdown_table
from .contract import BackendFailed, BadInput, StepInputs, StepResult, describe_input, step_command

OUTPUTS = {
    "vulnerabilities": "number of known vulnerabilities found in dependencies (allowed ones included)",
    "findings": "number of findings of every kind: vulnerabilities, code issues, unaudited dependencies",
    "blocking": "number of findings that fail the policy",
    "unaudited": "number of dependencies or files that could not be audited",
    "sarif-path": "SARIF 2.1.0 file (for upload-sarif / the ADO SARIF viewer)",
    "report-path": "JSON report with every finding and the policy verdict",
}

Level = Literal["low", "medium", "high", "critical"]
RANK = {"low": 1, "medium": 2, "high": 3, "critical": 4}
SERVICE_URLS = {"pypi": "https://pypi.org/pypi", "osv": "https://api.osv.dev/v1/query"}


class Inputs(StepInputs):
    requirements: list[str] = Field(default_factory=list, description="requirements.txt file(s) to audit.")
    conda_file: list[str] = Field(default_factory=list, description="conda.yml / environment.yml file(s): "
                                  "the pip: section is audited, conda packages are listed as not auditable.")
    pyproject: list[str] = Field(default_factory=list, description="pyproject.toml file(s) to audit.")
    model_dir: list[str] = Field(default_factory=list, description="MLflow model directories (their "
                                 "requirements.txt or conda.yaml).")
    environment: str | None = Field(None, description="Audit the packages installed for this Python "
                                    "interpreter ('current': the one running this step).")
    paths: list[str] = Field(default_factory=list, description="Source files/folders to scan with bandit.")
    exclude: list[str] = Field(default_factory=list, description="Paths bandit skips (glob patterns).")
    vulnerability_service: Literal["pypi", "osv", "offline"] | None = Field(
        None, description="Where vulnerabilities come from; default offline with --advisory-db, else pypi.")
    advisory_db: str | None = Field(None, description="Offline OSV advisory database directory "
                                    "(e.g. a checkout of PyPA's advisory-database).")
    service_url: str | None = Field(None, description="OSV query URL (for a mirror of api.osv.dev).")
    timeout: int = Field(15, ge=1, description="Seconds to wait for each vulnerability-service request.")
    policy: str | None = Field(None, description="Policy YAML: severity threshold, fail on fixable, "
                               "allowlist with expiry, allow_unaudited.")
    severity_threshold: Level | None = Field(None, description="Override the policy's severity threshold.")
    out_dir: str = Field("scan-results", description="Folder for scan.sarif, scan.json and scan.md.")

    @model_validator(mode="after")
    def _check(self) -> "Inputs":
        if not (self.requirements or self.conda_file or self.pyproject or self.model_dir
                or self.environment or self.paths):
            raise ValueError("nothing to scan: give --requirements, --conda-file, --pyproject, --model-dir, "
                             "--environment or --paths")
        service = self.vulnerability_service
        if service is None:
            self.vulnerability_service = "offline" if self.advisory_db else "pypi"
        elif service == "offline" and not self.advisory_db:
            raise ValueError("--vulnerability-service offline needs --advisory-db")
        elif service != "offline" and self.advisory_db:
            raise ValueError(f"--advisory-db is for the offline service, not {service}")
        if self.service_url and self.vulnerability_service != "osv":
            raise ValueError("--service-url applies to --vulnerability-service osv only")
        return self


# ---------------------------------------------------------------- findings model

@dataclass
class Finding:
    """One result of any kind: a dependency vulnerability, a code issue, or something not audited."""

    kind: Literal["dependency", "code", "unaudited"]
    id: str
    description: str
    severity: str = "unknown"  # low | medium | high | critical | unknown
    score: float | None = None
    aliases: list[str] = field(default_factory=list)
    package: str | None = None
    version: str | None = None
    file: str | None = None
    line: int | None = None
    fixed_versions: list[str] = field(default_factory=list)
    confidence: str | None = None
    name: str = ""
    help_uri: str | None = None
    origin: str | None = None
    status: Literal["fail", "allowed", "pass"] = "fail"
    note: str = ""

    @property
    def where(self) -> str:
        if self.package:
            at = f" ({self.file}:{self.line})" if self.file and self.line else f" ({self.file})" if self.file else ""
            return f"{self.package}{'==' + self.version if self.version else ''}{at}"
        return f"{self.file}:{self.line}" if self.line else str(self.file or "")


# ---------------------------------------------------------------- policy

class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AllowEntry(_Strict):
    id: str = Field(min_length=1)
    reason: str = Field(min_length=1)
    expires: date
    package: str | None = None
    path: str | None = None
    line: int = 0

    def matches(self, f: Finding) -> bool:
        ids = {f.id.upper(), *(a.upper() for a in f.aliases)}
        return (self.id.upper() in ids and (self.package is None or fnmatch.fnmatch(f.package or "", self.package))
                and (self.path is None or fnmatch.fnmatch(f.file or "", self.path)))


class UnauditedEntry(_Strict):
    package: str | None = None
    path: str | None = None
    reason: str = Field(min_length=1)
    expires: date | None = None
    line: int = 0

    @model_validator(mode="after")
    def _one(self) -> "UnauditedEntry":
        if not (self.package or self.path):
            raise ValueError("needs 'package' (a name or glob, 'conda:*' for conda packages) or 'path'")
        return self

    def matches(self, f: Finding) -> bool:
        if self.package and f.package:
            return any(fnmatch.fnmatch(n, self.package) for n in (f.package, f"{f.origin}:{f.package}"))
        return bool(self.path and f.file and fnmatch.fnmatch(f.file, self.path))


class Policy(_Strict):
    severity_threshold: Level = "low"
    unknown_severity: Level = "high"
    fail_on_fixable: bool = True
    min_confidence: Literal["low", "medium", "high"] = "low"
    allowlist: list[AllowEntry] = Field(default_factory=list)
    allow_unaudited: list[UnauditedEntry] = Field(default_factory=list)

    @field_validator("allowlist", "allow_unaudited", mode="before")
    @classmethod
    def _lines(cls, v: Any) -> Any:
        if isinstance(v, list):
            return [dict(e, line=getattr(e, "line", 0)) if isinstance(e, dict) else e for e in v]
        return v


def _line_of(data: Any, loc: tuple) -> int | None:
    """The nearest source line for a pydantic error location in data loaded with line numbers."""
    line = getattr(data, "line", None)
    for key in loc:
        try:
            data = data[key]
        except (KeyError, IndexError, TypeError):
            break
        line = getattr(data, "line", line)
    return line


def load_policy(path: str | None) -> Policy:
    from .scan_sources import load_yaml_lines

    if not path:
        return Policy()
    where = describe_input("policy")
    file = Path(path)
    if not file.is_file():
        raise BadInput(where, f"policy file not found: {path}", file=path)
    data = load_yaml_lines(file, where) or {}
    if not isinstance(data, dict):
        raise BadInput(where, f"{path}: the policy must be a mapping", file=path)
    try:
        return Policy.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = tuple(err.get("loc", ()))
        line = _line_of(data, loc)
        dotted = ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in loc).replace(".[", "[")
        msg = err.get("msg", "invalid").removeprefix("Value error, ")
        if err.get("type") == "missing" and loc and loc[-1] == "expires":
            msg = "an allowlist entry needs an expiry date ('expires: YYYY-MM-DD')"
        raise BadInput(where, f"{path} line {line}: {dotted}: {msg}", file=path, line=line) from None


def evaluate(findings: list[Finding], policy: Policy, policy_file: str | None,
             threshold: str, today: date) -> list[str]:
    """Set each finding's status; return the reasons the scan fails (empty: it passes)."""
    where = policy_file or "policy"
    failures = []
    for entry in [*policy.allowlist, *policy.allow_unaudited]:
        if entry.expires and entry.expires < today:
            name = getattr(entry, "id", None) or entry.package or entry.path
            failures.append(f"{where} line {entry.line}: allowlist entry {name} expired on {entry.expires} "
                            f"(reason was: {entry.reason})")
    conf_rank = {"low": 1, "medium": 2, "high": 3}
    for f in findings:
        entries = policy.allow_unaudited if f.kind == "unaudited" else policy.allowlist
        entry = next((e for e in entries if e.matches(f)), None)
        if entry is not None:
            if entry.expires and entry.expires < today:
                f.status, f.note = "fail", f"allowlist entry ({where} line {entry.line}) expired on {entry.expires}"
            else:
                f.status, f.note = "allowed", f"allowed until {entry.expires or 'further notice'}: {entry.reason}"
            if f.status == "allowed":
                continue
        elif f.kind == "unaudited":
            f.status, f.note = "fail", "could not be audited and the policy does not allow it"
        elif f.kind == "code" and conf_rank.get(str(f.confidence).lower(), 3) < conf_rank[policy.min_confidence]:
            f.status, f.note = "pass", f"confidence {f.confidence} below min_confidence {policy.min_confidence}"
        else:
            level = f.severity if f.severity in RANK else policy.unknown_severity
            if RANK[level] >= RANK[threshold]:
                f.status = "fail"
                f.note = f"severity {f.severity}" + (f" (counted as {level})" if level != f.severity else "") + \
                    f" >= threshold {threshold}"
            elif policy.fail_on_fixable and f.fixed_versions:
                f.status, f.note = "fail", f"a fixed version exists ({', '.join(f.fixed_versions)})"
            else:
                f.status, f.note = "pass", f"severity {f.severity} below threshold {threshold}"
        if f.status == "fail":
            failures.append(f"{f.id} {f.where}: {f.note}")
    return failures


# ---------------------------------------------------------------- dependencies

def _collect(inputs: Inputs) -> list[Any]:
    from . import scan_sources as src

    deps: list[Any] = []
    for name, reader in (("requirements", src.from_requirements), ("conda_file", src.from_conda),
                         ("pyproject", src.from_pyproject), ("model_dir", src.from_model_dir)):
        for value in getattr(inputs, name):
            deps += reader(Path(value), describe_input(name))
    if inputs.environment:
        deps += src.from_environment(inputs.environment, describe_input("environment"))
    return list(src.iter_unique(deps))


def _service(inputs: Inputs) -> tuple[Any, str]:
    if inputs.vulnerability_service == "offline":
        from .scan_sources import make_offline_service

        db = Path(inputs.advisory_db or "")
        return make_offline_service(db, describe_input("advisory_db")), f"offline OSV database {db}"
    if inputs.vulnerability_service == "osv":
        from pip_audit._service import OsvService

        url = inputs.service_url or SERVICE_URLS["osv"]
        return OsvService(timeout=inputs.timeout, osv_url=url), f"OSV ({url})"
    from pip_audit._service import PyPIService

    return PyPIService(timeout=inputs.timeout), f"PyPI ({SERVICE_URLS['pypi']})"


def audit_dependencies(deps: list[Any], service: Any, label: str) -> list[Finding]:
    """Query the service for every auditable dependency; the rest become `unaudited` findings."""
    from packaging.version import InvalidVersion, Version

    from .scan_sources import pip_audit_interface

    interface = pip_audit_interface()
    ResolvedDependency, ServiceError = interface.ResolvedDependency, interface.ServiceError
    network_errors: tuple[type[BaseException], ...] = (ServiceError,)
    if "requests" in sys.modules:  # the pypi/osv services use requests; the offline one never does
        network_errors += (sys.modules["requests"].RequestException,)
    findings: list[Finding] = []
    severity = getattr(service, "severity", {})
    for dep in deps:
        common = dict(package=dep.name, version=dep.version, file=dep.file, line=dep.line, origin=dep.origin)
        problem = dep.problem
        if problem is None:
            try:
                spec = ResolvedDependency(name=dep.name, version=Version(dep.version))
            except InvalidVersion:
                spec, problem = None, f"version {dep.version!r} is not a valid PEP 440 version"
        if problem is None:
            try:
                result_dep, vulns = service.query(spec)
            except network_errors as exc:
                raise BackendFailed(f"vulnerability service unreachable: {label} failed while auditing "
                                    f"{dep.name}=={dep.version}: {exc or type(exc).__name__}. Nothing was "
                                    "audited; fix the connection or use --advisory-db with an offline database.",
                                    logs=repr(exc)) from None
            if result_dep.is_skipped():
                problem = result_dep.skip_reason
            for v in vulns:
                level, score = severity.get(v.id, ("unknown", None))
                findings.append(Finding(
                    kind="dependency", id=v.id, aliases=sorted(v.aliases), description=v.description,
                    severity=level, score=score, fixed_versions=[str(x) for x in v.fix_versions],
                    help_uri=f"https://osv.dev/vulnerability/{v.id}", name=f"{dep.name}-{v.id}", **common))
        if problem is not None:
            findings.append(Finding(kind="unaudited", id="UNAUDITED", description=problem,
                                    name="unaudited-dependency", **common))
    return findings


# ---------------------------------------------------------------- code

def scan_code(paths: list[str], exclude: list[str]) -> tuple[list[Finding], str]:
    """Run bandit over the paths; files it could not parse become `unaudited` findings."""
    for p in paths:
        if not Path(p).exists():
            raise BadInput(describe_input("paths"), f"path not found: {p}", file=p)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "bandit.json"
        cmd = [sys.executable, "-m", "bandit", "-r", *paths, "-f", "json", "-o", str(out), "-q", "--exit-zero"]
        if exclude:
            cmd += ["-x", ",".join(exclude)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
        except subprocess.TimeoutExpired as exc:
            raise BackendFailed("bandit did not finish within 30 minutes", logs=str(exc.stderr or "")) from None
        if proc.returncode != 0 or not out.is_file():
            raise BackendFailed(f"bandit failed with exit code {proc.returncode}", logs=proc.stderr + proc.stdout)
        report = json.loads(out.read_text(encoding="utf-8"))
    findings = []
    for r in report.get("results", []):
        cwe = r.get("issue_cwe") or {}
        findings.append(Finding(
            kind="code", id=r["test_id"], name=r.get("test_name", ""), description=r.get("issue_text", ""),
            severity=str(r.get("issue_severity", "")).lower() or "unknown",
            confidence=str(r.get("issue_confidence", "")).lower() or None,
            aliases=[f"CWE-{cwe['id']}"] if cwe.get("id") else [], file=_norm(r.get("filename")),
            line=r.get("line_number"), help_uri=r.get("more_info")))
    for e in report.get("errors", []):
        findings.append(Finding(kind="unaudited", id="UNAUDITED", name="unaudited-file", file=_norm(e.get("filename")),
                                description=f"bandit could not scan this file: {e.get('reason', 'error')}"))
    return findings, _version_of("bandit")


def _norm(path: str | None) -> str | None:
    return os.path.normpath(path) if path else path


def _version_of(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "unknown"


# ---------------------------------------------------------------- step

def run(inputs: Inputs, backend: Any) -> StepResult:
    from .files import write_json_atomic, write_text_atomic
    from .scan_sarif import markdown_summary, sarif_log

    policy = load_policy(inputs.policy)
    threshold = inputs.severity_threshold or policy.severity_threshold
    deps = _collect(inputs)
    if getattr(inputs, "dry_run", False):  # list what would be audited; query nothing, write nothing
        rows = [{"package": d.name, "version": d.version or "", "declared in": f"{d.file or d.origin}"
                 f"{':' + str(d.line) if d.line else ''}", "auditable": d.problem or "yes"} for d in deps]
        rows += [{"package": "", "version": "", "declared in": p, "auditable": "bandit"} for p in inputs.paths]
        return StepResult({"unaudited": sum(d.problem is not None for d in deps)},
                          summary=markdown_table(rows, "Security scan (dry run): what would be audited"))
    findings: list[Finding] = []
    label = ""
    if deps:
        service, label = _service(inputs)
        findings += audit_dependencies(deps, service, label)
    bandit_version = None
    if inputs.paths:
        code, bandit_version = scan_code(inputs.paths, inputs.exclude)
        findings += code
    today = datetime.now(timezone.utc).date()
    failures = evaluate(findings, policy, inputs.policy, threshold, today)
    passed = not failures

    out = Path(inputs.out_dir)
    counts = {
        "dependencies": len(deps),
        "vulnerabilities": sum(f.kind == "dependency" for f in findings),
        "findings": len(findings),
        "blocking": sum(f.status == "fail" for f in findings),
        "unaudited": sum(f.kind == "unaudited" for f in findings),
    }
    report = {"passed": passed, "service": label or None, "policy": inputs.policy, "threshold": threshold,
              "date": today.isoformat(), "counts": counts, "failures": failures,
              "findings": [asdict(f) for f in findings]}
    tools = {"pip-audit": _version_of("pip-audit") if deps else None, "bandit": bandit_version}
    summary = markdown_summary(findings, failures, counts, label, passed)
    sarif = sarif_log(findings, tools, Path.cwd())
    write_text_atomic(out / "scan.sarif", json.dumps(sarif, indent=2) + "\n")
    write_json_atomic(out / "scan.json", report)
    write_text_atomic(out / "scan.md", summary + "\n")
    for f in findings:
        if f.status == "fail":
            ci.error(f"{f.id} {f.where}: {f.description[:200]} [{f.note}]", file=f.file, line=f.line)
    for reason in failures:
        if reason.startswith(f"{inputs.policy} line"):
            ci.error(reason, file=inputs.policy)
    outputs = {"vulnerabilities": counts["vulnerabilities"], "findings": counts["findings"],
               "blocking": counts["blocking"], "unaudited": counts["unaudited"],
               "sarif-path": str(out / "scan.sarif"), "report-path": str(out / "scan.json")}
    return StepResult(outputs, summary=summary, passed=passed)


command = step_command("scan", Inputs, OUTPUTS, run, __doc__ or "")
