"""Data-parallel training (training.gpus > 1): two gloo processes on the CPU train what one
process trains on the same global batch, through the real `amdiff train` relaunch under torchrun."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from amdiff.io.manifest import write_manifest
from amdiff.train.checkpoint import load_checkpoint, load_weights, model_of_checkpoint
from tests.test_bad_inputs import _config
from tests.test_train import CONFIG, _subject

REPO = Path(__file__).resolve().parents[1]


def _tiny(processes: int):
    def edit(cfg):
        cfg["seed"] = 5
        cfg["diffusion"] = CONFIG["diffusion"] | {"timesteps": 20}
        cfg["models"] = {k: CONFIG["models"][k] for k in ("denoiser", "revision", "segmenter")} | {
            "variants": ["amdiff"]}
        cfg["training"].update({
            "train_sites": {"mct": ["mct"]}, "patch_size": [16, 16, 16], "epochs": 2, "warmup_epochs": 1,
            "patches_per_epoch": 8, "val_patches": 2, "batch_size": 4, "val_sampler_steps": 0,
            "device": "cpu", "threads": 1, "gpus": processes, "checkpoint_every_epochs": 1})
        cfg["inference"]["patch_size"] = [16, 16, 16]
        cfg["baselines"]["names"] = ["med_ddpm", "spach_transformer"]   # none needing 32^3 patches
    return edit


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("cohort")
    rng = np.random.default_rng(0)
    rows = [_subject(root, f"s{i}", split, rng) for i, split in enumerate(["train", "train", "val"])]
    write_manifest(pd.DataFrame(rows), root / "manifest.tsv")
    return root


def _train(cohort: Path, out: Path, variant: str, processes: int, *extra: str) -> subprocess.CompletedProcess:
    folder = out / "cfg"
    folder.mkdir(parents=True, exist_ok=True)
    config = _config(folder, _tiny(processes))
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "amdiff", "train", "--config", str(config),
                           "--manifest", str(cohort / "manifest.tsv"), "--site", "mct",
                           "--variant", variant, "--out-dir", str(out / "model"), *extra],
                          env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_two_gloo_processes_train_what_one_process_trains(cohort, tmp_path):
    """Med-DDPM (L_diff, a mean over the batch's items): the two-process run's logged losses
    and trained denoiser's outputs equal the single-process run's on the same global batch, to
    float rounding;
    only process 0 writes the outputs; a two-process run stopped after one epoch and resumed
    logs what the uninterrupted one logs."""
    runs = {}
    for processes in (1, 2):
        result = _train(cohort, tmp_path / f"p{processes}", "med_ddpm", processes)
        assert result.returncode == 0, result.stderr[-3000:]
        runs[processes] = tmp_path / f"p{processes}" / "model"
    for _ in range(2):
        result = _train(cohort, tmp_path / "resumed", "med_ddpm", 2, "--max-epochs", "1")
        assert result.returncode == 0, result.stderr[-3000:]
    resumed = pd.read_csv(tmp_path / "resumed" / "model" / "log.csv")
    one, two = (pd.read_csv(runs[k] / "log.csv") for k in (1, 2))
    assert len(one) == len(two) == 2
    np.testing.assert_allclose(two.train_diff, one.train_diff, rtol=1e-5)
    np.testing.assert_allclose(two.val_diff, one.val_diff, rtol=1e-4)
    pd.testing.assert_frame_equal(resumed.drop(columns="seconds"), two.drop(columns="seconds"))
    # The networks are compared by what they compute, not weight by weight: a conv bias just
    # before a GroupNorm (here the last up-block's, whose output the denoiser's head normalises)
    # has a gradient that is zero up to float noise, which Adam divides by its RMS into steps of
    # up to the learning rate either way; such weights differ between any two runs without
    # changing the output. The yardstick is how much the last epoch changed the output.
    nets = [_denoiser(runs[1] / "last.pt"), _denoiser(runs[2] / "last.pt"), _denoiser(runs[1] / "epoch_0001.pt")]
    generator = torch.Generator().manual_seed(0)
    x_t, i_lc = torch.randn(2, 1, 16, 16, 16, generator=generator), torch.rand(2, 1, 16, 16, 16, generator=generator)
    t = torch.tensor([3, 15])
    with torch.no_grad():
        out_one, out_two, out_first = (net(x_t, i_lc, t) for net in nets)
    gap, moved = float((out_two - out_one).norm()), float((out_first - out_one).norm())
    assert moved > 1e-3 * float(out_one.norm()) and gap < 1e-3 * moved, (gap, moved)
    assert sorted(p.name for p in runs[2].iterdir()) == sorted(p.name for p in runs[1].iterdir())


def _denoiser(checkpoint: Path) -> torch.nn.Module:
    """The trained Med-DDPM denoiser of ``checkpoint``, rebuilt as `amdiff predict` rebuilds it."""
    state = load_checkpoint(checkpoint)
    model, variant = model_of_checkpoint(state, checkpoint)
    load_weights(model, state["model"], checkpoint, network=variant)
    return model.denoiser.eval()


def test_a_batch_that_does_not_split_is_one_line_before_any_process_starts(cohort, tmp_path):
    folder = tmp_path / "cfg"
    folder.mkdir()

    def odd(cfg):
        _tiny(3)(cfg)
        cfg["training"]["batch_size"] = 4
    config = _config(folder, odd)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    result = subprocess.run([sys.executable, "-m", "amdiff", "train", "--config", str(config),
                             "--manifest", str(cohort / "manifest.tsv"), "--site", "mct",
                             "--variant", "med_ddpm", "--out-dir", str(tmp_path / "model")],
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "amdiff: error: training.batch_size: 4 is not a multiple of the 3 data-parallel processes "
        "(training.gpus)"]
    assert not (tmp_path / "model").exists()


def test_gradients_are_averaged_and_unused_parameters_keep_none(monkeypatch):
    """The optimizer hook, with the all-reduce of two processes replayed in one: the mean of
    both processes' gradients; a parameter without a gradient anywhere keeps none."""
    from amdiff.train import parallel

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("RANK", "0")

    def all_reduce(flat):
        # layout: has-gradient flags (used, partly, unused), then used (2), partly (1), unused (1)
        assert flat.tolist() == [1.0, 0.0, 0.0, 1.0, -1.0, 0.0, 0.0]
        flat += torch.tensor([1.0, 1.0, 0.0, 3.0, 5.0, 4.0, 0.0])   # process 1's
    monkeypatch.setattr(parallel.dist, "all_reduce", all_reduce)
    used, partly, unused = (torch.nn.Parameter(torch.zeros(k)) for k in (2, 1, 1))
    opt = torch.optim.SGD([used, partly, unused], lr=1.0)
    parallel.DataParallel().average_gradients(opt)
    used.grad = torch.tensor([1.0, -1.0])     # partly: a gradient in process 1 only
    opt.step()
    assert used.tolist() == [-2.0, -2.0]      # minus the mean (1+3)/2, (-1+5)/2
    assert partly.tolist() == [-2.0]          # (0 + 4) / 2
    assert unused.grad is None and unused.tolist() == [0.0]
