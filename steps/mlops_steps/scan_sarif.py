"""scan reports: SARIF 2.1.0 (GitHub code scanning, the Azure DevOps SARIF viewer) and Markdown."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from .ci import markdown_table

SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
# GitHub ranks alerts by `security-severity` (a CVSS-like number) when no score is known.
_SCORE = {"critical": 9.5, "high": 8.0, "medium": 5.5, "low": 2.0}
_LEVEL = {"critical": "error", "high": "error", "medium": "warning", "low": "note"}
_TOOLS = {
    "pip-audit": ("dependency", "https://github.com/pypa/pip-audit", "mlops-scan/dependencies/"),
    "bandit": ("code", "https://github.com/PyCQA/bandit", "mlops-scan/code/"),
}


def _uri(file: str, root: Path) -> dict[str, str]:
    path = Path(file)
    absolute = path if path.is_absolute() else (root / path)
    try:
        return {"uri": absolute.resolve().relative_to(root.resolve()).as_posix(), "uriBaseId": "%SRCROOT%"}
    except ValueError:
        return {"uri": absolute.resolve().as_uri()}


def _location(f: Any, root: Path) -> dict[str, Any]:
    if f.file:
        physical: dict[str, Any] = {"artifactLocation": _uri(f.file, root)}
        if f.line:
            physical["region"] = {"startLine": int(f.line)}
        return {"physicalLocation": physical}
    return {"logicalLocations": [{"name": f"{f.package}=={f.version}", "kind": "module"}]}


def _rule(f: Any) -> dict[str, Any]:
    if f.kind == "unaudited":
        return {"id": "UNAUDITED", "name": "NotAudited",
                "shortDescription": {"text": "A dependency or file could not be audited"},
                "fullDescription": {"text": "The scan fails closed: what could not be audited (unpinned, "
                                            "not found, conda package, unparseable file) fails unless the "
                                            "policy allows it in allow_unaudited."},
                "defaultConfiguration": {"level": "error"},
                "properties": {"tags": ["security"], "security-severity": "8.0"}}
    score = f.score if f.score is not None else _SCORE.get(f.severity, 8.0)
    subject = f"{f.package}: " if f.package else ""
    rule: dict[str, Any] = {
        "id": f.id, "name": "".join(p.title() for p in (f.name or f.id).replace("-", "_").split("_")),
        "shortDescription": {"text": f"{subject}{f.description[:200]}"},
        "fullDescription": {"text": f.description or f.id},
        "help": {"text": _help(f), "markdown": _help(f)},
        "defaultConfiguration": {"level": _LEVEL.get(f.severity, "error")},
        "properties": {"tags": ["security", f.kind, *f.aliases], "security-severity": f"{score:.1f}",
                       "precision": {"high": "high", "medium": "medium", "low": "low"}.get(f.confidence or "", "high")},
    }
    if f.help_uri:
        rule["helpUri"] = f.help_uri
    return rule


def _help(f: Any) -> str:
    lines = [f.description]
    if f.aliases:
        lines.append(f"Aliases: {', '.join(f.aliases)}")
    if f.fixed_versions:
        lines.append(f"Fixed in: {', '.join(f.fixed_versions)}")
    if f.help_uri:
        lines.append(f"More: {f.help_uri}")
    return "\n\n".join(lines)


def _message(f: Any) -> str:
    if f.kind == "unaudited":
        return f"Not audited: {f.where}: {f.description}. {f.note}".strip()
    if f.kind == "dependency":
        fixed = f" Fixed in {', '.join(f.fixed_versions)}." if f.fixed_versions else " No fixed version."
        aka = f" ({', '.join(f.aliases)})" if f.aliases else ""
        text = f.description[:300].rstrip(".")
        return f"{f.package} {f.version} is affected by {f.id}{aka}: {text}.{fixed} [{f.note}]"
    return f"{f.id} {f.name}: {f.description} (severity {f.severity}, confidence {f.confidence}) [{f.note}]"


def _result(f: Any, rule_index: int, root: Path) -> dict[str, Any]:
    key = "|".join(str(x) for x in (f.kind, f.id, f.package, f.version, f.file, f.line if f.kind == "code" else ""))
    result: dict[str, Any] = {
        "ruleId": f.id, "ruleIndex": rule_index,
        "level": "error" if f.status == "fail" else _LEVEL.get(f.severity, "warning") if f.status == "pass" else "note",
        "message": {"text": _message(f)},
        "locations": [_location(f, root)],
        "partialFingerprints": {"mlopsScanFinding/v1": hashlib.sha256(key.encode()).hexdigest()},
        "properties": {"status": f.status, "severity": f.severity, "policy": f.note},
    }
    if f.status == "allowed":
        result["suppressions"] = [{"kind": "external", "status": "accepted", "justification": f.note}]
    return result


def sarif_log(findings: list[Any], tools: dict[str, str | None], root: Path) -> dict[str, Any]:
    """A SARIF 2.1.0 log: one run per tool that ran (pip-audit for dependencies, bandit for code)."""
    runs = []
    for tool, version in tools.items():
        if version is None:
            continue
        kind, uri, category = _TOOLS[tool]
        mine = [f for f in findings if f.kind == kind or (f.kind == "unaudited" and
                                                          (f.package is not None) == (kind == "dependency"))]
        rules: list[dict[str, Any]] = []
        index: dict[str, int] = {}
        results = []
        for f in mine:
            rule_id = "UNAUDITED" if f.kind == "unaudited" else f.id
            if rule_id not in index:
                index[rule_id] = len(rules)
                rules.append(_rule(f))
            results.append(_result(f, index[rule_id], root))
        runs.append({
            "tool": {"driver": {"name": tool, "version": version, "informationUri": uri, "rules": rules}},
            "automationDetails": {"id": category},
            "originalUriBaseIds": {"%SRCROOT%": {"uri": root.resolve().as_uri() + "/"}},
            "columnKind": "unicodeCodePoints",
            "results": results,
        })
    return {"$schema": SCHEMA, "version": "2.1.0", "runs": runs}


def markdown_summary(findings: list[Any], failures: list[str], counts: dict[str, int], service: str,
                     passed: bool) -> str:
    """The job summary: verdict, counts, why it failed, and a table of findings."""
    verdict = "passed" if passed else "FAILED"
    lines = [f"## Security scan {verdict}", "",
             f"{counts['dependencies']} dependencies checked against {service or '(no dependencies)'}; "
             f"{counts['vulnerabilities']} vulnerabilities, {counts['findings']} findings, "
             f"{counts['blocking']} blocking, {counts['unaudited']} not audited."]
    if failures:
        lines += ["", "**Why it failed:**", ""] + [f"- {reason}" for reason in failures[:50]]
        if len(failures) > 50:
            lines.append(f"- ... and {len(failures) - 50} more (see the JSON report)")
    rows = [{"status": f.status, "id": f.id, "where": f.where, "severity": f.severity,
             "fixed in": ", ".join(f.fixed_versions), "description": f.description[:100]} for f in findings]
    lines += ["", markdown_table(rows, "Findings")]
    return "\n".join(lines)
