"""drift-check: a data drift gate comparing current data with reference data, column by column.

Metrics and defaults follow Azure ML model monitoring: numeric columns are gated on the normalized
Wasserstein distance (default 0.1) and also get Jensen-Shannon distance, PSI and the KS statistic;
categorical columns are gated on the Jensen-Shannon distance (base 2, default 0.1) and also get PSI and
the share of unseen categories. Null-rate increase and out-of-range share are reported and can be gated.
The data set drifts when a critical feature drifts or at least --drift-share of the columns drift; a
schema or type mismatch fails the gate too. P-values are reported, never gated. Writes drift.json,
drift.md and PNG charts to --report-dir (not with --dry-run). Exit 1 when drift is detected.
"""
from __future__ import annotations

import math
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from .contract import BadInput, StepInputs, StepResult, describe_input, step_command

OUTPUTS = {
    "drift-detected": "true when the gate failed: a critical feature or >= drift-share of the columns "
                      "drift, or the schema/types differ",
    "drifted-features": "JSON list of the columns that drift (or are missing / of another type)",
    "report-path": "folder with drift.json, drift.md and the PNG charts",
}
NUMERIC, CATEGORICAL = "numerical", "categorical"
METRICS = {
    NUMERIC: ("normalized_wasserstein_distance", "jensen_shannon_distance", "population_stability_index",
              "kolmogorov_smirnov_statistic", "out_of_range_share", "null_rate_increase"),
    CATEGORICAL: ("jensen_shannon_distance", "population_stability_index", "unseen_category_share",
                  "null_rate_increase"),
}
DEFAULT_THRESHOLDS = {NUMERIC: {"normalized_wasserstein_distance": 0.1},
                      CATEGORICAL: {"jensen_shannon_distance": 0.1}}
PRIMARY = {NUMERIC: "normalized_wasserstein_distance", CATEGORICAL: "jensen_shannon_distance"}
P_VALUE_METRICS = {"two_sample_kolmogorov_smirnov_test", "pearsons_chi_squared_test", "chi_squared_test",
                   "ks_pvalue", "p_value"}
SHORT = {"normalized_wasserstein_distance": "NWD", "jensen_shannon_distance": "JS",
         "population_stability_index": "PSI", "kolmogorov_smirnov_statistic": "KS"}
TYPE_ALIASES = {"numeric": NUMERIC, "numerical": NUMERIC, "categorical": CATEGORICAL, "category": CATEGORICAL}


class Inputs(StepInputs):
    reference: str = Field(..., description="Reference data (e.g. training data): CSV/Parquet file or folder, "
                                            "or a data asset azureml:name:version.")
    current: str = Field(..., description="Current data (e.g. production inputs): CSV/Parquet file or folder, "
                                          "or a data asset azureml:name:version.")
    columns: list[str] = Field(default_factory=list, description="Compare only these columns (default: every "
                                                                 "reference column).")
    ignore_columns: list[str] = Field(default_factory=list, description="Columns to leave out (ids, timestamps, "
                                                                        "labels).")
    column_types: dict[str, str] = Field(default_factory=dict, description="Type overrides COLUMN=numerical|"
                                         "categorical (default: from the data type).")
    thresholds: dict[str, str] = Field(default_factory=dict, description="Gate thresholds METRIC=VALUE, "
                                       "numerical.METRIC=VALUE or categorical.METRIC=VALUE; VALUE off "
                                       "removes a gate. Defaults: numerical.normalized_wasserstein_distance="
                                       "0.1, categorical.jensen_shannon_distance=0.1.")
    critical_features: list[str] = Field(default_factory=list, description="Columns whose drift alone fails "
                                                                           "the gate.")
    drift_share: float = Field(0.5, gt=0, le=1, description="The data set drifts when at least this share of "
                                                            "the columns drift.")
    worst_features: int = Field(5, ge=0, le=50, description="Plot the distributions of this many worst "
                                                            "features.")
    report_dir: str = Field("drift-report", description="Folder for the report (replaced as a whole).")

    @field_validator("column_types")
    @classmethod
    def _types(cls, value: dict[str, str]) -> dict[str, str]:
        bad = {k: v for k, v in value.items() if v.strip().lower() not in TYPE_ALIASES}
        if bad:
            col, kind = next(iter(bad.items()))
            raise ValueError(f"{col}={kind}: the type must be numerical or categorical")
        return {k: TYPE_ALIASES[v.strip().lower()] for k, v in value.items()}


