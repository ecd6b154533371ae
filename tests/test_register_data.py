"""register-data on the local backend: YAML and options, env-only inputs, idempotency, bad input."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from conftest import TAXI


def _data_yaml(dir: Path, path: str = "taxi-data.csv", type: str = "uri_file") -> Path:
    spec = dir / "data.yml"
    spec.write_text(f"$schema: https://azuremlschemas.azureedge.net/latest/data.schema.json\n"
                    f"type: {type}\nname: taxi-data\ndescription: NYC taxi\npath: {path}\n")
    return spec


def test_register_is_content_addressed_and_idempotent(step, workdir):
    shutil.copy(TAXI / "data" / "taxi-data.csv", workdir)
    _data_yaml(workdir)
    first = step("register-data", "--data-yaml", "data.yml")
    assert first.code == 0, first
    assert first.outputs["version"] == "1" and first.outputs["assets"][0]["created"] is True
    registered = Path(first.outputs["uri"])
    assert registered.read_bytes() == (workdir / "taxi-data.csv").read_bytes()

    again = step("register-data", "--data-yaml", "data.yml")
    assert again.code == 0 and again.outputs["version"] == "1"
    assert again.outputs["assets"][0]["created"] is False

    with open(workdir / "taxi-data.csv", "a") as fh:
        fh.write("9999,1.0,0.1,40.7,-73.9,1,40.7,-73.9,0,2,1,1,1,1,1,1,1,1,1,1,1,1\n")
    changed = step("register-data", "--data-yaml", "data.yml")
    assert changed.code == 0 and changed.outputs["version"] == "2"
    assert registered.read_bytes() != Path(changed.outputs["uri"]).read_bytes()  # v1 untouched


def test_inputs_from_env_only_like_an_action(step, workdir):
    folder = workdir / "folder"
    folder.mkdir()
    (folder / "a.csv").write_text("x\n1\n")
    res = step("register-data", env={"MLOPS_NAME": "raw", "MLOPS_PATH": str(folder),
                                     "MLOPS_TAGS": "team=ml\nsource=test"})
    assert res.code == 0, res
    assert res.outputs["name"] == "raw" and res.outputs["assets"][0]["type"] == "uri_folder"
    meta = json.loads((Path(res.outputs["uri"]) / "asset.json").read_text())
    assert meta["tags"] == {"team": "ml", "source": "test"}


def test_bad_inputs_exit_2_with_one_clear_line(step, workdir):
    missing = step("register-data", "--data-yaml", "nope.yml")
    assert missing.code == 2 and "nope.yml" in missing.stderr and "Traceback" not in missing.stderr

    (workdir / "broken.yml").write_text("type: uri_file\nname: [unclosed\n")
    broken = step("register-data", "--data-yaml", "broken.yml")
    assert broken.code == 2 and "invalid YAML at line" in broken.stderr

    (workdir / "x.csv").write_text("a\n1\n")
    _data_yaml(workdir, "x.csv", "uri_fil")
    schema = step("register-data", "--data-yaml", "data.yml")
    assert schema.code == 2 and "Must be one of" in schema.stderr and "Traceback" not in schema.stderr

    _data_yaml(workdir, "absent.csv")
    absent = step("register-data", "--data-yaml", "data.yml")
    assert absent.code == 2 and "absent.csv" in absent.stderr
    assert not (workdir / ".mlops" / "data").exists()  # nothing registered by failed runs


def test_unwritable_store_is_bad_input(step, workdir):
    (workdir / "x.csv").write_text("a\n1\n")
    (workdir / "blocker").write_text("a file where the store folder should be")
    res = step("register-data", "--name", "x", "--path", "x.csv", "--store", "blocker/sub")
    assert res.code == 2 and "MLOPS_STORE" in res.stderr and "Traceback" not in res.stderr
