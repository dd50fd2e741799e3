"""Training and inference see the same statistics (issue: revision module on the whole volume).

Networks train on patches of ``training.patch_size``. At inference, a network whose output depends
on the extent of its input (GroupNorm/InstanceNorm, a Mamba scan, window attention) must only ever
see windows of that size; a context-free network (the default revision module) may run on the
whole volume, and must then give exactly what it gives on patches.
"""

import numpy as np
import pytest
import torch

from amdiff.config import load_config
from tests.conftest import REPO
from amdiff.errors import InputError
from amdiff.infer.predict import predict_baseline, predict_volume
from amdiff.models.amdiff import AMDiff
from amdiff.models.baselines import DENOISERS, SEGMENTERS, get
from amdiff.models.revision import RevisionModule

PATCH = 16
SMALL = dict(denoiser={"channels": (4, 8, 8, 8), "norm_groups": 4, "attention_heads_channels": 8},
             segmenter={"width": 4}, timesteps=20)
INF = {"patch_size": [PATCH] * 3, "overlap": 0.5, "sampler": "ddim", "steps": 2, "samples": 1, "sw_batch_size": 4}


def randomise(module: torch.nn.Module, scale: float = 0.3) -> torch.nn.Module:
    """Non-zero weights everywhere (the revision head starts at zero, which would prove nothing)."""
    torch.manual_seed(3)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(scale * torch.randn_like(p))
    return module.eval()


def body_like(shape, seed=0) -> torch.Tensor:
    """A PET-like SUV volume: a warm body, a hot organ and a lesion above the diffusion cutoff."""
    rng = np.random.default_rng(seed)
    x = np.zeros(shape, np.float32)
    x[4:-4, 4:-4, 2:-2] = 1.5 + 0.5 * rng.random((shape[0] - 8, shape[1] - 8, shape[2] - 4))
    x[8:18, 10:20, 8:24] = 6.0
    x[20:24, 20:24, 20:24] = 35.0
    return torch.from_numpy(x)[None, None]


def patchwise(module: RevisionModule, p_hc: torch.Tensor, lc: torch.Tensor, patch: int) -> torch.Tensor:
    """The module applied tile by tile, each tile with a halo of the module's receptive radius
    (clipped at the volume border, where the conv's zero padding then matches the whole-volume
    run), the halo cropped off afterwards: what training on patches computes for those voxels."""
    r = module.receptive_radius
    out = torch.empty_like(lc)
    X, Y, Z = lc.shape[2:]
    for x in range(0, X, patch):
        for y in range(0, Y, patch):
            for z in range(0, Z, patch):
                lo = [max(0, c - r) for c in (x, y, z)]
                hi = [min(n, c + patch + r) for c, n in zip((x, y, z), (X, Y, Z))]
                box = (slice(None), slice(None), *(slice(a, b) for a, b in zip(lo, hi)))
                res = module(p_hc[box], lc[box])
                inner = tuple(slice(c - a, c - a + min(patch, n - c)) for c, a, n in zip((x, y, z), lo, (X, Y, Z)))
                out[:, :, x:x + patch, y:y + patch, z:z + patch] = res[(slice(None), slice(None), *inner)]
    return out


@torch.no_grad()
def test_default_revision_module_gives_the_same_p_hcr_on_a_volume_and_on_patches():
    lc = body_like((40, 36, 44))
    p_hc = (lc * 0.9).clamp(max=20.0) + 0.2 * torch.randn(lc.shape, generator=torch.Generator().manual_seed(1))
    rev = randomise(RevisionModule(hidden=8, n_layers=3))
    assert rev.context_free
    whole = rev(p_hc, lc)
    assert (whole - lc).abs().max() > 1.0   # a correction that matters (SUV)
    torch.testing.assert_close(whole, patchwise(rev, p_hc, lc, PATCH), rtol=1e-5, atol=1e-4)


