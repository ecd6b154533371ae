"""rai-gate: a Responsible-AI gate that scores a model on evaluation data against a policy YAML.

Checks overall performance thresholds, fairness between groups of sensitive features
(difference / ratio of selection rate, equalized odds, equal opportunity or any metric, with
fairlearn's MetricFrame), per-group minimums, and which features dominate permutation importance.
Writes rai_gate.json, rai_gate.md and PNG charts. Exit 1 when a rule fails (or the gate cannot
evaluate); with `on_violation: warn` a violation passes with needs-review=true.
"""
from __future__ import annotations

import math
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from pydantic import Field

from .contract import BadInput, StepInputs, StepResult, describe_input, step_command
from .rai_policy import CRITERIA, Policy, load_policy

OUTPUTS = {
    "gate-passed": "true when no rule failed (or on_violation is warn) and every rule could be evaluated",
    "needs-review": "true when rules were violated under on_violation: warn",
    "report-path": "folder with rai_gate.json, rai_gate.md and the PNG charts",
}
MISSING = "(missing)"
LOWER_IS_BETTER = {"mae", "mse", "rmse"}


class Inputs(StepInputs):
    model: str = Field(..., description="Registered model name:version (or name@alias) or an MLflow model folder.")
    data: str = Field(..., description="Evaluation data with the label column: CSV/Parquet path or "
                      "azureml:name:version.")
    policy: str = Field(..., description="RAI policy YAML (see docs/steps/rai-gate.md).")
    label_column: str | None = Field(None, description="Label column; default: `label` in the policy.")
    report_dir: str = Field("rai-report", description="Folder for the report (replaced as a whole).")


class _Clock:
    """Wall-clock and CPU seconds per phase (the CPU time is what counts on a busy machine)."""

    def __init__(self) -> None:
        self.times: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self._t, self._c = time.perf_counter(), time.process_time()

    def lap(self, name: str) -> None:
        now, cpu = time.perf_counter(), time.process_time()
        self.times[name] = round(self.times.get(name, 0.0) + now - self._t, 4)
        self.cpu[name] = round(self.cpu.get(name, 0.0) + cpu - self._c, 4)
        self._t, self._c = now, cpu


def _num(x: Any) -> float | None:
    """A JSON-safe float (NaN -> None)."""
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else round(f, 6)


# -- data and model ------------------------------------------------------------------------------
def _is_positive(values: Any, pos: Any) -> Any:
    """Boolean array: which values equal the positive label (numbers compared as numbers)."""
    import numpy as np
    import pandas as pd

    arr = pd.Series(np.asarray(values).ravel())
    if isinstance(pos, (int, float, bool, np.number, np.bool_)) and pd.api.types.is_numeric_dtype(arr):
        return (arr.astype(float) == float(pos)).to_numpy()
    return (arr.astype(str) == str(pos)).to_numpy()


def _positive_label(policy: Policy, y: Any, where: str) -> Any:
    labels = sorted({str(v) for v in y.unique()})
    if len(labels) > 2:
        raise BadInput(where, f"the label has {len(labels)} classes; rai-gate supports binary "
                       "classification (or task: regression)")
    if policy.positive_label is not None:
        if not _is_positive(y, policy.positive_label).any():
            raise BadInput(where, f"positive_label {policy.positive_label!r} never occurs in the label "
                           f"(values: {', '.join(labels)})")
        return policy.positive_label
    if set(labels) <= {"0", "1", "0.0", "1.0", "False", "True"}:
        value = next((v for v in y.unique() if str(v) in ("1", "1.0", "True")), None)
        if value is not None:
            return value.item() if hasattr(value, "item") else value
    raise BadInput(where, f"positive_label is required: the label values are {', '.join(labels)}")


def _load_model(path: Path, where: str) -> tuple[Any, str]:
    """(model, flavor): the scikit-learn estimator for the sklearn flavor, else a pyfunc model."""
    import logging

    import yaml

    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        flavors = (yaml.safe_load((path / "MLmodel").read_text()) or {}).get("flavors") or {}
        if "sklearn" in flavors:
            import mlflow.sklearn
            return mlflow.sklearn.load_model(str(path)), "sklearn"
        import mlflow.pyfunc
        return mlflow.pyfunc.load_model(str(path)), "pyfunc"
    except Exception as exc:  # mlflow raises many types for broken models
        raise BadInput(where, f"cannot load the MLflow model at {path}: {exc}") from None


