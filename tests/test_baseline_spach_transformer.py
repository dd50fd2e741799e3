"""Spach Transformer baseline: shapes, size constraint, MDTA channel attention, global residual,
L1 loss, one optimisation step, paper-size parameter count (against a hand count)."""

import math

import pytest
import torch

from amdiff.models.baselines import BASELINES, NAMES, get
from amdiff.models.baselines import spach_transformer as st
from amdiff.models.params import count_parameters


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def demo(**over):
    torch.manual_seed(0)
    return st.build(**{**st.DEMO, **over})


def test_registry_lazy_lookup_and_unknown_name():
    assert "spach_transformer" in BASELINES and "unet" not in BASELINES
    assert list(BASELINES) == list(NAMES) and len(NAMES) == 6
    assert get("spach_transformer") is st and BASELINES["spach_transformer"] is st
    with pytest.raises(ValueError, match="unknown baseline model 'unet'"):
        get("unet")
    for attr in ("PAPER", "DEMO", "build", "publication", "loss"):
        assert hasattr(st, attr)


def test_output_shape_dtype_on_batch_of_two_and_on_sides_not_multiple_of_16():
    model = demo()
    x = torch.rand(2, 1, 16, 16, 16) * 8.0
    y = model(x)
    assert y.shape == x.shape and y.dtype == torch.float32 and torch.isfinite(y).all()
    # 24 = 3 * 8: enough for the Restormer halvings and the Swin patch-4 + merging grid
    x24 = torch.rand(1, 1, 24, 16, 8)
    assert model(x24).shape == x24.shape


def test_swin_branch_returns_quarter_and_eighth_resolution_maps():
    model = demo()
    s4, s8 = model.swin(torch.rand(2, 1, 16, 24, 32))
    e = st.DEMO["swin_embed_dim"]
    assert s4.shape == (2, e, 4, 6, 8) and s8.shape == (2, 2 * e, 2, 3, 4)


@pytest.mark.parametrize("shape", [(1, 1, 20, 16, 16), (1, 1, 16, 16, 12), (1, 2, 16, 16, 16),
                                   (1, 16, 16, 16)])
def test_bad_input_shapes_raise_clearly(shape):
    model = demo()
    with pytest.raises(ValueError, match="SpachTransformer"):
        model(torch.zeros(shape))


def test_mdta_attention_map_is_channels_by_channels_per_head():
    model = demo()
    seen = []
    for name, mod in model.named_modules():
        if isinstance(mod, st.MDTA):
            mod.register_forward_hook(lambda m, inp, out, name=name: seen.append((name, m, inp[0])))
    model(torch.rand(2, 1, 16, 16, 16))
    assert len(seen) == 2 * sum(st.DEMO["num_blocks"][:3]) + st.DEMO["num_blocks"][3] + 1
    for name, mod, feat in seen:
        attn, v = mod.attention(feat)
        ch = feat.shape[1] // mod.heads
        n_vox = math.prod(feat.shape[2:])
        assert attn.shape == (2, mod.heads, ch, ch), name  # C_h x C_h, not N x N
        assert v.shape == (2, mod.heads, ch, n_vox), name
        torch.testing.assert_close(attn.sum(-1), torch.ones(2, mod.heads, ch))
        # q, k are unit vectors over voxels: logits lie in [-T, T], so a row's max/min <= e^{2T}
        t = mod.temperature.detach().abs().view(1, -1, 1)
        ratio = attn.amax(-1) / attn.amin(-1)
        assert (ratio <= torch.exp(2 * t) * (1 + 1e-5)).all(), name


def test_mdta_map_size_does_not_depend_on_voxels_and_zero_temperature_is_uniform():
    mdta = st.MDTA(dim=8, heads=2)
    for side in (4, 8):
        attn, _ = mdta.attention(torch.randn(1, 8, side, side, side))
        assert attn.shape == (1, 2, 4, 4)
    with torch.no_grad():
        mdta.temperature.zero_()
    attn, _ = mdta.attention(torch.randn(3, 8, 6, 6, 6))
    torch.testing.assert_close(attn, torch.full((3, 2, 4, 4), 0.25))


def test_global_residual_zero_output_conv_returns_input_including_high_suv():
    model = demo()
    with torch.no_grad():
        model.output.weight.zero_()
    assert model.output.bias is None  # authors' convs have no bias
    x = torch.rand(2, 1, 16, 16, 16) * 5.0
    x[:, :, 8, 8, 8] = 35.0  # above the 20 SUV scale: no clipping inside
    torch.testing.assert_close(model(x), x, rtol=1e-6, atol=1e-6)


