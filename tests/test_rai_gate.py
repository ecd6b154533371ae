"""rai-gate on real data (UCI Adult slice) with real scikit-learn models saved as MLflow models.

A fair-enough model passes, a model trained to disfavour women fails a fairness rule (exit 1),
warn mode passes with needs-review, bad policies exit 2, and a gate that cannot evaluate fails.
Metric values are checked against fairlearn's and scikit-learn's own functions.
"""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT

DATA = ROOT / "tests" / "data" / "rai" / "adult-4000.csv"
CAT = ["workclass", "education", "marital_status", "occupation", "relationship", "native_country"]
NUM = ["age", "education_num", "capital_gain", "capital_loss", "hours_per_week"]
FAIR_POLICY = {
    "label": "income",
    "positive_label": ">50K",
    "sensitive_features": [{"name": "sex", "groups": ["Female", "Male"]}, "race"],
    "min_group_size": 30,
    "performance": {"accuracy": ">=0.80", "auc": ">=0.85"},
    "fairness": [
        {"metric": "equal_opportunity", "kind": "difference", "threshold": "<=0.20"},
        {"metric": "equalized_odds", "kind": "difference", "threshold": "<=0.20", "features": ["sex"]},
    ],
    "group_thresholds": [{"metric": "accuracy", "threshold": ">=0.70"}],
    "explainability": {"top_n": 5, "forbidden_in_top": ["sex", "race"]},
}


def _pipeline(cat: list[str]):
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    return Pipeline([
        ("prep", ColumnTransformer([("cat", OneHotEncoder(handle_unknown="ignore"), cat),
                                    ("num", StandardScaler(), NUM)])),
        ("clf", LogisticRegression(max_iter=1000)),
    ])


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """A fair-enough model (no sex/race inputs), a biased one (taught that women never earn >50K)."""
    import mlflow.sklearn
    import numpy as np
    import pandas as pd

    root = tmp_path_factory.mktemp("rai-models")
    table = pd.read_csv(DATA)
    train, evaluation = table.iloc[:2000], table.iloc[2000:]
    X, y = train.drop(columns=["income"]), train["income"]
    fair = _pipeline(CAT).fit(X, y)
    biased = _pipeline(CAT + ["sex", "race"]).fit(X, np.where(train["sex"] == "Female", "<=50K", y))
    mlflow.sklearn.save_model(fair, str(root / "fair"))
    mlflow.sklearn.save_model(biased, str(root / "biased"))
    evaluation.to_csv(root / "eval.csv", index=False)
    return {"fair": root / "fair", "biased": root / "biased", "eval": root / "eval.csv", "root": root}


def _policy(folder: Path, name: str = "policy.yml", **changes) -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump({**FAIR_POLICY, **changes}, sort_keys=False))
    return path


def _report(res) -> dict:
    return json.loads((Path(res.outputs["report-path"]) / "rai_gate.json").read_text())


def _rule(report: dict, name: str) -> dict:
    return next(r for r in report["rules"] if r["rule"] == name)


def _binary_predictions(model_dir: Path, eval_csv: Path):
    import mlflow.sklearn
    import pandas as pd

    table = pd.read_csv(eval_csv)
    pred = mlflow.sklearn.load_model(str(model_dir)).predict(table.drop(columns=["income"]))
    return table, (table["income"] == ">50K").astype(int).to_numpy(), (pred == ">50K").astype(int)


