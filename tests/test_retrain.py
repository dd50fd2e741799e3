"""A changed setting must retrain: checkpoints carry a fingerprint of what determines the weights.

Snakemake re-runs a training job when its params (the config sections) change, after deleting
the declared outputs (best.pt, log.csv); the undeclared last.pt / resume_best.pt survive. The
tests re-run ``amdiff train`` with the command line of rule ``train_diffusion`` (in this process,
for speed) the same way: a changed weight setting must train from scratch with one log line, an
unchanged or run-only setting must resume, and nothing may end in a traceback.
"""

import copy
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
import yaml

import tests.test_train as tt
from amdiff.cli import main
from amdiff.config import fill_defaults, patch_divisors
from amdiff.io.nifti import centered_affine, write_volume
from amdiff.models.amdiff import build_model
from amdiff.train.baselines import BaselineTrainer
from amdiff.train.checkpoint import load_checkpoint, save_checkpoint
from tests.test_faults import DECLARED, rule_argv, same_weights
from tests.test_train import manifest  # noqa: F401  (module fixture: a 3-subject cohort)

REPO = Path(__file__).resolve().parent.parent
FROM_SCRATCH = "training from scratch"


def write_config(path: Path, changes: dict | None = None) -> Path:
    """config/config.yaml with test_train's tiny model and ``changes`` ({"a.b": value}); one
    warm-up epoch (denoiser only) keeps each training run to seconds."""
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    cfg["results_dir"] = str(path.parent / "results")      # never the repository's results/
    cfg["seed"] = tt.CONFIG["seed"]
    cfg["models"], cfg["diffusion"] = copy.deepcopy(tt.CONFIG["models"]), copy.deepcopy(tt.CONFIG["diffusion"])
    cfg["training"] = {**copy.deepcopy(tt.CONFIG["training"]), "epochs": 1, "warmup_epochs": 1,
                       "threads": 1}
    cfg["inference"]["patch_size"] = cfg["training"]["patch_size"]
    # the tiny 16^3 patches fit every configured model but Swin-UNETR (32): leave it out
    fits = patch_divisors(cfg)
    cfg["baselines"]["names"] = [n for n in cfg["baselines"]["names"] if 16 % fits.get(n, 1) == 0]
    for dotted, value in (changes or {}).items():
        *parents, key = dotted.split(".")
        section = cfg
        for name in parents:
            section = section[name]
        section[key] = value
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def rule_args(config: Path, manifest, out: Path) -> list[str]:  # noqa: F811
    """Rule train_diffusion's command line for AMDiff on site mct, without the leading ``amdiff``."""
    argv = rule_argv("train_diffusion", **{
        "input.config": config, "input.manifest": manifest, "wildcards.train_site": "mct", "wildcards.model": "amdiff",
        "params.outdir": out, "threads": 1})
    assert argv[0] == "amdiff"
    return argv[1:]


def train(config: Path, manifest, out: Path, capsys) -> tuple[int, str]:  # noqa: F811
    """Run the rule's command as Snakemake re-runs it (declared outputs removed first): (rc, stderr)."""
    for name in DECLARED:
        (out / name).unlink(missing_ok=True)
    capsys.readouterr()
    rc = main(rule_args(config, manifest, out))
    return rc, capsys.readouterr().err


def scratch_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if FROM_SCRATCH in line]


def log_of(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "log.csv").drop(columns="seconds")


@pytest.fixture(scope="module")
def first(manifest, tmp_path_factory):  # noqa: F811
    """A finished run with the base settings (copied by each test that re-runs it)."""
    root = tmp_path_factory.mktemp("first")
    out = root / "out"
    assert main(rule_args(write_config(root / "config.yaml"), manifest, out)) == 0
    return out


@pytest.fixture()
def rerun(first, tmp_path):
    """A copy of the first run's folder, to be re-run with other settings."""
    shutil.copytree(first, tmp_path / "out")
    return tmp_path / "out"