def test_loss_is_l1_in_normalised_domain_hand_case():
    model = demo()
    with torch.no_grad():
        model.output.weight.zero_()  # prediction = I_LC exactly
    lc = torch.full((1, 1, 16, 16, 16), 2.0)
    hc = torch.full((1, 1, 16, 16, 16), 3.0)
    loss = st.loss(model, {"lc": lc, "hc": hc})
    assert set(loss) >= {"total", "l1", "l1_suv"}
    torch.testing.assert_close(loss["total"], torch.tensor(1.0 / st.SUV_SCALE))
    torch.testing.assert_close(loss["l1_suv"], torch.tensor(1.0))


def test_one_adam_step_lowers_l1_on_toy_batch():
    model = demo()
    g = torch.Generator().manual_seed(1)
    ax = torch.linspace(-1, 1, 16)
    r2 = ax.view(-1, 1, 1) ** 2 + ax.view(1, -1, 1) ** 2 + ax.view(1, 1, -1) ** 2
    hc = (1.0 + 6.0 * torch.exp(-r2 / 0.1)).expand(2, 1, 16, 16, 16).contiguous()  # SUV
    lc = (hc + 0.8 * torch.randn(hc.shape, generator=g)).clamp_min(0.0)
    batch = {"lc": lc, "hc": hc}
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)  # authors' optimiser and rate
    before = st.loss(model, batch)["total"]
    assert torch.isfinite(before)
    opt.zero_grad()
    before.backward()
    opt.step()
    with torch.no_grad():
        after = st.loss(model, batch)["total"]
    assert after < before, (float(before), float(after))


def _hand_count(p: dict) -> int:
    """Parameters of the authors' architecture with PAPER settings, counted by formula."""
    d, e, w = p["dim"], p["swin_embed_dim"], p["swin_window"][0]
    assert p["ffn_expansion_factor"] == 1.0

    def block(c, h):  # MDTA (qkv 3c^2, dw 3c*27, proj c^2, T h) + GDFN (3c^2 + 2c*27) + 2 LN
        return 7 * c * c + 139 * c + h

    nb, hd = p["num_blocks"], p["heads"]
    widths = (d, 2 * d, 4 * d, 8 * d)
    restormer = d * 27  # embedding conv 1 -> d
    restormer += sum(n * block(c, h) for n, c, h in zip(nb, widths, hd))  # encoder + latent
    restormer += 27 * (d * 2 * d + 2 * d * 4 * d + 4 * d * 8 * d) * 2  # down and up convs
    restormer += (8 * d + 2 * e) * 8 * d + (8 * d + e) * 4 * d + 4 * d * 2 * d  # 1x1 fusions
    restormer += nb[2] * block(4 * d, hd[2]) + nb[1] * block(2 * d, hd[1])
    restormer += (nb[0] + p["num_refinement_blocks"]) * block(2 * d, hd[0])
    restormer += 2 * d * 27  # output conv

    def swin_block(c, h):  # qkv 3c^2 (no bias), proj c^2+c, MLP 8c^2+5c, 2 LN, bias table
        return 12 * c * c + 10 * c + (2 * w - 1) ** 3 * h

    swin = 64 * e + e + 2 * e  # 4^3 patch conv + LayerNorm
    swin += e * p["swin_pos_grid"] ** 3
    swin += p["swin_depths"][0] * swin_block(e, p["swin_heads"][0])
    swin += 2 * 8 * e + 8 * e * 2 * e  # merging: LN(8e) + linear 8e -> 2e
    swin += p["swin_depths"][1] * swin_block(2 * e, p["swin_heads"][1])
    swin += 2 * e + 2 * 2 * e  # output LayerNorms
    return restormer + swin


def test_paper_size_parameter_count():
    model = st.build(**st.PAPER)
    n = count_parameters(model)
    pos = model.swin.pos_embed.numel()
    print(f"\nSpachTransformer PAPER: {n:,} parameters ({n / 1e6:.2f} M; absolute position "
          f"embedding {pos:,}, rest {(n - pos) / 1e6:.2f} M)")
    assert n == _hand_count(st.PAPER)
    assert pos == 64 * 56 ** 3
    # the authors' configuration: ~15.0 M, of which 11.24 M the position field
    assert 14.5e6 < n < 15.5e6 and 3.5e6 < n - pos < 4.0e6
