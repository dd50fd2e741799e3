"""benchmarks/paper_projection.py: its power-law fit, and its training projection on the demo
networks: the 128^3 figure is the measured count carried along the fitted power of the voxels
and scaled to the config's batch."""

from __future__ import annotations

import math
import re
import runpy
import subprocess
import sys

import pytest

from amdiff.config import load_config
from tests.conftest import REPO

SCRIPT = REPO / "benchmarks" / "paper_projection.py"


@pytest.fixture(scope="module")
def script():
    return runpy.run_path(str(SCRIPT))


@pytest.mark.parametrize("exponent", [1.0, 1.4, 0.3])
def test_power_law_recovers_a_power_of_the_voxel_count(script, exponent):
    values = [5.0 * (edge ** 3) ** exponent for edge in (16, 32)]
    projected, fitted = script["power_law"]([16, 32], values, 128)
    assert fitted == pytest.approx(exponent)
    assert projected == pytest.approx(5.0 * (128 ** 3) ** exponent)


def test_power_law_of_one_size_is_linear_in_the_voxels(script):
    assert script["power_law"]([32], [3.0], 128) == (3.0 * 64, 1.0)


def test_duration_picks_a_readable_unit(script):
    assert script["duration"](30) == "30.0 s"
    assert script["duration"](600) == "10.0 min"
    assert script["duration"](3 * 86400) == "3.0 days"


def test_training_projection_of_the_demo_denoiser_scales_with_voxels_and_batch():
    config = REPO / "config" / "config.yaml"
    run = subprocess.run([sys.executable, str(SCRIPT), "--config", str(config), "--sizes", "16", "32",
                          "--models", "med_ddpm", "--repeats", "1", "--threads", "1", "--skip-inference"],
                         cwd=REPO, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    measured = {int(edge): float(gflop) for edge, gflop in
                re.findall(r"med_ddpm\s+(\d+)\^3:\s+[\d.]+ s/step,\s+([\d.]+) GFLOP", run.stdout)}
    assert set(measured) == {16, 32}
    # convolutions grow with the voxels, the bottleneck's attention with their square
    assert 8.0 <= measured[32] / measured[16] < 8.0 ** 1.2
    row = next(line for line in run.stdout.splitlines() if line.startswith("| med_ddpm |"))
    tflop, exponent = map(float, re.search(r"\| ([\d.]+) \(([\d.]+)\) \|", row).groups())
    batch = int(load_config(config)["training"]["batch_size"])
    assert exponent == pytest.approx(math.log(measured[32] / measured[16]) / math.log(8), abs=2e-3)
    assert tflop == pytest.approx(measured[32] * 64 ** exponent * batch / 1e3, rel=0.01)
