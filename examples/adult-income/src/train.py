"""Train a gradient-boosting income classifier and save it as an MLflow model folder."""
import argparse
from pathlib import Path

import mlflow
import mlflow.sklearn
import pandas as pd
from sklearn.compose import make_column_transformer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import accuracy_score, roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OrdinalEncoder

TARGET = "income"
TREES = "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor"

parser = argparse.ArgumentParser()
parser.add_argument("--train_data", required=True)
parser.add_argument("--max_iter", type=int, default=100)
parser.add_argument("--learning_rate", type=float, default=0.1)
parser.add_argument("--model_output", required=True)
args = parser.parse_args()

train = pd.read_csv(Path(args.train_data) / "data.csv")
X, y = train.drop(columns=[TARGET]), train[TARGET]

categorical = list(X.select_dtypes(exclude="number").columns)
encode = make_column_transformer(
    (OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1, encoded_missing_value=-1),
     categorical),
    remainder="passthrough", verbose_feature_names_out=False)
model = make_pipeline(encode, HistGradientBoostingClassifier(
    max_iter=args.max_iter, learning_rate=args.learning_rate, categorical_features="from_dtype",
    random_state=0))

with mlflow.start_run():
    mlflow.log_params({"max_iter": args.max_iter, "learning_rate": args.learning_rate})
    model.fit(X, y)
    mlflow.log_metrics({"train_accuracy": accuracy_score(y, model.predict(X)),
                        "train_auc": roc_auc_score(y == ">50K", model.predict_proba(X)[:, 1])})
    signature = mlflow.models.infer_signature(X.head(50), model.predict(X.head(50)))
    # skops (MLflow's default format) loads only types it trusts; we trust the trees we just trained
    mlflow.sklearn.save_model(model, args.model_output, signature=signature, input_example=X.head(5),
                              skops_trusted_types=[TREES])
print(f"train: saved model to {args.model_output}")
