"""Backends: `local` (MLflow + this machine) and `azureml` (azure-ai-ml)."""