def _input_columns(model: Any, flavor: str, table: Any, label: str) -> list[str]:
    cols = getattr(model, "feature_names_in_", None) if flavor == "sklearn" else None
    if cols is None and flavor == "pyfunc":
        schema = model.metadata.get_input_schema()
        cols = schema.input_names() if schema is not None and schema.has_input_names() else None
    return [str(c) for c in cols] if cols is not None else [c for c in table.columns if c != label]


def _predict(model: Any, X: Any) -> Any:
    import numpy as np

    out = model.predict(X)
    if hasattr(out, "iloc") and getattr(out, "ndim", 1) == 2:
        out = out.iloc[:, 0]
    out = np.asarray(out)
    return out[:, 0] if out.ndim == 2 else out


def _check_predicted_labels(pred: Any, y: Any, where: str) -> None:
    """Fail when the model predicts values that are not label values (e.g. 0/1 for "yes"/"no")."""
    import numpy as np
    import pandas as pd

    values = pd.unique(pd.Series(np.asarray(pred).ravel()))
    known = np.zeros(len(values), dtype=bool)
    for label in y.unique():
        known |= _is_positive(values, label)
    if not known.all():
        odd = ", ".join(map(str, values[~known][:5]))
        raise BadInput(where, f"the model predicts {odd}, which are not values of the label column "
                       f"({', '.join(map(str, y.unique()))})")


def _scores(model: Any, flavor: str, X: Any, pos: Any) -> Any:
    """Probability of the positive class, or None when the model has no predict_proba."""
    if flavor != "sklearn" or not hasattr(model, "predict_proba"):
        return None
    idx = [i for i, c in enumerate(model.classes_) if _is_positive([c], pos)[0]]
    return model.predict_proba(X)[:, idx[0]] if idx else None


def _groups(policy: Policy, table: Any, policy_file: str, where: str) -> dict[tuple[str, ...], Any]:
    """Group label per row for every sensitive feature (binned if asked) and intersection."""
    import numpy as np
    import pandas as pd

    single: dict[str, Any] = {}
    for i, feat in enumerate(policy.sensitive_features):
        col = table[feat.name]
        if feat.bins:
            values = pd.to_numeric(col, errors="coerce")
            if values.isna().sum() > col.isna().sum():
                raise BadInput(where, f"{policy_file}: sensitive_features[{i}] ({feat.name}): bins need a "
                               "numeric column", policy_file)
            cut = pd.cut(values, [-np.inf, *feat.bins, np.inf], right=False, labels=feat.band_labels())
            single[feat.name] = cut.astype("string").fillna(MISSING)
        else:
            single[feat.name] = col.astype("string").fillna(MISSING)
    out: dict[tuple[str, ...], Any] = {}
    for fs in policy.feature_sets():
        series = single[fs[0]]
        for name in fs[1:]:
            series = series + " & " + single[name]
        out[fs] = series.astype(str).to_numpy()
    return out


