"""scan: pip-audit against a real OSV advisory snapshot, bandit on real code, the policy, SARIF schema."""
from __future__ import annotations

import json
import socket
import threading
from datetime import date, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jsonschema
import pytest
import yaml

DATA = Path(__file__).parent / "data" / "scan"
DB = DATA / "advisory-db"
SCHEMA = json.loads((DATA / "sarif-schema-2.1.0.json").read_text())


def _sarif_valid(path: Path) -> dict:
    log = json.loads(path.read_text())
    validator = jsonschema.Draft4Validator(SCHEMA, format_checker=jsonschema.FormatChecker())
    errors = [f"{list(e.path)}: {e.message}" for e in validator.iter_errors(log)]
    assert not errors, errors[:5]
    return log


def _report(run) -> dict:
    return json.loads(Path(run.outputs["report-path"]).read_text())


def _by_id(report: dict) -> dict[str, dict]:
    return {f["id"]: f for f in report["findings"]}


def _policy(workdir: Path, text: str) -> str:
    (workdir / "policy.yml").write_text(text)
    return "policy.yml"


def test_vulnerable_requests_is_reported_from_the_offline_database(step, workdir):
    (workdir / "requirements.txt").write_text("# app\nrequests==2.19.1\nurllib3==1.23\n")
    res = step("scan", "--requirements", "requirements.txt", "--advisory-db", str(DB))
    assert res.code == 1, res
    out = res.outputs
    assert out["vulnerabilities"] >= 3 and out["unaudited"] == 0 and out["blocking"] == out["findings"]
    found = _by_id(_report(res))
    pysec = found["PYSEC-2018-28"]
    assert pysec["package"] == "requests" and pysec["version"] == "2.19.1"
    assert set(pysec["aliases"]) == {"CVE-2018-18074", "GHSA-x84v-xcm2-53pg"}
    assert pysec["fixed_versions"] == ["2.20.0"] and pysec["file"] == "requirements.txt" and pysec["line"] == 2
    assert found["PYSEC-2023-192"]["severity"] == "high" and found["PYSEC-2023-192"]["score"] >= 7  # CVSS vector
    assert "PYSEC-2018-32" not in found  # urllib3 < 1.23 only: 1.23 is the fix
    assert "PYSEC-2018-28 requests==2.19.1 (requirements.txt:2)" in res.stderr  # an annotation per finding

    sarif = _sarif_valid(Path(out["sarif-path"]))
    run = sarif["runs"][0]
    assert run["tool"]["driver"]["name"] == "pip-audit"
    result = next(r for r in run["results"] if r["ruleId"] == "PYSEC-2018-28")
    loc = result["locations"][0]["physicalLocation"]
    assert loc["artifactLocation"]["uri"] == "requirements.txt" and loc["region"]["startLine"] == 2
    assert result["level"] == "error"
    assert run["tool"]["driver"]["rules"][result["ruleIndex"]]["id"] == "PYSEC-2018-28"
    md = (workdir / "scan-results" / "scan.md").read_text()
    assert "Security scan FAILED" in md and "| fail | PYSEC-2018-28 |" in md


def test_clean_pins_pass_and_threshold_with_fixable_off(step, workdir):
    (workdir / "ok.txt").write_text("requests==2.32.3\nurllib3==2.2.3\nsome-private-pkg==1.0\n")
    clean = step("scan", "--requirements", "ok.txt", "--advisory-db", str(DB))
    assert clean.code == 0, clean
    assert clean.outputs["findings"] == 0 and "Security scan passed" in clean.stderr

    (workdir / "old.txt").write_text("urllib3==1.23\n")
    policy = _policy(workdir, "severity_threshold: critical\nfail_on_fixable: false\nunknown_severity: medium\n")
    lenient = step("scan", "--requirements", "old.txt", "--advisory-db", str(DB), "--policy", policy)
    assert lenient.code == 0, lenient
    report = _report(lenient)
    assert report["counts"]["vulnerabilities"] >= 3
    assert {f["status"] for f in report["findings"]} == {"pass"}
    strict = step("scan", "--requirements", "old.txt", "--advisory-db", str(DB), "--policy", policy,
                  "--severity-threshold", "high")
    assert strict.code == 1 and _by_id(_report(strict))["PYSEC-2023-192"]["status"] == "fail"


