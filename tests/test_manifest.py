"""mlops-step manifest: version, commit, hashes of step modules and template files, tool pins."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from conftest import ROOT


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_manifest_json_hashes_and_pins(step, workdir):
    res = step("manifest")  # the fixture adds --output-json
    assert res.code == 0, res
    m = json.loads(res.stdout)
    assert m == json.loads(res.output_json.read_text())
    assert m["version"] == "2.0.0" and m["package"] == "mlops-steps"
    assert m["steps"]["register-data"]["sha256"] == _sha(ROOT / "steps" / "mlops_steps" / "register_data.py")
    assert m["files"]["actions/register-data/action.yml"] == _sha(ROOT / "actions" / "register-data" / "action.yml")
    assert m["files"][".github/workflows/model-ci.yml"] == _sha(ROOT / ".github" / "workflows" / "model-ci.yml")
    assert any(f.startswith("ado-templates/steps/") for f in m["files"])
    pins = dict(line.split("==") for line in (ROOT / "constraints.txt").read_text().splitlines() if "==" in line)
    assert m["tools"]["mlflow"] == {"installed": pins["mlflow"], "pinned": pins["mlflow"]}
    assert m["tools"]["azure-cli"]["pinned"]
    assert m["commit"] is None or len(m["commit"]) == 40


def test_manifest_text_and_bad_root(step, workdir):
    text = step("manifest", "--format", "text")
    assert text.code == 0 and text.stdout.startswith("mlops-steps 2.0.0") and "register-data" in text.stdout
    bad = step("manifest", "--root", str(workdir))
    assert bad.code == 2 and "MLOPS_ROOT" in bad.stderr and "Traceback" not in bad.stderr