# -- settings ------------------------------------------------------------------------------------
def parse_thresholds(raw: dict[str, str]) -> dict[str, dict[str, float]]:
    """The gate thresholds per column type, defaults overlaid with the user's (`off` removes one)."""
    where = describe_input("thresholds")
    out = {kind: dict(DEFAULT_THRESHOLDS[kind]) for kind in METRICS}
    for key, text in raw.items():
        kind, _, metric = key.rpartition(".")
        kind = TYPE_ALIASES.get(kind, kind)
        if metric in P_VALUE_METRICS:
            raise BadInput(where, f"{key}: p-values are reported but never gate (at a million rows they flag "
                           "harmless shifts); gate on kolmogorov_smirnov_statistic or a distance")
        if kind and kind not in METRICS:
            raise BadInput(where, f"{key}: unknown column type {kind!r} (numerical or categorical)")
        kinds = [kind] if kind else [k for k in METRICS if metric in METRICS[k]]
        if not kinds or any(metric not in METRICS[k] for k in kinds):
            known = sorted(METRICS[kind] if kind else set(METRICS[NUMERIC]) | set(METRICS[CATEGORICAL]))
            raise BadInput(where, f"{key}: unknown metric {metric!r}{' for ' + kind + ' columns' if kind else ''} "
                           f"(known: {', '.join(known)})")
        if text.strip().lower() in ("off", "none", ""):
            for k in kinds:
                out[k].pop(metric, None)
            continue
        try:
            value = float(text)
        except ValueError:
            raise BadInput(where, f"{key}={text}: the threshold must be a number or off") from None
        if not value >= 0 or math.isinf(value):
            raise BadInput(where, f"{key}={text}: the threshold must be a finite number >= 0")
        for k in kinds:
            out[k][metric] = value
    return out


# -- columns -------------------------------------------------------------------------------------
def _kind(series: Any) -> str:
    """numerical, categorical, or empty (no values at all) from the pandas dtype."""
    import pandas as pd

    if not series.notna().any():
        return "empty"
    dtype = series.dtype
    if pd.api.types.is_bool_dtype(dtype):
        return CATEGORICAL
    if pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_datetime64_any_dtype(dtype) \
            or pd.api.types.is_timedelta64_dtype(dtype):
        return NUMERIC
    return CATEGORICAL