def test_conda_file_with_vulnerable_pip_pin_is_caught(step, workdir):
    (workdir / "conda.yml").write_text(
        "name: train\nchannels: [conda-forge]\ndependencies:\n  - python=3.11\n  - numpy=1.26.4\n"
        "  - pip\n  - pip:\n      - mlflow-skinny==2.9.2\n      - pyyaml==5.3\n")
    res = step("scan", "--conda-file", "conda.yml", "--advisory-db", str(DB))
    assert res.code == 1, res
    report = _report(res)
    yaml_vulns = [f for f in report["findings"] if f["package"] == "pyyaml" and f["kind"] == "dependency"]
    assert {"PYSEC-2020-96", "PYSEC-2021-142"} <= {f["id"] for f in yaml_vulns}
    assert yaml_vulns[0]["file"] == "conda.yml" and yaml_vulns[0]["line"] == 9
    unaudited = {f["package"]: f for f in report["findings"] if f["kind"] == "unaudited"}
    assert set(unaudited) == {"numpy", "pip"} and "conda package" in unaudited["numpy"]["description"]

    # conda packages explicitly allowed, the vulnerable pip pin still fails the scan
    policy = _policy(workdir, "allow_unaudited:\n  - package: 'conda:*'\n    reason: conda packages are "
                              "scanned by the platform team\n")
    allowed = step("scan", "--conda-file", "conda.yml", "--advisory-db", str(DB), "--policy", policy)
    assert allowed.code == 1
    assert {f["status"] for f in _report(allowed)["findings"] if f["kind"] == "unaudited"} == {"allowed"}
    (workdir / "conda.yml").write_text(
        "dependencies:\n  - python=3.11\n  - numpy=1.26.4\n  - pip:\n      - pyyaml==6.0.2\n")
    fixed = step("scan", "--conda-file", "conda.yml", "--advisory-db", str(DB), "--policy", policy)
    assert fixed.code == 0, fixed


def test_bandit_catches_shell_true_and_hardcoded_password(step, workdir):
    src = workdir / "src"
    src.mkdir()
    (src / "job.py").write_text(
        "import subprocess\n\n\ndef run(cmd):\n    password = \"hunter2\"\n"
        "    return subprocess.call(cmd, shell=True), password\n")
    (src / "clean.py").write_text("def add(a, b):\n    return a + b\n")
    res = step("scan", "--paths", "src")
    assert res.code == 1, res
    report = _report(res)
    found = {f["id"]: f for f in report["findings"] if f["kind"] == "code"}
    assert found["B602"]["file"] == "src/job.py" and found["B602"]["line"] == 6
    assert found["B602"]["severity"] == "high" and "CWE-78" in found["B602"]["aliases"]
    assert found["B105"]["line"] == 5 and "hunter2" in found["B105"]["description"]
    assert res.outputs["vulnerabilities"] == 0
    sarif = _sarif_valid(Path(res.outputs["sarif-path"]))
    assert [r["tool"]["driver"]["name"] for r in sarif["runs"]] == ["bandit"]
    lines = {r["ruleId"]: r["locations"][0]["physicalLocation"]["region"]["startLine"]
             for r in sarif["runs"][0]["results"]}
    assert lines["B602"] == 6 and lines["B105"] == 5

    (src / "broken.py").write_text("def broken(:\n")  # bandit cannot parse it: not audited, fails closed
    broken = step("scan", "--paths", "src/broken.py", "--paths", "src/clean.py")
    assert broken.code == 1
    assert [f["file"] for f in _report(broken)["findings"] if f["kind"] == "unaudited"] == ["src/broken.py"]


def test_allowlisted_finding_passes_until_its_expiry(step, workdir):
    (workdir / "requirements.txt").write_text("requests==2.19.1\n")
    today = date.today()

    def allow(expires: date) -> str:
        return _policy(workdir, f"""allowlist:
  - id: CVE-2018-18074          # an alias works as well as the PYSEC id
    reason: only talks to an internal https endpoint
    expires: {expires.isoformat()}
  - id: PYSEC-2023-74
    package: requests
    reason: no proxies in this deployment
    expires: {(today + timedelta(days=30)).isoformat()}
""")

    ok = step("scan", "--requirements", "requirements.txt", "--advisory-db", str(DB),
              "--policy", allow(today + timedelta(days=1)))
    assert ok.code == 0, ok
    report = _report(ok)
    assert {f["status"] for f in report["findings"]} == {"allowed"} and report["counts"]["vulnerabilities"] == 2
    sarif = _sarif_valid(Path(ok.outputs["sarif-path"]))
    sup = sarif["runs"][0]["results"][0]["suppressions"][0]
    assert sup["kind"] == "external" and "internal https" in sup["justification"]

    expired = step("scan", "--requirements", "requirements.txt", "--advisory-db", str(DB),
                   "--policy", allow(today - timedelta(days=1)))
    assert expired.code == 1, expired
    assert f"expired on {(today - timedelta(days=1)).isoformat()}" in expired.stderr
    assert "policy.yml line 2" in expired.stderr
    assert _by_id(_report(expired))["PYSEC-2018-28"]["status"] == "fail"