def test_changed_learning_rate_retrains_from_scratch(manifest, first, rerun, tmp_path, capsys):  # noqa: F811
    config = write_config(tmp_path / "lr.yaml", {"training.lr_denoiser": 5e-4})
    rc, err = train(config, manifest, rerun, capsys)
    assert rc == 0, err
    lines = scratch_lines(err)
    assert len(lines) == 1 and "settings changed" in lines[0] and "training.lr_denoiser" in lines[0], err
    # the new rate trained every epoch, from epoch 0: not the old model republished
    log = log_of(rerun)
    assert log.epoch.tolist() == [0] and log.lr_denoiser.tolist() == pytest.approx([5e-4])
    assert not same_weights(rerun / "best.pt", first / "best.pt")
    assert (rerun / "best.pt").read_bytes() != (first / "best.pt").read_bytes()
    # ... and exactly what a fresh run with the new settings gives
    fresh = tmp_path / "fresh"
    assert train(config, manifest, fresh, capsys)[0] == 0
    pd.testing.assert_frame_equal(log, log_of(fresh))
    assert same_weights(rerun / "best.pt", fresh / "best.pt") and same_weights(rerun / "last.pt", fresh / "last.pt")
    old, new = (load_checkpoint(d / "last.pt")["fingerprint"] for d in (first, rerun))
    assert old != new and load_checkpoint(rerun / "best.pt")["fingerprint"] == new
    assert f"{old[:12]} -> {new[:12]}" in lines[0]


def test_architecture_change_trains_from_scratch_without_traceback(manifest, rerun, tmp_path, capsys):  # noqa: F811
    config = write_config(tmp_path / "arch.yaml", {"models.denoiser.channels": [4, 8, 8, 16]})
    rc, err = train(config, manifest, rerun, capsys)
    assert rc == 0 and "Traceback" not in err, err
    lines = scratch_lines(err)
    assert len(lines) == 1 and "models.denoiser.channels" in lines[0], err
    assert log_of(rerun).epoch.tolist() == [0]
    best = load_checkpoint(rerun / "best.pt")
    assert best["config"]["models"]["denoiser"]["channels"] == [4, 8, 8, 16]
    build_model("amdiff", best["config"]).load_state_dict(best["model"])   # the new network's weights


@pytest.mark.parametrize("damage", ["weights", "no_fingerprint"])
def test_unusable_last_checkpoint_trains_from_scratch(manifest, first, rerun, tmp_path, capsys,  # noqa: F811
                                                      damage):
    """Same fingerprint but weights that do not fit (e.g. the code changed the network), or a
    checkpoint from before fingerprints: both are a mismatch, not a crash and not a resume."""
    state = load_checkpoint(rerun / "last.pt")
    if damage == "weights":
        key = next(k for k, v in state["model"].items() if v.ndim == 5)
        state["model"][key] = state["model"][key][:, :1]
    else:
        del state["fingerprint"], state["fingerprint_inputs"]
    save_checkpoint(rerun / "last.pt", state)
    rc, err = train(write_config(tmp_path / "same.yaml"), manifest, rerun, capsys)
    assert rc == 0 and "Traceback" not in err, err
    lines = scratch_lines(err)
    expected = "its weights do not fit" if damage == "weights" else "fingerprint none -> "
    assert len(lines) == 1 and expected in lines[0], err
    # trained again from epoch 0, to what the first (uninterrupted, same settings) run gave
    pd.testing.assert_frame_equal(log_of(rerun), log_of(first))
    assert same_weights(rerun / "best.pt", first / "best.pt")


def test_unchanged_weights_settings_resume(manifest, first, rerun, tmp_path, capsys):  # noqa: F811
    """Run-only keys (threads, the sites a model predicts), inference and the variant list do not
    change the weights: the re-run resumes, trains nothing and republishes the same model."""
    before = (rerun / "log.csv").read_text()
    config = write_config(tmp_path / "run.yaml", {
        "training.threads": 2, "training.train_sites": {"mct": ["mct", "vision"]},
        "inference.steps": 3, "models.variants": ["amdiff"]})
    rc, err = train(config, manifest, rerun, capsys)
    assert rc == 0 and scratch_lines(err) == [], err
    assert (rerun / "log.csv").read_text() == before   # wall times included: no epoch ran again
    assert (rerun / "best.pt").read_bytes() == (first / "best.pt").read_bytes()


