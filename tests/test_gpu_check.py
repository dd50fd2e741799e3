"""benchmarks/gpu_check.py: its window count is MONAI's, and its code runs (on CPU, tiny sizes),
so the script is ready when a GPU is at hand. Its numbers are not checked."""

from __future__ import annotations

import runpy
import subprocess
import sys

import torch
from monai.inferers import SlidingWindowInferer

from tests.conftest import REPO

SCRIPT = REPO / "benchmarks" / "gpu_check.py"


def test_window_count_is_monais():
    windows_per_pass = runpy.run_path(str(SCRIPT))["windows_per_pass"]
    assert windows_per_pass((440, 440, 620), (128, 128, 128), 0.75) == 2057   # the count
    counted = []
    inferer = SlidingWindowInferer(roi_size=(16, 16, 16), sw_batch_size=1, overlap=0.25)
    inferer(torch.zeros(1, 1, 40, 24, 16), lambda x: counted.append(1) or x)
    assert windows_per_pass((40, 24, 16), (16, 16, 16), 0.25) == len(counted)


def test_every_check_runs_on_cpu_in_small_mode():
    run = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--small"], cwd=REPO,
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout + run.stderr
    rows = {line.split("|")[1].strip(): line.split("|")[2].strip()
            for line in run.stdout.splitlines() if line.startswith("| ") and "---" not in line}
    assert rows == {"check": "status", "projector": "ok", "mamba": "ok", "train step": "ok",
                    "inference": "ok", "recon": "skip", "list-mode": "ok"}