def test_biased_model_fails_a_fairness_rule(step, workdir, models):
    from fairlearn.metrics import equal_opportunity_difference

    _policy(workdir)
    res = step("rai-gate", "--model", str(models["biased"]), "--data", str(models["eval"]), "--policy", "policy.yml")
    assert res.code == 1, res
    assert "Traceback" not in res.stderr and "gate failed" in res.stderr
    assert res.outputs["gate-passed"] is False and res.outputs["needs-review"] is False
    report = _report(res)
    assert report["status"] == "fail"

    table, y, p = _binary_predictions(models["biased"], models["eval"])
    rule = _rule(report, "fairness[0].sex")
    assert rule["status"] == "fail" and rule["threshold"] == "<=0.2"
    assert rule["value"] == pytest.approx(equal_opportunity_difference(y, p, sensitive_features=table["sex"]),
                                          abs=1e-6)
    assert rule["value"] > 0.4
    assert rule["by_group"]["true_positive_rate"]["Female"] < rule["by_group"]["true_positive_rate"]["Male"]
    explain = _rule(report, "explainability.forbidden_in_top")
    assert explain["status"] == "fail" and "sex" in explain["value"]
    sex = next(i for i in report["explainability"]["importances"] if i["feature"] == "sex")
    assert sex["importance"] > 0.005 and "sex" in report["explainability"]["top"]

    folder = Path(res.outputs["report-path"])
    md = (folder / "rai_gate.md").read_text()
    assert "❌ failed" in md and "fairness[0].sex" in md and md.strip() in res.stderr.replace("\r", "")
    for chart in report["charts"]:
        assert (folder / chart).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(report["charts"]) == {"rai_groups.png", "rai_importance.png"}
    assert report["policy"]["sha256"] == hashlib.sha256((workdir / "policy.yml").read_bytes()).hexdigest()
    assert report["data"]["rows"] == 2000 and report["data"]["positive_label"] == ">50K"


def test_fair_model_passes_and_small_groups_are_reported(step, workdir, models):
    import pandas as pd
    from fairlearn.metrics import equalized_odds_difference
    from sklearn.metrics import accuracy_score

    _policy(workdir)
    res = step("rai-gate", "--model", str(models["fair"]), "--data", str(models["eval"]), "--policy", "policy.yml",
               "--report-dir", "out/rai")
    assert res.code == 0, res
    assert res.outputs == {"gate-passed": True, "needs-review": False,
                           "report-path": str((workdir / "out" / "rai").resolve())}
    report = _report(res)
    assert report["status"] == "pass" and all(r["status"] == "pass" for r in report["rules"])

    table, y, p = _binary_predictions(models["fair"], models["eval"])
    eo = _rule(report, "fairness[1].sex")
    assert eo["value"] == pytest.approx(equalized_odds_difference(y, p, sensitive_features=table["sex"]), abs=1e-6)
    assert _rule(report, "performance.accuracy")["value"] == pytest.approx(accuracy_score(y, p), abs=1e-6)
    assert not any(r["rule"].startswith("fairness[1].race") for r in report["rules"])  # features: [sex]

    counts = table["race"].value_counts()
    race = report["by_group"]["race"]
    assert {g: v["n"] for g, v in race.items()} == counts.to_dict()
    small = sorted(g for g, n in counts.items() if n < 30)
    assert small  # this slice has race groups below min_group_size: reported, not used
    rule = _rule(report, "fairness[0].race")
    assert sorted(rule["left_out"]) == small
    assert all("insufficient data" in rule["left_out"][g] for g in small)
    assert set(rule["by_group"]["true_positive_rate"]) == set(counts.index) - set(small)
    for g in set(counts.index) - set(small):
        rows = table["race"] == g
        assert race[g]["accuracy"] == pytest.approx(accuracy_score(y[rows], p[rows]), abs=1e-6)
    md = (Path(res.outputs["report-path"]) / "rai_gate.md").read_text()
    assert "✅ passed" in md and "insufficient" in md
    assert "sex" not in report["explainability"]["top"]
    assert isinstance(pd.DataFrame(report["explainability"]["importances"]), pd.DataFrame)


def test_warn_mode_passes_with_needs_review(step, workdir, models):
    _policy(workdir, on_violation="warn")
    res = step("rai-gate", "--model", str(models["biased"]), "--data", str(models["eval"]), "--policy", "policy.yml")
    assert res.code == 0, res
    assert res.outputs["gate-passed"] is True and res.outputs["needs-review"] is True
    report = _report(res)
    assert report["status"] == "needs_review" and report["summary"]["failed"] >= 2
    assert "needs review" in (Path(res.outputs["report-path"]) / "rai_gate.md").read_text()


