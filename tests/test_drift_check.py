"""drift-check: every metric against scipy on real data, the gate's verdicts through the real CLI
(taxi fares and UCI Adult), data quality, schema/type mismatches, data assets, and bad input."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.spatial.distance import jensenshannon
from scipy.stats import kstwobign, ks_2samp, wasserstein_distance

from conftest import ROOT, TAXI
from mlops_steps.contract import BadInput
from mlops_steps.drift_check import Inputs, compare
from mlops_steps.drift_metrics import numeric_drift

ADULT = ROOT / "tests" / "data" / "drift" / "adult-sample.csv"
RTOL = 1e-9


def _taxi() -> pd.DataFrame:
    return pd.read_csv(TAXI / "data" / "taxi-data.csv").drop(columns=["Unnamed: 0"], errors="ignore")


def _split(table: pd.DataFrame, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A random half/half split: the same distribution on both sides."""
    shuffled = table.sample(frac=1.0, random_state=seed).reset_index(drop=True)
    half = len(shuffled) // 2
    return shuffled.iloc[:half].reset_index(drop=True), shuffled.iloc[half:].reset_index(drop=True)


def _shifted(table: pd.DataFrame) -> pd.DataFrame:
    out = table.copy()
    out["distance"] = out["distance"] * 1.6
    out["cost"] = out["cost"] * 1.4 + 3.0
    return out


def _psi(p_counts, q_counts, n, m) -> float:
    p, q = (np.asarray(p_counts) + 1) / n, (np.asarray(q_counts) + 1) / m
    return float(np.sum((q - p) * np.log(q / p)))


