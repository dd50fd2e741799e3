"""AMDiff reproducibility workflow: data simulation, reconstruction, models and evaluation."""

__version__ = "0.1.0"
