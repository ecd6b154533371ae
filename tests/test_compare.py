"""compare (champion/challenger) and promote on real sklearn models trained on UCI Adult and taxi data."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import ROOT, TAXI

ADULT = ROOT / "examples" / "adult-income" / "data" / "adult.csv"
if not ADULT.is_file():  # the example ships a copy; fall back to the shared data set
    ADULT = ROOT.parent / "shared" / "data" / "adult.csv"


def _fit_save(model, X, y, folder: Path, **save) -> Path:
    import mlflow.sklearn

    model.fit(X, y)
    mlflow.sklearn.save_model(model, str(folder), **save)
    return folder


@pytest.fixture(scope="module")
def adult(tmp_path_factory):
    """Evaluation CSV and MLflow model folders: dummy < logistic; 'balanced' trades accuracy for recall."""
    import pandas as pd
    from sklearn.compose import make_column_transformer
    from sklearn.dummy import DummyClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    root = tmp_path_factory.mktemp("adult")
    data = pd.read_csv(ADULT)
    train, test = data.iloc[:3000], data.iloc[3000:5000]
    test.to_csv(root / "eval.csv", index=False)
    X, y = train.drop(columns=["income"]), train["income"]
    cat = list(X.select_dtypes(exclude="number").columns)
    num = [c for c in X.columns if c not in cat]

    def pipe(est, columns=X.columns):
        cats = [c for c in cat if c in columns]
        nums = [c for c in columns if c not in cats]
        return make_pipeline(make_column_transformer(
            (OneHotEncoder(handle_unknown="ignore"), cats), (StandardScaler(), nums)), est)

    models = {
        "dummy": _fit_save(DummyClassifier(), X, y, root / "dummy"),
        "logistic": _fit_save(pipe(LogisticRegression(max_iter=500)), X, y, root / "logistic"),
        "balanced": _fit_save(pipe(LogisticRegression(max_iter=500, class_weight="balanced")), X, y,
                              root / "balanced"),
    }
    # trained with a column the evaluation data does not have: it cannot score eval.csv
    Xx = X.assign(extra=1.0)
    models["needs_extra"] = _fit_save(pipe(LogisticRegression(max_iter=200), list(Xx.columns)), Xx, y,
                                      root / "needs_extra")
    broken = root / "broken"
    shutil.copytree(models["logistic"], broken)
    (broken / "model.skops").write_bytes(b"not a model")
    models["broken"] = broken
    return {"eval": root / "eval.csv", **models}


def _register(workdir: Path, name: str, folder: Path) -> str:
    from mlops_steps.backends.local import LocalBackend

    return LocalBackend(workdir / ".mlops").register_model(name, folder).version


def _promote(workdir: Path, name: str, version: str, alias: str = "champion") -> None:
    """Set up a champion in-process (the promote step itself is tested through the CLI below)."""
    from mlops_steps.backends.local import LocalBackend

    LocalBackend(workdir / ".mlops").set_alias(name, alias, version)


def _alias(workdir: Path, name: str, alias: str = "champion") -> str | None:
    from mlops_steps.backends.local import LocalBackend

    return LocalBackend(workdir / ".mlops").alias_version(name, alias)


def _report(res) -> dict:
    return json.loads((Path(res.outputs["report-path"]) / "compare.json").read_text())


def test_no_champion_passes_and_says_so(step, workdir, adult):
    v = _register(workdir, "adult", adult["dummy"])
    res = step("compare", "--model", f"adult:{v}", "--data", str(adult["eval"]), "--label-column", "income",
               "--deploy-flag-dir", "flag")
    assert res.code == 0, res
    assert res.outputs["deploy-flag"] is True and res.outputs["champion-version"] == ""
    report = _report(res)
    assert report["no_champion"] is True and report["champion"] is None and report["status"] == "passed"
    assert report["task"] == "classification" and report["positive_label"] == ">50K"
    assert report["metrics"]["accuracy"]["candidate"] == pytest.approx(0.7565)  # majority class share
    md = (workdir / "compare-report" / "compare.md").read_text()
    assert "No champion yet" in md and "PASS" in md
    assert (workdir / "compare-report" / "deploy_flag").read_text() == "1"
    assert (workdir / "flag" / "deploy_flag").read_text() == "1"


def test_better_challenger_wins_and_promote_moves_the_alias(step, workdir, adult):
    v1 = _register(workdir, "adult", adult["dummy"])
    first = step("promote", "--model", f"adult:{v1}")
    assert first.code == 0, first
    assert first.outputs == {"model-name": "adult", "previous-version": "", "new-version": v1, "changed": True}
    v2 = _register(workdir, "adult", adult["logistic"])

    res = step("compare", "--model", f"adult:{v2}", "--data", str(adult["eval"]), "--label-column", "income")
    assert res.code == 0, res
    assert res.outputs["deploy-flag"] is True and res.outputs["champion-version"] == v1
    metrics = res.outputs["metrics"]
    assert metrics["accuracy"]["candidate"] > metrics["accuracy"]["champion"] + 0.05
    rules = {r["metric"]: r for r in _report(res)["rules"]}
    assert set(rules) == {"accuracy", "f1", "roc_auc"}  # default classification policy
    assert all(r["passed"] for r in rules.values()) and rules["accuracy"]["role"] == "primary"
    assert (workdir / "compare-report" / "deploy_flag").read_text() == "1"

    moved = step("promote", "--model", f"adult:{v2}")
    assert moved.code == 0, moved
    assert moved.outputs["previous-version"] == v1 and moved.outputs["new-version"] == v2
    assert _alias(workdir, "adult") == v2
    again = step("promote", "--model", f"adult:{v2}")
    assert again.code == 0 and again.outputs["changed"] is False and again.outputs["previous-version"] == v2


def test_worse_challenger_loses_and_min_improvement(step, workdir, adult):
    good = _register(workdir, "adult", adult["logistic"])
    worse = _register(workdir, "adult", adult["dummy"])
    _promote(workdir, "adult", good, "prod")
    (workdir / "compare-report").mkdir()
    (workdir / "compare-report" / "deploy_flag").write_text("1")  # stale flag from an earlier run

    res = step("compare", "--model", f"adult:{worse}", "--data", str(adult["eval"]),
               "--label-column", "income", "--champion-alias", "prod")
    assert res.code == 1, res
    assert res.outputs["deploy-flag"] is False and res.outputs["champion-version"] == good
    assert (workdir / "compare-report" / "deploy_flag").read_text() == "0"
    report = _report(res)
    assert report["status"] == "failed" and "accuracy" in report["reason"]
    assert "FAIL" in (workdir / "compare-report" / "compare.md").read_text()

    # the champion against itself: a tie passes by default, fails when an improvement is required
    tie = step("compare", "--model", f"adult:{good}", "--data", str(adult["eval"]),
               "--label-column", "income", "--champion-alias", "prod")
    assert tie.code == 0 and "the candidate is the champion itself" in _report(tie)["notes"]
    need = step("compare", "--model", f"adult:{good}", "--data", str(adult["eval"]),
                "--label-column", "income", "--champion-alias", "prod", "--min-improvement", "1%")
    assert need.code == 1 and need.outputs["deploy-flag"] is False


def test_guard_metric_regression_fails(step, workdir, adult):
    champ = _register(workdir, "adult", adult["balanced"])
    cand = _register(workdir, "adult", adult["logistic"])
    _promote(workdir, "adult", champ)
    args = ["--model", f"adult:{cand}", "--data", str(adult["eval"]), "--label-column", "income"]

    res = step("compare", *args, "--guard", "recall=0.05")
    assert res.code == 1, res
    rules = {r["metric"]: r for r in _report(res)["rules"]}
    assert rules["accuracy"]["passed"] is True  # the candidate is more accurate ...
    assert rules["recall"]["passed"] is False and rules["recall"]["improvement"] < -0.05  # ... but misses
    assert "recall" in _report(res)["reason"] and "accuracy" not in _report(res)["reason"]

    policy = workdir / "compare-policy.yml"
    policy.write_text("primary:\n  metric: roc_auc\n  min_improvement: 0\n"
                      "guards:\n  - metric: recall\n    max_regression: 10%\n"
                      "  - metric: log_loss\n    max_regression: 0.1\n")
    by_policy = step("compare", *args, "--policy", str(policy))
    assert by_policy.code == 1, by_policy
    rules = {r["metric"]: r for r in _report(by_policy)["rules"]}
    assert rules["recall"]["max_regression"] == {"value": 0.1, "relative": True, "text": "10%"}
    assert rules["recall"]["relative_improvement"] < -0.1 and not rules["recall"]["passed"]
    assert rules["log_loss"]["direction"] == "lower" and rules["log_loss"]["passed"]


def test_inputs_from_env_only_like_an_action(step, workdir, adult):
    champ = _register(workdir, "adult", adult["dummy"])
    cand = _register(workdir, "adult", adult["logistic"])
    promoted = step("promote", env={"MLOPS_MODEL": f"adult:{champ}", "MLOPS_ALIAS": "champion"})
    assert promoted.code == 0, promoted
    res = step("compare", env={"MLOPS_MODEL": f"adult:{cand}", "MLOPS_DATA": str(adult["eval"]),
                               "MLOPS_LABEL_COLUMN": "income", "MLOPS_GUARD": "recall=0.02\nf1=0.02",
                               "MLOPS_REPORT_DIR": "out", "MLOPS_POSITIVE_LABEL": ">50K"})
    assert res.code == 0, res
    assert res.outputs["report-path"] == str(workdir / "out") and (workdir / "out" / "deploy_flag").is_file()
    assert {r["metric"] for r in _report(res)["rules"]} == {"accuracy", "recall", "f1"}


def test_promote_refuses_a_missing_version(step, workdir, adult):
    v = _register(workdir, "adult", adult["dummy"])
    _promote(workdir, "adult", v)
    v2 = _register(workdir, "adult", adult["logistic"])
    dry = step("promote", "--model", f"adult:{v2}", "--dry-run")
    assert dry.code == 0 and dry.outputs["changed"] is True and "would promote" in dry.stderr, dry
    assert _alias(workdir, "adult") == v  # a dry run changes nothing
    missing = step("promote", "--model", "adult:99")
    assert missing.code == 2 and "adult:99 not found" in missing.stderr and "Traceback" not in missing.stderr
    assert _alias(workdir, "adult") == v  # unchanged
    for ref in ("adult", "adult@latest", "other:1"):
        res = step("promote", "--model", ref)
        assert res.code == 2 and "Traceback" not in res.stderr, res


def test_fails_closed_when_a_model_or_the_data_cannot_be_scored(step, workdir, adult):
    champ = _register(workdir, "adult", adult["needs_extra"])
    cand = _register(workdir, "adult", adult["logistic"])
    _promote(workdir, "adult", champ)
    (workdir / "compare-report").mkdir()
    (workdir / "compare-report" / "deploy_flag").write_text("1")
    data = str(adult["eval"])

    unscorable = step("compare", "--model", f"adult:{cand}", "--data", data, "--label-column", "income")
    assert unscorable.code == 2 and "champion" in unscorable.stderr and "extra" in unscorable.stderr
    assert not (workdir / "compare-report" / "deploy_flag").exists()  # no stale "deploy"

    broken = step("compare", "--model", str(adult["broken"]), "--model-name", "adult", "--data", data,
                  "--label-column", "income")
    assert broken.code == 3 and "cannot load the model" in broken.stderr, broken

    (workdir / "empty.csv").write_text((adult["eval"]).read_text().splitlines()[0] + "\n")
    for args, needle in [
        (["--label-column", "salary"], "MLOPS_LABEL_COLUMN"),
        (["--label-column", "income", "--primary-metric", "gini"], "unknown metric 'gini'"),
        (["--label-column", "income", "--guard", "recall=lots"], "MLOPS_GUARD"),
        (["--label-column", "income", "--positive-label", "rich"], "MLOPS_POSITIVE_LABEL"),
    ]:
        res = step("compare", "--model", f"adult:{cand}", "--data", data, *args)
        assert res.code == 2 and needle in res.stderr and "Traceback" not in res.stderr, (args, res)
    empty = step("compare", "--model", f"adult:{cand}", "--data", "empty.csv", "--label-column", "income")
    assert empty.code == 2 and "no rows" in empty.stderr
    folder = step("compare", "--model", str(adult["logistic"]), "--data", data, "--label-column", "income")
    assert folder.code == 2 and "MLOPS_MODEL_NAME" in folder.stderr
    assert not (workdir / "compare-report" / "deploy_flag").exists()


def test_regression_on_taxi_with_a_model_folder_candidate(step, workdir, tmp_path):
    import pandas as pd
    from sklearn.dummy import DummyRegressor
    from sklearn.linear_model import LinearRegression

    data = pd.read_csv(TAXI / "data" / "taxi-data.csv")
    data = data.drop(columns=[c for c in data.columns if c.startswith("Unnamed")]).iloc[:3000]
    train, test = data.iloc[:2000], data.iloc[2000:]
    test.to_csv(workdir / "test.csv", index=False)
    X, y = train.drop(columns=["cost"]), train["cost"]
    linear = _fit_save(LinearRegression(), X, y, tmp_path / "linear")
    mean = _fit_save(DummyRegressor(), X, y, tmp_path / "mean")
    _promote(workdir, "taxi", _register(workdir, "taxi", linear))

    res = step("compare", "--model", str(mean), "--model-name", "taxi", "--data", "test.csv",
               "--label-column", "cost")
    report = _report(res)
    assert res.code == 1, res
    assert report["task"] == "regression" and report["rules"][0]["metric"] == "rmse"
    assert report["metrics"]["rmse"]["candidate"] > report["metrics"]["rmse"]["champion"]
    assert report["candidate"]["identity"] == str(mean)


def test_adult_income_example_end_to_end(step, workdir):
    """The example as its README runs it, on a 4,000-row slice: train -> register -> gates."""
    import pandas as pd

    example = ROOT / "examples" / "adult-income"
    shutil.copytree(example, workdir / "adult", ignore=shutil.ignore_patterns(".mlops", "*-report", "data"))
    (workdir / "adult" / "data").mkdir()
    pd.read_csv(example / "data" / "adult.csv").sample(4000, random_state=0).to_csv(
        workdir / "adult" / "data" / "adult.csv", index=False)
    store = ["--store", str(workdir / ".mlops")]
    assert step("register-data", "--data-yaml", "adult/data.yml", *store).code == 0

    train = step("train", "--job", "adult/pipeline.yml", "--set-input", "max_iter=20", *store)
    assert train.code == 0, train
    test_data = train.outputs["outputs"]["test_data"]
    reg = step("register-model", "--model-name", "adult-income", "--job-name", train.outputs["job-name"], *store)
    assert reg.code == 0, reg
    model = reg.outputs["model-id"]
    rai = step("rai-gate", "--model", model, "--data", test_data, "--policy", "adult/rai-policy.yml",
               "--dry-run", *store)
    assert rai.code == 0, rai  # the example policy is valid for this data and model
    first = step("compare", "--model", model, "--data", test_data, "--label-column", "income", *store)
    assert first.code == 0 and _report(first)["no_champion"] is True, first
    assert first.outputs["metrics"]["accuracy"]["candidate"] > 0.8
