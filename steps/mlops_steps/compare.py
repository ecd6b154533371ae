"""compare: champion / challenger — score a candidate model against the current champion.

The champion is explicit: the model version holding the `champion` alias (MLflow registry alias on
the local backend), never "the latest" and never "the best of all versions". Both models are
scored on the same evaluation data. The candidate wins when its primary metric improves by at
least the minimum improvement and no guard metric regresses by more than its allowance. With no
champion yet the candidate passes, and the report says so. Writes compare.json, compare.md and an
MLOps v2 style `deploy_flag` file (1 or 0) to the report folder; exit 1 when the candidate loses.
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from .ci import markdown_table
from .contract import BackendFailed, BadInput, StepInputs, StepResult, describe_input, step_command

OUTPUTS = {
    "deploy-flag": "true when the candidate may replace the champion (also the file deploy_flag: 1/0)",
    "champion-version": "version holding the champion alias when compared (empty if none)",
    "candidate": "the candidate's identity (name:version or folder)",
    "metrics": "JSON: metric -> {candidate, champion}",
    "report-path": "folder with compare.json, compare.md and deploy_flag",
}

# metric -> direction, by task
METRICS = {
    "classification": {"accuracy": "higher", "balanced_accuracy": "higher", "f1": "higher",
                       "precision": "higher", "recall": "higher", "roc_auc": "higher",
                       "log_loss": "lower"},
    "regression": {"rmse": "lower", "mae": "lower", "r2": "higher", "mape": "lower"},
}
DEFAULT_POLICY = {
    "classification": {"primary": {"metric": "accuracy", "min_improvement": 0.0},
                       "guards": [{"metric": "f1", "max_regression": 0.02},
                                  {"metric": "roc_auc", "max_regression": 0.02}]},
    "regression": {"primary": {"metric": "rmse", "min_improvement": 0.0},
                   "guards": [{"metric": "mae", "max_regression": "5%"}]},
}
NEEDS_PROBA = {"roc_auc", "log_loss"}
ALIASES = {"auc": "roc_auc"}  # rai-gate's name for the same metric
EPS = 1e-12


class Inputs(StepInputs):
    model: str = Field(..., description="Candidate model: name:version or MLflow model folder.")
    data: str = Field(..., description="Evaluation data (CSV/Parquet path or azureml:name:version) "
                      "with the label column.")
    label_column: str = Field(..., description="Name of the label (target) column in --data.")
    model_name: str | None = Field(None, description="Registered model whose champion to compare "
                                   "against (default: the candidate's name).")
    champion_alias: str = Field("champion", pattern=r"^[A-Za-z0-9_\-]+$",
                                description="Registry alias that marks the champion.")
    task: Literal["auto", "classification", "regression"] = Field(
        "auto", description="auto: from the model (sklearn) or the label column.")
    policy: str | None = Field(None, description="Comparison policy YAML (primary, guards, task, "
                               "positive_label). Options below override it.")
    primary_metric: str | None = Field(None, description="Metric that must not get worse "
                                       "(default: accuracy / rmse).")
    min_improvement: str | None = Field(None, description="Required improvement of the primary "
                                        "metric: absolute (0.01) or relative (1%). Default 0.")
    guard: dict[str, str] = Field(default_factory=dict, description="Guard metric and its largest "
                                  "allowed regression, METRIC=0.02 or METRIC=5% (replaces the default guards).")
    positive_label: str | None = Field(None, description="Positive class for binary f1/precision/"
                                       "recall/roc_auc (default: the model's second class).")
    report_dir: str = Field("compare-report", description="Folder for compare.json, compare.md, deploy_flag.")
    deploy_flag_dir: str | None = Field(None, description="Also write deploy_flag into this folder "
                                        "(an MLOps v2 pipeline output).")


# -- policy ---------------------------------------------------------------------------------------
def _amount(value: Any, where: str) -> dict[str, Any]:
    """0.02 -> absolute, "5%" -> relative; the parsed threshold as {value, relative}."""
    text = str(value).strip()
    relative = text.endswith("%")
    try:
        number = float(text.rstrip("%").strip())
    except ValueError:
        raise BadInput(where, f"{value!r} is not a number or a percentage such as 0.01 or 1%") from None
    if not math.isfinite(number) or number < 0:
        raise BadInput(where, f"{value!r} must be a non-negative number")
    return {"value": number / 100 if relative else number, "relative": relative, "text": text}


def _rule(spec: Any, role: str, where: str) -> dict[str, Any]:
    """One rule checked as far as possible without knowing the task (metric name, keys, amount)."""
    key = "min_improvement" if role == "primary" else "max_regression"
    if not isinstance(spec, dict) or not spec.get("metric"):
        raise BadInput(where, f"each {role} rule needs a metric (got {spec!r})")
    unknown = set(spec) - {"metric", key, "direction"}
    if unknown:
        raise BadInput(where, f"{role} rule for {spec['metric']}: unknown key(s) {sorted(unknown)}")
    metric = ALIASES.get(str(spec["metric"]), str(spec["metric"]))
    every = {m: d for task_metrics in METRICS.values() for m, d in task_metrics.items()}
    if metric not in every:
        raise BadInput(where, f"unknown metric {metric!r}; known: {', '.join(every)}")
    direction = spec.get("direction", every[metric])
    if direction not in ("higher", "lower"):
        raise BadInput(where, f"{metric}: direction must be higher or lower, not {direction!r}")
    return {"metric": metric, "role": role, "direction": direction,
            key: _amount(spec.get(key, 0.0), where), "_where": where}


def _load_policy(inputs: Inputs) -> dict[str, Any]:
    """The policy as given (YAML file, then option overrides), validated; no task defaults yet."""
    raw: dict[str, Any] = {}
    where = describe_input("policy")
    if inputs.policy:
        from .specs import read_yaml
        raw = read_yaml(inputs.policy, where)
        unknown = set(raw) - {"task", "positive_label", "primary", "guards"}
        if unknown:
            raise BadInput(where, f"{inputs.policy}: unknown key(s) {sorted(unknown)}; "
                           "expected task, positive_label, primary, guards")
        if raw.get("guards") is not None and not isinstance(raw["guards"], list):
            raise BadInput(where, f"{inputs.policy}: guards must be a list of {{metric, max_regression}}")
    primary = raw.get("primary")
    if primary is not None and not isinstance(primary, dict):
        raise BadInput(where, f"{inputs.policy}: primary must be a mapping with metric, min_improvement")
    primary_where = where
    if inputs.primary_metric or inputs.min_improvement is not None:
        primary = dict(primary or {})
        primary_where = describe_input("primary_metric" if inputs.primary_metric else "min_improvement")
        if inputs.primary_metric:
            primary["metric"] = inputs.primary_metric
        if inputs.min_improvement is not None:
            primary["min_improvement"] = inputs.min_improvement
    guards = raw.get("guards")
    guards_where = where
    if inputs.guard:
        guards = [{"metric": k, "max_regression": v} for k, v in inputs.guard.items()]
        guards_where = describe_input("guard")
    policy = {"task": inputs.task if inputs.task != "auto" else raw.get("task"),
              "positive_label": inputs.positive_label if inputs.positive_label is not None
              else raw.get("positive_label"),
              # a primary with only min_improvement keeps the task's default metric (filled in later)
              "primary": _rule({"metric": "accuracy", **primary}, "primary", primary_where)
              if primary else None, "primary_metric_given": bool(primary and primary.get("metric")),
              "guards": [_rule(g, "guard", guards_where) for g in guards] if guards is not None else None}
    if policy["task"] not in (None, "auto", "classification", "regression"):
        raise BadInput(where, f"task must be classification or regression, not {policy['task']!r}")
    return policy


def _resolve_rules(policy: dict[str, Any], task: str, has_proba: bool) -> tuple[list[dict], list[str]]:
    """The rules to apply for this task, with defaults filled in; notes on what was left out."""
    known = METRICS[task]
    default = DEFAULT_POLICY[task]
    notes: list[str] = []
    primary = policy["primary"] or _rule(default["primary"], "primary", describe_input("policy") + " default")
    if not policy["primary_metric_given"]:
        primary = {**primary, "metric": default["primary"]["metric"],
                   "direction": known[default["primary"]["metric"]]}
    guards = policy["guards"]
    if guards is None:
        guards = [_rule(g, "guard", describe_input("policy") + " default") for g in default["guards"]
                  if has_proba or g["metric"] not in NEEDS_PROBA]
        if len(guards) < len(default["guards"]):
            notes.append("default guard roc_auc left out: a model gives no class probabilities")
    rules = []
    for rule in [primary, *guards]:
        if rule["metric"] not in known:
            raise BadInput(rule["_where"], f"{rule['metric']} is not a {task} metric; "
                           f"known: {', '.join(known)}")
        if rule["direction"] != known[rule["metric"]]:
            notes.append(f"{rule['metric']}: direction overridden to '{rule['direction']} is better'")
        rules.append(rule)
    return rules, notes


# -- scoring --------------------------------------------------------------------------------------
class _Scorer:
    """A loaded MLflow model: labels/values from predict(), class probabilities when it has them."""

    def __init__(self, path: Path, label: str, role: str):
        import yaml

        self.label, self.role = label, role
        try:
            flavors = (yaml.safe_load((path / "MLmodel").read_text()) or {}).get("flavors", {})
        except (OSError, yaml.YAMLError) as exc:
            raise BadInput(label, f"cannot read {path / 'MLmodel'}: {exc}") from None
        try:
            if "sklearn" in flavors:
                import mlflow.sklearn
                self.model, self.sklearn = mlflow.sklearn.load_model(str(path)), True
            else:
                import mlflow.pyfunc
                self.model, self.sklearn = mlflow.pyfunc.load_model(str(path)), False
        except Exception as exc:  # a model that cannot be loaded here: fail closed
            import traceback
            raise BackendFailed(f"cannot load the model for {label} from {path}: "
                                f"{type(exc).__name__}: {exc}", logs=traceback.format_exc()) from None

    @property
    def estimator_task(self) -> str | None:
        if not self.sklearn:
            return None
        from sklearn.base import is_classifier, is_regressor
        return "classification" if is_classifier(self.model) else \
            "regression" if is_regressor(self.model) else None

    @property
    def classes(self) -> list[Any] | None:
        return list(self.model.classes_) if self.sklearn and hasattr(self.model, "classes_") else None

    def predict(self, X: Any) -> Any:
        import numpy as np
        try:
            pred = np.asarray(self.model.predict(X))
        except Exception as exc:
            raise BadInput(self.label, f"the model cannot score {describe_input('data')}: "
                           f"{type(exc).__name__}: {str(exc)[:400]}") from None
        if pred.ndim == 2 and pred.shape[1] == 1:
            pred = pred[:, 0]
        if pred.ndim != 1 or len(pred) != len(X):
            raise BadInput(self.label, f"the model returned predictions of shape {pred.shape} for "
                           f"{len(X)} rows; expected one value per row")
        return pred

    def proba(self, X: Any) -> Any | None:
        if not (self.sklearn and hasattr(self.model, "predict_proba") and self.classes):
            return None
        try:
            return self.model.predict_proba(X)
        except Exception:  # e.g. SVC without probability=True
            return None


def _infer_task(policy_task: str | None, scorers: list[_Scorer], y: Any) -> tuple[str, str]:
    """The task and how it was decided."""
    import pandas as pd

    if policy_task in ("classification", "regression"):
        return policy_task, "given"
    for s in scorers:
        if s.estimator_task:
            return s.estimator_task, f"from the {s.role} model, a scikit-learn " + \
                {"classification": "classifier", "regression": "regressor"}[s.estimator_task]
    if not pd.api.types.is_numeric_dtype(y) or pd.api.types.is_bool_dtype(y):
        return "classification", "from the label column (not numeric)"
    values = y.dropna().unique()
    if len(values) <= 20 and all(float(v).is_integer() for v in values):
        return "classification", "from the label column (few integer values)"
    return "regression", "from the label column (numeric)"


def _positive(policy_label: Any, scorer: _Scorer, y: Any) -> Any:
    labels = sorted(set(y.tolist()) | set(scorer.classes or []), key=str)
    if policy_label is not None:
        for value in labels:
            if str(value) == str(policy_label):
                return value
        raise BadInput(describe_input("positive_label"),
                       f"{policy_label!r} is not a class of the label column or model ({labels[:10]})")
    classes = scorer.classes or labels
    return classes[-1] if len(classes) == 2 else None


def _score(task: str, y: Any, pred: Any, proba: Any, classes: list | None, positive: Any) -> dict:
    """Every metric of the task: {metric: value or None}, plus {metric: why None} under '_why'."""
    import numpy as np
    from sklearn import metrics as m

    values: dict[str, float | None] = {}
    why: dict[str, str] = {}

    def put(name: str, fn: Any) -> None:
        try:
            value = float(fn())
            values[name] = value if math.isfinite(value) else None
            if values[name] is None:
                why[name] = "not a finite number on this data"
        except Exception as exc:  # sklearn refuses (one class only, bad labels ...): say why
            values[name], why[name] = None, f"{type(exc).__name__}: {str(exc)[:200]}"

    if task == "regression":
        put("rmse", lambda: math.sqrt(m.mean_squared_error(y, pred)))
        put("mae", lambda: m.mean_absolute_error(y, pred))
        put("r2", lambda: m.r2_score(y, pred))
        put("mape", lambda: m.mean_absolute_percentage_error(y, pred))
        return {"values": values, "why": why}
    binary = positive is not None
    kw = {"average": "binary", "pos_label": positive} if binary else {"average": "macro"}
    put("accuracy", lambda: m.accuracy_score(y, pred))
    put("balanced_accuracy", lambda: m.balanced_accuracy_score(y, pred))
    put("f1", lambda: m.f1_score(y, pred, zero_division=0, **kw))
    put("precision", lambda: m.precision_score(y, pred, zero_division=0, **kw))
    put("recall", lambda: m.recall_score(y, pred, zero_division=0, **kw))
    if proba is None:
        for name in NEEDS_PROBA:
            values[name], why[name] = None, "the model gives no class probabilities"
    else:
        if binary:
            put("roc_auc", lambda: m.roc_auc_score(np.asarray(y == positive),
                                                   proba[:, classes.index(positive)]))
        else:
            put("roc_auc", lambda: m.roc_auc_score(y, proba, multi_class="ovr", labels=classes))
        put("log_loss", lambda: m.log_loss(y, proba, labels=classes))
    return {"values": values, "why": why}


def _check_predictions(task: str, y: Any, pred: Any, label: str) -> None:
    import numpy as np
    import pandas as pd

    if task == "classification":
        if not set(map(str, pd.unique(pred))) & set(map(str, pd.unique(y))):
            raise BadInput(label, f"the model predicts {sorted(map(str, pd.unique(pred)))[:5]}, none of "
                           f"which is a value of --label-column {sorted(map(str, pd.unique(y)))[:5]}")
    else:
        try:
            ok = np.isfinite(np.asarray(pred, dtype=float)).all()
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise BadInput(label, "the model returned non-numeric or non-finite predictions")


# -- the verdict ----------------------------------------------------------------------------------
def _judge(rule: dict[str, Any], cand: float, champ: float) -> dict[str, Any]:
    """Apply one rule: improvement in the 'better' direction, absolute or relative to the champion."""
    improvement = (cand - champ) if rule["direction"] == "higher" else (champ - cand)
    relative = improvement / abs(champ) if champ else (math.inf if improvement > 0 else
                                                       -math.inf if improvement < 0 else 0.0)
    if rule["role"] == "primary":
        t = rule["min_improvement"]
        change = relative if t["relative"] else improvement
        ok = change >= t["value"] - EPS
        need = f"must improve by ≥ {t['text']}"
    else:
        t = rule["max_regression"]
        change = relative if t["relative"] else improvement
        ok = -change <= t["value"] + EPS
        need = f"may regress by ≤ {t['text']}"
    return {"improvement": improvement, "relative_improvement": relative if math.isfinite(relative) else None,
            "rule": need, "passed": ok}


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return "∞" if math.isinf(value) else f"{value:.4f}"
    return str(value)


def _change(rule: dict[str, Any]) -> str:
    """The improvement as the rule measures it: absolute, or relative in percent."""
    t = rule.get("min_improvement") or rule["max_regression"]
    if t["relative"]:
        rel = rule["relative_improvement"]
        return "n/a" if rel is None else f"{100 * rel:+.2f}%"
    return f"{rule['improvement']:+.4f}"


def _markdown(report: dict[str, Any]) -> str:
    verdict = "PASS — deploy" if report["deploy_flag"] else "FAIL — keep the champion"
    champ = report["champion"]
    lines = [f"## Champion / challenger: {verdict}", "", report["reason"], "",
             f"- Candidate: `{report['candidate']['identity']}`",
             f"- Champion: `{champ['identity']}` (alias `{report['champion_alias']}`)" if champ else
             f"- Champion: none (no version of `{report['model_name']}` holds alias "
             f"`{report['champion_alias']}`)",
             f"- Data: `{report['data']['ref']}` ({report['data']['rows']} rows, label "
             f"`{report['data']['label_column']}`), task {report['task']} ({report['task_source']})"]
    if report.get("positive_label") is not None:
        lines.append(f"- Positive class: `{report['positive_label']}`")
    lines += [f"- Note: {n}" for n in report["notes"]]
    rules = {r["metric"]: r for r in report["rules"]}
    rows = []
    for metric, values in report["metrics"].items():
        rule = rules.get(metric)
        rows.append({"metric": metric, "better": METRICS[report["task"]][metric] if not rule
                     else rule["direction"], "champion": _fmt(values.get("champion")),
                     "candidate": _fmt(values.get("candidate")),
                     "improvement": _change(rule) if rule and "improvement" in rule else "",
                     "rule": f"{rule['role']}: {rule['rule']}" if rule and "rule" in rule else "",
                     "status": ("✅ pass" if rule["passed"] else "❌ fail")
                     if rule and "passed" in rule else ""})
    return "\n".join(lines) + "\n\n" + markdown_table(rows) + "\n"


def run(inputs: Inputs, backend: Any) -> StepResult:
    from pandas.api.types import is_numeric_dtype

    from .files import hash_path, write_json_atomic, write_text_atomic
    from .models import read_table, resolve_data_path, resolve_model

    policy = _load_policy(inputs)
    out = Path(inputs.report_dir)
    flag_dirs = [out] + ([Path(inputs.deploy_flag_dir)] if inputs.deploy_flag_dir else [])
    for folder in flag_dirs:  # a stale flag from an earlier run must never say "deploy"
        (folder / "deploy_flag").unlink(missing_ok=True)

    data_in = describe_input("data")  # the data first: cheap checks before loading any model
    table = read_table(backend, inputs.data, data_in)
    if inputs.label_column not in table.columns:
        raise BadInput(describe_input("label_column"), f"column {inputs.label_column!r} is not in "
                       f"{inputs.data} (columns: {', '.join(map(str, table.columns[:20]))})")
    if table.empty:
        raise BadInput(data_in, f"{inputs.data} has no rows")
    y = table[inputs.label_column]
    if y.isna().any():
        raise BadInput(describe_input("label_column"), f"{int(y.isna().sum())} rows of {inputs.data} "
                       f"have no {inputs.label_column!r} value")
    X = table.drop(columns=[inputs.label_column])

    model_in = describe_input("model")
    candidate = resolve_model(backend, inputs.model, model_in)
    name = inputs.model_name or candidate.name
    if not name:
        raise BadInput(describe_input("model_name"), "the candidate is a folder; give the registered "
                       "model name whose champion it is compared against")
    champion_version = backend.alias_version(name, inputs.champion_alias)
    champion = resolve_model(backend, f"{name}:{champion_version}", describe_input("champion_alias")) \
        if champion_version else None

    scorers = [_Scorer(candidate.path, f"{model_in} candidate {candidate.identity}", "candidate")]
    if champion is not None:
        scorers.append(_Scorer(champion.path, f"champion {champion.name}:{champion.version} "
                               f"(alias {inputs.champion_alias} of {describe_input('model_name')})", "champion"))
    task, task_source = _infer_task(policy["task"], scorers, y)
    if task == "regression" and not is_numeric_dtype(y):
        raise BadInput(describe_input("label_column"), f"{inputs.label_column!r} is not numeric; "
                       "a regression comparison needs a numeric label")
    positive = _positive(policy["positive_label"], scorers[0], y) if task == "classification" else None

    scored, has_proba = [], True
    for s in scorers:
        pred = s.predict(X)
        _check_predictions(task, y, pred, s.label)
        proba = s.proba(X) if task == "classification" else None
        has_proba = has_proba and (proba is not None or task == "regression")
        scored.append(_score(task, y, pred, proba, s.classes, positive))
    rules, notes = _resolve_rules(policy, task, has_proba)

    metrics = {m: {"candidate": scored[0]["values"].get(m),
                   "champion": scored[1]["values"].get(m) if champion else None} for m in METRICS[task]}
    for rule in rules:
        for who, sc in zip(("candidate", "champion"), scored):
            if sc["values"].get(rule["metric"]) is None:
                raise BadInput(rule["_where"], f"{rule['metric']} cannot be computed for the {who}: "
                               f"{sc['why'].get(rule['metric'], 'unknown reason')}")
    if champion is None:
        passed = True
        reason = (f"No champion yet: no version of {name} holds alias {inputs.champion_alias!r}, "
                  "so the candidate passes without a comparison.")
    else:
        for rule in rules:
            rule.update(_judge(rule, metrics[rule["metric"]]["candidate"], metrics[rule["metric"]]["champion"]))
        failed = [r for r in rules if not r["passed"]]
        passed = not failed
        if passed:
            reason = (f"The candidate passes against champion {champion.name}:{champion.version}: "
                      f"{rules[0]['metric']} improvement {_change(rules[0])} ({rules[0]['rule']}), and no "
                      "guard metric regressed beyond its allowance.")
        else:
            reason = "The candidate loses: " + "; ".join(
                f"{r['metric']} {_fmt(metrics[r['metric']]['candidate'])} vs champion "
                f"{_fmt(metrics[r['metric']]['champion'])} (improvement {_change(r)}; {r['rule']})"
                for r in failed) + "."
    if candidate.name == name and champion is not None and candidate.version == champion.version:
        notes.append("the candidate is the champion itself")

    resolved_policy = {"task": task, "positive_label": positive,
                       "rules": [{k: v for k, v in r.items() if k in
                                  ("metric", "role", "direction", "min_improvement", "max_regression")}
                                 for r in rules]}
    data_path = resolve_data_path(backend, inputs.data, data_in)
    report = {
        "status": "passed" if passed else "failed", "deploy_flag": int(passed), "reason": reason,
        "no_champion": champion is None, "model_name": name, "champion_alias": inputs.champion_alias,
        "candidate": {"ref": inputs.model, "identity": candidate.identity, "path": str(candidate.path)},
        "champion": {"identity": f"{champion.name}:{champion.version}", "version": champion.version,
                     "path": str(champion.path)} if champion else None,
        "data": {"ref": inputs.data, "path": str(data_path), "sha256": hash_path(data_path),
                 "rows": int(len(table)), "label_column": inputs.label_column},
        "task": task, "task_source": task_source,
        "positive_label": positive if positive is None or isinstance(positive, (str, int, float, bool))
        else str(positive),
        "policy": resolved_policy,
        "policy_sha256": hashlib.sha256(json.dumps(resolved_policy, sort_keys=True, default=str)
                                        .encode()).hexdigest(),
        "metrics": metrics, "unavailable": {w: sc["why"] for w, sc in zip(("candidate", "champion"), scored)},
        "rules": [{k: v for k, v in r.items() if not k.startswith("_")} for r in rules], "notes": notes,
    }
    report = json.loads(json.dumps(report, default=lambda v: v.item() if hasattr(v, "item") else str(v)))
    markdown = _markdown(report)
    write_json_atomic(out / "compare.json", report)
    write_text_atomic(out / "compare.md", markdown)
    for folder in flag_dirs:
        write_text_atomic(folder / "deploy_flag", "1" if passed else "0")
    return StepResult({"deploy-flag": passed, "champion-version": champion.version if champion else "",
                       "candidate": candidate.identity, "metrics": metrics,
                       "report-path": str(out.resolve())}, summary=markdown, passed=passed)


command = step_command("compare", Inputs, OUTPUTS, run, __doc__ or "")
