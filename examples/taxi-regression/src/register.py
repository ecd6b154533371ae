"""Register the model in the MLflow model registry when evaluation allowed it (deploy_flag)."""
import argparse
import json
from pathlib import Path

import mlflow
import mlflow.sklearn

parser = argparse.ArgumentParser()
parser.add_argument("--model_name", required=True)
parser.add_argument("--model_path", required=True)
parser.add_argument("--evaluation_output", required=True)
parser.add_argument("--model_info_output_path", required=True)
args = parser.parse_args()

flag = (Path(args.evaluation_output) / "deploy_flag").read_text().strip()
info = {"registered": False}
if flag == "1":
    with mlflow.start_run():
        model = mlflow.sklearn.load_model(args.model_path)
        logged = mlflow.sklearn.log_model(model, name=args.model_name,
                                          registered_model_name=args.model_name,
                                          skops_trusted_types=["sklearn.tree._tree.Tree"])
        version = str(logged.registered_model_version)
    info = {"registered": True, "id": f"{args.model_name}:{version}", "name": args.model_name,
            "version": version}
out = Path(args.model_info_output_path)
out.mkdir(parents=True, exist_ok=True)
(out / "model_info.json").write_text(json.dumps(info, indent=2))
print("register:", info)