def test_unpinned_and_url_requirements_fail_closed_unless_allowed(step, workdir):
    (workdir / "requirements.txt").write_text("flask>=2\n-e git+https://example.invalid/x.git#egg=x\n")
    res = step("scan", "--requirements", "requirements.txt", "--advisory-db", str(DB))
    assert res.code == 1 and res.outputs["unaudited"] == 2
    assert "flask (requirements.txt:1)" in res.stderr and "not pinned" in res.stderr
    _sarif_valid(Path(res.outputs["sarif-path"]))

    (workdir / "requirements.txt").write_text("flask>=2\n")
    policy = _policy(workdir, "allow_unaudited:\n  - package: flask\n    reason: resolved by the base image\n")
    allowed = step("scan", "--requirements", "requirements.txt", "--advisory-db", str(DB), "--policy", policy)
    assert allowed.code == 0, allowed


def test_env_only_inputs_like_an_action_and_dry_run(step, workdir):
    (workdir / "a.txt").write_text("requests==2.19.1\n")
    (workdir / "b.txt").write_text("urllib3==2.2.3\nflask>=2\n")
    env = {"MLOPS_REQUIREMENTS": "a.txt\nb.txt", "MLOPS_ADVISORY_DB": str(DB), "MLOPS_OUT_DIR": "out"}
    dry = step("scan", env={**env, "MLOPS_DRY_RUN": "true"})
    assert dry.code == 0, dry
    assert dry.outputs == {"unaudited": 1} and "| requests | 2.19.1 | a.txt:1 | yes |" in dry.stderr
    assert not (workdir / "out").exists()
    res = step("scan", env=env)
    assert res.code == 1 and res.outputs["sarif-path"] == "out/scan.sarif"
    assert {f["package"] for f in _report(res)["findings"]} == {"requests", "flask"}


def test_pyproject_and_mlflow_model_dir(step, workdir):
    (workdir / "pyproject.toml").write_text(
        '[project]\nname = "app"\nversion = "1"\ndependencies = [\n  "requests==2.19.1",\n]\n'
        '[project.optional-dependencies]\ndev = ["app[extra]", "urllib3==2.2.3"]\n')
    model = workdir / "model"
    model.mkdir()
    (model / "MLmodel").write_text("flavors: {}\n")
    (model / "requirements.txt").write_text("mlflow==2.9.2\npyyaml==5.3\n")
    res = step("scan", "--pyproject", "pyproject.toml", "--model-dir", "model", "--advisory-db", str(DB))
    assert res.code == 1, res
    found = _by_id(_report(res))
    assert found["PYSEC-2018-28"]["file"] == "pyproject.toml" and found["PYSEC-2018-28"]["line"] == 5
    assert found["PYSEC-2021-142"]["file"].endswith("model/requirements.txt")
    assert _report(res)["counts"]["dependencies"] == 4


def test_current_environment_scans_installed_packages(step, workdir):
    res = step("scan", "--environment", "current", "--advisory-db", str(DB))
    assert res.code == 0, res  # the project's pins are newer than every advisory in the test snapshot
    assert _report(res)["counts"]["dependencies"] > 50


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_service_fails_the_scan(step, workdir):
    (workdir / "requirements.txt").write_text("requests==2.19.1\n")
    url = f"http://127.0.0.1:{_closed_port()}/v1/query"
    res = step("scan", "--requirements", "requirements.txt", "--vulnerability-service", "osv",
               "--service-url", url, "--timeout", "3")
    assert res.code == 3, res
    assert "unreachable" in res.stderr and url in res.stderr and "requests==2.19.1" in res.stderr
    assert not (workdir / "scan-results").exists()  # nothing half-written


