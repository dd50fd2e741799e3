"""Joint training: warm-up, logging, checkpoints, and resume reproducing an uninterrupted run."""

import copy

import numpy as np
import pandas as pd
import pytest
import torch

from amdiff.config import fill_defaults
from amdiff.errors import InputError
from amdiff.io.manifest import format_lc_pet, write_manifest
from amdiff.io.nifti import centered_affine, write_volume
from amdiff.train.checkpoint import load_checkpoint, save_checkpoint
from amdiff.train.trainer import LOG_COLUMNS, Trainer

SHAPE = (24, 24, 24)

# a config as validation leaves it: every key left out here at its schema default
CONFIG = fill_defaults({
    "seed": 3,
    "diffusion": {"timesteps": 20, "suv_cutoff": 20.0},
    "models": {"variants": ["amdiff"], "denoiser": {"channels": [4, 8, 8, 8], "norm_groups": 4,
                                                   "attention_heads_channels": 8},
               "revision": {"hidden": 4, "n_layers": 2}, "segmenter": {"width": 4, "blocks_per_stage": 2}},
    "training": {"train_sites": {"mct": ["mct"]}, "patch_size": [16, 16, 16], "epochs": 3,
                 "warmup_epochs": 1, "patches_per_epoch": 4, "val_patches": 2, "batch_size": 2,
                 "lr_denoiser": 1e-3, "lr_segmenter": 1e-3},
})


def _subject(root, name, split, rng):
    affine = centered_affine(SHAPE, (8.0, 8.0, 8.0))
    organs = np.zeros(SHAPE, np.uint8)
    organs[4:20, 4:20, 4:12] = 1
    organs[4:20, 4:20, 12:20] = 2
    lesion = np.zeros(SHAPE, np.uint8)
    c = rng.integers(8, 16, 3)
    lesion[c[0]:c[0] + 3, c[1]:c[1] + 3, c[2]:c[2] + 3] = 1
    hc = (0.3 + 2.0 * (organs == 1) + 0.6 * (organs == 2) + 6.0 * lesion).astype(np.float32)
    lc = np.clip(hc + rng.normal(0, 0.8, SHAPE), 0, None).astype(np.float32)
    d = root / name
    for key, arr, dtype in (("hc", hc, np.float32), ("lc", lc, np.float32), ("ct", hc * 0, np.float32),
                            ("lesion", lesion, np.uint8), ("organs", organs, np.uint8)):
        write_volume(d / f"{key}.nii.gz", arr, affine, dtype=dtype)
    return {"subject": name, "site": "mct", "split": split, "hc_pet": f"{name}/hc.nii.gz",
            "ct": f"{name}/ct.nii.gz", "lesion": f"{name}/lesion.nii.gz", "organs": f"{name}/organs.nii.gz",
            "lc_pet": format_lc_pet({"p010_r0": f"{name}/lc.nii.gz"})}


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    root = tmp_path_factory.mktemp("cohort")
    rng = np.random.default_rng(0)
    rows = [_subject(root, f"s{i}", split, rng) for i, split in enumerate(["train", "train", "val"])]
    path = root / "manifest.tsv"
    write_manifest(pd.DataFrame(rows), path)
    return path


