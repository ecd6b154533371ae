"""mlops-steps: the Python step commands behind the mlops-templates actions and templates."""

__version__ = "2.0.0"
