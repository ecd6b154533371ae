#!/usr/bin/env python3
"""Static checks of the wrappers (`python3 tasks.py check` runs them all).

    python tools/check_wrappers.py            # every check
    python tools/check_wrappers.py zizmor ... # some of them

Checks: generated actions are fresh, self-references name this version, JSON schemas
(check-jsonschema's vendored github-actions, github-workflows, azure-pipelines), zizmor
(offline, zero findings), jactionlint with shellcheck, and the call contract: every
`uses:` of one of our actions or reusable workflows and every `template:` of ours passes
only declared inputs/parameters/secrets, and all required ones.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
REPO = "org/mlops-templates"


def _files(*patterns: str) -> list[str]:
    out: set[str] = set()
    for pattern in patterns:
        out.update(str(p.relative_to(ROOT)) for p in ROOT.glob(pattern)
                   if p.is_file() and ".venv" not in p.parts)
    return sorted(out)


def action_files() -> list[str]:
    return _files("actions/*/action.yml")


def workflow_files() -> list[str]:
    return _files(".github/workflows/*.yml", "examples/*/.github/workflows/*.yml")


def ado_files() -> list[str]:
    return _files("ado-templates/**/*.yml", "examples/*/azure-pipelines.yml", "examples/*/.azure-pipelines/*.yml")


def _run(*cmd: str) -> tuple[bool, str]:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "NO_COLOR": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    return proc.returncode == 0, (proc.stdout + proc.stderr).strip()


# -- the checks: each returns (ok, report) --------------------------------------------------------
def check_generated() -> tuple[bool, str]:
    return _run(sys.executable, "tools/gen_actions.py", "--check")


def check_refs() -> tuple[bool, str]:
    return _run(sys.executable, "tools/check_refs.py")


def check_schema_actions() -> tuple[bool, str]:
    return _run(str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.github-actions", *action_files())


def check_schema_workflows() -> tuple[bool, str]:
    return _run(str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.github-workflows", *workflow_files())


ADO_RESOURCES = {"repositories": [{"repository": "mlops-templates", "type": "github", "name": REPO,
                                   "ref": "refs/tags/v2.0.0", "endpoint": "github"}]}


def _required_params(path: Path) -> dict[str, Any]:
    params = yaml.safe_load(path.read_text()).get("parameters") or []
    return {p["name"]: ({} if p.get("type") == "object" else "x") for p in params if "default" not in p}


def ado_probe_pipelines(out: Path) -> list[Path]:
    """A pipeline using each of our templates (step templates on both backends), plus the examples'."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path in sorted((ROOT / "ado-templates").rglob("*.yml")):
        kind = path.parent.name
        variants = [{}, {"backend": "azureml", "azureSubscription": "conn"}] if kind == "steps" else [{}]
        for i, extra in enumerate(variants):
            params = {**_required_params(path), **extra}
            if kind == "stages":
                params["jobParameters"] = _required_params(ROOT / "ado-templates" / "jobs" / path.name)
            body = {"trigger": "none", "resources": ADO_RESOURCES,
                    kind: [{"template": f"{path.relative_to(ROOT)}@mlops-templates", "parameters": params}]}
            target = out / f"{kind}-{path.stem}-{i}.yml"
            target.write_text(yaml.safe_dump(body, sort_keys=False))
            written.append(target)
    return written


def expanded_ado_pipelines(out: Path) -> list[Path]:
    """Every probe and example pipeline, expanded by tools/ado_expand.py into `out`."""
    sys.path.insert(0, str(ROOT / "tools"))
    import ado_expand

    sources = ado_probe_pipelines(out / "probes")
    sources += [ROOT / f for f in _files("examples/*/azure-pipelines.yml", "examples/*/.azure-pipelines/*.yml")]
    expanded = []
    for src in sources:
        doc = ado_expand.expand(src, {"mlops-templates": ROOT})
        name = src.name if src.is_relative_to(out) else "-".join(src.relative_to(ROOT).parts)
        target = out / "expanded" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(yaml.safe_dump(doc, sort_keys=False))
        expanded.append(target)
    return expanded


