"""The taxi example end to end on the local backend: register data -> train pipeline -> register model.

Run it with `python3 tasks.py demo` from the repository root. Everything lands in
examples/taxi-regression/.mlops/ (MLflow store, data assets, job records and logs).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
STEP = str(Path(sys.executable).parent / "mlops-step")


def step(*args: str) -> dict:
    """Run one mlops-step command, stop the demo if it fails, return its outputs."""
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        code = subprocess.call([STEP, *args, "--output-json", out.name], cwd=HERE)
        if code:
            sys.exit(f"demo: `mlops-step {' '.join(args)}` exited {code}")
        return json.loads(Path(out.name).read_text())["outputs"]


def main() -> None:
    os.environ.setdefault("MLOPS_STORE", str(HERE / ".mlops"))
    data = step("register-data", "--data-yaml", "data.yml")
    job = step("train", "--job", "pipeline.yml", "--set-input", f"raw_data=azureml:taxi-data:{data['version']}")
    info = json.loads((Path(job["outputs"]["model_info_output_path"]) / "model_info.json").read_text())
    model = step("register-model", "--model-name", "taxi-fare", "--job-name", job["job-name"],
                 "--job-output", "trained_model", "--tags", f"data=taxi-data:{data['version']}")
    metrics = job["metrics"]["evaluate_model"]
    print(f"""
Demo finished.
  data asset     taxi-data:{data['version']}
  job            {job['job-name']}  (logs: {HERE / '.mlops' / 'jobs' / job['job-name'] / 'logs'})
  test metrics   r2={metrics['r2']:.3f}  mae={metrics['mae']:.3f}  rmse={metrics['rmse']:.3f}
  pipeline registered   {info.get('id', 'nothing (deploy_flag 0)')}
  register-model        {model['model-id']} ({'new version' if model['created'] else 'identical content, existing version'})
  MLflow store   {os.environ['MLOPS_STORE']}/mlflow.db  (mlflow ui --backend-store-uri sqlite:///{os.environ['MLOPS_STORE']}/mlflow.db)
""")


if __name__ == "__main__":
    main()
