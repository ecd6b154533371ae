"""Score the trained model on the test set and write its metrics."""
import argparse
import json
from pathlib import Path

import mlflow
import mlflow.sklearn
import numpy as np
import pandas as pd
from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

TARGET = "cost"

parser = argparse.ArgumentParser()
parser.add_argument("--model_input", required=True)
parser.add_argument("--test_data", required=True)
parser.add_argument("--evaluation_output", required=True)
args = parser.parse_args()

test = pd.read_csv(Path(args.test_data) / "data.csv")
X, y = test.drop(columns=[TARGET]), test[TARGET]
model = mlflow.sklearn.load_model(args.model_input)
pred = model.predict(X)
metrics = {
    "r2": float(r2_score(y, pred)),
    "mae": float(mean_absolute_error(y, pred)),
    "rmse": float(np.sqrt(mean_squared_error(y, pred))),
}
with mlflow.start_run():
    mlflow.log_metrics(metrics)
out = Path(args.evaluation_output)
out.mkdir(parents=True, exist_ok=True)
(out / "metrics.json").write_text(json.dumps(metrics, indent=2))
# MLOps v2 convention: deploy_flag 1 when the model is good enough to register.
(out / "deploy_flag").write_text("1" if metrics["r2"] > 0.5 else "0")
print("evaluate:", metrics)