@pytest.fixture
def osv_server():
    """A real HTTP server on 127.0.0.1 speaking the OSV /v1/query API for requests 2.19.1."""
    advisory = yaml.safe_load((DB / "vulns" / "requests" / "PYSEC-2018-28.yaml").read_text())

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            query = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            hit = query["package"]["name"] == "requests" and query["version"] == "2.19.1"
            body = json.dumps({"vulns": [advisory]} if hit else {}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1/query"
    server.shutdown()
    server.server_close()


def test_osv_service_mode_against_a_local_osv_api(step, workdir, osv_server):
    (workdir / "requirements.txt").write_text("requests==2.19.1\nidna==3.7\n")
    res = step("scan", "--requirements", "requirements.txt", "--vulnerability-service", "osv",
               "--service-url", osv_server)
    assert res.code == 1, res
    report = _report(res)
    assert [f["id"] for f in report["findings"]] == ["PYSEC-2018-28"] and osv_server in report["service"]


def test_bad_inputs_exit_2_naming_file_and_line(step, workdir):
    (workdir / "bad.txt").write_text("requests==2.19.1\nthis is not a requirement ===\n")
    res = step("scan", "--requirements", "bad.txt", "--advisory-db", str(DB))
    assert res.code == 2 and "bad.txt line 2" in res.stderr and "Traceback" not in res.stderr

    (workdir / "conda.yml").write_text("dependencies:\n  - pip:\n    - [unclosed\n")
    res = step("scan", "--conda-file", "conda.yml", "--advisory-db", str(DB))
    assert res.code == 2 and "conda.yml line" in res.stderr and "MLOPS_CONDA_FILE" in res.stderr

    (workdir / "ok.txt").write_text("requests==2.19.1\n")
    policy = _policy(workdir, "severity_threshold: high\nallowlist:\n  - id: PYSEC-2018-28\n"
                              "    reason: accepted\n")
    res = step("scan", "--requirements", "ok.txt", "--advisory-db", str(DB), "--policy", policy)
    assert res.code == 2 and "policy.yml line 3" in res.stderr and "expiry" in res.stderr

    notosv = workdir / "notosv" / "vulns" / "requests"
    notosv.mkdir(parents=True)
    (notosv / "advisory.yaml").write_text("title: a blog post\nbody: not OSV\n")
    res = step("scan", "--requirements", "ok.txt", "--advisory-db", str(workdir / "notosv"))
    assert res.code == 2 and "not an OSV advisory" in res.stderr and "advisory.yaml" in res.stderr
    empty = workdir / "empty"
    empty.mkdir()
    res = step("scan", "--requirements", "ok.txt", "--advisory-db", str(empty))
    assert res.code == 2 and "not an OSV advisory database" in res.stderr

    res = step("scan", "--advisory-db", str(DB))
    assert res.code == 2 and "nothing to scan" in res.stderr
    res = step("scan", "--requirements", "ok.txt", "--vulnerability-service", "pypi", "--advisory-db", str(DB))
    assert res.code == 2 and "--advisory-db" in res.stderr
    assert not (workdir / "scan-results").exists()


def test_osv_range_evaluation_matches_the_spec():
    from packaging.version import Version

    from mlops_steps.scan_sources import affects, severity_of

    last_affected = {"ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"last_affected": "1.11.0"}]}]}
    assert affects(last_affected, Version("1.11.0")) and affects(last_affected, Version("0.9"))
    assert not affects(last_affected, Version("1.11.1"))
    two_branches = {"ranges": [{"type": "ECOSYSTEM", "events": [
        {"introduced": "0"}, {"fixed": "1.26.17"}, {"introduced": "2.0.0"}, {"fixed": "2.0.6"}]}]}
    assert affects(two_branches, Version("1.26.16")) and affects(two_branches, Version("2.0.5"))
    assert not affects(two_branches, Version("1.26.17")) and not affects(two_branches, Version("2.0.6"))
    git_only = {"ranges": [{"type": "GIT", "events": [{"introduced": "0"}, {"fixed": "abc123"}]}]}
    assert not affects(git_only, Version("1.0"))
    assert affects({"versions": ["0.12.01"]}, Version("0.12.1"))  # PEP 440 normalised match
    vector = "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"
    assert severity_of({"severity": [{"type": "CVSS_V3", "score": vector}]}) == ("critical", 9.8)
    assert severity_of({"database_specific": {"severity": "MODERATE"}}) == ("medium", None)
    assert severity_of({}) == ("unknown", None)