def test_predict_stops_with_one_line_when_weights_do_not_fit(first, tmp_path, capsys):
    state = load_checkpoint(first / "best.pt")
    state["config"]["models"]["denoiser"]["channels"] = [4, 8, 8, 16]   # not what the weights are
    bad = save_checkpoint(tmp_path / "bad.pt", state)
    lc = tmp_path / "lc.nii.gz"
    write_volume(lc, np.ones((16, 16, 16), np.float32), centered_affine((16, 16, 16), (8.0, 8.0, 8.0)))
    capsys.readouterr()
    rc = main(["predict", "--config", str(write_config(tmp_path / "c.yaml")), "--checkpoint", str(bad),
               "--lc", str(lc), "--subject", "s0", "--level", "p010_r0", "--out-dir", str(tmp_path / "pred")])
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"amdiff: error: {bad}: its weights do not fit"), err
    assert not (tmp_path / "pred").exists()


def _med_ddpm(path: Path, config: dict, scale: float) -> Path:
    """An (untrained) Med-DDPM checkpoint; ``scale`` makes checkpoints of different content."""
    torch.manual_seed(0)
    model = build_model("med_ddpm", config)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(scale)
    return save_checkpoint(path, {"model": model.state_dict(), "variant": "med_ddpm", "config": config})


def test_comparison_model_fingerprints(manifest, tmp_path):  # noqa: F811
    """A segmenter's fingerprint follows the content of the Med-DDPM it is fed from and the
    sampler settings; AMDiff-only keys do not retrain a comparison model, its own keys do."""
    config = fill_defaults({**copy.deepcopy(tt.CONFIG), "inference": {"sampler": "ddim", "steps": 2},
                            "baselines": {"size": "demo"}})
    a, b = _med_ddpm(tmp_path / "a.pt", config, 1.0), _med_ddpm(tmp_path / "b.pt", config, 0.5)

    def fingerprint(name, cfg=config, denoiser=a):
        trainer = BaselineTrainer(cfg, name, "mct", manifest, tmp_path / "out", denoiser_checkpoint=denoiser)
        return trainer.fingerprint_record["fingerprint"]

    seg = fingerprint("nnmamba")
    assert fingerprint("nnmamba", denoiser=shutil.copy(a, tmp_path / "copy.pt")) == seg   # content, not path
    assert fingerprint("nnmamba", denoiser=b) != seg
    steps = copy.deepcopy(config)
    steps["inference"]["steps"] = 3
    assert fingerprint("nnmamba", steps) != seg
    den = fingerprint("spach_transformer")
    amdiff_only = copy.deepcopy(config)
    amdiff_only["training"].update(lr_denoiser=5e-4, warmup_epochs=0, threads=4)
    assert fingerprint("spach_transformer", amdiff_only) == den
    own_lr = copy.deepcopy(config)
    own_lr["baselines"]["lr"] = {"spach_transformer": 5e-5}
    assert fingerprint("spach_transformer", own_lr) != den


def test_regenerated_training_images_retrain(manifest, tmp_path, capsys):  # noqa: F811
    """Same manifest bytes, new voxels (a site setting changed and the images were made again):
    the model trained on the old images must not be republished."""
    cohort = tmp_path / "cohort"
    shutil.copytree(Path(manifest).parent, cohort)
    copied, out = cohort / Path(manifest).name, tmp_path / "out"
    config = write_config(tmp_path / "config.yaml")
    assert train(config, copied, out, capsys)[0] == 0
    before = load_checkpoint(out / "last.pt")["fingerprint"]
    assert train(config, copied, out, capsys)[1].count(FROM_SCRATCH) == 0   # unchanged: resumes
    hc = cohort / "s0" / "hc.nii.gz"
    image = nib.load(hc)
    write_volume(hc, np.asarray(image.dataobj, dtype=np.float32) * 1.5, image.affine)
    rc, err = train(config, copied, out, capsys)
    lines = scratch_lines(err)
    assert rc == 0 and len(lines) == 1 and "data_sha256" in lines[0], err
    assert load_checkpoint(out / "last.pt")["fingerprint"] != before