def _scipy_numeric(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """The reference implementation of every numeric metric: scipy, np.histogram and the PSI formula."""
    lo, hi = min(a.min(), b.min()), max(a.max(), b.max())
    bins = math.ceil(math.log2(min(len(a), len(b))) + 1)
    rng = (lo, hi) if hi > lo else None
    ha, hb = np.histogram(a, bins=bins, range=rng)[0], np.histogram(b, bins=bins, range=rng)[0]
    d = ks_2samp(a, b).statistic
    std = np.std(a, ddof=1) if len(a) > 1 else 0.0  # one reference value: no spread, the floor applies
    return {
        "wasserstein_distance": wasserstein_distance(a, b),
        "normalized_wasserstein_distance": wasserstein_distance(a, b) / max(std, 0.001),
        "jensen_shannon_distance": jensenshannon(ha, hb, base=2),
        "population_stability_index": _psi(ha, hb, len(a), len(b)),
        "kolmogorov_smirnov_statistic": d,
        "ks_pvalue": kstwobign.sf(d * math.sqrt(len(a) * len(b) / (len(a) + len(b)))),
        "out_of_range_share": float(((b < a.min()) | (b > a.max())).mean()),
    }


def _assert_close(ours: dict, ref: dict, label: str) -> None:
    for metric, expected in ref.items():
        assert ours[metric] == pytest.approx(expected, rel=RTOL, abs=1e-12), f"{label}: {metric}"


# -- the metrics against scipy -------------------------------------------------------------------
def test_numeric_metrics_equal_scipy_on_taxi_columns():
    ref, cur = _split(_taxi())
    for label, current in (("same", cur), ("shifted", _shifted(cur))):
        for column in ref.columns:
            a = ref[column].to_numpy(float)
            b = current[column].to_numpy(float)
            ours = numeric_drift(a, b)
            _assert_close(ours, _scipy_numeric(a, b), f"{label} {column}")
            counts = np.histogram(a, bins=ours["histogram"]["edges"])[0]
            assert (ours["histogram"]["reference"] == counts).all()


@pytest.mark.parametrize("case", ["ties", "heavy_tails", "lognormal", "negative_skew", "offset", "spike", "sizes",
                                  "tiny", "constant", "one_value"])
def test_numeric_metrics_equal_scipy_on_hard_shapes(case):
    rng = np.random.default_rng(11)
    a, b = {
        "ties": (np.round(rng.normal(0, 1, 30000), 1), np.round(rng.normal(0.02, 1, 20000), 1)),
        "heavy_tails": (rng.standard_cauchy(40000), rng.standard_cauchy(30000) + 0.05),
        "lognormal": (rng.lognormal(0, 2, 50000), rng.lognormal(0.01, 2, 50000)),
        "negative_skew": (-rng.lognormal(0, 2, 50000), -rng.lognormal(0.1, 2, 40000)),
        "offset": (rng.normal(1e12, 1e3, 50000), rng.normal(1e12 + 100, 1e3, 40000)),
        "spike": (np.r_[np.zeros(200_000), rng.normal(size=100)], np.r_[np.zeros(150_000), rng.normal(size=900)]),
        "sizes": (rng.exponential(2, 60000), rng.exponential(2.2, 777)),
        "tiny": (np.array([1.0, 2.0]), np.array([1.5])),
        "constant": (np.full(50, 3.0), np.full(7, 3.0)),
        "one_value": (np.array([3.0]), np.array([3.0, 4.0, 3.0])),
    }[case]
    _assert_close(numeric_drift(a, b), _scipy_numeric(a, b), case)


def test_categorical_metrics_equal_scipy_on_adult_columns():
    ref, cur = _split(pd.read_csv(ADULT), seed=1)
    cur.loc[cur.index[:300], "workclass"] = "Space-agency"  # an unseen category
    report = compare(Inputs(reference="r", current="c", column_types={"education_num": "categorical"}), ref, cur)
    features = {f["name"]: f for f in report["features"]}
    for column in ["workclass", "education", "marital_status", "occupation", "race", "sex", "income",
                   "education_num"]:
        a, b = ref[column].astype(str), cur[column].astype(str)
        cats = sorted(set(a) | set(b))
        pa = a.value_counts().reindex(cats, fill_value=0).to_numpy()
        pb = b.value_counts().reindex(cats, fill_value=0).to_numpy()
        metrics = features[column]["metrics"]
        assert features[column]["type"] == "categorical"
        assert metrics["jensen_shannon_distance"] == pytest.approx(jensenshannon(pa, pb, base=2), rel=RTOL)
        assert metrics["population_stability_index"] == pytest.approx(_psi(pa, pb, len(a), len(b)), rel=RTOL)
        unseen = float((~b.isin(set(a))).mean())
        assert metrics["unseen_category_share"] == pytest.approx(unseen, rel=RTOL, abs=1e-15)
    assert features["workclass"]["metrics"]["unseen_category_share"] == pytest.approx(300 / len(cur))


def test_p_values_are_reported_but_never_gate():
    rng = np.random.default_rng(5)
    ref = pd.DataFrame({"x": rng.normal(0, 1, 200_000)})
    cur = pd.DataFrame({"x": rng.normal(0.02, 1, 200_000)})  # harmless at this size, p ~ 0
    report = compare(Inputs(reference="r", current="c"), ref, cur)
    feature = report["features"][0]
    assert feature["p_values"]["kolmogorov_smirnov"] < 1e-6
    assert feature["metrics"]["normalized_wasserstein_distance"] < 0.05
    assert report["drift_detected"] is False and feature["status"] == "pass"
    with pytest.raises(BadInput, match="p-values are reported but never gate"):
        compare(Inputs(reference="r", current="c", thresholds={"two_sample_kolmogorov_smirnov_test": "0.05"}),
                ref, cur)


def test_verdict_rules_critical_feature_and_drift_share():
    ref, cur = _split(_taxi())
    cur = cur.assign(distance=cur["distance"] * 1.6)  # one of 21 columns drifts
    inputs = dict(reference="r", current="c", columns=["distance", "cost", "passengers", "pickup_hour"])
    plain = compare(Inputs(**inputs), ref, cur)
    assert plain["drifted_features"] == ["distance"] and plain["drift_detected"] is False
    assert plain["summary"]["drift_share"] == 0.25
    critical = compare(Inputs(**inputs, critical_features=["distance"]), ref, cur)
    assert critical["drift_detected"] is True and "critical features drift: distance" in critical["reasons"]
    share = compare(Inputs(**inputs, drift_share=0.25), ref, cur)
    assert share["drift_detected"] is True
    off = compare(Inputs(**inputs, critical_features=["distance"],
                         thresholds={"numerical.normalized_wasserstein_distance": "off",
                                     "numerical.population_stability_index": "0.2"}), ref, cur)
    gates = next(f for f in off["features"] if f["name"] == "distance")["gates"]
    assert list(gates) == ["population_stability_index"]


def test_data_quality_null_rate_and_out_of_range_are_gateable():
    ref, cur = _split(_taxi())
    cur = cur.copy()
    cur.loc[cur.index[:600], "passengers"] = np.nan  # ~12 % nulls
    cur.loc[cur.index[:50], "pickup_hour"] = 30  # outside the reference range 0..23
    inputs = dict(reference="r", current="c", columns=["passengers", "pickup_hour"])
    report = compare(Inputs(**inputs), ref, cur)
    features = {f["name"]: f for f in report["features"]}
    assert features["passengers"]["metrics"]["null_rate_increase"] == pytest.approx(600 / len(cur))
    assert features["pickup_hour"]["metrics"]["out_of_range_share"] == pytest.approx(50 / len(cur))
    assert report["drift_detected"] is False  # reported, not gated by default
    gated = compare(Inputs(**inputs, thresholds={"null_rate_increase": "0.05", "out_of_range_share": "0.005"}),
                    ref, cur)
    assert gated["drift_detected"] is True and sorted(gated["drifted_features"]) == ["passengers", "pickup_hour"]


def test_a_column_without_values_fails_closed():
    ref, cur = _split(_taxi())
    cur = cur.assign(cost=np.nan)
    report = compare(Inputs(reference="r", current="c", critical_features=["cost"]), ref, cur)
    cost = next(f for f in report["features"] if f["name"] == "cost")
    assert cost["status"] == "not_evaluated" and report["drift_detected"] is True


# -- the step through the CLI --------------------------------------------------------------------
@pytest.fixture(scope="module")
def taxi_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("taxi")
    ref, cur = _split(_taxi())
    ref.to_csv(folder / "ref.csv", index=False)
    cur.to_csv(folder / "cur.csv", index=False)
    _shifted(cur).to_parquet(folder / "shifted.parquet")
    return folder


def test_same_distribution_passes_with_report_in_three_forms(step, taxi_files, workdir):
    res = step("drift-check", "--reference", str(taxi_files / "ref.csv"), "--current", str(taxi_files / "cur.csv"))
    assert res.code == 0, res
    assert res.outputs["drift-detected"] is False
    folder = Path(res.outputs["report-path"])
    assert folder == (workdir / "drift-report").resolve()
    report = json.loads((folder / "drift.json").read_text())
    assert report["status"] == "pass" and report["summary"]["columns"] == 21
    assert report["current"]["rows"] == 4887 and len(report["reference"]["sha256"]) == 64
    assert "## drift-check: ✅ no drift" in (folder / "drift.md").read_text()
    assert "drift-check: ✅ no drift" in res.stderr  # the summary on a plain terminal
    pngs = sorted(p.name for p in folder.glob("*.png"))
    assert "drift_distances.png" in pngs and len(pngs) == 6
    assert all((folder / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)


def test_shifted_parquet_fails_and_numbers_match_scipy(step, taxi_files):
    res = step("drift-check", "--reference", str(taxi_files / "ref.csv"),
               "--current", str(taxi_files / "shifted.parquet"), "--critical-features", "cost",
               "--report-dir", "out/report")
    assert res.code == 1, res
    assert res.outputs["drift-detected"] is True
    assert set(res.outputs["drifted-features"]) == {"cost", "distance"}
    report = json.loads((Path(res.outputs["report-path"]) / "drift.json").read_text())
    assert "critical features drift: cost" in report["reasons"]
    cost = next(f for f in report["features"] if f["name"] == "cost")
    ref = pd.read_csv(taxi_files / "ref.csv")["cost"].to_numpy(float)
    cur = pd.read_parquet(taxi_files / "shifted.parquet")["cost"].to_numpy(float)
    expected = _scipy_numeric(ref, cur)
    for metric in ("normalized_wasserstein_distance", "jensen_shannon_distance", "population_stability_index",
                   "kolmogorov_smirnov_statistic"):
        assert cost["metrics"][metric] == pytest.approx(expected[metric], rel=1e-8)
    assert cost["gates"]["normalized_wasserstein_distance"]["exceeded"] is True
    assert "drift_cost.png" in report["charts"]


def test_categorical_drift_on_adult_from_env_inputs(step, workdir):
    ref, cur = _split(pd.read_csv(ADULT), seed=2)
    cur = cur[(cur["sex"] == "Male") | (cur.index % 5 == 0)]  # most women gone
    ref.to_csv(workdir / "ref.csv", index=False)
    cur.to_csv(workdir / "cur.csv", index=False)
    res = step("drift-check", env={
        "MLOPS_REFERENCE": "ref.csv", "MLOPS_CURRENT": "cur.csv", "MLOPS_CRITICAL_FEATURES": "sex",
        "MLOPS_IGNORE_COLUMNS": "fnlwgt\nincome",
        "MLOPS_THRESHOLDS": "categorical.jensen_shannon_distance=0.15\nnull_rate_increase=0.01",
        "MLOPS_COLUMN_TYPES": "education_num=categorical"})
    assert res.code == 1, res
    report = json.loads((workdir / "drift-report" / "drift.json").read_text())
    features = {f["name"]: f for f in report["features"]}
    assert features["sex"]["status"] == "drift" and features["education_num"]["type"] == "categorical"
    assert features["sex"]["gates"]["jensen_shannon_distance"]["threshold"] == 0.15
    assert "fnlwgt" not in features and report["reasons"] == ["critical features drift: sex"]
    assert "13" in features["education_num"]["histogram"]["labels"]  # integer codes as categories
    assert "drift_sex.png" in report["charts"]


def test_schema_and_type_mismatches_fail_the_gate(step, taxi_files, workdir):
    cur = pd.read_csv(taxi_files / "cur.csv")
    cur.drop(columns=["vendor"]).assign(tip=1.0).to_csv(workdir / "schema.csv", index=False)
    res = step("drift-check", "--reference", str(taxi_files / "ref.csv"), "--current", "schema.csv")
    assert res.code == 1, res
    report = json.loads((workdir / "drift-report" / "drift.json").read_text())
    assert report["schema"] == {"missing_in_current": ["vendor"], "new_in_current": ["tip"], "type_mismatches": []}
    assert "vendor" in res.outputs["drifted-features"]

    typed = cur.astype({"passengers": object})
    typed.loc[typed.index[:3], "passengers"] = "unknown"
    typed.to_csv(workdir / "typed.csv", index=False)
    res = step("drift-check", "--reference", str(taxi_files / "ref.csv"), "--current", "typed.csv")
    assert res.code == 1, res
    report = json.loads((workdir / "drift-report" / "drift.json").read_text())
    passengers = next(f for f in report["features"] if f["name"] == "passengers")
    assert passengers["status"] == "type_mismatch" and report["schema"]["type_mismatches"] == ["passengers"]
    # declared numeric: the three words are counted as type errors
    res = step("drift-check", "--reference", str(taxi_files / "ref.csv"), "--current", "typed.csv",
               "--column-types", "passengers=numerical", "--columns", "passengers")
    assert res.code == 1, res
    passengers = json.loads((workdir / "drift-report" / "drift.json").read_text())["features"][0]
    assert passengers["type_errors"] == {"reference": 0, "current": 3}


def test_registered_data_assets_as_inputs(step, taxi_files):
    for name in ("ref", "cur"):
        reg = step("register-data", "--name", f"taxi-{name}", "--path", str(taxi_files / f"{name}.csv"))
        assert reg.code == 0, reg
    dry = step("drift-check", "--reference", "azureml:taxi-ref:1", "--current", "azureml:taxi-cur:1", "--dry-run")
    assert dry.code == 0, dry
    assert "report-path" not in dry.outputs and not Path("drift-report").exists()
    res = step("drift-check", "--reference", "azureml:taxi-ref:1", "--current", "azureml:taxi-cur:1")
    assert res.code == 0, res
    report = json.loads((Path(res.outputs["report-path"]) / "drift.json").read_text())
    assert report["reference"]["ref"] == "azureml:taxi-ref:1" and report["current"]["rows"] == 4887


def test_bad_input_exits_2_and_writes_nothing(step, taxi_files, workdir):
    ref = str(taxi_files / "ref.csv")
    (workdir / "empty.csv").write_text(",".join(_taxi().columns) + "\n")
    (workdir / "other.csv").write_text("a,b\n1,2\n")
    (workdir / "notes").mkdir()
    (workdir / "notes" / "keep.txt").write_text("not a report")
    cases = [
        (["--current", "empty.csv"], "MLOPS_CURRENT): has no rows"),
        (["--current", "other.csv"], "shares no column with the reference"),
        (["--current", "missing.csv"], "file not found"),
        (["--current", "azureml:nope:1"], "MLOPS_CURRENT"),
        (["--current", ref, "--thresholds", "numerical.wasserstein=0.2"], "unknown metric 'wasserstein'"),
        (["--current", ref, "--thresholds", "jensen_shannon_distance=-1"], "must be a finite number >= 0"),
        (["--current", ref, "--column-types", "cost=text"], "must be numerical or categorical"),
        (["--current", ref, "--critical-features", "tip"], "MLOPS_CRITICAL_FEATURES): not columns"),
        (["--current", ref, "--drift-share", "0"], "MLOPS_DRIFT_SHARE"),
        (["--current", ref, "--report-dir", "notes"], "is not a drift-check report folder"),
    ]
    for args, message in cases:
        res = step("drift-check", "--reference", ref, *args)
        assert res.code == 2, (args, res)
        assert message in res.stderr and "Traceback" not in res.stderr, (args, res.stderr)
    assert not (workdir / "drift-report").exists()
    assert [p.name for p in (workdir / "notes").iterdir()] == ["keep.txt"]