@torch.no_grad()
def test_group_norm_revision_module_depends_on_its_context():
    """Why the GroupNorm form may not run on the whole volume (and is run by sliding window)."""
    lc = body_like((40, 36, 44))
    p_hc = (lc * 0.9).clamp(max=20.0)
    rev = randomise(RevisionModule(hidden=8, n_layers=3, norm="group"))
    assert not rev.context_free
    diff = (rev(p_hc, lc) - patchwise(rev, p_hc, lc, PATCH)).abs().max()
    assert diff > 0.1


class ShapeRecorder:
    """Records the spatial shape of every input a module's forward receives."""

    def __init__(self, *modules: torch.nn.Module):
        self.shapes: list[tuple[int, ...]] = []
        self.handles = [m.register_forward_pre_hook(self._hook) for m in modules]

    def _hook(self, module, args):
        self.shapes.append(tuple(args[0].shape[2:]))

    def close(self):
        for h in self.handles:
            h.remove()


@pytest.mark.parametrize("norm", ["none", "group"])
def test_amdiff_networks_with_context_see_only_training_size_windows(norm):
    lc = body_like((40, 36, 44))[0, 0].numpy()
    model = randomise(AMDiff("amdiff", revision={"hidden": 4, "n_layers": 2, "norm": norm}, **SMALL), 0.05)
    windowed = [model.denoiser, model.segmenter] + ([model.revision] if norm == "group" else [])
    rec = ShapeRecorder(*windowed)
    whole = ShapeRecorder(model.revision)
    pred = predict_volume(model, lc, INF, seed=1)
    rec.close(), whole.close()
    assert pred.denoised.shape == lc.shape
    assert rec.shapes and set(rec.shapes) == {(PATCH,) * 3}
    # the context-free module runs once per sample on the whole (padded to 8) volume
    expected = {(40, 40, 48)} if norm == "none" else {(PATCH,) * 3}
    assert set(whole.shapes) == expected


def demo_baseline(name: str):
    module = get(name)
    kwargs = dict(module.DEMO)
    if name == "swin_unetr":
        kwargs["norm_name"] = "batch"
    return randomise(module.build(**kwargs), 0.05), kwargs


@pytest.mark.parametrize("name", [n for n in DENOISERS + SEGMENTERS if n != "med_ddpm"])
def test_comparison_models_see_only_training_size_windows(name):
    model, kwargs = demo_baseline(name)
    patch = 32   # the demo patch: the deepest maps of these networks need it
    lc = body_like((40, 36, 44))[0, 0].numpy()
    inference = dict(INF, patch_size=[patch] * 3)
    rec = ShapeRecorder(model)
    denoised = None if name in DENOISERS else np.clip(lc, 0, 20)
    pred = predict_baseline(model, lc, inference, denoised)
    rec.close()
    assert rec.shapes and set(rec.shapes) == {(patch,) * 3}
    assert (pred.denoised if denoised is None else pred.lesion).shape == lc.shape


def test_med_ddpm_sees_only_training_size_windows():
    lc = body_like((40, 36, 44))[0, 0].numpy()
    model = randomise(get("med_ddpm").build(**get("med_ddpm").DEMO), 0.05)
    rec = ShapeRecorder(model.denoiser)
    predict_volume(model, lc, INF, seed=1)
    rec.close()
    assert set(rec.shapes) == {(PATCH,) * 3}


def test_inference_window_must_be_the_training_patch(tmp_path):
    text = (REPO / "config" / "config.yaml").read_text().replace(
        "inference:\n  patch_size: [32, 32, 32]", "inference:\n  patch_size: [48, 48, 48]")
    assert "[48, 48, 48]" in text
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(InputError, match="inference.patch_size .* must equal training.patch_size"):
        load_config(path)


def test_predict_refuses_windows_other_than_the_training_patches():
    from amdiff.infer.predict import check_window

    state = {"config": {"training": {"patch_size": [32, 32, 32]}}}
    check_window(state, {"inference": {"patch_size": [32, 32, 32]}}, "best.pt")
    with pytest.raises(InputError, match=r"best.pt.*trained on \[32, 32, 32\] patches"):
        check_window(state, {"inference": {"patch_size": [64, 64, 64]}}, "best.pt")