# -- metrics -------------------------------------------------------------------------------------
def _metric_fns(task: str) -> dict[str, Any]:
    """Metric functions (y_true, y_pred[, y_score]) on 0/1 arrays or regression values."""
    import numpy as np
    import sklearn.metrics as skm
    from fairlearn import metrics as fm

    def when(cond, fn):
        return lambda t, p, **kw: fn(t, p, **kw) if cond(t) else float("nan")

    has_pos = lambda t: bool(np.any(t == 1))  # noqa: E731
    has_neg = lambda t: bool(np.any(t == 0))  # noqa: E731
    both = lambda t: has_pos(t) and has_neg(t)  # noqa: E731
    if task == "regression":
        return {"r2": when(lambda t: len(t) > 1, skm.r2_score), "mae": skm.mean_absolute_error,
                "mse": skm.mean_squared_error, "rmse": skm.root_mean_squared_error,
                "mean_prediction": fm.mean_prediction}
    return {
        "accuracy": skm.accuracy_score,
        "balanced_accuracy": when(both, skm.balanced_accuracy_score),
        "precision": lambda t, p, **kw: skm.precision_score(t, p, zero_division=np.nan, **kw),
        "recall": when(has_pos, skm.recall_score),
        "f1": when(has_pos, lambda t, p, **kw: skm.f1_score(t, p, zero_division=np.nan, **kw)),
        "auc": when(both, lambda t, p, y_score: skm.roc_auc_score(t, y_score)),
        "selection_rate": fm.selection_rate,
        "true_positive_rate": when(has_pos, fm.true_positive_rate),
        "false_negative_rate": when(has_pos, fm.false_negative_rate),
        "false_positive_rate": when(has_neg, fm.false_positive_rate),
        "true_negative_rate": when(has_neg, fm.true_negative_rate),
    }


def _overall(fns: dict[str, Any], name: str, y: Any, p: Any, scores: Any) -> float:
    return fns[name](y, p, y_score=scores) if name == "auc" else fns[name](y, p)


def _by_group(task: str, fns: dict[str, Any], metrics: set[str], y: Any, p: Any, scores: Any,
              groups: Any) -> Any:
    """A DataFrame indexed by group: `n` and each metric, computed by fairlearn's MetricFrame.

    For classification every metric but AUC depends only on how many rows each (group, label,
    prediction) cell holds, so MetricFrame gets those cells with their counts as sample weights:
    the same numbers as row by row, without MetricFrame's per-row overhead on large data.
    """
    import pandas as pd
    from fairlearn.metrics import MetricFrame, count

    rated = sorted(metrics - {"auc"})
    if task == "regression":  # row by row
        chosen = {"n": count, **{m: fns[m] for m in rated}}
        return MetricFrame(metrics=chosen, y_true=y, y_pred=p, sensitive_features=groups).by_group
    cells = pd.DataFrame({"g": groups, "t": y, "p": p}).value_counts().reset_index()
    weights = cells["count"].to_numpy(dtype=float)
    chosen = {"n": lambda t, p, sample_weight: float(sample_weight.sum()), **{m: fns[m] for m in rated}}
    table = MetricFrame(metrics=chosen, y_true=cells["t"].to_numpy(), y_pred=cells["p"].to_numpy(),
                        sensitive_features=cells["g"].to_numpy(dtype=str),
                        sample_params={m: {"sample_weight": weights} for m in chosen}).by_group
    if "auc" in metrics:
        auc = MetricFrame(metrics={"auc": fns["auc"]}, y_true=y, y_pred=p, sensitive_features=groups,
                          sample_params={"auc": {"y_score": scores}}).by_group
        table = table.join(auc)
    return table


def _ordered(policy: Policy, fs: tuple[str, ...], table: Any) -> Any:
    """Age bands in band order rather than alphabetical."""
    feat = next((f for f in policy.sensitive_features if (f.name,) == fs and f.bins), None)
    if feat is None:
        return table
    order = [b for b in feat.band_labels() if b in table.index]
    return table.loc[order + [g for g in table.index if g not in order]]


def _label(fs: tuple[str, ...]) -> str:
    return " & ".join(fs)


