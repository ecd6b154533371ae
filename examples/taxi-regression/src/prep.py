"""Split the raw taxi data into train and test sets (70/30, seeded)."""
import argparse
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd

parser = argparse.ArgumentParser()
parser.add_argument("--raw_data", required=True)
parser.add_argument("--train_data", required=True)
parser.add_argument("--test_data", required=True)
args = parser.parse_args()

data = pd.read_csv(args.raw_data)
data = data.drop(columns=[c for c in data.columns if c.startswith("Unnamed")])
rng = np.random.default_rng(42)
mask = rng.random(len(data)) < 0.7
train, test = data[mask], data[~mask]
for frame, folder in ((train, args.train_data), (test, args.test_data)):
    Path(folder).mkdir(parents=True, exist_ok=True)
    frame.to_csv(Path(folder) / "data.csv", index=False)

with mlflow.start_run():
    mlflow.log_metric("train_rows", len(train))
    mlflow.log_metric("test_rows", len(test))
print(f"prep: {len(train)} train rows, {len(test)} test rows")
