"""The comparison models train through the shared loop: logs, best.pt, resume, Med-DDPM inputs."""

import copy

import numpy as np
import pandas as pd
import pytest
import torch

import tests.test_train as tt
from amdiff.config import fill_defaults
from amdiff.errors import InputError
from amdiff.io.manifest import write_manifest
from amdiff.train.baselines import BaselineTrainer, baseline_kwargs
from amdiff.train.checkpoint import load_checkpoint
from amdiff.train.trainer import Trainer

CONFIG = copy.deepcopy(tt.CONFIG)
CONFIG["training"].update(patch_size=[32, 32, 32], epochs=2, patches_per_epoch=2, val_patches=1, batch_size=2)
CONFIG["inference"] = {"patch_size": [32, 32, 32], "overlap": 0.0, "sampler": "ddim", "steps": 2}
CONFIG["baselines"] = {"size": "demo", "overrides": {"swin_unetr": {"norm_name": "batch"}}}
fill_defaults(CONFIG)   # as validation leaves a config: every left-out key at its default


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("cohort32")
    rng = np.random.default_rng(2)
    old = tt.SHAPE
    tt.SHAPE = (32, 32, 32)
    try:
        rows = [tt._subject(root, f"s{i}", split, rng) for i, split in enumerate(["train", "train", "val"])]
    finally:
        tt.SHAPE = old
    write_manifest(pd.DataFrame(rows), root / "manifest.tsv")
    torch.set_num_threads(1)
    Trainer(CONFIG, "med_ddpm", "mct", root / "manifest.tsv", root / "med_ddpm").fit(progress=False)
    return root


@pytest.mark.parametrize("name", ["leqmod_gan", "spach_transformer", "swin_unetr", "nnmamba", "medsam3d"])
def test_each_comparison_model_trains_and_keeps_its_best_checkpoint(cohort, tmp_path, name):
    torch.set_num_threads(1)
    trainer = BaselineTrainer(CONFIG, name, "mct", cohort / "manifest.tsv", tmp_path,
                              denoiser_checkpoint=cohort / "med_ddpm" / "best.pt")
    trainer.fit(progress=False)
    log = pd.read_csv(tmp_path / "log.csv")
    assert log.epoch.tolist() == [0, 1] and np.isfinite(log.train_total).all()
    assert "val_nrmse" in log if name in ("leqmod_gan", "spach_transformer") else "val_dice_lesion" in log
    if name == "leqmod_gan":
        assert {"train_d_total", "train_qu", "train_le", "lr_generator", "lr_discriminator"} <= set(log.columns)
    best = load_checkpoint(tmp_path / "best.pt")
    assert best["kind"] == "baseline" and best["variant"] == name
    assert best["baseline_kwargs"] == baseline_kwargs(CONFIG, name)


@pytest.mark.parametrize("name", ["spach_transformer", "leqmod_gan"])
def test_baseline_resume_reproduces_the_uninterrupted_run(cohort, tmp_path, name):
    """Resumed in a new process state, training continues exactly: LeqMod-GAN's discriminator
    draws dropout masks from torch's global generator, which each epoch seeds afresh."""
    torch.set_num_threads(1)
    args = (CONFIG, name, "mct", cohort / "manifest.tsv")
    BaselineTrainer(*args, tmp_path / "full").fit(progress=False)
    BaselineTrainer(*args, tmp_path / "cut").fit(max_epochs_this_run=1, progress=False)
    torch.manual_seed(12345)   # whatever state a new process starts the resumed run with
    BaselineTrainer(*args, tmp_path / "cut").fit(progress=False)
    a = pd.read_csv(tmp_path / "full" / "log.csv").drop(columns="seconds")
    b = pd.read_csv(tmp_path / "cut" / "log.csv").drop(columns="seconds")
    pd.testing.assert_frame_equal(a, b)
    wa = load_checkpoint(tmp_path / "full" / "last.pt")["model"]
    wb = load_checkpoint(tmp_path / "cut" / "last.pt")["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_segmenters_require_the_med_ddpm_checkpoint(cohort, tmp_path):
    with pytest.raises(InputError, match="Med-DDPM"):
        BaselineTrainer(CONFIG, "nnmamba", "mct", cohort / "manifest.tsv", tmp_path)
    with pytest.raises(InputError, match="med_ddpm"):
        BaselineTrainer(CONFIG, "med_ddpm", "mct", cohort / "manifest.tsv", tmp_path)
