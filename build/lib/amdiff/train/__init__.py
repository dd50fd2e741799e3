"""Training: one trainer for every model, checkpoints with resume, per-epoch CSV logs."""