def check_schema_ado() -> tuple[bool, str]:
    """Templates are checked as Azure sees them: expanded (raw templates are not pipelines)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        try:
            files = expanded_ado_pipelines(Path(tmp))
        except Exception as exc:  # a template the expander refuses: report it, do not crash
            return False, f"expansion failed: {exc}"
        ok, out = _run(str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.azure-pipelines",
                       "--regex-variant", "python", *map(str, files))
        return ok, f"{len(files)} expanded pipelines: {out}"


def check_zizmor() -> tuple[bool, str]:
    ok, out = _run(str(BIN / "zizmor"), "--offline", "--no-progress", "--config", ".github/zizmor.yml",
                   *workflow_files(), *action_files())
    return ok and "No findings" in out, out


def check_actionlint() -> tuple[bool, str]:
    return _run(str(BIN / "jactionlint"), "--no-online", "--shellcheck", str(BIN / "shellcheck"),
                "--pyflakes=", "--config-file", ".github/jactionlint.yaml", *workflow_files(), *action_files())


# -- call contract --------------------------------------------------------------------------------
def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def _load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _on(doc: dict) -> Any:
    return doc.get("on", doc.get(True))


def callee_interface(uses: str, base: Path) -> tuple[str, dict, dict] | None:
    """(kind, inputs {name: required}, secrets {name: required}) of one of our actions/workflows."""
    ref = uses.split("@")[0]
    if ref.startswith(REPO + "/"):
        rel = ref[len(REPO) + 1:]
    elif ref.startswith("./"):
        rel = os.path.normpath(os.path.relpath((base / ref).resolve(), ROOT))
        if rel.startswith(".."):
            return None
    else:
        return None
    path = ROOT / rel
    if path.suffix in (".yml", ".yaml") and path.is_file():
        call = (_on(_load(path)) or {}).get("workflow_call") or {}
        inputs = {n: bool(i.get("required")) and "default" not in i for n, i in (call.get("inputs") or {}).items()}
        secrets = {n: bool((s or {}).get("required")) for n, s in (call.get("secrets") or {}).items()}
        return "workflow", inputs, secrets
    action = path / "action.yml"
    if action.is_file():
        spec = _load(action)
        inputs = {n: bool(i.get("required")) and "default" not in i for n, i in (spec.get("inputs") or {}).items()}
        return "action", inputs, {}
    raise FileNotFoundError(f"{uses}: no such action or workflow in this repository")


def _walk_uses(doc: dict) -> Iterator[tuple[str, dict, Any]]:
    """(uses, with, secrets) of every job-level and step-level `uses:` of a workflow/action."""
    for job in (doc.get("jobs") or {}).values():
        if "uses" in job:
            yield job["uses"], job.get("with") or {}, job.get("secrets")
        for step in job.get("steps") or []:
            if "uses" in step:
                yield step["uses"], step.get("with") or {}, None
    for step in ((doc.get("runs") or {}).get("steps") or []):
        if "uses" in step:
            yield step["uses"], step.get("with") or {}, None


def contract_problems_github(path: Path) -> list[str]:
    problems = []
    for uses, with_, secrets in _walk_uses(_load(path) or {}):
        iface = callee_interface(uses, path.parent if path.name == "action.yml" else ROOT)
        if iface is None:
            continue
        kind, inputs, declared_secrets = iface
        for name in with_:
            if name not in inputs:
                problems.append(f"{_rel(path)}: {uses} has no input {name!r}")
        for name, required in inputs.items():
            if required and name not in with_:
                problems.append(f"{_rel(path)}: {uses} needs input {name!r}")
        if kind == "workflow":
            if secrets == "inherit":
                problems.append(f"{_rel(path)}: {uses}: pass declared secrets, not `inherit`")
            for name in secrets or {}:
                if name not in declared_secrets:
                    problems.append(f"{_rel(path)}: {uses} declares no secret {name!r}")
            for name, required in declared_secrets.items():
                if required and name not in (secrets or {}):
                    problems.append(f"{_rel(path)}: {uses} needs secret {name!r}")
    return problems


def template_parameters(path: Path) -> dict[str, bool]:
    """An ADO template's parameters: name -> required (no default)."""
    params = (_load(path) or {}).get("parameters") or []
    return {p["name"]: "default" not in p for p in params}


def _walk_templates(node: Any) -> Iterator[tuple[str, dict]]:
    if isinstance(node, dict):
        if isinstance(node.get("template"), str):
            yield node["template"], node.get("parameters") or {}
        for key, value in node.items():
            yield from _walk_templates(value)
    elif isinstance(node, list):
        for item in node:
            yield from _walk_templates(item)


def contract_problems_ado(path: Path) -> list[str]:
    problems = []
    for ref, params in _walk_templates(_load(path) or {}):
        if "${{" in ref:
            continue
        name, _, repo = ref.partition("@")
        if repo and repo != "mlops-templates":
            continue
        target = (ROOT / name.lstrip("/")) if repo or name.startswith("/") or name.startswith("ado-templates/") \
            else (path.parent / name)
        if not target.is_file():
            problems.append(f"{_rel(path)}: template {ref} not found")
            continue
        if not isinstance(params, dict):  # parameters passed on as a whole object: checked where they land
            continue
        job_params = params.get("jobParameters")
        jobs_template = ROOT / "ado-templates" / "jobs" / target.name
        if target.parent.name == "stages" and isinstance(job_params, dict) and jobs_template.is_file():
            declared_jobs = template_parameters(jobs_template)
            problems += [f"{_rel(path)}: {ref} jobParameters has no parameter {k!r}"
                         for k in job_params if k not in declared_jobs]
            problems += [f"{_rel(path)}: {ref} jobParameters needs parameter {k!r}"
                         for k, req in declared_jobs.items() if req and k not in job_params]
        declared = template_parameters(target)
        for key in params:
            if key not in declared and "${{" not in str(key):
                problems.append(f"{_rel(path)}: {ref} has no parameter {key!r}")
        for key, required in declared.items():
            if required and key not in params:
                problems.append(f"{_rel(path)}: {ref} needs parameter {key!r}")
    return problems


def check_contracts() -> tuple[bool, str]:
    problems = []
    for rel in workflow_files() + action_files():
        problems += contract_problems_github(ROOT / rel)
    for rel in ado_files():
        problems += contract_problems_ado(ROOT / rel)
    return not problems, "\n".join(problems) or "every call passes declared inputs only, and all required ones"


CHECKS: dict[str, Callable[[], tuple[bool, str]]] = {
    "generated": check_generated,
    "refs": check_refs,
    "schema-actions": check_schema_actions,
    "schema-workflows": check_schema_workflows,
    "schema-ado": check_schema_ado,
    "zizmor": check_zizmor,
    "actionlint": check_actionlint,
    "contracts": check_contracts,
}


def main(argv: list[str]) -> int:
    names = argv or list(CHECKS)
    unknown = [n for n in names if n not in CHECKS]
    if unknown:
        print(f"unknown check(s): {', '.join(unknown)}; known: {', '.join(CHECKS)}")
        return 2
    failed = []
    for name in names:
        ok, report = CHECKS[name]()
        print(f"{'ok  ' if ok else 'FAIL'} {name}")
        if not ok:
            print(re.sub(r"(?m)^", "     ", report))
            failed.append(name)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