def test_env_inputs_and_registered_model(step, workdir, models):
    from mlops_steps.backends.local import LocalBackend

    mv = LocalBackend(workdir / "store").register_model("adult-fair", models["fair"])
    _policy(workdir)
    res = step("rai-gate", env={"MLOPS_MODEL": f"adult-fair:{mv.version}", "MLOPS_DATA": str(models["eval"]),
                                "MLOPS_POLICY": "policy.yml", "MLOPS_STORE": "store"})
    assert res.code == 0, res
    report = _report(res)
    assert report["model"]["identity"] == f"adult-fair:{mv.version}" and report["model"]["name"] == "adult-fair"
    assert report["data"]["sha256"] == hashlib.sha256(models["eval"].read_bytes()).hexdigest()


@pytest.mark.parametrize("change, expected", [
    ({"fairness": [{"metric": "happiness", "kind": "difference", "threshold": "<=0.1"}]},
     ["fairness[0].metric", "unknown metric 'happiness'"]),
    ({"sensitive_features": ["sex", "gender"]}, ["sensitive_features[1] (gender)", "not in the data"]),
    ({"performance": {"accuracy": "0.8"}}, ["performance", "must be a comparison"]),
    ({"group_thresholds": [{"metric": "r2", "threshold": ">=0.5"}]},
     ["group_thresholds[0].metric", "is for regression"]),
    ({"fairness": [{"metric": "recall", "kind": "diff", "threshold": "<=0.1"}]}, ["fairness[0].kind"]),
    ({"explainability": {"top_n": 3, "forbidden_in_top": ["salary"]}},
     ["explainability.forbidden_in_top[0] (salary)", "not in the data"]),
])
def test_bad_policy_exits_2_naming_file_and_rule(workdir, models, capsys, change, expected):
    """In-process through contract.execute (the CLI's own path); one case also via the CLI below."""
    from mlops_steps import rai_gate
    from mlops_steps.contract import execute

    _policy(workdir, "bad-policy.yml", **change)
    code = execute("rai-gate", rai_gate.Inputs, rai_gate.OUTPUTS, rai_gate.run,
                   {"model": str(models["fair"]), "data": str(models["eval"]), "policy": "bad-policy.yml"})
    err = capsys.readouterr().err
    assert code == 2, err
    assert "bad-policy.yml" in err and "MLOPS_POLICY" in err and "Traceback" not in err
    for text in expected:
        assert text in err
    assert not (workdir / "rai-report").exists()


def test_bad_policy_via_cli(step, workdir, models):
    _policy(workdir, "bad-policy.yml", fairness=[{"metric": "happiness", "kind": "ratio", "threshold": ">=0.8"}])
    res = step("rai-gate", "--model", str(models["fair"]), "--data", str(models["eval"]), "--policy", "bad-policy.yml")
    assert res.code == 2, res
    assert "bad-policy.yml: fairness[0].metric: unknown metric 'happiness'" in res.stderr
    assert "Traceback" not in res.stderr and not (workdir / "rai-report").exists()


def test_gate_that_cannot_evaluate_fails(step, workdir, models):
    import pandas as pd

    table = pd.read_csv(models["eval"])
    table[table["sex"] == "Male"].to_csv(workdir / "men.csv", index=False)
    _policy(workdir, on_violation="warn")  # even in warn mode: not evaluated is not passed
    res = step("rai-gate", "--model", str(models["fair"]), "--data", "men.csv", "--policy", "policy.yml")
    assert res.code == 1, res
    assert res.outputs["gate-passed"] is False and res.outputs["needs-review"] is False
    report = _report(res)
    coverage = _rule(report, "coverage.sex")
    assert coverage["status"] == "error" and "Female has 0 rows" in coverage["message"]
    assert _rule(report, "fairness[0].sex")["status"] == "error"  # one group cannot be compared
    assert "cannot evaluate" in (Path(res.outputs["report-path"]) / "rai_gate.md").read_text()

    table.head(0).to_csv(workdir / "empty.csv", index=False)
    empty = step("rai-gate", "--model", str(models["fair"]), "--data", "empty.csv", "--policy", "policy.yml")
    assert empty.code == 2 and "no rows" in empty.stderr and "MLOPS_DATA" in empty.stderr

    table.drop(columns=["income"]).to_csv(workdir / "nolabel.csv", index=False)
    nolabel = step("rai-gate", "--model", str(models["fair"]), "--data", "nolabel.csv", "--policy", "policy.yml")
    assert nolabel.code == 2 and "'income'" in nolabel.stderr and "MLOPS_LABEL_COLUMN" in nolabel.stderr


