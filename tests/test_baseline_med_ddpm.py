"""3D Med-DDPM: AMDiff's diffusion module alone, through the same trainer and inference path."""

import numpy as np
import pandas as pd
import torch

from amdiff.infer.predict import predict_volume
from amdiff.models.baselines import med_ddpm
from amdiff.models.params import count_parameters
from amdiff.train.checkpoint import load_checkpoint
from amdiff.train.trainer import Trainer


def test_med_ddpm_has_no_semantic_parts_and_matches_the_amdiff_denoiser():
    model = med_ddpm.build(**med_ddpm.DEMO)
    assert model.segmenter is None and model.revision is None
    full = med_ddpm.build(**med_ddpm.PAPER)
    from amdiff.models.denoiser import DenoiserUNet

    assert count_parameters(full) == count_parameters(DenoiserUNet(**med_ddpm.PAPER["denoiser"]))
    print(f"Med-DDPM at paper size: {count_parameters(full):,} parameters")


def test_one_training_step_lowers_the_noise_loss():
    torch.manual_seed(0)
    model = med_ddpm.build(**med_ddpm.DEMO)
    with torch.no_grad():   # MONAI zero-initialises the output conv; give the step a gradient path
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    hc = torch.rand(2, 1, 16, 16, 16) * 5
    batch = {"hc": hc, "lc": hc + 0.3 * torch.randn_like(hc)}
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(6):
        gen = torch.Generator().manual_seed(1)   # same t and noise each step
        opt.zero_grad()
        out = med_ddpm.loss(model, batch, gen)
        out["total"].backward()
        opt.step()
        losses.append(float(out["total"].detach()))
    assert losses[-1] < losses[0] and np.isfinite(losses).all()


def test_trains_with_the_shared_trainer_and_predicts_without_masks(tmp_path):
    from tests.test_train import CONFIG, _subject   # reuse the tiny cohort builder
    from amdiff.io.manifest import write_manifest

    rng = np.random.default_rng(1)
    rows = [_subject(tmp_path, f"s{i}", split, rng) for i, split in enumerate(["train", "val"])]
    write_manifest(pd.DataFrame(rows), tmp_path / "m.tsv")
    torch.set_num_threads(1)
    trainer = Trainer(CONFIG, "med_ddpm", "mct", tmp_path / "m.tsv", tmp_path / "out")
    trainer.fit(progress=False)
    log = pd.read_csv(tmp_path / "out" / "log.csv")
    assert (log.lambda_warm == 0).all() and (log.train_seg == 0).all() and log.val_dice_lesion.isna().all()
    state = load_checkpoint(tmp_path / "out" / "best.pt")
    assert not any(k.startswith(("segmenter.", "revision.")) for k in state["model"])
    pred = predict_volume(trainer.model, np.random.rand(16, 16, 24).astype(np.float32) * 4,
                          {"patch_size": [16, 16, 16], "overlap": 0.0, "sampler": "ddim", "steps": 2,
                           "samples": 1, "sw_batch_size": 4}, seed=0)
    assert pred.lesion is None and pred.organs is None and pred.denoised.shape == (16, 16, 24)


# ---------------------------------------------------------------------------- SUV cutoff
def _lifted(cutoff=50.0) -> dict:
    import copy

    from amdiff.config import fill_defaults
    from tests.test_train import CONFIG

    config = copy.deepcopy(CONFIG)
    config["baselines"] = {"med_ddpm": {"suv_cutoff": cutoff}}
    return fill_defaults(config)


def test_med_ddpm_suv_cutoff_can_be_lifted_for_med_ddpm_alone():
    from amdiff.models.amdiff import build_model
    from tests.test_train import CONFIG

    suv = torch.tensor([0.0, 40.0])
    lifted = build_model("med_ddpm", _lifted(50.0))
    x = lifted.to_diffusion(suv)
    assert -1 < float(x[1]) < 1 and torch.allclose(lifted.to_suv(x), suv)
    capped = build_model("med_ddpm", CONFIG)   # default: diffusion.suv_cutoff = 20
    top = capped.to_diffusion(suv)[1]
    assert float(top) == 1.0 and float(capped.to_suv(top)) == 20.0
    assert build_model("med_ddpm", _lifted(None)).suv_cutoff == 20.0   # null: AMDiff's cutoff
    assert build_model("amdiff", _lifted(50.0)).suv_cutoff == 20.0     # AMDiff keeps its own


def test_med_ddpm_cutoff_survives_the_checkpoint_into_inference(tmp_path, monkeypatch):
    """The trainer's checkpoint records the config; `amdiff predict` and the comparison
    segmenters' feeder rebuild Med-DDPM from it with the lifted cutoff."""
    from amdiff import cli
    from amdiff.infer import predict as infer_predict
    from amdiff.infer.predict import Prediction
    from amdiff.io.manifest import write_manifest
    from amdiff.io.nifti import centered_affine, write_volume
    from amdiff.train.baselines import load_diffusion_denoiser
    from amdiff.train.checkpoint import save_checkpoint
    from tests.conftest import REPO
    from tests.test_train import _subject

    rng = np.random.default_rng(1)
    rows = [_subject(tmp_path, f"s{i}", split, rng) for i, split in enumerate(["train", "val"])]
    write_manifest(pd.DataFrame(rows), tmp_path / "m.tsv")
    config = _lifted(50.0)
    config["training"]["patch_size"] = [32, 32, 32]   # config/config.yaml's inference window
    trainer = Trainer(config, "med_ddpm", "mct", tmp_path / "m.tsv", tmp_path / "out")
    assert trainer.model.suv_cutoff == 50.0
    ckpt = save_checkpoint(tmp_path / "best.pt", trainer.payload(0))
    assert load_diffusion_denoiser(ckpt, "cpu").suv_cutoff == 50.0

    seen = {}

    def fake_predict_volume(model, lc, inference, seed, device="cpu", progress=False):
        seen["cutoff"] = model.suv_cutoff
        return Prediction(denoised=lc, lesion=None, organs=None)

    monkeypatch.setattr(infer_predict, "predict_volume", fake_predict_volume)
    write_volume(tmp_path / "lc.nii.gz", np.ones((8, 8, 8), np.float32), centered_affine((8, 8, 8), (8.0,) * 3))
    rc = cli.main(["predict", "--config", str(REPO / "config" / "config.yaml"),
                   "--checkpoint", str(ckpt), "--lc", str(tmp_path / "lc.nii.gz"),
                   "--subject", "s0", "--level", "p010_r0", "--out-dir", str(tmp_path / "pred")])
    assert rc == 0 and seen["cutoff"] == 50.0
