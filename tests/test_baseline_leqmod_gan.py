"""LeqMod-GAN baseline: networks, the L_qu / L_le losses on hand-made cases, one training step each."""

import numpy as np
import pytest
import torch
from numpy.lib.stride_tricks import sliding_window_view
from scipy import ndimage
from torch.nn.utils import parametrize

from amdiff.models.baselines import leqmod_gan as L
from amdiff.models.params import count_parameters


def _toy_batch(seed: int = 0, n: int = 32) -> dict:
    """hc: 1 SUV background + a 6 SUV sphere lesion; lc: hc + seeded noise."""
    g = torch.Generator().manual_seed(seed)
    ax = torch.arange(n, dtype=torch.float32) - n / 2
    r2 = ax[:, None, None] ** 2 + ax[None, :, None] ** 2 + ax[None, None, :] ** 2
    lesion = (r2 <= 9.0).to(torch.int64)
    hc = (1.0 + 5.0 * lesion.float()).expand(2, 1, n, n, n).clone()
    lc = (hc + 0.5 * torch.randn(hc.shape, generator=g)).clamp_min(0.0)
    return {"lc": lc, "hc": hc, "lesion": lesion.expand(2, n, n, n).clone(),
            "organs": torch.zeros(2, n, n, n, dtype=torch.int64)}


def _demo(seed: int = 0) -> L.LeqModGAN:
    torch.manual_seed(seed)
    return L.build(**L.DEMO)


def test_shapes_and_suv_scaling():
    model = _demo().eval()
    batch = _toy_batch()
    with torch.no_grad():
        out = model(batch["lc"])
        assert out.shape == batch["lc"].shape
        # SUV in / SUV out around a fixed normaliser, not per-batch statistics
        ref = model.generator(batch["lc"] / 10.0) * 10.0
        assert torch.allclose(out, ref)
        scores = model.discriminate(batch["lc"], out)
    assert scores.shape == (2, 1, 3, 3, 3)  # 32 -> 16 -> 8 -> 4 -> (k4 s1 p1) 3
    assert L.build(**L.DEMO).discriminator.model[0].in_channels == 1          # official: image alone
    assert L.build(**{**L.DEMO, "conditional_discriminator": True}).discriminator.model[0].in_channels == 2
    with pytest.raises(ValueError, match="multiple of 16"):
        model(torch.zeros(1, 1, 24, 32, 32))
    with pytest.raises(ValueError, match="shape"):
        model(torch.zeros(1, 2, 32, 32, 32))


def test_qu_zero_for_identical_images():
    x = torch.rand(2, 1, 40, 40, 40, generator=torch.Generator().manual_seed(1)) * 5
    assert L.quantification_loss(x, x.clone()).item() == 0.0


def test_qu_hot_voxel_offset_by_hand():
    # 8^3 grid: size-5 cubes at stride 2 start at 0 and 2 on each axis (8 cubes); 9, 17, 33 do not fit.
    v = 3.0
    target = torch.zeros(1, 1, 8, 8, 8)
    pred = torch.zeros(1, 1, 8, 8, 8)
    target[0, 0, 1, 3, 3] = v  # axis-0 index 1 lies only in cubes starting at 0
    pred[0, 0, 2, 3, 3] = v    # index 2 lies in both; indices 3 on the other axes in both
    # 4 cubes hold both hot voxels (difference 0), 4 hold only the predicted one (difference v).
    mean_term, max_term = L.cube_stat_l1(pred, target, 5)
    assert max_term.item() == pytest.approx(v / 2)
    assert mean_term.item() == pytest.approx(v / 125 / 2)
    assert L.cube_stat_l1(pred, target, 9) is None
    assert L.quantification_loss(pred, target).item() == pytest.approx(0.8 * (v / 2 + v / 250))
    corner = torch.zeros(1, 1, 8, 8, 8)
    corner[0, 0, 0, 0, 0] = v  # only in the first of 8 cubes
    assert L.cube_stat_l1(corner, torch.zeros_like(corner), 5)[1].item() == pytest.approx(v / 8)


def test_qu_matches_explicit_cube_enumeration():
    # official definition: unfold into cubes of size k at step (k-1)/2, compare means and maxima
    rng = np.random.default_rng(3)
    pred, target = rng.random((2, 1, 1, 21, 20, 19)).astype(np.float64) * 4
    expected = 0.0
    for k, w in zip(L.QU_CUBE_SIZES, L.QU_CUBE_WEIGHTS):
        if min(pred.shape[2:]) < k:
            continue
        step = (k - 1) // 2
        cp = sliding_window_view(pred, (k, k, k), axis=(2, 3, 4))[:, :, ::step, ::step, ::step]
        ct = sliding_window_view(target, (k, k, k), axis=(2, 3, 4))[:, :, ::step, ::step, ::step]
        expected += w * (np.abs(cp.mean((-3, -2, -1)) - ct.mean((-3, -2, -1))).mean()
                         + np.abs(cp.max((-3, -2, -1)) - ct.max((-3, -2, -1))).mean())
    got = L.quantification_loss(torch.from_numpy(pred), torch.from_numpy(target)).item()
    assert got == pytest.approx(expected, rel=1e-10)
    assert expected > 0


def test_lesion_probability_map_is_clipped_blurred_mask():
    lesion = torch.zeros(1, 12, 12, 12, dtype=torch.int64)
    lesion[0, 2:8, 2:8, 2:8] = 1    # a 6^3 lesion
    lesion[0, 10, 10, 10] = 1       # a single-voxel lesion near the border
    p = L.lesion_probability_map(lesion)[0, 0].numpy()
    m = lesion[0].numpy().astype(np.float64)
    ref = np.maximum(m, ndimage.gaussian_filter(m, 1.0, mode="constant", truncate=3.0))
    assert np.allclose(p, ref, atol=1e-6)
    assert p[10, 10, 10] == 1.0 and p[4, 4, 4] == 1.0           # annotated voxels are certain
    assert 0.2 < p[8, 4, 4] < 0.5                                # one voxel outside a face: in L_le
    assert p[9, 4, 4] < 0.2 and p[0, 11, 0] < 1e-6               # further out: not