def _evaluate(policy: Policy, y: Any, p: Any, scores: Any, groups: dict, clock: _Clock) -> tuple[list, dict]:
    """Every rule's result, and by-group tables per feature set."""
    fns = _metric_fns(policy.task)
    rules: list[dict[str, Any]] = []
    for metric, thr in policy.performance.items():
        value = _num(_overall(fns, metric, y, p, scores))
        status = "error" if value is None else ("pass" if thr.check(value) else "fail")
        rules.append({"rule": f"performance.{metric}", "type": "performance", "metric": metric,
                      "value": value, "threshold": str(thr), "status": status,
                      "message": "undefined on this data" if value is None else ""})
    clock.lap("performance")

    needed: dict[tuple[str, ...], set[str]] = {fs: set() for fs in policy.feature_sets()}
    for rule in [*policy.fairness, *policy.group_thresholds]:
        for fs in policy.rule_feature_sets(rule):
            needed[fs] |= set(CRITERIA.get(rule.metric, [rule.metric]))
    tables = {fs: _ordered(policy, fs, _by_group(policy.task, fns, needed[fs], y, p, scores, groups[fs]))
              for fs in needed}
    clock.lap("metric_frames")

    for fs, table in tables.items():  # declared groups (bins, `groups:`) must be there with enough rows
        feat = next((f for f in policy.sensitive_features if (f.name,) == fs), None)
        expected = feat.expected_groups() if feat else []
        if expected:
            counts = {g: int(table["n"].get(g, 0)) for g in expected}
            short = {g: n for g, n in counts.items() if n < policy.min_group_size}
            rules.append({"rule": f"coverage.{_label(fs)}", "type": "coverage", "feature": _label(fs),
                          "metric": "n", "value": min(counts.values()),
                          "threshold": f">={policy.min_group_size}",
                          "status": "error" if short else "pass",
                          "message": "cannot evaluate: " + ", ".join(f"{g} has {n} rows" for g, n in short.items())
                          if short else ""})
    for i, rule in enumerate(policy.fairness):
        for fs in policy.rule_feature_sets(rule):
            rules.append(_fairness_rule(policy, i, rule, fs, tables[fs]))
    for i, rule in enumerate(policy.group_thresholds):
        for fs in policy.rule_feature_sets(rule):
            rules.append(_group_rule(policy, i, rule, fs, tables[fs]))
    by_group = {_label(fs): {str(g): {k: (int(v) if k == "n" else _num(v)) for k, v in row.items()}
                             for g, row in t.iterrows()} for fs, t in tables.items()}
    return rules, by_group


def _usable(policy: Policy, table: Any, metric: str) -> tuple[dict[str, float], dict[str, str]]:
    """Group values usable for a metric, and the groups left out with the reason."""
    values, left_out = {}, {}
    for g, row in table.iterrows():
        v = _num(row[metric])
        if row["n"] < policy.min_group_size:
            left_out[str(g)] = f"insufficient data (n={int(row['n'])} < {policy.min_group_size})"
        elif v is None:
            left_out[str(g)] = f"{metric} undefined (n={int(row['n'])})"
        else:
            values[str(g)] = v
    return values, left_out


def _fairness_rule(policy: Policy, i: int, rule: Any, fs: tuple, table: Any) -> dict[str, Any]:
    result: dict[str, Any] = {"rule": f"fairness[{i}].{_label(fs)}", "type": "fairness", "feature": _label(fs),
                              "metric": rule.metric, "kind": rule.kind, "threshold": str(rule.threshold)}
    parts, left_out, by_group = [], {}, {}
    for rate in rule.rates():
        values, out = _usable(policy, table, rate)
        left_out.update(out)
        by_group[rate] = values
        if len(values) < 2:
            return {**result, "value": None, "status": "error", "by_group": by_group, "left_out": left_out,
                    "message": f"cannot evaluate: {len(values)} group(s) with enough data for {rate}"}
        lo, hi = min(values.values()), max(values.values())
        parts.append(hi - lo if rule.kind == "difference" else (lo / hi if hi else 1.0))
    value = max(parts) if rule.kind == "difference" else min(parts)  # the worst case, as fairlearn
    return {**result, "value": _num(value), "status": "pass" if rule.threshold.check(value) else "fail",
            "by_group": by_group, "left_out": left_out, "message": ""}


def _group_rule(policy: Policy, i: int, rule: Any, fs: tuple, table: Any) -> dict[str, Any]:
    values, left_out = _usable(policy, table, rule.metric)
    result = {"rule": f"group_thresholds[{i}].{_label(fs)}", "type": "group_threshold", "feature": _label(fs),
              "metric": rule.metric, "threshold": str(rule.threshold), "by_group": {rule.metric: values},
              "left_out": left_out}
    if not values:
        return {**result, "value": None, "status": "error", "message": "cannot evaluate: no group with enough data"}
    failing = [g for g, v in values.items() if not rule.threshold.check(v)]
    worst = min(values.values()) if rule.threshold.op in (">", ">=") else max(values.values())
    return {**result, "value": _num(worst), "status": "fail" if failing else "pass",
            "message": ("below threshold: " + ", ".join(failing)) if failing else ""}


