"""The rai-gate policy file: a pydantic model of the YAML, with Azure RAI scorecard vocabulary.

Thresholds are strings such as ">=0.80" or "<=0.1"; fairness rules compare groups by `difference`
(max - min) or `ratio` (min / max). Errors name the policy file and the rule (`fairness[1].metric`).
"""
from __future__ import annotations

import hashlib
import operator
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .contract import BadInput

# name -> task it applies to. "both": per-group statistics that make sense for any task.
METRICS: dict[str, str] = {
    "accuracy": "classification", "balanced_accuracy": "classification",
    "precision": "classification", "recall": "classification", "f1": "classification",
    "auc": "classification", "selection_rate": "classification",
    "true_positive_rate": "classification", "false_positive_rate": "classification",
    "true_negative_rate": "classification", "false_negative_rate": "classification",
    "r2": "regression", "mae": "regression", "mse": "regression", "rmse": "regression",
    "mean_prediction": "regression",
}
# Azure RAI scorecard / scikit-learn spellings accepted as aliases.
ALIASES = {
    "accuracy_score": "accuracy", "balanced_accuracy_score": "balanced_accuracy",
    "precision_score": "precision", "recall_score": "recall", "f1_score": "f1",
    "roc_auc": "auc", "roc_auc_score": "auc", "tpr": "true_positive_rate",
    "fpr": "false_positive_rate", "r2_score": "r2", "mean_absolute_error": "mae",
    "mean_squared_error": "mse", "root_mean_squared_error": "rmse",
}
# Fairness criteria built from per-group rates (fairlearn's definitions).
CRITERIA = {
    "demographic_parity": ["selection_rate"],
    "equal_opportunity": ["true_positive_rate"],
    "equalized_odds": ["true_positive_rate", "false_positive_rate"],
}

_OPS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt, "==": operator.eq}
_THRESHOLD = re.compile(r"^\s*(>=|<=|==|>|<)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$")


class Threshold(BaseModel):
    """A comparison such as ">=0.80"."""

    op: str
    value: float

    @classmethod
    def parse(cls, text: Any) -> "Threshold":
        m = _THRESHOLD.match(str(text)) if isinstance(text, str) else None
        if not m:
            raise ValueError(f"threshold {text!r} must be a comparison such as \">=0.80\" or \"<=0.1\"")
        return cls(op=m[1], value=float(m[2]))

    def check(self, value: float) -> bool:
        return bool(_OPS[self.op](value, self.value))

    def __str__(self) -> str:
        return f"{self.op}{self.value:g}"


def metric_name(name: str) -> str:
    """The canonical metric name, or ValueError listing the known ones."""
    key = ALIASES.get(str(name).strip().lower(), str(name).strip().lower())
    if key not in METRICS:
        raise ValueError(f"unknown metric {name!r} (known: {', '.join(sorted(METRICS))})")
    return key


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SensitiveFeature(_Strict):
    name: str
    bins: list[float] | None = Field(None, description="Cut points for a numeric column (age bands).")
    labels: list[str] | None = Field(None, description="Band names, one more than the cut points.")
    groups: list[str] | None = Field(None, description="Groups that must be present with enough rows.")

    @model_validator(mode="after")
    def _check(self) -> "SensitiveFeature":
        if self.bins is not None:
            if not self.bins or sorted(set(self.bins)) != list(self.bins):
                raise ValueError("bins must be strictly increasing cut points")
            if self.labels is not None and len(self.labels) != len(self.bins) + 1:
                raise ValueError(f"labels needs {len(self.bins) + 1} names for {len(self.bins)} cut points")
        elif self.labels is not None:
            raise ValueError("labels only apply with bins")
        return self

    def band_labels(self) -> list[str]:
        """Names of the bands: "<25", "[25, 35)", ..., ">=65" unless labels are given."""
        if self.labels:
            return list(self.labels)
        edges = [f"{b:g}" for b in self.bins or []]
        inner = [f"[{a}, {b})" for a, b in zip(edges, edges[1:])]
        return [f"<{edges[0]}", *inner, f">={edges[-1]}"]

    def expected_groups(self) -> list[str]:
        return self.band_labels() if self.bins else list(self.groups or [])


FeatureSet = tuple[str, ...]


class _GroupRule(_Strict):
    metric: str
    threshold: Threshold
    features: list[str | list[str]] | None = Field(
        None, description="Sensitive features (or intersections as lists) this rule covers; default all.")

    @field_validator("threshold", mode="before")
    @classmethod
    def _threshold(cls, v: Any) -> Threshold:
        return v if isinstance(v, Threshold) else Threshold.parse(v)


class FairnessRule(_GroupRule):
    kind: Literal["difference", "ratio"]

    @field_validator("metric")
    @classmethod
    def _metric(cls, v: str) -> str:
        key = str(v).strip().lower()
        return key if key in CRITERIA else metric_name(v)

    def rates(self) -> list[str]:
        return CRITERIA.get(self.metric, [self.metric])