def test_lesion_loss_weights_by_probability():
    pred = torch.tensor([5.0, 1.0, 2.0, 3.0, 0.0]).view(1, 1, 5, 1, 1)
    target = torch.zeros_like(pred)
    prob = torch.tensor([0.1, 0.2, 0.5, 1.0, 0.0]).view(1, 1, 5, 1, 1)
    # voxels with p >= 0.2: (0.2*1 + 0.5*2 + 1.0*3) / 3; the p = 0.1 voxel's big error is ignored
    assert L.lesion_loss(pred, target, prob).item() == pytest.approx(4.2 / 3)
    empty = L.lesion_loss(pred.requires_grad_(), target, torch.full_like(prob, 0.19))
    assert empty.item() == 0.0
    empty.backward()  # still part of the graph
    assert torch.all(pred.grad == 0)


def test_generator_loss_terms_combine():
    model = _demo().eval()
    terms = L.generator_loss(model, _toy_batch())
    assert set(terms) == {"total", "gan", "mse", "qu", "le"}
    assert all(torch.isfinite(t) for t in terms.values())
    combo = terms["gan"] + 10 * terms["mse"] + 2 * terms["qu"] + 2 * terms["le"]
    assert terms["total"].item() == pytest.approx(combo.item(), rel=1e-6)
    assert terms["le"].item() > 0 and terms["qu"].item() > 0
    assert L.loss is L.generator_loss
    d = L.discriminator_loss(model, _toy_batch())
    assert set(d) == {"total", "real", "fake"}
    assert d["total"].item() == pytest.approx(0.5 * (d["real"] + d["fake"]).item(), rel=1e-6)


def _eval_loss(fn, model, batch) -> float:
    model.eval()  # dropout off, spectral-norm vectors frozen: a deterministic measurement
    with torch.no_grad():
        value = fn(model, batch)["total"].item()
    model.train()
    return value


def test_generator_steps_lower_generator_loss():
    model, batch = _demo(), _toy_batch()
    opt = torch.optim.Adam(model.generator.parameters(), lr=1e-3)
    before = _eval_loss(L.generator_loss, model, batch)
    d_before = [p.detach().clone() for p in model.discriminator.parameters()]
    model.train()
    for _ in range(5):
        opt.zero_grad()
        L.generator_loss(model, batch)["total"].backward()
        opt.step()
    after = _eval_loss(L.generator_loss, model, batch)
    assert after < 0.9 * before, (before, after)
    assert all(torch.equal(a, b) for a, b in zip(d_before, model.discriminator.parameters()))


def test_discriminator_steps_lower_discriminator_loss():
    model, batch = _demo(), _toy_batch()
    opt = torch.optim.Adam(model.discriminator.parameters(), lr=1e-3)
    before = _eval_loss(L.discriminator_loss, model, batch)
    model.train()
    for _ in range(5):
        opt.zero_grad()
        L.discriminator_loss(model, batch)["total"].backward()
        opt.step()
    after = _eval_loss(L.discriminator_loss, model, batch)
    assert after < 0.95 * before, (before, after)  # ~0.88 x measured over seeds 0-2
    assert all(p.grad is None for p in model.generator.parameters())  # G untouched by the D loss


def test_discriminator_convs_are_spectrally_normalised():
    model = _demo().train()
    convs = [m for m in model.discriminator.modules() if isinstance(m, torch.nn.Conv3d)]
    patch_convs = [c for c in convs if c.kernel_size == (4, 4, 4)]
    assert len(patch_convs) == 4
    assert all(parametrize.is_parametrized(c, "weight") for c in patch_convs)
    assert not parametrize.is_parametrized(convs[-1], "weight")  # 1x1x1 output conv, as official
    x = torch.rand(1, 1, 32, 32, 32)   # the official discriminator sees the image alone
    for _ in range(20):  # power iterations run in training forwards
        model.discriminator(x)
    for c in patch_convs:
        w = c.weight.detach()
        sigma = torch.linalg.matrix_norm(w.reshape(w.shape[0], -1), ord=2).item()
        assert sigma == pytest.approx(1.0, abs=0.05)


def _conv(cin: int, cout: int, k: int) -> int:
    return k**3 * cin * cout + cout


def test_paper_parameter_count():
    model = L.build(**L.PAPER)
    n_g, n_d = count_parameters(model.generator), count_parameters(model.discriminator)
    print(f"LeqMod-GAN paper size: generator {n_g:,}, discriminator {n_d:,}, total {n_g + n_d:,}")
    # closed form from the official architecture: encoder, decoder with skips, output head
    enc = [48, 96, 192, 384]
    g = sum(_conv(a, b, 3) + _conv(b, b, 3) for a, b in zip([1] + enc[:-1], enc))
    g += sum(_conv(a, b, 3) + _conv(b, b, 3)
             for a, b in zip([384, 384 + 192, 192 + 96, 96 + 48], [384, 192, 96, 48]))
    g += _conv(48 + 1, 24, 3) + _conv(24, 1, 3)
    d = _conv(1, 32, 4) + _conv(32, 64, 4) + _conv(64, 128, 4) + _conv(128, 256, 4) + _conv(256, 1, 1)
    assert (n_g, n_d) == (g, d)
    assert 20e6 < n_g < 22.5e6 and 2.5e6 < n_d < 3e6