# -- explainability ------------------------------------------------------------------------------
class _PyfuncEstimator:
    """The minimal estimator interface permutation_importance needs, for a pyfunc model."""

    def __init__(self, model: Any):
        self.model = model

    def fit(self, X: Any, y: Any) -> "_PyfuncEstimator":
        return self

    def predict(self, X: Any) -> Any:
        return _predict(self.model, X)


def _explain(policy: Policy, model: Any, flavor: str, X: Any, y: Any, pos: Any) -> tuple[dict, dict]:
    """Permutation importance on a sample of rows, and the forbidden-features rule."""
    from sklearn.inspection import permutation_importance

    ex = policy.explainability
    assert ex is not None
    fns = _metric_fns(policy.task)
    metric = ex.scoring or ("accuracy" if policy.task == "classification" else "r2")
    sign = -1.0 if metric in LOWER_IS_BETTER else 1.0

    def scorer(est: Any, Xs: Any, ys: Any) -> float:
        if policy.task == "regression":
            return sign * fns[metric](ys, _predict(est, Xs))
        t = _is_positive(ys, pos).astype(int)
        s = _scores(est, flavor, Xs, pos) if metric == "auc" else None
        return sign * _overall(fns, metric, t, _is_positive(_predict(est, Xs), pos).astype(int), s)

    sample = X.sample(n=ex.max_rows, random_state=policy.random_state) if len(X) > ex.max_rows else X
    ys = y.loc[sample.index]
    est = model if flavor == "sklearn" else _PyfuncEstimator(model)
    res = permutation_importance(est, sample, ys, scoring=scorer, n_repeats=ex.n_repeats,
                                 random_state=policy.random_state)
    order = sorted(range(len(X.columns)), key=lambda k: -res.importances_mean[k])
    ranked = [{"feature": str(X.columns[k]), "importance": _num(res.importances_mean[k]),
               "std": _num(res.importances_std[k])} for k in order]
    top = [r["feature"] for r in ranked[:ex.top_n]]
    bad = [f for f in ex.forbidden_in_top if f in top]
    not_inputs = [f for f in ex.forbidden_in_top if f not in list(X.columns)]
    info = {"scoring": metric, "rows_used": len(sample), "rows_total": len(X), "n_repeats": ex.n_repeats,
            "top_n": ex.top_n, "top": top, "importances": ranked}
    rule = {"rule": "explainability.forbidden_in_top", "type": "explainability", "metric": "permutation_importance",
            "value": bad, "threshold": f"none of {ex.forbidden_in_top} in top {ex.top_n}",
            "status": "fail" if bad else "pass",
            "message": (f"in the top {ex.top_n}: {', '.join(bad)}" if bad else "")
            + (f"; not model inputs: {', '.join(not_inputs)}" if not_inputs else "")}
    return info, rule