class GroupThreshold(_GroupRule):
    @field_validator("metric")
    @classmethod
    def _metric(cls, v: str) -> str:
        return metric_name(v)


class Explainability(_Strict):
    top_n: int = Field(5, ge=1)
    forbidden_in_top: list[str] = Field(default_factory=list)
    n_repeats: int = Field(3, ge=1, le=50)
    max_rows: int = Field(2000, ge=100, description="Rows sampled for permutation importance.")
    scoring: str | None = Field(None, description="Metric to permute against; accuracy / r2 by default.")

    @field_validator("scoring")
    @classmethod
    def _scoring(cls, v: str | None) -> str | None:
        return None if v is None else metric_name(v)


class Policy(_Strict):
    task: Literal["classification", "regression"] = "classification"
    label: str | None = None
    positive_label: str | int | float | bool | None = None
    sensitive_features: list[SensitiveFeature] = Field(..., min_length=1)
    intersections: list[list[str]] = Field(default_factory=list)
    min_group_size: int = Field(30, ge=1)
    performance: dict[str, Threshold] = Field(default_factory=dict)
    fairness: list[FairnessRule] = Field(default_factory=list)
    group_thresholds: list[GroupThreshold] = Field(default_factory=list)
    explainability: Explainability | None = None
    on_violation: Literal["fail", "warn"] = "fail"
    random_state: int = 0

    @field_validator("sensitive_features", mode="before")
    @classmethod
    def _features(cls, v: Any) -> Any:
        return [{"name": f} if isinstance(f, str) else f for f in v] if isinstance(v, list) else v

    @field_validator("performance", mode="before")
    @classmethod
    def _performance(cls, v: Any) -> Any:
        if not isinstance(v, dict):
            return v
        out = {}
        for name, text in v.items():
            out[metric_name(name)] = text if isinstance(text, Threshold) else Threshold.parse(text)
        return out

    @model_validator(mode="after")
    def _consistent(self) -> "Policy":
        names = [f.name for f in self.sensitive_features]
        if len(set(names)) != len(names):
            raise ValueError("sensitive_features lists a column twice")
        for i, combo in enumerate(self.intersections):
            if len(combo) < 2 or not set(combo) <= set(names):
                raise ValueError(f"intersections[{i}] must name two or more of sensitive_features {names}")
        known = {(n,) for n in names} | {tuple(c) for c in self.intersections}
        for section in ("fairness", "group_thresholds"):
            for i, rule in enumerate(getattr(self, section)):
                for f in rule.features or []:
                    key = (f,) if isinstance(f, str) else tuple(f)
                    if key not in known:
                        raise ValueError(f"{section}[{i}].features: {f!r} is not a sensitive feature "
                                         "or a declared intersection")
        for where, metric in self._metric_uses():
            if metric in METRICS and METRICS[metric] != self.task:
                raise ValueError(f"{where}: metric {metric!r} is for {METRICS[metric]}, "
                                 f"the policy's task is {self.task}")
            if metric in CRITERIA and self.task != "classification":
                raise ValueError(f"{where}: {metric} needs task: classification")
        return self

    def _metric_uses(self) -> list[tuple[str, str]]:
        uses = [(f"performance.{m}", m) for m in self.performance]
        uses += [(f"fairness[{i}].metric", r.metric) for i, r in enumerate(self.fairness)]
        uses += [(f"group_thresholds[{i}].metric", r.metric) for i, r in enumerate(self.group_thresholds)]
        if self.explainability and self.explainability.scoring:
            uses.append(("explainability.scoring", self.explainability.scoring))
        return uses

    def uses(self, metric: str) -> bool:
        rates = {r for _, m in self._metric_uses() for r in CRITERIA.get(m, [m])}
        return metric in rates

    def feature_sets(self) -> list[FeatureSet]:
        return [(f.name,) for f in self.sensitive_features] + [tuple(c) for c in self.intersections]

    def rule_feature_sets(self, rule: _GroupRule) -> list[FeatureSet]:
        if rule.features is None:
            return self.feature_sets()
        return [(f,) if isinstance(f, str) else tuple(f) for f in rule.features]

    def columns(self) -> list[tuple[str, str]]:
        """(where, column) for every data column the policy names."""
        cols = [(f"sensitive_features[{i}] ({f.name})", f.name) for i, f in enumerate(self.sensitive_features)]
        if self.explainability:
            cols += [(f"explainability.forbidden_in_top[{i}] ({c})", c)
                     for i, c in enumerate(self.explainability.forbidden_in_top)]
        return cols


def _where(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "policy"


def load_policy(path: str, input_name: str) -> tuple[Policy, str]:
    """The validated policy and the sha256 of the file, or BadInput naming the file and the rule."""
    from .specs import read_yaml

    data = read_yaml(path, input_name)
    try:
        policy = Policy.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        raise BadInput(input_name, f"{path}: {_where(tuple(err.get('loc', ())))}: {msg}", str(path)) from None
    return policy, hashlib.sha256(Path(path).read_bytes()).hexdigest()