def _numeric_values(series: Any) -> tuple[Any, int, int]:
    """Finite float values, the number of nulls (NaN and +-inf count as null), and the number of
    values that are not numbers at all (type errors)."""
    import numpy as np
    import pandas as pd

    dtype, type_errors = series.dtype, 0
    if pd.api.types.is_datetime64_any_dtype(dtype) or pd.api.types.is_timedelta64_dtype(dtype):
        values = series.astype("int64").to_numpy(dtype="float64")
        values[series.isna().to_numpy()] = np.nan
    elif pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype):
        values = series.to_numpy(dtype="float64", na_value=np.nan)
    else:
        given = series.notna().to_numpy()
        values = pd.to_numeric(series, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
        type_errors = int((given & np.isnan(values)).sum())
    finite = np.isfinite(values)
    if finite.all():
        return values, 0, 0
    return values[finite], int(len(values) - finite.sum()) - type_errors, type_errors


def _number_label(value: float) -> str:
    return str(int(value)) if value.is_integer() and abs(value) < 2 ** 53 else repr(value)


def _categorical_values(series: Any) -> tuple[Any, int]:
    """Non-null values as comparable labels (numbers unified as floats, the rest as text), nulls."""
    import pandas as pd

    values = series.dropna()
    if pd.api.types.is_numeric_dtype(values.dtype) and not pd.api.types.is_bool_dtype(values.dtype):
        values = values.astype("float64").map(_number_label)  # 3 and 3.0 are the same category
    else:
        values = values.astype(str)
    return values.to_numpy(dtype=object), len(series) - len(values)


def _numeric_feature(ref: Any, cur: Any) -> dict[str, Any]:
    from .drift_metrics import numeric_drift

    a, ref_nulls, ref_errors = _numeric_values(ref)
    b, cur_nulls, cur_errors = _numeric_values(cur)
    feature: dict[str, Any] = {
        "rows": {"reference": len(a), "current": len(b)},
        "null_rate": {"reference": ref_nulls / max(1, len(ref)), "current": cur_nulls / max(1, len(cur))},
        "type_errors": {"reference": ref_errors, "current": cur_errors},
    }
    if len(a) and len(b):
        feature["metrics"] = numeric_drift(a, b)
        feature["histogram"] = feature["metrics"].pop("histogram")
        feature["p_values"] = {"kolmogorov_smirnov": feature["metrics"].pop("ks_pvalue")}
    return feature


def _categorical_feature(ref: Any, cur: Any) -> dict[str, Any]:
    import numpy as np
    import pandas as pd

    from .drift_metrics import js_distance, psi

    a, ref_nulls = _categorical_values(ref)
    b, cur_nulls = _categorical_values(cur)
    feature: dict[str, Any] = {
        "rows": {"reference": len(a), "current": len(b)},
        "null_rate": {"reference": ref_nulls / max(1, len(ref)), "current": cur_nulls / max(1, len(cur))},
        "type_errors": {"reference": 0, "current": 0},
    }
    if len(a) and len(b):
        codes, labels = pd.factorize(np.concatenate([a, b]))
        ca = np.bincount(codes[:len(a)], minlength=len(labels))
        cb = np.bincount(codes[len(a):], minlength=len(labels))
        feature["metrics"] = {
            "jensen_shannon_distance": js_distance(ca, cb),
            "population_stability_index": psi(ca, cb, len(a), len(b)),
            "unseen_category_share": float(cb[ca == 0].sum() / len(b)),
            "categories": {"reference": int((ca > 0).sum()), "current": int((cb > 0).sum()),
                           "unseen": int(((cb > 0) & (ca == 0)).sum())},
        }
        order = np.argsort(-(ca / len(a) + cb / len(b)), kind="stable")[:20]
        feature["histogram"] = {"labels": [str(labels[i]) for i in order],
                                "reference": ca[order], "current": cb[order]}
    return feature


def _select_columns(inputs: Inputs, ref: Any, cur: Any) -> tuple[list[str], list[str], list[str]]:
    """The columns to compare, those missing from the current data, and new ones in it."""
    ref_cols, cur_cols = [str(c) for c in ref.columns], [str(c) for c in cur.columns]
    for name, given in (("columns", inputs.columns), ("ignore_columns", inputs.ignore_columns),
                        ("critical_features", inputs.critical_features), ("column_types", inputs.column_types)):
        unknown = [c for c in given if c not in ref_cols]
        if unknown:
            raise BadInput(describe_input(name), f"not columns of the reference data: {', '.join(unknown)} "
                           f"(columns: {', '.join(ref_cols)})")
    ignored = set(inputs.ignore_columns)
    chosen = [c for c in (inputs.columns or ref_cols) if c not in ignored]
    if not chosen:
        raise BadInput(describe_input("columns"), "no columns left to compare")
    for c in inputs.critical_features:
        if c not in chosen:
            raise BadInput(describe_input("critical_features"), f"{c} is not among the compared columns")
    missing = [c for c in chosen if c not in cur_cols]
    if len(missing) == len(chosen):
        raise BadInput(describe_input("current"), "shares no column with the reference data "
                       f"(reference: {', '.join(chosen)}; current: {', '.join(cur_cols)})")
    new = [] if inputs.columns else [c for c in cur_cols if c not in ref_cols and c not in ignored]
    return chosen, missing, new


def _evaluate(column: str, ref: Any, cur: Any, forced: str | None, thresholds: dict, critical: bool
              ) -> dict[str, Any]:
    """One column: its type, metrics, gates and status (pass, drift, type_mismatch, not_evaluated)."""
    kinds = {"reference": _kind(ref), "current": _kind(cur)}
    kind = forced or (kinds["reference"] if kinds["reference"] != "empty" else kinds["current"])
    if kind == "empty":
        kind = NUMERIC
    base = {"name": column, "type": kind, "critical": critical, "inferred_types": kinds}
    feature = _numeric_feature(ref, cur) if kind == NUMERIC else _categorical_feature(ref, cur)
    feature.update(base)
    reasons = []
    if forced is None and "empty" not in kinds.values() and kinds["reference"] != kinds["current"]:
        reasons.append(f"type mismatch: {kinds['reference']} in the reference, {kinds['current']} now")
    errors = feature["type_errors"]
    if errors["reference"] or errors["current"]:
        reasons.append(f"type mismatch: {errors['reference']} reference and {errors['current']} current "
                       "values are not numbers")
    evaluable = "metrics" in feature
    metrics = feature.setdefault("metrics", {})
    metrics["null_rate_increase"] = feature["null_rate"]["current"] - feature["null_rate"]["reference"]
    if reasons:
        feature.update(status="type_mismatch", reasons=reasons, gates={})
        feature.pop("histogram", None)
        return feature
    gates = {}
    for metric, limit in thresholds[kind].items():
        value = metrics.get(metric)
        gates[metric] = {"value": value, "threshold": limit,
                         "exceeded": value is None or not value <= limit}
    feature["gates"] = gates
    if not evaluable:  # no values on one side
        side = "reference" if not feature["rows"]["reference"] else "current"
        feature.update(status="not_evaluated", reasons=[f"no non-null values in the {side} data"])
        return feature
    exceeded = [f"{m} {g['value']:.4g} > {g['threshold']:g}" for m, g in gates.items() if g["exceeded"]]
    feature.update(status="drift" if exceeded else "pass", reasons=exceeded)
    return feature


def _score(feature: dict[str, Any]) -> float:
    """How far past its gates a feature is (max value / threshold); failures without values first."""
    if feature["status"] in ("type_mismatch", "not_evaluated", "missing"):
        return math.inf
    ratios = [g["value"] / g["threshold"] if g["threshold"] else (math.inf if g["value"] else 0.0)
              for g in feature["gates"].values()]
    return max(ratios, default=0.0)


# -- report --------------------------------------------------------------------------------------
def _jsonable(value: Any) -> Any:
    """Numpy scalars and arrays as plain JSON values, NaN/inf as None."""
    import numpy as np

    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.integer, np.bool_)):
        return value.item()
    if isinstance(value, (float, np.floating)):
        f = float(value)
        return None if math.isnan(f) or math.isinf(f) else round(f, 10)
    return value


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:60] or "column"


