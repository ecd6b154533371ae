"""Clean the raw Adult data and split it into stratified train and test sets (seeded)."""
import argparse
from pathlib import Path

import mlflow
import pandas as pd
from sklearn.model_selection import train_test_split

TARGET = "income"

parser = argparse.ArgumentParser()
parser.add_argument("--raw_data", required=True)
parser.add_argument("--test_size", type=float, default=0.25)
parser.add_argument("--train_data", required=True)
parser.add_argument("--test_data", required=True)
args = parser.parse_args()

data = pd.read_csv(args.raw_data, skipinitialspace=True)
data = data.drop(columns=[c for c in data.columns if c.startswith("Unnamed")])
data[TARGET] = data[TARGET].str.rstrip(".")  # the UCI test file spells labels ">50K."
train, test = train_test_split(data, test_size=args.test_size, stratify=data[TARGET], random_state=42)
for frame, folder in ((train, args.train_data), (test, args.test_data)):
    Path(folder).mkdir(parents=True, exist_ok=True)
    frame.to_csv(Path(folder) / "data.csv", index=False)

with mlflow.start_run():
    mlflow.log_metrics({"train_rows": len(train), "test_rows": len(test),
                        "positive_rate": float((data[TARGET] == ">50K").mean())})
print(f"prep: {len(train)} train rows, {len(test)} test rows")