@pytest.fixture(scope="module")
def full_run(manifest, tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("full")
    Trainer(CONFIG, "amdiff", "mct", manifest, out).fit(progress=False)
    return out


def test_warmup_log_and_checkpoints(full_run):
    log = pd.read_csv(full_run / "log.csv")
    assert list(log.columns) == LOG_COLUMNS and list(log.epoch) == [0, 1, 2]
    # Eq. 11: only the denoiser trains before e_T = 1
    assert log.lambda_warm[0] == 0 and log.train_seg[0] == 0 and log.train_lor[0] == 0
    assert log.lambda_warm[1] == pytest.approx(np.exp(-5 * (1 - 1 / 3) ** 2))
    assert (log.train_seg[1:] > 0).all() and (log.train_rev[1:] > 0).all()
    # both learning rates x0.1 after half the epochs
    assert log.lr_denoiser.tolist() == pytest.approx([1e-3, 1e-4, 1e-4])
    best = load_checkpoint(full_run / "best.pt")
    assert best["epoch"] == int(log.epoch[log.val_score.idxmin()])
    assert best["config"]["training"]["epochs"] == 3 and best["variant"] == "amdiff"
    assert best["voxel_size_mm"] == [[8.0, 8.0, 8.0]]   # what predict compares an image's voxels with


def test_resume_gives_the_same_losses_as_an_uninterrupted_run(manifest, full_run, tmp_path):
    torch.set_num_threads(1)
    Trainer(CONFIG, "amdiff", "mct", manifest, tmp_path).fit(max_epochs_this_run=2, progress=False)
    assert len(pd.read_csv(tmp_path / "log.csv")) == 2
    # keeping epoch checkpoints does not change the weights: the run resumes, and keeps epoch 3
    keeping = copy.deepcopy(CONFIG)
    keeping["training"]["checkpoint_every_epochs"] = 1
    resumed = Trainer(keeping, "amdiff", "mct", manifest, tmp_path)
    resumed.fit(progress=False)
    assert sorted(p.name for p in tmp_path.glob("epoch_*.pt")) == ["epoch_0003.pt"]
    kept = load_checkpoint(tmp_path / "epoch_0003.pt")
    assert kept["epoch"] == 2 and kept["variant"] == "amdiff"
    a = pd.read_csv(full_run / "log.csv").drop(columns=["seconds"])
    b = pd.read_csv(tmp_path / "log.csv").drop(columns=["seconds"])
    pd.testing.assert_frame_equal(a, b)
    sa = load_checkpoint(full_run / "last.pt")["model"]
    sb = load_checkpoint(tmp_path / "last.pt")["model"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert all(torch.equal(sa[k], kept["model"][k]) for k in sa)


def test_ablation_variants_change_the_loss_or_network(manifest, tmp_path):
    cfg = copy.deepcopy(CONFIG)
    cfg["training"]["epochs"] = 1
    cfg["training"]["warmup_epochs"] = 0
    no_rev = Trainer(cfg, "amdiff_no_revision", "mct", manifest, tmp_path / "a")
    assert no_rev.model.revision is None
    no_mamba = Trainer(cfg, "amdiff_no_resmamba", "mct", manifest, tmp_path / "b")
    assert no_mamba.model.segmenter.mamba_modules() == []
    no_lesion = Trainer(cfg, "amdiff_no_lesion_reg", "mct", manifest, tmp_path / "c")
    assert float(no_lesion.loss.lor_weights[1]) == 0 and float(no_lesion.loss.lor_weights[2]) == 1
    no_organ = Trainer(cfg, "amdiff_no_organ_reg", "mct", manifest, tmp_path / "d")
    assert float(no_organ.loss.lor_weights[1]) == 1 and float(no_organ.loss.lor_weights[2:].sum()) == 0


def test_seed_replicate_is_the_same_variant_from_another_seed(manifest, full_run, tmp_path):
    """"amdiff_seed1" builds and trains amdiff with its own seed: other initial weights, the
    checkpoint names the variant (what predict builds) and the replicate (what resume checks)."""
    torch.set_num_threads(1)
    cfg = copy.deepcopy(CONFIG)
    cfg["training"]["epochs"] = 1
    replicate = Trainer(cfg, "amdiff_seed1", "mct", manifest, tmp_path)
    original = Trainer(cfg, "amdiff", "mct", manifest, tmp_path / "original")
    assert replicate.variant == "amdiff" and replicate.seed != original.seed
    a, b = replicate.model.state_dict(), original.model.state_dict()
    assert a.keys() == b.keys() and not all(torch.equal(a[k], b[k]) for k in a)
    replicate.fit(progress=False)
    best = load_checkpoint(tmp_path / "best.pt")
    assert best["variant"] == "amdiff" and best["model_name"] == "amdiff_seed1"
    # another model's last.pt in this folder is a wrong --out-dir, whatever the variant
    with pytest.raises(InputError, match="amdiff_seed1"):
        Trainer(cfg, "amdiff_seed2", "mct", manifest, tmp_path).resume()


def test_tampered_checkpoint_is_refused(tmp_path):
    class Payload:  # arbitrary objects need full unpickling, which weights_only forbids
        def __reduce__(self):
            return (print, ("pwned",))

    bad = tmp_path / "bad.pt"
    torch.save({"model": {}, "extra": Payload()}, bad)
    with pytest.raises(InputError, match="refused"):
        load_checkpoint(bad)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    save_checkpoint(tmp_path / "ok.pt", {"model": {"w": torch.ones(2)}, "epoch": 1})
    assert load_checkpoint(tmp_path / "ok.pt")["epoch"] == 1


def test_validation_organ_dice_is_the_mean_over_classes_not_pooled_voxels():
    """A segmenter that calls every organ voxel muscle must score badly on organs."""
    from amdiff.train.trainer import DiceTally
    truth = torch.zeros(1, 20, 20, 20, dtype=torch.long)
    truth[:, :, :, :14] = 7          # muscle: most of the organ voxels
    truth[:, :, :, 14:17] = 1        # liver
    truth[:, :, :, 17:] = 2          # lung
    all_muscle = torch.where(truth > 0, torch.full_like(truth, 7), truth)
    tally = DiceTally()
    tally.add("organs", all_muscle, truth, range(1, 8))
    tally.add("lesion", torch.zeros_like(truth), torch.zeros_like(truth), [1])
    dice = tally.result()
    # pooled over voxels this would be 2*14/(20+14) = 0.82; per class: muscle 2*14/34, liver 0, lung 0
    assert dice["organs"] == pytest.approx((28 / 34) / 3)
    assert dice["lesion"] == 1.0     # no lesion predicted or present: nothing to miss
    perfect = DiceTally()
    perfect.add("organs", truth, truth, range(1, 8))
    assert perfect.result()["organs"] == pytest.approx(1.0)


def test_progress_figure_redrawn_next_to_the_log(full_run):
    """progress.png (nnU-Net style) holds the run's losses, learning rates and validation metrics."""
    from matplotlib.image import imread

    from amdiff.train.progress import progress_figure
    assert imread(full_run / "progress.png").shape[2] in (3, 4)
    history = pd.read_csv(full_run / "log.csv").to_dict("records")
    fig = progress_figure(history, "amdiff trained on mct")
    panels = {ax.get_ylabel(): {line.get_label() for line in ax.get_lines()} for ax in fig.axes}
    assert set(panels) == {"training loss", "learning rate", "validation"}
    assert {"train_diff", "train_seg", "train_rev"} <= panels["training loss"]
    assert panels["learning rate"] == {"lr_denoiser", "lr_segmenter"}
    assert {"val_nrmse", "val_dice_organs", "best epoch (best.pt)"} <= panels["validation"]
    assert fig.axes[1].get_yscale() == "log"
    # a log without learning rates or validation draws only what it has
    bare = progress_figure([{"epoch": 0, "train_g": 1.0}, {"epoch": 1, "train_g": 0.5}], "gan")
    assert [ax.get_ylabel() for ax in bare.axes] == ["training loss"]