# -- report --------------------------------------------------------------------------------------
def _charts(folder: Path, rules: list[dict], explain: dict | None, policy: Policy) -> list[str]:
    """rai_groups.png (a row per feature set, a panel per rule and rate) and rai_importance.png."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels: dict[str, list[tuple[dict, str]]] = {}
    for r in rules:
        if r["type"] in ("fairness", "group_threshold"):
            for rate in r["by_group"]:
                panels.setdefault(r["feature"], []).append((r, rate))
    files = []
    if panels:
        ncols = max(len(v) for v in panels.values())
        fig, axes = plt.subplots(len(panels), ncols, figsize=(3.6 * ncols, 3.3 * len(panels)), squeeze=False)
        for row, (feature, items) in zip(axes, panels.items()):
            for ax in row[len(items):]:
                ax.set_visible(False)
            for ax, (r, rate) in zip(row, items):
                _panel(ax, feature, r, rate)
        fig.subplots_adjust(left=0.06, right=0.98, top=1 - 0.35 / len(panels), bottom=0.9 / (3.3 * len(panels)),
                            hspace=0.95, wspace=0.3)
        fig.savefig(folder / "rai_groups.png", dpi=72)
        plt.close(fig)
        files.append("rai_groups.png")
    if explain:
        top = explain["importances"][: max(explain["top_n"], 10)]
        forbidden = set(policy.explainability.forbidden_in_top if policy.explainability else [])
        fig, ax = plt.subplots(figsize=(6, 0.28 * len(top) + 1.0))
        ax.barh([t["feature"] for t in top][::-1], [t["importance"] or 0 for t in top][::-1],
                color=["#c0392b" if t["feature"] in forbidden else "#2e86c1" for t in top][::-1])
        ax.set_title(f"permutation importance ({explain['scoring']} drop); top {explain['top_n']} gated, "
                     "forbidden in red", fontsize=8)
        fig.subplots_adjust(left=0.3, right=0.97)
        fig.savefig(folder / "rai_importance.png", dpi=72)
        plt.close(fig)
        files.append("rai_importance.png")
    return files


def _panel(ax: Any, feature: str, rule: dict, rate: str) -> None:
    """Bars of one rate by group, the threshold drawn, violating groups in red."""
    values = rule["by_group"][rate]
    line = _threshold_line(rule, values)
    colors = ["#c0392b" if line is not None and _violates(rule, v, line) else "#2e86c1" for v in values.values()]
    ax.bar(range(len(values)), list(values.values()), color=colors)
    if line is not None:
        ax.axhline(line, color="black", linestyle="--", linewidth=1)
    ax.set_xticks(range(len(values)), list(values), rotation=30, ha="right", fontsize=6)
    ax.tick_params(axis="y", labelsize=6)
    kind = f"{rule['kind']} {rule['threshold']}" if rule["type"] == "fairness" else f"each {rule['threshold']}"
    ax.set_title(f"{feature}: {rate}\n{rule['metric']} {kind} ({rule['status']})", fontsize=7)


def _threshold_line(rule: dict, values: dict[str, float]) -> float | None:
    """Where the threshold falls on a per-group chart (difference: lowest + t; ratio: highest * t)."""
    thr, op = float(rule["threshold"].lstrip("<>=")), rule["threshold"].rstrip("0123456789.e+-")
    if rule["type"] == "group_threshold":
        return thr
    if not values:
        return None
    if rule["kind"] == "difference" and op in ("<", "<="):
        return min(values.values()) + thr
    if rule["kind"] == "ratio" and op in (">", ">="):
        return max(values.values()) * thr
    return None


def _violates(rule: dict, value: float, line: float) -> bool:
    if rule["type"] == "group_threshold":
        return value < line if rule["threshold"].startswith(">") else value > line
    return value > line if rule["kind"] == "difference" else value < line


def _markdown(report: dict) -> str:
    from .ci import markdown_table

    icon = {"pass": "✅ passed", "fail": "❌ failed", "needs_review": "⚠️ needs review"}[report["status"]]
    lines = [f"## RAI gate: {icon}", "",
             f"- model: `{report['model']['ref']}` · data: `{report['data']['ref']}` "
             f"({report['data']['rows']} rows) · label `{report['data']['label']}`",
             f"- policy: `{report['policy']['path']}` (sha256 `{report['policy']['sha256'][:12]}`), "
             f"on_violation: {report['on_violation']}, min_group_size: {report['min_group_size']}", ""]
    mark = {"pass": "✅ pass", "fail": "❌ fail", "error": "⛔ cannot evaluate"}
    rows = [{"rule": r["rule"], "metric": r["metric"] + (f" ({r['kind']})" if r.get("kind") else ""),
             "value": (", ".join(r["value"]) or "none") if isinstance(r["value"], list) else
             ("n/a" if r["value"] is None else f"{r['value']:.4g}"),
             "threshold": r["threshold"], "status": mark[r["status"]], "note": r.get("message", "")}
            for r in report["rules"]]
    lines += [markdown_table(rows, "Rules"), ""]
    for feature, groups in report["by_group"].items():
        cols = sorted({k for g in groups.values() for k in g if k != "n"})
        table = [{"group": g, "n": v["n"], **{c: "n/a" if v.get(c) is None else f"{v[c]:.3f}" for c in cols},
                  "data": "insufficient" if v["n"] < report["min_group_size"] else ""}
                 for g, v in groups.items()]
        lines += [markdown_table(table, f"By group: {feature}"), ""]
    if report.get("explainability"):
        ex = report["explainability"]
        lines += [f"Top {ex['top_n']} features by permutation importance ({ex['scoring']}, "
                  f"{ex['rows_used']} of {ex['rows_total']} rows, {ex['n_repeats']} repeats): "
                  + ", ".join(f"`{f}`" for f in ex["top"]), ""]
    if report["charts"]:
        lines += ["Charts: " + ", ".join(f"`{c}`" for c in report["charts"]), ""]
    return "\n".join(lines)


def _publish(folder: Path, report: dict, clock: _Clock, policy: Policy) -> str:
    """Write the report into a temporary sibling and swap it in whole."""
    import json

    from .files import replace_folder, write_text_atomic

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        report["charts"] = _charts(tmp, report["rules"], report.get("explainability"), policy)
        clock.lap("charts")
        report["timings_s"] = {"wall": clock.times, "cpu": clock.cpu}
        markdown = _markdown(report)
        (tmp / "rai_gate.md").write_text(markdown, encoding="utf-8")
        write_text_atomic(tmp / "rai_gate.json", json.dumps(report, indent=2, default=str) + "\n")
        replace_folder(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return markdown


def _sha256(path: Path) -> str:
    """sha256 of a file (as `sha256sum` prints it), or files.hash_path of a folder."""
    import hashlib

    from .files import hash_path

    if path.is_dir():
        return hash_path(path)
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# -- the step ----------------------------------------------------------------------------------
def _check_report_dir(folder: Path) -> None:
    if folder.exists() and (not folder.is_dir() or (any(folder.iterdir())
                                                    and not (folder / "rai_gate.json").is_file())):
        raise BadInput(describe_input("report_dir"), f"{folder} exists and is not a rai-gate report folder")


def _read_data(inputs: Inputs, backend: Any, policy: Policy) -> tuple[Any, Path, str]:
    """The evaluation table, its path and the label column, checked against the policy (BadInput)."""
    from .models import read_table, resolve_data_path

    data_in, policy_in = describe_input("data"), describe_input("policy")
    label = inputs.label_column or policy.label
    if not label:
        raise BadInput(describe_input("label_column"), "no label column: give it here or as `label:` in the policy")
    path = resolve_data_path(backend, inputs.data, data_in)
    table = read_table(backend, inputs.data, data_in)
    if table.empty:
        raise BadInput(data_in, f"{path} has no rows: the gate cannot evaluate")
    if label not in table.columns:
        raise BadInput(describe_input("label_column"), f"label column {label!r} is not in {path}")
    for where, column in policy.columns():
        if column not in table.columns:
            raise BadInput(policy_in, f"{inputs.policy}: {where}: column {column!r} is not in the data "
                           f"(columns: {', '.join(map(str, table.columns))})", inputs.policy)
    if table[label].isna().any():
        raise BadInput(data_in, f"label column {label!r} has {int(table[label].isna().sum())} missing values")
    return table, path, label


def _plan(policy: Policy) -> list[dict[str, str]]:
    """The rules a run would evaluate (for --dry-run)."""
    rows = [{"rule": f"performance.{m}", "threshold": str(t)} for m, t in policy.performance.items()]
    for section in ("fairness", "group_thresholds"):
        for i, rule in enumerate(getattr(policy, section)):
            rows += [{"rule": f"{section}[{i}].{_label(fs)}", "threshold": str(rule.threshold)}
                     for fs in policy.rule_feature_sets(rule)]
    if policy.explainability:
        ex = policy.explainability
        rows.append({"rule": "explainability.forbidden_in_top", "threshold": f"none of {ex.forbidden_in_top} "
                     f"in top {ex.top_n}"})
    return rows


def run(inputs: Inputs, backend: Any) -> StepResult:
    import warnings

    from .ci import markdown_table
    from .models import resolve_model

    clock = _Clock()
    policy_in, data_in, model_in = describe_input("policy"), describe_input("data"), describe_input("model")
    policy, policy_sha = load_policy(inputs.policy, policy_in)
    folder = Path(inputs.report_dir)
    _check_report_dir(folder)
    table, data_path, label = _read_data(inputs, backend, policy)
    y = table[label]
    pos = _positive_label(policy, y, policy_in) if policy.task == "classification" else None
    groups = _groups(policy, table, inputs.policy, policy_in)
    resolved = resolve_model(backend, inputs.model, model_in)
    clock.lap("load_data")
    if inputs.dry_run:
        return StepResult({}, summary=f"## RAI gate (dry run)\n\nPolicy `{inputs.policy}` is valid; model "
                          f"`{resolved.identity}`, {len(table)} rows. Nothing evaluated.\n\n"
                          + markdown_table(_plan(policy), "Rules that would be evaluated"))

    model, flavor = _load_model(resolved.path, model_in)
    columns = _input_columns(model, flavor, table, label)
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise BadInput(data_in, f"columns the model needs are missing: {', '.join(missing)}")
    X = table[columns]
    clock.lap("load_model")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            raw = _predict(model, X)
            scores = _scores(model, flavor, X, pos) if policy.task == "classification" else None
        except Exception as exc:  # the model rejected the data: a data/model mismatch
            raise BadInput(data_in, f"the model could not score the data: {exc}") from None
        if policy.task == "classification":
            _check_predicted_labels(raw, y, data_in)
            y_eval, p_eval = _is_positive(y, pos).astype(int), _is_positive(raw, pos).astype(int)
            if scores is None and policy.uses("auc"):
                raise BadInput(policy_in, f"{inputs.policy}: auc needs a scikit-learn model with predict_proba")
        else:
            import pandas as pd
            y_eval = pd.to_numeric(y, errors="coerce").to_numpy(dtype=float)
            p_eval = raw.astype(float)
            if (y_eval != y_eval).any():
                raise BadInput(data_in, f"label column {label!r} is not numeric (task: regression)")
        clock.lap("predict")
        rules, by_group = _evaluate(policy, y_eval, p_eval, scores, groups, clock)
        explain = None
        if policy.explainability:
            explain, rule = _explain(policy, model, flavor, X, y, pos)
            rules.append(rule)
            clock.lap("permutation_importance")

    errors = [r for r in rules if r["status"] == "error"]
    violations = [r for r in rules if r["status"] == "fail"]
    needs_review = bool(violations) and not errors and policy.on_violation == "warn"
    passed = not errors and (not violations or policy.on_violation == "warn")
    report = {
        "status": "fail" if not passed else ("needs_review" if needs_review else "pass"),
        "gate_passed": passed, "needs_review": needs_review,
        "on_violation": policy.on_violation, "task": policy.task, "min_group_size": policy.min_group_size,
        "policy": {"path": inputs.policy, "sha256": policy_sha},
        "model": {"ref": inputs.model, "identity": resolved.identity, "name": resolved.name,
                  "version": resolved.version, "path": str(resolved.path), "flavor": flavor,
                  "sha256": _sha256(resolved.path), "inputs": columns},
        "data": {"ref": inputs.data, "path": str(data_path), "sha256": _sha256(data_path),
                 "rows": len(table), "label": label, "positive_label": pos},
        "rules": rules, "by_group": by_group, "explainability": explain,
        "summary": {"rules": len(rules), "failed": len(violations), "cannot_evaluate": len(errors)},
    }
    clock.lap("identity")
    markdown = _publish(folder, report, clock, policy)
    return StepResult({"gate-passed": passed, "needs-review": needs_review, "report-path": str(folder.resolve())},
                      summary=markdown, passed=passed)


command = step_command("rai-gate", Inputs, OUTPUTS, run, __doc__ or "")