def _charts(folder: Path, features: list[dict], worst: int) -> list[str]:
    """drift_distances.png (each column's gate metric against its threshold) and, for the worst
    features, drift_<column>.png with the reference and current distributions overlaid."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    files = []
    rows = [f for f in features if f.get("gates")]
    if rows:
        fig, ax = plt.subplots(figsize=(7, 0.26 * len(rows) + 1.2))
        names, values, limits, colors = [], [], [], []
        for f in rows[::-1]:
            metric = PRIMARY[f["type"]] if PRIMARY[f["type"]] in f["gates"] else next(iter(f["gates"]))
            gate = f["gates"][metric]
            names.append(f"{f['name']} ({SHORT.get(metric, metric)})")
            values.append(gate["value"] or 0.0)
            limits.append(gate["threshold"])
            colors.append("#c0392b" if f["status"] == "drift" else "#2e86c1")
        y = np.arange(len(rows))
        ax.barh(y, values, color=colors)
        ax.scatter(limits, y, marker="|", s=220, color="black", zorder=3, label="threshold")
        ax.set_yticks(y, names, fontsize=7)
        ax.set_xlabel("distance (drifting columns in red)", fontsize=8)
        ax.legend(fontsize=7, loc="lower right")
        ax.set_title("Drift per column against its gate threshold", fontsize=9)
        fig.tight_layout()
        fig.savefig(folder / "drift_distances.png", dpi=72)
        plt.close(fig)
        files.append("drift_distances.png")
    for f in [f for f in features if f.get("histogram")][:worst]:
        hist = f["histogram"]
        ref = np.asarray(hist["reference"], float)
        cur = np.asarray(hist["current"], float)
        ref, cur = ref / max(ref.sum(), 1), cur / max(cur.sum(), 1)
        fig, ax = plt.subplots(figsize=(6, 3.2))
        if "edges" in hist:
            edges = np.asarray(hist["edges"], float)
            ax.stairs(ref, edges, fill=True, alpha=0.45, label="reference")
            ax.stairs(cur, edges, fill=True, alpha=0.45, label="current")
        else:
            x = np.arange(len(ref))
            ax.bar(x - 0.2, ref, width=0.4, label="reference")
            ax.bar(x + 0.2, cur, width=0.4, label="current")
            ax.set_xticks(x, hist["labels"], rotation=45, ha="right", fontsize=7)
        ax.set_ylabel("share of rows", fontsize=8)
        ax.set_title(f"{f['name']} ({f['status']}): " + ", ".join(
            f"{m} {g['value']:.3g}" for m, g in f["gates"].items() if g["value"] is not None), fontsize=8)
        ax.legend(fontsize=7)
        fig.tight_layout()
        name = f"drift_{_safe_name(f['name'])}.png"
        fig.savefig(folder / name, dpi=72)
        plt.close(fig)
        files.append(name)
    return files


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _markdown(report: dict) -> str:
    from .ci import markdown_table

    s = report["summary"]
    verdict = "❌ drift detected" if report["drift_detected"] else "✅ no drift"
    lines = [f"## drift-check: {verdict}", "",
             f"{s['drifting']} of {s['columns']} columns drift (share {s['drift_share']:.2f}, the gate "
             f"fails at {s['drift_share_threshold']:g}); critical features drifting: "
             f"{', '.join(s['critical_drifting']) or 'none'}.", ""]
    lines += [f"- {r}" for r in report["reasons"]] + ([""] if report["reasons"] else [])
    rows = []
    for f in report["features"]:
        m = f.get("metrics", {})
        gate = next(iter(f.get("gates", {}).items()), None)
        rows.append({
            "column": f["name"] + (" (critical)" if f.get("critical") else ""), "type": f.get("type", ""),
            "status": f["status"],
            "gate": f"{gate[0]} {_fmt(gate[1]['value'])} / {gate[1]['threshold']:g}" if gate else "",
            "JS": _fmt(m.get("jensen_shannon_distance")), "PSI": _fmt(m.get("population_stability_index")),
            "KS": _fmt(m.get("kolmogorov_smirnov_statistic")),
            "unseen / out of range": _fmt(m.get("unseen_category_share", m.get("out_of_range_share"))),
            "null Δ": _fmt(m.get("null_rate_increase")),
            "why": "; ".join(f.get("reasons", [])),
        })
    lines += [markdown_table(rows, "Columns (worst first)"), ""]
    lines += [f"Reference: `{report['reference']['ref']}` ({report['reference']['rows']} rows); current: "
              f"`{report['current']['ref']}` ({report['current']['rows']} rows). P-values are in drift.json "
              "and never gate.", ""]
    if report["charts"]:
        lines += ["Charts: " + ", ".join(f"`{c}`" for c in report["charts"]), ""]
    return "\n".join(lines)


def _publish(folder: Path, report: dict, features: list[dict], worst: int) -> str:
    """Write the report into a temporary sibling and swap it in whole."""
    from .files import replace_folder, write_json_atomic

    where = describe_input("report_dir")
    if folder.exists() and (not folder.is_dir() or (any(folder.iterdir())
                                                    and not (folder / "drift.json").is_file())):
        raise BadInput(where, f"{folder} exists and is not a drift-check report folder")
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    except OSError as exc:
        raise BadInput(where, f"cannot write to {folder}: {exc.strerror or exc}") from None
    try:
        started = time.perf_counter()
        report["charts"] = _charts(tmp, features, worst)
        report["timings_s"]["charts"] = round(time.perf_counter() - started, 4)
        markdown = _markdown(report)
        (tmp / "drift.md").write_text(markdown, encoding="utf-8")
        write_json_atomic(tmp / "drift.json", _jsonable(report))
        replace_folder(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return markdown


# -- the step ------------------------------------------------------------------------------------
def compare(inputs: Inputs, ref: Any, cur: Any) -> dict[str, Any]:
    """The drift verdict for two DataFrames already in memory (no files written)."""
    thresholds = parse_thresholds(inputs.thresholds)
    for name, table in (("reference", ref), ("current", cur)):
        if len(table) == 0 or len(table.columns) == 0:
            raise BadInput(describe_input(name), "has no rows (or no columns): the gate cannot evaluate "
                           "empty data")
    chosen, missing, new = _select_columns(inputs, ref, cur)
    critical = set(inputs.critical_features)

    def evaluate(column: str) -> dict[str, Any]:
        if column in missing:
            return {"name": column, "critical": column in critical, "status": "missing",
                    "reasons": ["not in the current data"], "gates": {}}
        return _evaluate(column, ref[column], cur[column], inputs.column_types.get(column), thresholds,
                         column in critical)

    features = [evaluate(column) for column in chosen]
    features.sort(key=lambda f: (-_score(f), f["name"]))
    failing = [f["name"] for f in features if f["status"] != "pass"]
    share = len(failing) / len(features)
    critical_failing = [c for c in failing if c in critical]
    mismatched = [f["name"] for f in features if f["status"] == "type_mismatch"]
    reasons = []
    if critical_failing:
        reasons.append(f"critical features drift: {', '.join(critical_failing)}")
    if share >= inputs.drift_share:
        reasons.append(f"{len(failing)} of {len(features)} columns drift (share {share:.2f} >= "
                       f"{inputs.drift_share:g})")
    if missing:
        reasons.append(f"schema mismatch: missing from the current data: {', '.join(missing)}")
    if new:
        reasons.append(f"schema mismatch: new columns in the current data: {', '.join(new)}")
    if mismatched:
        reasons.append(f"type mismatch: {', '.join(mismatched)}")
    return {
        "status": "fail" if reasons else "pass", "drift_detected": bool(reasons), "reasons": reasons,
        "drifted_features": failing,
        "summary": {"columns": len(features), "drifting": len(failing), "drift_share": share,
                    "drift_share_threshold": inputs.drift_share, "critical_drifting": critical_failing},
        "schema": {"missing_in_current": missing, "new_in_current": new, "type_mismatches": mismatched},
        "settings": {"thresholds": thresholds, "critical_features": inputs.critical_features,
                     "column_types": inputs.column_types, "columns": chosen},
        "features": features,
    }


def run(inputs: Inputs, backend: Any) -> StepResult:
    from .files import hash_path
    from .models import read_table, resolve_data_path

    timings: dict[str, float] = {}
    started = time.perf_counter()
    parse_thresholds(inputs.thresholds)  # bad settings fail before any data is read
    identity = {}
    tables = {}
    for name in ("reference", "current"):
        ref = getattr(inputs, name)
        path = resolve_data_path(backend, ref, describe_input(name))
        tables[name] = read_table(backend, ref, describe_input(name))
        identity[name] = {"ref": ref, "path": str(path), "sha256": hash_path(path), "rows": len(tables[name])}
    timings["read"] = round(time.perf_counter() - started, 4)
    started = time.perf_counter()
    report = compare(inputs, tables["reference"], tables["current"])
    timings["compare"] = round(time.perf_counter() - started, 4)
    features = report["features"]
    report = {**report, **identity, "timings_s": timings}
    outputs = {"drift-detected": report["drift_detected"], "drifted-features": report["drifted_features"]}
    if inputs.dry_run:  # the verdict and summary only: no report folder is written
        markdown = _markdown({**report, "charts": []})
    else:
        folder = Path(inputs.report_dir)
        markdown = _publish(folder, report, features, inputs.worst_features)
        outputs["report-path"] = str(folder.resolve())
    return StepResult(outputs, summary=markdown, passed=not report["drift_detected"])


command = step_command("drift-check", Inputs, OUTPUTS, run, __doc__ or "")