def test_age_bands_intersections_and_report_replacement(workdir, models):
    """run() in-process: numeric binning, intersections, and a re-run replacing the report folder."""
    import pandas as pd

    from mlops_steps.backends.local import LocalBackend
    from mlops_steps.rai_gate import Inputs, run

    policy = _policy(workdir, sensitive_features=["sex", "race", {"name": "age", "bins": [25, 45, 65]}],
                     intersections=[["sex", "race"]], explainability=None,
                     fairness=[{"metric": "selection_rate", "kind": "ratio", "threshold": ">=0.1"}])
    inputs = Inputs(model=str(models["fair"]), data=str(models["eval"]), policy=str(policy), report_dir="rep")
    result = run(inputs, LocalBackend(workdir / ".mlops"))
    report = json.loads((workdir / "rep" / "rai_gate.json").read_text())
    table = pd.read_csv(models["eval"])

    bands = pd.cut(table["age"], [-float("inf"), 25, 45, 65, float("inf")], right=False).value_counts()
    assert list(report["by_group"]["age"]) == ["<25", "[25, 45)", "[45, 65)", ">=65"]
    assert [v["n"] for v in report["by_group"]["age"].values()] == bands.sort_index().tolist()
    cross = table.groupby(["sex", "race"]).size()
    inter = report["by_group"]["sex & race"]
    assert {k: v["n"] for k, v in inter.items()} == {f"{s} & {r}": int(n) for (s, r), n in cross.items()}
    assert {r["rule"] for r in report["rules"]} >= {"fairness[0].age", "fairness[0].sex & race"}
    assert result.summary.startswith("## RAI gate") and "By group: age" in result.summary

    (workdir / "rep" / "stale.txt").write_text("from an older run")
    run(inputs, LocalBackend(workdir / ".mlops"))
    assert not (workdir / "rep" / "stale.txt").exists() and (workdir / "rep" / "rai_gate.json").is_file()
    assert not [p for p in workdir.iterdir() if p.name.startswith(".rep.")]  # no temp folders left


def test_regression_policy(workdir, models):
    """task: regression with MAE thresholds per group, checked against scikit-learn."""
    import mlflow.sklearn
    import pandas as pd
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import Ridge
    from sklearn.metrics import mean_absolute_error
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder

    from mlops_steps.backends.local import LocalBackend
    from mlops_steps.rai_gate import Inputs, run

    table = pd.read_csv(DATA)
    features = ["occupation", "education_num", "age"]
    model = Pipeline([("prep", ColumnTransformer([("cat", OneHotEncoder(handle_unknown="ignore"), ["occupation"])],
                                                 remainder="passthrough")), ("reg", Ridge())])
    model.fit(table.iloc[:2000][features], table.iloc[:2000]["hours_per_week"])
    mlflow.sklearn.save_model(model, str(workdir / "reg"))
    policy = workdir / "reg.yml"
    policy.write_text(yaml.safe_dump({
        "task": "regression", "label": "hours_per_week", "sensitive_features": ["sex"],
        "performance": {"mae": "<=12", "r2": ">=0.01"},
        "fairness": [{"metric": "mean_absolute_error", "kind": "difference", "threshold": "<=0.5"}],
        "group_thresholds": [{"metric": "mae", "threshold": "<=12"}],
        "explainability": {"top_n": 1, "forbidden_in_top": ["age"], "scoring": "mae"},
    }))
    result = run(Inputs(model=str(workdir / "reg"), data=str(models["eval"]), policy=str(policy)),
                 LocalBackend(workdir / ".mlops"))
    report = json.loads((workdir / "rai-report" / "rai_gate.json").read_text())
    evaluation = pd.read_csv(models["eval"])
    pred = model.predict(evaluation[features])
    mae = {g: mean_absolute_error(evaluation["hours_per_week"][rows], pred[rows])
           for g, rows in evaluation.groupby("sex").groups.items()}
    assert report["by_group"]["sex"]["Female"]["mae"] == pytest.approx(mae["Female"], abs=1e-5)
    diff = _rule(report, "fairness[0].sex")
    assert diff["value"] == pytest.approx(abs(mae["Female"] - mae["Male"]), abs=1e-5)
    assert diff["status"] == ("pass" if diff["value"] <= 0.5 else "fail")
    assert report["model"]["inputs"] == features and report["explainability"]["scoring"] == "mae"
    assert result.passed == (report["status"] == "pass")


