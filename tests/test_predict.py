"""Whole-volume inference: sliding-window assembly, determinism, uncertainty, ablation output."""

import numpy as np
import pytest
import torch
from torch import nn

from amdiff.diffusion.samplers import sample
from amdiff.infer.predict import predict_volume, warn_voxel_size
from amdiff.models.amdiff import AMDiff

SMALL = dict(denoiser={"channels": (4, 8, 8, 8), "norm_groups": 4, "attention_heads_channels": 8},
             revision={"hidden": 4, "n_layers": 2}, segmenter={"width": 4}, timesteps=20)
INF = {"patch_size": [16, 16, 16], "overlap": 0.5, "sampler": "ddim", "steps": 4, "samples": 1, "sw_batch_size": 4}


class PointwiseEps(nn.Module):
    """eps = a*x_t + b*cond: translation-equivariant, so patch blending must be exact."""

    def forward(self, x_t, cond, t):
        return 0.3 * x_t - 0.2 * cond + 0.01 * t.view(-1, 1, 1, 1, 1).float()


def randomised(model: AMDiff) -> AMDiff:
    """Untrained networks start with zero output convs (eps = 0, P_HCR = I_LC): perturb them."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def lc():
    rng = np.random.default_rng(0)
    return (rng.random((24, 20, 32)) * 6).astype(np.float32)


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_sliding_window_sampling_equals_whole_volume_sampling(lc, prediction):
    """Also: a network predicting v is stepped with the noise it implies (model.eps), as in
    training and validation, not with its raw output."""
    torch.manual_seed(0)
    model = AMDiff("amdiff_no_revision", **SMALL, prediction=prediction)
    model.denoiser = PointwiseEps()
    pred = predict_volume(model, lc, INF, seed=5)
    # the same sampler on the whole (zero-padded to a multiple of 8) volume at once
    lc_padded = torch.nn.functional.pad(torch.as_tensor(lc)[None, None], (0, 0, 0, 4))
    cond = model.to_diffusion(lc_padded)
    gen = torch.Generator().manual_seed(5)
    x0 = sample(lambda x, t: model.eps(x, lc_padded, t), tuple(cond.shape), model.schedule,
                method="ddim", steps=4, generator=gen)
    expected = model.to_suv(x0.clamp(-1, 1))[0, 0, :, :20].numpy()
    assert pred.denoised.shape == lc.shape
    np.testing.assert_allclose(pred.denoised, expected, rtol=0, atol=1e-3)  # SUV; float32 blending


def test_outputs_are_aligned_typed_and_seeded(lc):
    torch.manual_seed(0)
    model = randomised(AMDiff("amdiff", **SMALL))
    a = predict_volume(model, lc, INF, seed=1)
    b = predict_volume(model, lc, INF, seed=1)
    c = predict_volume(model, lc, INF, seed=2)
    assert a.denoised.shape == a.lesion.shape == a.organs.shape == lc.shape
    assert a.lesion.dtype == np.uint8 and set(np.unique(a.lesion)) <= {0, 1}
    assert a.organs.dtype == np.uint8 and a.organs.max() <= 7
    np.testing.assert_array_equal(a.denoised, b.denoised)
    assert not np.array_equal(a.denoised, c.denoised)
    assert a.uncertainty is None


def test_several_samples_give_an_uncertainty_map(lc):
    torch.manual_seed(0)
    model = randomised(AMDiff("amdiff", **SMALL))
    pred = predict_volume(model, lc, dict(INF, samples=3), seed=1)
    assert pred.uncertainty.shape == lc.shape and (pred.uncertainty >= 0).all()
    assert pred.uncertainty.max() > 0


def test_revision_restores_the_range_above_the_cutoff(lc):
    hot = lc.copy()
    hot[10:13, 10:13, 10:13] = 45.0
    torch.manual_seed(0)
    with_rev = predict_volume(AMDiff("amdiff", **SMALL), hot, INF, seed=1)
    without = predict_volume(AMDiff("amdiff_no_revision", **SMALL), hot, INF, seed=1)
    assert without.denoised.max() <= 20.0 + 1e-4
    assert with_rev.denoised.max() > 40.0   # the skip to I_LC carries the SUV above 20


def test_reduced_precision_runs_the_networks_in_bf16_and_stays_close(lc):
    torch.manual_seed(0)
    model = randomised(AMDiff("amdiff", **SMALL))
    seen = []
    hooks = [m.register_forward_hook(lambda mod, inp, out: seen.append(out.dtype))
             for m in model.modules() if isinstance(m, nn.Conv3d)]
    full = predict_volume(model, lc, INF, seed=3)
    assert set(seen) == {torch.float32}
    seen.clear()
    half = predict_volume(model, lc, dict(INF, precision="bf16"), seed=3)
    for hook in hooks:
        hook.remove()
    assert torch.bfloat16 in seen          # the window passes ran under autocast
    assert half.denoised.dtype == np.float32 and half.lesion.shape == lc.shape
    gap = np.abs(half.denoised - full.denoised)
    assert gap.max() > 0                    # a different arithmetic, not a no-op
    # bf16 keeps ~3 significant digits: the trajectory stays close to the float32 one
    assert gap.mean() < 0.02 * float(full.denoised.max() - full.denoised.min())


def _layout(x: torch.Tensor) -> str:
    """'cl' (NDHWC only), 'cf' (NCDHW only) or 'both' (one channel or one voxel: either layout)."""
    cl, cf = x.is_contiguous(memory_format=torch.channels_last_3d), x.is_contiguous()
    return "both" if cl and cf else "cl" if cl else "cf" if cf else "strided"


def test_channels_last_feeds_the_networks_that_layout_and_predicts_the_same_images(lc):
    torch.manual_seed(0)
    model = randomised(AMDiff("amdiff", **SMALL))
    stem = next(m for m in model.denoiser.modules() if isinstance(m, nn.Conv3d))
    windows, weights = [], []
    hooks = [stem.register_forward_pre_hook(lambda conv, args: windows.append(_layout(args[0])))]

    def record(conv, args, out):        # returns None: the output is left alone
        weights.append(_layout(conv.weight))
    hooks += [m.register_forward_hook(record) for m in model.modules() if isinstance(m, nn.Conv3d)]
    plain = predict_volume(model, lc, INF, seed=3)
    assert set(windows) == {"cf"} and "cf" in weights and "cl" not in weights
    windows.clear(), weights.clear()
    fast = predict_volume(model, lc, dict(INF, memory_format="channels_last"), seed=3)
    # the windows reach the denoiser NDHWC, and every 5-D weight is NDHWC
    assert set(windows) == {"cl"} and "cl" in weights and "cf" not in weights
    weights.clear()
    again = predict_volume(model, lc, dict(INF, memory_format="contiguous"), seed=3)
    for hook in hooks:
        hook.remove()
    assert "cl" not in weights                                # the model is put back
    np.testing.assert_array_equal(again.denoised, plain.denoised)
    # a layout, not another computation: only float rounding (amplified by the sampler) moves
    gap = np.abs(fast.denoised - plain.denoised).max()
    assert 0 < gap < 1e-3 * float(plain.denoised.max() - plain.denoised.min())
    assert np.mean(fast.lesion != plain.lesion) < 1e-3 and np.mean(fast.organs != plain.organs) < 1e-3


def test_voxel_size_other_than_the_training_one_is_warned_about(caplog):
    state = {"voxel_size_mm": [[2.04, 2.04, 2.03], [4.0, 4.0, 4.0]]}
    with caplog.at_level("WARNING", logger="amdiff.infer.predict"):
        assert not warn_voxel_size(state, (2.0, 2.0, 2.0), "mct.nii.gz")      # within 5 % of the first
        assert not warn_voxel_size(state, (4.1, 4.1, 3.9), "ok.nii.gz")       # of the second
        assert not warn_voxel_size({}, (1.65, 1.65, 1.65), "old.nii.gz")      # checkpoint without the record
        assert warn_voxel_size(state, (1.65, 1.65, 1.65), "vision.nii.gz")    # 19 % finer on every axis
        assert warn_voxel_size(state, (2.04, 2.04, 4.0), "thick.nii.gz")      # one axis off is enough
    assert [r.getMessage().split(":")[0] for r in caplog.records] == ["vision.nii.gz", "thick.nii.gz"]
    assert "voxels of 1.65 x 1.65 x 1.65 mm" in caplog.records[0].getMessage()
    assert "trained on 2.04 x 2.04 x 2.03 or 4 x 4 x 4 mm voxels" in caplog.records[0].getMessage()


def _checkpoint(path, variant: str, config: dict):
    """A checkpoint of ``variant`` at the demo size with random weights whose outputs vary with
    the input (an untrained AMDiff's zero output layers are perturbed)."""
    from amdiff.models.amdiff import build_model
    from amdiff.models.baselines import NAMES, get
    from amdiff.train.baselines import baseline_kwargs
    from amdiff.train.checkpoint import save_checkpoint

    torch.manual_seed(3)
    if variant in NAMES and variant != "med_ddpm":
        kwargs = baseline_kwargs(config, variant)
        model, record = get(variant).build(**kwargs), {"kind": "baseline", "baseline_kwargs": kwargs}
    else:
        model, record = randomised(build_model(variant, config)), {"kind": "amdiff"}
    return save_checkpoint(path, {"model": model.state_dict(), "variant": variant, "config": config, **record})


@pytest.mark.parametrize("variant", ["amdiff", "medsam3d"])
def test_one_call_predicting_several_images_writes_what_one_call_per_image_does(tmp_path, variant):
    """`amdiff predict` with the images of a subject in one process (the workflow's job) gives
    each image the outputs of its own process: its own sampler seed (subject, level), its own
    --denoised image, no state carried from the image before."""
    import yaml

    from amdiff.cli import main
    from amdiff.config import fill_defaults
    from amdiff.io.nifti import centered_affine, read_volume, write_volume
    from tests.conftest import REPO

    config = fill_defaults(yaml.safe_load((REPO / "config" / "config.yaml").read_text()))
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    ckpt = _checkpoint(tmp_path / "best.pt", variant, config)
    rng, affine = np.random.default_rng(1), centered_affine((40, 36, 32), (8.0, 8.0, 8.0))
    levels = ["p005_r0", "p040_r0"]
    for level in levels:   # two different images, and a stand-in Med-DDPM output of each
        write_volume(tmp_path / f"lc_{level}.nii.gz", (rng.random((40, 36, 32)) * 5).astype(np.float32), affine)
        write_volume(tmp_path / f"den_{level}.nii.gz", (rng.random((40, 36, 32)) * 5).astype(np.float32), affine)
    denoised = variant == "medsam3d"   # a comparison segmenter: fed a --denoised image

    def run(out: str, *images: str) -> None:
        argv = ["predict", "--config", str(tmp_path / "config.yaml"), "--checkpoint", str(ckpt),
                "--subject", "mct003", "--threads", "1",
                "--lc", *[str(tmp_path / f"lc_{i}.nii.gz") for i in images], "--level", *images,
                "--out-dir", *[str(tmp_path / out / i) for i in images]]
        if denoised:
            argv += ["--denoised", *[str(tmp_path / f"den_{i}.nii.gz") for i in images]]
        assert main(argv) == 0

    run("together", *levels)
    for level in levels:
        run("apart", level)
    items = ("lesion", "organs") if denoised else ("denoised", "lesion", "organs")

    def read(out: str, level: str, item: str) -> np.ndarray:
        return read_volume(tmp_path / out / level / f"{item}.nii.gz", "suv" if item == "denoised" else "labels").data

    for level in levels:
        for item in items:
            np.testing.assert_array_equal(read("together", level, item), read("apart", level, item))
    # the two images' outputs differ, so a shared seed or a swapped pairing would show
    for item in items:
        assert not np.array_equal(read("together", levels[0], item), read("together", levels[1], item)), item
