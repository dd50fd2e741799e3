"""Tests for the conditioned diffusion denoiser f_den, the revision module f_rev and params."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from amdiff.models import DenoiserUNet, RevisionModule, count_parameters, describe

torch.set_num_threads(1)

SMALL = dict(channels=(8, 16, 16, 32), norm_groups=8, attention_heads_channels=16)


def _small_denoiser(seed: int = 0, **kw) -> DenoiserUNet:
    """Small UNet whose zero-initialised convs are randomised, as after some training.

    MONAI zero-initialises the output conv and each residual block's second conv, so an
    untrained network returns exactly 0 and could not show any input dependence.
    """
    torch.manual_seed(seed)
    model = DenoiserUNet(**{**SMALL, **kw})
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1 and not p.any():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return model.eval()


def _inputs(shape=(2, 1, 16, 16, 16), seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=gen), torch.rand(shape, generator=gen) * 2 - 1


def _conv3_weights(cin: int, ch, cout: int) -> int:
    """Hand count of 3x3x3 conv weights of the MONAI diffusion UNet, 1 res block per level.

    Encoder level i: ResBlock(c_{i-1} -> c_i) (two convs) + stride-2 conv except the last; middle:
    two ResBlocks at c_-1; decoder level i: two ResBlocks, each taking the running width plus
    one popped skip (skips = conv_in output, then each level's ResBlock and downsample outputs),
    then an upsampling conv except at full resolution; plus conv_in and conv_out.
    """
    c = list(ch)
    rb = lambda a, b: 27 * (a * b + b * b)  # noqa: E731
    n = 27 * cin * c[0] + 27 * c[0] * cout
    skips, prev = [c[0]], c[0]
    for i in range(len(c)):
        n += rb(prev, c[i])
        skips.append(c[i])
        prev = c[i]
        if i < len(c) - 1:
            n += 27 * c[i] ** 2
            skips.append(c[i])
    n += 2 * rb(c[-1], c[-1])
    h = c[-1]
    for i in reversed(range(len(c))):
        for _ in range(2):
            n += rb(h + skips.pop(), c[i])
            h = c[i]
        if i > 0:
            n += 27 * c[i] ** 2
    assert not skips
    return n


# ---------------------------------------------------------------- denoiser


@pytest.mark.parametrize("size", [16, 32])
def test_denoiser_output_shape(size):
    model = _small_denoiser()
    x, c = _inputs((2, 1, size, size, size))
    with torch.no_grad():
        eps = model(x, c, torch.tensor([3, 120]))
    assert eps.shape == (2, 1, size, size, size)
    assert eps.dtype == torch.float32
    assert torch.isfinite(eps).all()


def test_untrained_denoiser_predicts_zero_noise():
    # MONAI zero-initialises the output conv: eps_theta == 0 before training.
    torch.manual_seed(0)
    model = DenoiserUNet(**SMALL)
    x, c = _inputs()
    with torch.no_grad():
        assert torch.equal(model(x, c, 10), torch.zeros_like(x))


def test_denoiser_is_eq2_concatenation_noisy_first():
    model = _small_denoiser()
    x, c = _inputs()
    t = torch.tensor([5, 5])
    with torch.no_grad():
        ours = model(x, c, t)
        direct = model.unet(torch.cat([x, c], dim=1), timesteps=t)
        swapped = model(c, x, t)
    assert torch.equal(ours, direct)
    assert (ours - swapped).abs().max() > 1e-3


def test_timestep_changes_prediction_per_sample():
    model = _small_denoiser()
    x, c = _inputs((1, 1, 16, 16, 16))
    x2, c2 = x.repeat(2, 1, 1, 1, 1), c.repeat(2, 1, 1, 1, 1)
    with torch.no_grad():
        same = model(x2, c2, torch.tensor([7, 7]))
        diff = model(x2, c2, torch.tensor([7, 200]))
        scalar = model(x2, c2, 7)
    assert torch.equal(same[0], same[1])
    assert torch.equal(scalar, same)
    # first sample unchanged (same t), second changed by its own t only
    torch.testing.assert_close(diff[0], same[0])
    assert (diff[1] - diff[0]).abs().mean() > 1e-3


def test_condition_channel_matters():
    model = _small_denoiser()
    x, c = _inputs()
    with torch.no_grad():
        a = model(x, c, 50)
        b = model(x, c + 0.5, 50)
        a_again = model(x, c, 50)
    assert torch.equal(a, a_again)
    assert (a - b).abs().mean() > 1e-3


def test_attention_only_at_lowest_resolution():
    model = _small_denoiser()
    names = [n for n, _ in model.attention_modules()]
    # last encoder level, middle block, first decoder level (two res blocks -> two attentions)
    assert names == [
        "unet.down_blocks.3.attentions.0",
        "unet.middle_block.attention",
        "unet.up_blocks.0.attentions.0",
        "unet.up_blocks.0.attentions.1",
    ]
    for i in range(3):
        assert not hasattr(model.unet.down_blocks[i], "attentions")
    for i in range(1, 4):
        assert not hasattr(model.unet.up_blocks[i], "attentions")
    # every attention layer runs on the 1/8-resolution grid
    seen = {}
    hooks = [
        mod.register_forward_hook(lambda m, i, o, n=n: seen.__setitem__(n, tuple(o.shape[2:])))
        for n, mod in model.attention_modules()
    ]
    x, c = _inputs((1, 1, 32, 32, 32))
    with torch.no_grad():
        model(x, c, 1)
    for h in hooks:
        h.remove()
    assert seen == {n: (4, 4, 4) for n in names}


def test_flash_attention_path_gives_same_result():
    model = _small_denoiser()
    flash = DenoiserUNet(**SMALL, use_flash_attention=True).eval()
    flash.load_state_dict(model.state_dict())
    x, c = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(flash(x, c, 9), model(x, c, 9), atol=1e-4, rtol=1e-4)


def test_denoiser_rejects_bad_shapes():
    model = _small_denoiser()
    x, c = _inputs((1, 1, 12, 16, 16))
    with pytest.raises(ValueError, match="divisible by 8"):
        model(x, c, 1)
    x, c = _inputs()
    with pytest.raises(ValueError, match="t must be"):
        model(x, c, torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="channels"):
        model(x, torch.cat([c, c], dim=1), 1)
    with pytest.raises(ValueError, match="batch or grid"):
        model(x, c[:1], 1)
    with pytest.raises(ValueError, match="multiple of norm_groups"):
        DenoiserUNet(channels=(8, 12, 16, 32), norm_groups=8)


def test_denoiser_state_dict_round_trip():
    model = _small_denoiser(seed=0)
    buf = io.BytesIO()
    torch.save({"config": model.config(), "state_dict": model.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    torch.manual_seed(123)
    clone = DenoiserUNet(**ckpt["config"]).eval()
    clone.load_state_dict(ckpt["state_dict"])
    x, c = _inputs()
    with torch.no_grad():
        assert torch.equal(clone(x, c, 17), model(x, c, 17))


def test_paper_width_parameter_count():
    model = DenoiserUNet()  # (32, 64, 128, 256), 1 res block, 8 heads of 32 at the lowest level
    total = count_parameters(model)
    conv3 = sum(p.numel() for p in model.parameters() if p.dim() == 5 and p.shape[-1] == 3)
    expected_conv3 = _conv3_weights(2, (32, 64, 128, 256), 1)
    print(f"\n{describe(model)}; 3x3x3 conv weights {conv3:,} (hand count {expected_conv3:,})")
    # The architecture: 3x3x3 conv weights exactly as counted by hand (27,042,336).
    assert conv3 == expected_conv3
    # Everything else (4 attention layers ~4*4*256^2 = 1.05 M, 1x1 skips, time MLP/projections,
    # norms, biases) is a few percent on top: total in [conv3, 1.1 * conv3].
    assert expected_conv3 <= total <= 1.1 * expected_conv3


# ---------------------------------------------------------------- revision


def _suv_pair(seed=0, shape=(2, 1, 16, 16, 16)):
    """A low-count image with a hot spot above the 20 SUV cutoff and the clipped diffusion output."""
    gen = torch.Generator().manual_seed(seed)
    i_lc = 1.0 + 2.0 * torch.rand(shape, generator=gen)
    i_lc[:, :, 6:10, 6:10, 6:10] = 35.0 + torch.rand((shape[0], 1, 4, 4, 4), generator=gen)
    p_hc = torch.clamp(i_lc + 0.3 * torch.randn(shape, generator=gen), 0.0, 20.0)
    return p_hc, i_lc


def test_revision_is_identity_on_ilc_at_init_and_restores_range():
    torch.manual_seed(0)
    rev = RevisionModule()
    p_hc, i_lc = _suv_pair()
    out = rev(p_hc, i_lc)
    assert out.shape == i_lc.shape
    assert torch.equal(out, i_lc)
    hot = i_lc > 20.0
    assert hot.any() and (p_hc <= 20.0).all()
    assert (out[hot] > 20.0).all()


def test_revision_convs_see_normalised_inputs():
    rev = RevisionModule(suv_scale=10.0)
    p_hc, i_lc = _suv_pair()
    seen = {}
    rev.body[0].register_forward_pre_hook(lambda m, i: seen.__setitem__("x", i[0]))
    rev(p_hc, i_lc)
    torch.testing.assert_close(seen["x"], torch.cat([p_hc, i_lc], dim=1) / 10.0)


def _toy_hc_lc(seed=0, shape=(2, 1, 16, 16, 16)):
    """Toy high-count truth (1-3 SUV, a 40 SUV hot cube), Poisson-like low-count noise on it,
    and a good but clipped diffusion output (small noise, cut at 20 SUV)."""
    gen = torch.Generator().manual_seed(seed)
    i_hc = 1.0 + 2.0 * torch.rand(shape, generator=gen)
    i_hc[:, :, 6:10, 6:10, 6:10] = 40.0
    i_lc = i_hc + 0.3 * i_hc.sqrt() * torch.randn(shape, generator=gen)
    p_hc = torch.clamp(i_hc + 0.05 * torch.randn(shape, generator=gen), 0.0, 20.0)
    return i_hc, i_lc, p_hc


def test_revision_learns():
    torch.manual_seed(0)
    rev = RevisionModule(hidden=8, n_layers=2)
    i_hc, i_lc, p_hc = _toy_hc_lc()
    l1 = lambda: (rev(p_hc, i_lc) - i_hc).abs().mean()  # noqa: E731  (L_rev with w_s = 1)
    loss0 = l1()
    # One small gradient step is a descent step: the zero head still receives gradient.
    sgd = torch.optim.SGD(rev.parameters(), lr=1e-3)
    sgd.zero_grad()
    loss0.backward()
    assert rev.head.weight.grad.abs().sum() > 0
    sgd.step()
    assert l1().item() < loss0.item() - 1e-5
    # A few dozen Adam steps learn to follow P_HC below the cutoff (L1 0.35 -> ~0.09).
    adam = torch.optim.Adam(rev.parameters(), lr=3e-3)
    for _ in range(60):
        loss = l1()
        adam.zero_grad()
        loss.backward()
        adam.step()
    assert l1().item() < 0.5 * loss0.item()
    with torch.no_grad():
        out = rev(p_hc, i_lc)
    hot = i_hc > 20.0
    assert (out[hot] > 20.0).all()  # range above the cutoff kept
    assert (out[~hot] - i_hc[~hot]).abs().mean() < 0.5 * (i_lc[~hot] - i_hc[~hot]).abs().mean()


def test_revision_state_dict_round_trip_and_bad_input():
    torch.manual_seed(0)
    rev = RevisionModule(hidden=8, n_layers=2, suv_scale=5.0)
    with torch.no_grad():
        nn.init.normal_(rev.head.weight, std=0.1)
    p_hc, i_lc = _suv_pair()
    buf = io.BytesIO()
    torch.save({"config": rev.config(), "state_dict": rev.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    clone = RevisionModule(**ckpt["config"])
    clone.load_state_dict(ckpt["state_dict"])
    assert float(clone.suv_scale) == 5.0
    with torch.no_grad():
        assert torch.equal(clone(p_hc, i_lc), rev(p_hc, i_lc))
        assert not torch.equal(rev(p_hc, i_lc), i_lc)
    with pytest.raises(ValueError, match="differ in shape"):
        rev(p_hc, i_lc[:, :, :8])
    with pytest.raises(ValueError, match=r"\(B, 1, X, Y, Z\)"):
        rev(torch.cat([p_hc, p_hc], dim=1), i_lc)


# ---------------------------------------------------------------- params


def test_count_parameters_by_hand():
    conv = nn.Conv3d(2, 3, kernel_size=3)  # 2*3*27 weights + 3 biases
    assert count_parameters(conv) == 165
    lin = nn.Linear(4, 5)  # 20 + 5
    shared = nn.Sequential(lin, nn.ReLU(), lin)  # the same tensors twice: counted once
    assert count_parameters(shared) == 25
    model = nn.Sequential(conv, nn.GroupNorm(1, 3))  # + 3 + 3
    model[1].weight.requires_grad_(False)
    assert count_parameters(model) == 171
    assert count_parameters(model, trainable_only=True) == 168
    line = describe(model)
    assert line.startswith("Sequential: 0.00 M parameters (171; trainable 168), float32")
    assert "\n" not in line
