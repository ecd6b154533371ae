#!/usr/bin/env python3
"""A small Azure Pipelines template expander and agent, for the subset our templates use.

This approximates Azure DevOps' template engine; it is checked against the azure-pipelines
JSON schema (check-jsonschema's vendored copy), not against the service. Supported:

- compile time: typed template parameters (string, number, boolean, object, step(List),
  job(List), stage(List)) with defaults, `values:` and validation of unknown/missing ones;
  `${{ expr }}` (whole values keep their type, embedded ones become text, booleans as
  True/False like Azure); `${{ if }}` / `${{ elseif }}` / `${{ else }}` and `${{ each }}` in
  mappings and sequences; nested `template:` references in steps, jobs and stages lists,
  `path@alias` resolved through the repositories given to `expand()`;
  functions eq, ne, and, or, not, in, notIn, contains, startsWith, endsWith, coalesce,
  format, join, lower, upper, replace, length.
- run time (`run()`): stages, jobs and steps in dependsOn order; conditions (succeeded(),
  failed(), always(), succeededOrFailed() and the functions above, `dependencies.J.outputs['s.v']`,
  `dependencies.J.result`, `stageDependencies.S.J.outputs['s.v']`, `variables['x']`);
  `$[ ]` job variables; `$(macro)` expansion of known variables; `bash:`/`script:` steps run
  with their `env:` and `workingDirectory` like an agent (TF_BUILD=True), `##vso[task.setvariable]`
  logging commands parsed from their stdout; `task:` steps are recorded, not run
  (ManualValidation takes the decision given to run()); `checkout:` is recorded.

    python tools/ado_expand.py PIPELINE.yml --repo mlops-templates=. [--param k=v]  # prints YAML
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class TemplateError(Exception):
    """The pipeline or a template is invalid (Azure would refuse to compile it)."""


# -- expressions ----------------------------------------------------------------------------------
_TOKEN = re.compile(r"\s*(?:(?P<str>'(?:[^']|'')*')|(?P<num>-?\d+(?:\.\d+)?)|(?P<name>[A-Za-z_][\w\-]*)"
                    r"|(?P<punct>[(),.\[\]!]))")


def _tokens(text: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    text = text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise TemplateError(f"cannot parse expression {text!r} at {text[pos:]!r}")
        kind = m.lastgroup
        out.append((kind, m.group(kind)))
        pos = m.end()
    return out


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "True" if value else "False"
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (dict, list)):
        raise TemplateError(f"an object cannot be used as text: {json.dumps(value)[:80]}")
    return str(value)


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value != ""
    return bool(value)


def _eq(a: Any, b: Any) -> bool:
    if isinstance(a, str) and isinstance(b, str):
        return a.lower() == b.lower()
    if isinstance(a, bool) or isinstance(b, bool):
        return _truthy(a) == _truthy(b) if not (isinstance(a, str) or isinstance(b, str)) else \
            _text(a).lower() == _text(b).lower()
    if isinstance(a, (int, float)) and isinstance(b, str):
        try:
            return float(b) == a
        except ValueError:
            return False
    if isinstance(b, (int, float)) and isinstance(a, str):
        return _eq(b, a)
    return a == b


FUNCTIONS: dict[str, Any] = {
    "eq": lambda a, b: _eq(a, b),
    "ne": lambda a, b: not _eq(a, b),
    "and": lambda *a: all(_truthy(x) for x in a),
    "or": lambda *a: any(_truthy(x) for x in a),
    "not": lambda a: not _truthy(a),
    "in": lambda a, *b: any(_eq(a, x) for x in b),
    "notIn": lambda a, *b: not any(_eq(a, x) for x in b),
    "contains": lambda a, b: _text(b).lower() in _text(a).lower(),
    "startsWith": lambda a, b: _text(a).lower().startswith(_text(b).lower()),
    "endsWith": lambda a, b: _text(a).lower().endswith(_text(b).lower()),
    "coalesce": lambda *a: next((x for x in a if _truthy(x)), ""),
    "format": lambda f, *a: re.sub(r"\{(\d+)\}", lambda m: _text(a[int(m.group(1))]), f),
    "join": lambda sep, items: sep.join(_text(i) for i in (items or [])),
    "lower": lambda a: _text(a).lower(),
    "upper": lambda a: _text(a).upper(),
    "replace": lambda a, b, c: _text(a).replace(_text(b), _text(c)),
    "length": lambda a: len(a or ""),
}


class _Parser:
    def __init__(self, text: str, context: dict[str, Any], runtime: "Runtime | None" = None):
        self.toks, self.i, self.context, self.runtime, self.text = _tokens(text), 0, context, runtime, text

    def peek(self) -> tuple[str, str] | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self, value: str | None = None) -> tuple[str, str]:
        tok = self.peek()
        if tok is None or (value is not None and tok[1] != value):
            raise TemplateError(f"unexpected end of or token in expression {self.text!r}")
        self.i += 1
        return tok

    def parse(self) -> Any:
        value = self.expr()
        if self.peek() is not None:
            raise TemplateError(f"unexpected {self.peek()[1]!r} in expression {self.text!r}")
        return value

    def expr(self) -> Any:
        kind, tok = self.take()
        if kind == "str":
            return tok[1:-1].replace("''", "'")
        if kind == "num":
            return float(tok) if "." in tok else int(tok)
        if kind == "punct" and tok == "!":
            return not _truthy(self.expr())
        if kind != "name":
            raise TemplateError(f"unexpected {tok!r} in expression {self.text!r}")
        if tok in ("true", "false"):
            return tok == "true"
        if tok == "null":
            return None
        if self.peek() == ("punct", "("):
            self.take("(")
            args = []
            while self.peek() != ("punct", ")"):
                args.append(self.expr())
                if self.peek() == ("punct", ","):
                    self.take(",")
            self.take(")")
            return self.call(tok, args)
        if tok not in self.context:
            raise TemplateError(f"unknown name {tok!r} in expression {self.text!r}")
        value = self.context[tok]
        while self.peek() in (("punct", "."), ("punct", "[")):
            if self.take()[1] == ".":
                key = self.take()[1]
            else:
                key = self.expr()
                self.take("]")
            value = value.get(key) if isinstance(value, dict) else None
        return value

    def call(self, name: str, args: list[Any]) -> Any:
        if name in ("succeeded", "failed", "always", "succeededOrFailed", "canceled"):
            if self.runtime is None:
                raise TemplateError(f"{name}() is a run-time function")
            return self.runtime.status_function(name, args)
        if name not in FUNCTIONS:
            raise TemplateError(f"unknown function {name}()")
        return FUNCTIONS[name](*args)


def evaluate(expr: str, context: dict[str, Any], runtime: "Runtime | None" = None) -> Any:
    return _Parser(expr, context, runtime).parse()


_WHOLE = re.compile(r"^\s*\$\{\{(.*)\}\}\s*$", re.S)
_EMBED = re.compile(r"\$\{\{(.*?)\}\}", re.S)


def substitute(value: str, context: dict[str, Any]) -> Any:
    m = _WHOLE.match(value)
    if m and "${{" not in m.group(1):
        return evaluate(m.group(1), context)
    return _EMBED.sub(lambda mm: _text(evaluate(mm.group(1), context)), value)


# -- compile time: templates -----------------------------------------------------------------------
_DIRECTIVE = re.compile(r"^\$\{\{\s*(if|elseif|else|each)\b(.*)\}\}$", re.S)
TYPES = {"string", "number", "boolean", "object", "step", "stepList", "job", "jobList", "stage", "stageList"}


def _coerce(name: str, kind: str, value: Any, where: str) -> Any:
    bad = TemplateError(f"{where}: parameter {name!r} expects a {kind}, got {value!r}")
    if kind == "string":
        if isinstance(value, (dict, list)):
            raise bad
        return _text(value)
    if kind == "boolean":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        raise bad
    if kind == "number":
        if isinstance(value, bool):
            raise bad
        try:
            return float(value) if "." in str(value) else int(value)
        except (TypeError, ValueError):
            raise bad from None
    if kind in ("stepList", "jobList", "stageList") and not isinstance(value, list):
        raise bad
    if kind in ("step", "job", "stage") and not isinstance(value, dict):
        raise bad
    return value


def bind_parameters(declared: Any, given: dict[str, Any], where: str) -> dict[str, Any]:
    """Validate given values against declared parameters; apply defaults."""
    if isinstance(declared, dict):  # the old, untyped form: name: default
        declared = [{"name": k, "type": "object", "default": v} for k, v in declared.items()]
    declared = declared or []
    names = {p["name"] for p in declared}
    unknown = sorted(set(given) - names)
    if unknown:
        raise TemplateError(f"{where}: unexpected parameter(s) {', '.join(unknown)}")
    bound = {}
    for p in declared:
        name, kind = p["name"], p.get("type", "string")
        if kind not in TYPES:
            raise TemplateError(f"{where}: parameter {name!r} has unknown type {kind!r}")
        if name in given:
            value = given[name]
        elif "default" in p:
            value = p["default"]
        else:
            raise TemplateError(f"{where}: a value for parameter {name!r} must be provided")
        value = _coerce(name, kind, value, where)
        if "values" in p and not any(_eq(value, v) for v in p["values"]):
            raise TemplateError(f"{where}: parameter {name!r} value {value!r} is not one of {p['values']}")
        bound[name] = value
    return bound


@dataclass
class Expander:
    repos: dict[str, Path]  # repository alias -> folder (`self` is the pipeline's repository)

    def resolve(self, ref: str, current: Path) -> Path:
        path, _, alias = ref.partition("@")
        if alias:
            if alias not in self.repos:
                raise TemplateError(f"{ref}: unknown repository alias {alias!r}")
            target = self.repos[alias] / path.lstrip("/")
        elif path.startswith("/"):
            target = self.repos["self"] / path.lstrip("/")
        else:
            target = current.parent / path
        if not target.is_file():
            raise TemplateError(f"template {ref} not found ({target})")
        return target

    def load(self, path: Path) -> dict:
        try:
            doc = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise TemplateError(f"{path}: invalid YAML: {exc}") from None
        return doc or {}

    def template(self, ref: str, params: dict[str, Any], current: Path, context: dict) -> tuple[Path, dict]:
        path = self.resolve(ref, current)
        doc = self.load(path)
        given = self.node(params or {}, context, current)
        bound = bind_parameters(doc.get("parameters"), given, str(path))
        body = {k: v for k, v in doc.items() if k != "parameters"}
        # a template referenced from another repository resolves its own relative templates there
        return path, self.node(body, {**context, "parameters": bound}, path)

    def node(self, value: Any, context: dict, current: Path) -> Any:
        if isinstance(value, str):
            return substitute(value, context) if "${{" in value else value
        if isinstance(value, list):
            return self.sequence(value, context, current)
        if isinstance(value, dict):
            return self.mapping(value, context, current)
        return value

    def _directive(self, key: Any) -> tuple[str, str] | None:
        m = _DIRECTIVE.match(key.strip()) if isinstance(key, str) else None
        return (m.group(1), m.group(2).strip()) if m else None

    def _each(self, spec: str, context: dict) -> tuple[str, Any]:
        m = re.match(r"^([A-Za-z_]\w*)\s+in\s+(.+)$", spec)
        if not m:
            raise TemplateError(f"invalid each: {spec!r}")
        items = evaluate(m.group(2), context)
        if isinstance(items, dict):
            items = [{"key": k, "value": v} for k, v in items.items()]
        return m.group(1), items or []

    def mapping(self, value: dict, context: dict, current: Path) -> dict:
        out: dict = {}
        last_if: bool | None = None
        for key, item in value.items():
            directive = self._directive(key)
            if directive is None:
                last_if = None
                new_key = substitute(key, context) if isinstance(key, str) and "${{" in key else key
                out[new_key] = self.node(item, context, current)
                continue
            kind, arg = directive
            if kind == "each":
                var, items = self._each(arg, context)
                for it in items:
                    res = self.node(item, {**context, var: it}, current)
                    out.update(res or {})
                last_if = None
                continue
            take, last_if = self._branch(kind, arg, context, last_if)
            if take:
                res = self.node(item, context, current)
                if res is not None and not isinstance(res, dict):
                    raise TemplateError(f"{key}: a conditional inside a mapping must hold a mapping")
                out.update(res or {})
        return out

    def _branch(self, kind: str, arg: str, context: dict, last_if: bool | None) -> tuple[bool, bool | None]:
        if kind == "if":
            ok = _truthy(evaluate(arg, context))
            return ok, ok
        if last_if is None:
            raise TemplateError(f"${{{{ {kind} }}}} without a preceding ${{{{ if }}}}")
        if last_if:
            return False, True
        if kind == "elseif":
            ok = _truthy(evaluate(arg, context))
            return ok, ok
        return True, None

    def sequence(self, value: list, context: dict, current: Path) -> list:
        out: list = []
        last_if: bool | None = None
        for item in value:
            if isinstance(item, dict) and len(item) == 1 and self._directive(next(iter(item))):
                kind, arg = self._directive(next(iter(item)))
                body = next(iter(item.values()))
                if kind == "each":
                    var, items = self._each(arg, context)
                    for it in items:
                        out += self._splice(self.node(body, {**context, var: it}, current))
                    last_if = None
                    continue
                take, last_if = self._branch(kind, arg, context, last_if)
                if take:
                    out += self._splice(self.node(body, context, current))
                continue
            last_if = None
            if isinstance(item, dict) and isinstance(item.get("template"), str) and set(item) <= {"template", "parameters"}:
                ref = substitute(item["template"], context) if "${{" in item["template"] else item["template"]
                _, body = self.template(ref, item.get("parameters") or {}, current, context)
                lists = [body[k] for k in ("stages", "jobs", "steps", "variables") if k in body]
                if len(lists) != 1:
                    raise TemplateError(f"template {ref} must define exactly one of stages, jobs, steps")
                out += lists[0] or []
                continue
            out.append(self.node(item, context, current))
        return out

    def _splice(self, value: Any) -> list:
        if value is None:
            return []
        return value if isinstance(value, list) else [value]


def expand(pipeline: Path, repos: dict[str, Path] | None = None,
           parameters: dict[str, Any] | None = None) -> dict:
    """The pipeline with every template and compile-time expression expanded."""
    pipeline = Path(pipeline).resolve()
    repos = {"self": pipeline.parent, **{k: Path(v).resolve() for k, v in (repos or {}).items()}}
    exp = Expander(repos)
    doc = exp.load(pipeline)
    if "extends" in doc:
        raise TemplateError("extends: templates are not supported by this expander")
    bound = bind_parameters(doc.get("parameters"), parameters or {}, str(pipeline))
    body = {k: v for k, v in doc.items() if k != "parameters"}
    return _scalars_as_text(exp.node(body, {"parameters": bound}, pipeline))


def _scalars_as_text(value: Any) -> Any:
    """Azure reads the YAML scalars of the expanded pipeline as text (true -> "true"); the schema
    types a few properties of `task:` steps as boolean/integer, so those keep their type."""
    if isinstance(value, dict):
        out = {k: _scalars_as_text(v) for k, v in value.items()}
        if "task" in out:
            for key in ("continueOnError",):
                if isinstance(out.get(key), str) and out[key].lower() in ("true", "false"):
                    out[key] = out[key].lower() == "true"
            for key in ("timeoutInMinutes", "retryCountOnTaskFailure"):
                if isinstance(out.get(key), str) and out[key].isdigit():
                    out[key] = int(out[key])
        return out
    if isinstance(value, list):
        return [_scalars_as_text(v) for v in value]
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return _text(value)
    return value


# -- run time: an agent for bash/script steps -----------------------------------------------------
_VSO = re.compile(r"^\s*##vso\[(?P<cmd>[\w.]+)(?P<props>[^\]]*)\](?P<value>.*)$")


def _unescape(text: str) -> str:
    return (text.replace("%0D", "\r").replace("%0A", "\n").replace("%3B", ";").replace("%5D", "]")
            .replace("%AZP25", "%"))


@dataclass
class StepRecord:
    name: str
    kind: str
    result: str
    exit_code: int | None = None
    output: str = ""
    inputs: dict = field(default_factory=dict)


@dataclass
class JobRecord:
    stage: str
    name: str
    result: str = "Skipped"
    outputs: dict[str, str] = field(default_factory=dict)
    steps: list[StepRecord] = field(default_factory=list)


@dataclass
class Runtime:
    """Runs an expanded pipeline on this machine, the way an agent would."""

    workdir: Path
    base_env: dict[str, str]
    repos: dict[str, Path] = field(default_factory=dict)  # checkout alias -> folder to copy
    approvals: dict[str, bool] = field(default_factory=dict)  # ManualValidation step/job name -> decision
    jobs: dict[tuple[str, str], JobRecord] = field(default_factory=dict)
    _deps: list[str] = field(default_factory=list)
    _step_state: str = "Succeeded"
    _stage: str = ""

    def status_function(self, name: str, args: list[Any]) -> bool:
        if self._deps is None:  # step level
            state = self._step_state
            return {"succeeded": state in ("Succeeded", "SucceededWithIssues"), "failed": state == "Failed",
                    "always": True, "succeededOrFailed": True, "canceled": False}[name]
        results = [self.jobs[(self._stage, d)].result if (self._stage, d) in self.jobs else "Skipped"
                   for d in (args or self._deps)]
        if name == "always" or name == "succeededOrFailed":
            return True
        if name == "canceled":
            return False
        if name == "failed":
            return any(r == "Failed" for r in results)
        return all(r in ("Succeeded", "SucceededWithIssues") for r in results)

    def _dependencies(self, stage: str, names: list[str]) -> dict:
        deps = {}
        for n in names:
            job = self.jobs.get((stage, n))
            deps[n] = {"result": job.result if job else "Skipped", "outputs": dict(job.outputs) if job else {}}
        return deps

    def _stage_dependencies(self) -> dict:
        out: dict = {}
        for (stage, name), job in self.jobs.items():
            out.setdefault(stage, {})[name] = {"result": job.result, "outputs": dict(job.outputs)}
        return out

    def condition(self, expr: str | None, context: dict, default: str = "succeeded()") -> bool:
        return _truthy(evaluate(expr or default, context, self))

    def run(self, pipeline: dict) -> dict[tuple[str, str], JobRecord]:
        stages = pipeline.get("stages")
        if stages is None:
            jobs = pipeline.get("jobs") or [{"job": "Job", "steps": pipeline.get("steps") or [],
                                            "pool": pipeline.get("pool")}]
            stages = [{"stage": "__default", "jobs": jobs}]
        done: list[str] = []
        stage_results: dict[str, str] = {}
        for i, stage in enumerate(stages):
            name = stage.get("stage", f"stage{i}")
            depends = stage.get("dependsOn", [done[-1]] if done else [])
            depends = [depends] if isinstance(depends, str) else depends
            self._stage = name
            ok_deps = all(stage_results.get(d) in ("Succeeded", "SucceededWithIssues") for d in depends)
            cond = stage.get("condition")
            run_stage = ok_deps if cond is None else _truthy(evaluate(cond, {
                "dependencies": {d: {"result": stage_results.get(d, "Skipped")} for d in depends},
                "stageDependencies": self._stage_dependencies(), "variables": {}}, _StageRuntime(stage_results, depends)))
            results = self.run_jobs(name, stage.get("jobs") or [], run_stage)
            stage_results[name] = "Failed" if "Failed" in results else ("Skipped" if not run_stage else "Succeeded")
            done.append(name)
        return self.jobs

    def run_jobs(self, stage: str, jobs: list[dict], run_stage: bool) -> list[str]:
        order, seen = [], set()
        by_name = {j.get("job") or j.get("deployment"): j for j in jobs}

        def visit(n: str) -> None:
            if n in seen:
                return
            seen.add(n)
            deps = by_name[n].get("dependsOn") or []
            for d in [deps] if isinstance(deps, str) else deps:
                if d not in by_name:
                    raise TemplateError(f"job {n} depends on unknown job {d}")
                visit(d)
            order.append(n)

        for n in by_name:
            visit(n)
        results = []
        for n in order:
            job = by_name[n]
            record = JobRecord(stage, n)
            self.jobs[(stage, n)] = record
            deps = job.get("dependsOn") or []
            deps = [deps] if isinstance(deps, str) else deps
            self._deps = deps
            context = {"dependencies": self._dependencies(stage, deps),
                       "stageDependencies": self._stage_dependencies(), "variables": {}}
            if run_stage and self.condition(job.get("condition"), context):
                self.run_job(stage, n, job, context, record)
            results.append(record.result)
        return results

    def run_job(self, stage: str, name: str, job: dict, context: dict, record: JobRecord) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix="agent-tmp-", dir=self.workdir))
        sources = self.workdir / "s"
        sources.mkdir(parents=True, exist_ok=True)
        variables = {"Build.SourcesDirectory": str(sources), "System.DefaultWorkingDirectory": str(sources),
                     "Pipeline.Workspace": str(self.workdir), "Agent.TempDirectory": str(tmp),
                     "Build.ArtifactStagingDirectory": str(tmp / "staging"), "System.JobName": name,
                     "System.StageName": stage, "Build.BuildId": "1"}
        raw_vars = job.get("variables") or {}
        if isinstance(raw_vars, list):
            raw_vars = {v["name"]: v.get("value", "") for v in raw_vars if "name" in v}
        for key, val in raw_vars.items():
            val = _text(val)
            m = re.match(r"^\s*\$\[(.*)\]\s*$", val, re.S)
            variables[key] = _text(evaluate(m.group(1), {**context, "variables": variables}, self)) if m else val
        steps = job.get("steps") or []
        if "strategy" in job:  # deployment job: runOnce.deploy.steps
            steps = (((job["strategy"].get("runOnce") or {}).get("deploy") or {}).get("steps")) or []
        self._deps = None  # step level conditions from here on
        self._step_state = "Succeeded"
        for step in steps:
            step_name = step.get("name") or step.get("displayName") or step.get("task") or "step"
            cond_ctx = {"variables": variables, **context}
            if not self.condition(_text(step["condition"]) if "condition" in step else None, cond_ctx):
                record.steps.append(StepRecord(step_name, self._kind(step), "Skipped"))
                continue
            rec = self.run_step(step, step_name, variables, record)
            record.steps.append(rec)
            if rec.result == "Failed":
                coe = step.get("continueOnError")
                if coe is True or _text(coe).lower() == "true":
                    rec.result = "SucceededWithIssues"
                    if self._step_state == "Succeeded":
                        self._step_state = "SucceededWithIssues"
                else:
                    self._step_state = "Failed"
        record.result = self._step_state

    @staticmethod
    def _kind(step: dict) -> str:
        return next((k for k in ("bash", "script", "task", "checkout", "pwsh", "powershell") if k in step), "unknown")

    def _macros(self, text: str, variables: dict[str, str]) -> str:
        def repl(m: re.Match) -> str:
            key = m.group(1)
            hit = next((v for k, v in variables.items() if k.lower() == key.lower()), None)
            return m.group(0) if hit is None else hit
        return re.sub(r"\$\(([A-Za-z0-9_.\-]+)\)", repl, text)

    def run_step(self, step: dict, name: str, variables: dict[str, str], record: JobRecord) -> StepRecord:
        kind = self._kind(step)
        if kind == "task":
            task = step["task"]
            inputs = {k: self._macros(_text(v), variables) for k, v in (step.get("inputs") or {}).items()}
            if task.split("@")[0] == "ManualValidation":
                decision = self.approvals.get(record.name, self.approvals.get(name, True))
                return StepRecord(name, kind, "Succeeded" if decision else "Failed", inputs=inputs)
            return StepRecord(name, kind, "Succeeded", inputs=inputs)
        if kind == "checkout":
            alias = step["checkout"]
            if alias in self.repos:
                target = self.workdir / _text(step.get("path") or f"s/{alias}")
                shutil.copytree(self.repos[alias], target, dirs_exist_ok=True,
                                ignore=shutil.ignore_patterns(".git", ".venv", "__pycache__", ".mlops"))
            return StepRecord(name, kind, "Succeeded", inputs={"checkout": alias, "path": step.get("path", "")})
        if kind not in ("bash", "script"):
            raise TemplateError(f"step {name}: {kind} steps are not supported by this agent")
        script = self._macros(_text(step[kind]), variables)
        env = dict(self.base_env)
        for key, val in variables.items():
            env[re.sub(r"[.\s]", "_", key).upper()] = val
        for key, val in (step.get("env") or {}).items():
            env[str(key)] = self._macros(_text(val), variables)
        env.update(TF_BUILD="True", AGENT_TEMPDIRECTORY=variables["Agent.TempDirectory"])
        cwd = Path(self._macros(_text(step.get("workingDirectory") or "$(System.DefaultWorkingDirectory)"), variables))
        with tempfile.NamedTemporaryFile("w", suffix=".sh", dir=variables["Agent.TempDirectory"],
                                         delete=False) as fh:
            fh.write(script + "\n")
        proc = subprocess.run(["bash", "--noprofile", "--norc", fh.name], cwd=cwd, env=env,
                              capture_output=True, text=True)
        for line in proc.stdout.splitlines():
            m = _VSO.match(line)
            if not m or m.group("cmd") != "task.setvariable":
                continue
            props = dict(p.split("=", 1) for p in m.group("props").strip().split(";") if "=" in p)
            var, value = props.get("variable", ""), _unescape(m.group("value"))
            if not var:
                continue
            if props.get("isOutput", "").lower() == "true" and step.get("name"):
                record.outputs[f"{step['name']}.{var}"] = value
                variables[f"{step['name']}.{var}"] = value
            else:
                variables[var] = value
        return StepRecord(name, kind, "Succeeded" if proc.returncode == 0 else "Failed", proc.returncode,
                          proc.stdout + proc.stderr)


class _StageRuntime(Runtime):
    def __init__(self, results: dict[str, str], deps: list[str]):
        self.results, self.deps = results, deps

    def status_function(self, name: str, args: list[Any]) -> bool:
        res = [self.results.get(d, "Skipped") for d in (args or self.deps)]
        if name in ("always", "succeededOrFailed"):
            return True
        if name == "failed":
            return any(r == "Failed" for r in res)
        return all(r == "Succeeded" for r in res)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Expand an Azure Pipelines YAML file (subset).")
    parser.add_argument("pipeline")
    parser.add_argument("--repo", action="append", default=[], metavar="ALIAS=DIR")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE")
    args = parser.parse_args(argv)
    repos = dict(r.split("=", 1) for r in args.repo)
    params = dict(p.split("=", 1) for p in args.param)
    try:
        doc = expand(Path(args.pipeline), {k: Path(v) for k, v in repos.items()}, params)
    except TemplateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    yaml.safe_dump(doc, sys.stdout, sort_keys=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
