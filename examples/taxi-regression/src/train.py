"""Train a random-forest fare model and save it as an MLflow model."""
import argparse
from pathlib import Path

import mlflow
import mlflow.sklearn
import pandas as pd
from sklearn.ensemble import RandomForestRegressor

TARGET = "cost"

parser = argparse.ArgumentParser()
parser.add_argument("--train_data", required=True)
parser.add_argument("--model_output", required=True)
parser.add_argument("--n_estimators", type=int, default=50)
args = parser.parse_args()

train = pd.read_csv(Path(args.train_data) / "data.csv")
X, y = train.drop(columns=[TARGET]), train[TARGET]

with mlflow.start_run():
    model = RandomForestRegressor(n_estimators=args.n_estimators, max_depth=12, random_state=0, n_jobs=1)
    model.fit(X, y)
    mlflow.log_param("n_estimators", args.n_estimators)
    mlflow.log_metric("train_r2", model.score(X, y))
    signature = mlflow.models.infer_signature(X.head(50), model.predict(X.head(50)))
    # skops (MLflow's default format) refuses tree models unless their node storage type is trusted.
    mlflow.sklearn.save_model(model, args.model_output, signature=signature, input_example=X.head(5),
                              skops_trusted_types=["sklearn.tree._tree.Tree"])
print(f"train: saved model to {args.model_output}")