def test_import_stays_light():
    code = ("import sys, mlops_steps.rai_gate; "
            "print([m for m in ('pandas', 'mlflow', 'sklearn', 'fairlearn', 'matplotlib') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


class _RuleModel:
    """A plain pyfunc model (no scikit-learn flavor): degree or capital gains means >50K."""

    def predict(self, context, model_input, params=None):
        import numpy as np
        rich = (model_input["education_num"] >= 13) | (model_input["capital_gain"] > 5000)
        return np.where(rich, ">50K", "<=50K")


def test_pyfunc_model_and_dry_run(workdir, models):
    """A python_function model is scored through pyfunc (permutation importance too); AUC needs
    predict_proba, so a policy asking for it is bad input; --dry-run validates without scoring."""
    import mlflow.pyfunc
    import pandas as pd
    from mlflow.pyfunc import PythonModel
    from sklearn.metrics import recall_score

    from mlops_steps.backends.local import LocalBackend
    from mlops_steps.contract import BadInput
    from mlops_steps.rai_gate import Inputs, run

    # a class made at run time is pickled by value, so the saved model does not import this test module
    model_cls = type("RuleModel", (PythonModel,), {"predict": _RuleModel.predict})
    mlflow.pyfunc.save_model(str(workdir / "rules"), python_model=model_cls())
    policy = _policy(workdir, performance={"recall": ">=0.1"},
                     explainability={"top_n": 2, "forbidden_in_top": ["sex"], "max_rows": 500, "n_repeats": 2})
    backend = LocalBackend(workdir / ".mlops")
    result = run(Inputs(model=str(workdir / "rules"), data=str(models["eval"]), policy=str(policy)), backend)
    report = json.loads((workdir / "rai-report" / "rai_gate.json").read_text())
    table = pd.read_csv(models["eval"])
    expected = ((table["education_num"] >= 13) | (table["capital_gain"] > 5000)).astype(int)
    assert report["model"]["flavor"] == "pyfunc"
    assert _rule(report, "performance.recall")["value"] == pytest.approx(
        recall_score((table["income"] == ">50K").astype(int), expected), abs=1e-6)
    assert set(report["explainability"]["top"]) == {"education_num", "capital_gain"}
    assert report["explainability"]["rows_used"] == 500 and result.outputs["report-path"]

    with pytest.raises(BadInput, match="auc needs a scikit-learn model"):
        run(Inputs(model=str(workdir / "rules"), data=str(models["eval"]), policy=str(_policy(workdir))), backend)

    dry = run(Inputs(model=str(models["fair"]), data=str(models["eval"]), policy=str(policy), dry_run=True,
                     report_dir="dry"), backend)
    assert dry.outputs == {} and "fairness[0].race" in dry.summary and not (workdir / "dry").exists()


def test_predictions_that_are_not_label_values_are_bad_input(workdir, models, capsys):
    import pandas as pd

    from mlops_steps import rai_gate
    from mlops_steps.contract import execute

    table = pd.read_csv(models["eval"])
    table["income"] = (table["income"] == ">50K").astype(int)  # 0/1 labels, the model predicts strings
    table.to_csv(workdir / "eval01.csv", index=False)
    _policy(workdir, positive_label=1)
    code = execute("rai-gate", rai_gate.Inputs, rai_gate.OUTPUTS, rai_gate.run,
                   {"model": str(models["fair"]), "data": "eval01.csv", "policy": "policy.yml"})
    err = capsys.readouterr().err
    assert code == 2 and "MLOPS_DATA" in err and "not values of the label column" in err
