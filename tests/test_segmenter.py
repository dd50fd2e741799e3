"""Mamba backend, nnMamba siamese layer and the dual-branch segmenter (paper Fig. 3)."""

import math
import sys
import types

import pytest
import torch
import torch.nn.functional as F

from amdiff.models import mamba_backend
from amdiff.models.mamba_backend import (MAMBA_SSM_KEYS, MambapyMixer, backend_name,
                                         is_mamba_module, make_mamba)
from amdiff.models.nnmamba import ResidualConvBlock, ResMambaBlock, SiameseMambaLayer, siamese_mamba
from amdiff.models.params import count_parameters
from amdiff.models.segmenter import DualBranchSegmenter



@pytest.fixture(autouse=True)
def _cpu_backend(monkeypatch):
    monkeypatch.delenv(mamba_backend.ENV_VAR, raising=False)
    torch.manual_seed(0)


# ---------------------------------------------------------------- backend

def test_backend_on_cpu_is_mambapy_with_mamba_ssm_keys_and_shapes():
    assert backend_name() == "mambapy"  # no CUDA / no mamba_ssm here
    d, n, k, e = 24, 8, 4, 2
    m = make_mamba(d, d_state=n, d_conv=k, expand=e)
    assert isinstance(m, MambapyMixer) and is_mamba_module(m)
    sd = m.state_dict()
    assert set(sd) == MAMBA_SSM_KEYS
    di, r = e * d, math.ceil(d / 16)  # mamba_ssm: d_inner = expand * d_model, dt_rank = ceil(d/16)
    expected = {"in_proj.weight": (2 * di, d), "conv1d.weight": (di, 1, k), "conv1d.bias": (di,),
                "x_proj.weight": (r + 2 * n, di), "dt_proj.weight": (di, r), "dt_proj.bias": (di,),
                "A_log": (di, n), "D": (di,), "out_proj.weight": (d, di)}
    assert {key: tuple(v.shape) for key, v in sd.items()} == expected
    # S4D-real init of mamba_ssm: A = -[1..N] per channel, D = 1
    assert torch.allclose(sd["A_log"].exp(), torch.arange(1, n + 1.0).expand(di, n))
    assert torch.all(sd["D"] == 1)


def test_state_dict_round_trip_strict():
    a, b = make_mamba(16), make_mamba(16)
    x = torch.randn(2, 10, 16)
    assert not torch.allclose(a(x), b(x))
    b.load_state_dict(a.state_dict(), strict=True)
    assert torch.equal(a(x), b(x))


def _reference_mamba(m: MambapyMixer, x: torch.Tensor) -> torch.Tensor:
    """Mamba written from its definition (as mamba_ssm's selective_scan_ref), sequential, float64."""
    p = {k: v.double() for k, v in m.state_dict().items()}
    x = x.double()
    di, n = p["A_log"].shape
    r = p["dt_proj.weight"].shape[1]
    kk = p["conv1d.weight"].shape[-1]
    xi, z = (x @ p["in_proj.weight"].T).split(di, dim=-1)
    pad = F.pad(xi, (0, 0, kk - 1, 0))  # causal: only current and past tokens
    xc = sum(pad[:, j:j + x.shape[1]] * p["conv1d.weight"][:, 0, j] for j in range(kk)) + p["conv1d.bias"]
    u = F.silu(xc)
    dt_r, bm, cm = (u @ p["x_proj.weight"].T).split([r, n, n], dim=-1)
    dt = F.softplus(dt_r @ p["dt_proj.weight"].T + p["dt_proj.bias"])
    a = -p["A_log"].exp()
    h = torch.zeros(x.shape[0], di, n, dtype=torch.float64)
    ys = []
    for t in range(x.shape[1]):
        h = torch.exp(dt[:, t, :, None] * a) * h + dt[:, t, :, None] * bm[:, t, None, :] * u[:, t, :, None]
        ys.append((h * cm[:, t, None, :]).sum(-1) + p["D"] * u[:, t])
    y = torch.stack(ys, dim=1) * F.silu(z)
    return y @ p["out_proj.weight"].T


def test_fallback_computes_the_mamba_recurrence_and_is_causal():
    m = make_mamba(8, d_state=4)
    x = torch.randn(2, 13, 8)  # 13: not a power of two (the parallel scan pads)
    y = m(x)
    assert torch.allclose(y.double(), _reference_mamba(m, x), atol=1e-5)
    x2 = x.clone()
    x2[:, 7:] += torch.randn(2, 6, 8)
    y2 = m(x2)
    assert torch.allclose(y[:, :7], y2[:, :7], atol=1e-6) and not torch.allclose(y[:, 7:], y2[:, 7:])


def test_inference_on_cpu_runs_the_blocked_scan_and_every_scan_is_the_recurrence(monkeypatch):
    """Without autograd on CPU the mixer takes its blocked sequential scan (faster there); with
    autograd mambapy's parallel scan. Each, and mambapy's own sequential scan, must give the
    recurrence written from its definition, also across block boundaries and a short last block."""
    torch.manual_seed(3)
    m = make_mamba(8, d_state=4)
    monkeypatch.setattr(MambapyMixer, "SCAN_BLOCK", 8)
    x = torch.randn(3, 21, 8)            # blocks of 8, 8 and 5 tokens
    used = []
    blocked, parallel = MambapyMixer.selective_scan_blocked, MambapyMixer.__mro__[1].selective_scan
    monkeypatch.setattr(MambapyMixer, "selective_scan_blocked",
                        lambda self, *a: used.append("blocked") or blocked(self, *a))
    monkeypatch.setattr(MambapyMixer.__mro__[1], "selective_scan",
                        lambda self, *a: used.append("parallel") or parallel(self, *a))
    reference = _reference_mamba(m, x)
    with torch.no_grad():
        y_inference = m(x)
        m.selective_scan = m.selective_scan_seq          # mambapy's, for comparison
        y_mambapy_sequential = m(x)
        del m.selective_scan
    y_training = m(x)
    assert used == ["blocked", "parallel"]
    for y in (y_inference, y_mambapy_sequential, y_training):
        assert torch.allclose(y.double(), reference, atol=1e-5)
    assert torch.allclose(y_inference, y_mambapy_sequential, rtol=0, atol=1e-6)
    assert y_training.requires_grad


def test_backend_selection_rules(monkeypatch):
    fake = types.ModuleType("mamba_ssm")

    class Mamba(torch.nn.Module):
        def __init__(self, d_model, d_state, d_conv, expand):
            super().__init__()
            self.args = (d_model, d_state, d_conv, expand)

    Mamba.__module__ = "mamba_ssm.modules.mamba_simple"
    fake.Mamba = Mamba
    monkeypatch.setitem(sys.modules, "mamba_ssm", fake)
    assert backend_name() == "mambapy"  # importable, but no CUDA
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert backend_name() == "mamba_ssm"
    m = make_mamba(32, 8, 3, 2)
    assert isinstance(m, Mamba) and m.args == (32, 8, 3, 2) and is_mamba_module(m)
    monkeypatch.setenv(mamba_backend.ENV_VAR, "mambapy")
    assert backend_name() == "mambapy" and isinstance(make_mamba(32), MambapyMixer)
    monkeypatch.setenv(mamba_backend.ENV_VAR, "cuda-please")
    with pytest.raises(ValueError, match="AMDIFF_MAMBA_BACKEND"):
        backend_name()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv(mamba_backend.ENV_VAR, "mamba_ssm")
    with pytest.raises(RuntimeError, match="mamba_ssm"):
        make_mamba(32)


# ---------------------------------------------------------------- siamese Mamba layer

def test_siamese_views_analytic_with_stub_scans():
    t = torch.randn(2, 9, 5)
    assert torch.allclose(siamese_mamba(lambda v: v, t), t)
    # A causal token scan becomes bidirectional: (forward cumsum + backward cumsum) / 2 = (sum + t) / 2
    expect = (t.sum(1, keepdim=True) + t) / 2
    assert torch.allclose(siamese_mamba(lambda v: v.cumsum(1), t), expect, atol=1e-5)
    # likewise over channels, thanks to the channel-flipped views
    expect = (t.sum(2, keepdim=True) + t) / 2
    assert torch.allclose(siamese_mamba(lambda v: v.cumsum(2), t), expect, atol=1e-5)


def test_siamese_with_real_mamba_commutes_with_flips():
    mamba = make_mamba(6, d_state=4)
    t = torch.randn(1, 20, 6)
    out = siamese_mamba(mamba, t)
    assert not torch.allclose(mamba(t.flip(1)), mamba(t).flip(1), atol=1e-3)  # one view alone does not
    assert torch.allclose(siamese_mamba(mamba, t.flip(1)), out.flip(1), atol=1e-5)
    assert torch.allclose(siamese_mamba(mamba, t.flip(2)), out.flip(2), atol=1e-5)


def test_mamba_layer_with_identity_and_square_stubs():
    x = torch.randn(2, 4, 3, 4, 5)
    # Identity Mamba: the four flipped-back views average to a; plus the residual a. BatchNorm in
    # eval mode (fixed statistics) so that 2a and a give different outputs.
    layer = SiameseMambaLayer(4, norm="batch").eval()
    layer.mamba = torch.nn.Identity()
    a = layer.pre(x)
    assert torch.allclose(layer(x), layer.post(2 * a), atol=1e-6)
    assert not torch.allclose(layer(x), layer.post(a), atol=1e-3)

    # Element-wise stub commutes with every flip, so the views average to a**2; instance norm after
    # the 1x1 conv would hide a scaled or shifted result, a nonlinear one it does not.
    class Square(torch.nn.Module):
        def forward(self, v):
            return v * v

    layer = SiameseMambaLayer(4)
    layer.mamba = Square()
    a = layer.pre(x)
    assert torch.allclose(layer(x), layer.post(a * a + a), atol=1e-5)
    assert not torch.allclose(layer(x), layer.post(a * a), atol=1e-3)


def test_mamba_layer_reversing_token_order_commutes():
    layer = SiameseMambaLayer(4)
    x = torch.randn(1, 4, 3, 4, 2)
    # flattening in C order: reversing all three spatial axes reverses the token sequence
    assert torch.equal(x.flip(2, 3, 4).flatten(2), x.flatten(2).flip(-1))
    assert torch.allclose(layer(x.flip(2, 3, 4)), layer(x).flip(2, 3, 4), atol=1e-5)


def test_resmamba_block_adds_mamba_to_conv_branch():
    blk = ResMambaBlock(4)
    x = torch.randn(1, 4, 4, 4, 4)
    m = blk.mamba_layer(x)
    expect = blk.act(blk.norm2(blk.conv2(blk.conv1(x) + m)) + x)
    assert torch.allclose(blk(x), expect, atol=1e-6)
    plain = ResidualConvBlock(4, 8, stride=2)
    assert plain(x).shape == (1, 8, 2, 2, 2)


# ---------------------------------------------------------------- segmenter

def _mamba_layer_params(c: int, d_state: int = 16, d_conv: int = 4, expand: int = 2) -> int:
    """Hand count of one SiameseMambaLayer with InstanceNorm(affine)."""
    di, r = expand * c, math.ceil(c / 16)
    conv_norm = c * c + 2 * c
    mamba = (c * 2 * di + di * d_conv + di + (r + 2 * d_state) * di + r * di + di
             + di * d_state + di + di * c)
    return 2 * conv_norm + mamba


@pytest.mark.parametrize("side", [16, 32])
def test_output_shapes(side):
    net = DualBranchSegmenter(width=4)
    x = torch.rand(2, 2, side, side, side) * 10
    with torch.no_grad():
        out = net(x)
    assert set(out) == {"lesion", "organs"}
    assert out["lesion"].shape == (2, 2, side, side, side)
    assert out["organs"].shape == (2, 8, side, side, side)
    assert all(torch.isfinite(v).all() for v in out.values())


def test_bad_input_shapes_raise():
    net = DualBranchSegmenter(width=4)
    for shape in [(1, 2, 12, 16, 16), (1, 2, 8, 8, 8), (1, 1, 16, 16, 16), (2, 16, 16, 16)]:
        with pytest.raises(ValueError, match="DualBranchSegmenter"):
            net(torch.zeros(shape))


def test_ablation_is_the_same_network_without_mamba():
    full, abl = DualBranchSegmenter(width=8), DualBranchSegmenter(width=8, use_mamba=False)
    assert len(full.mamba_modules()) == 3 and abl.mamba_modules() == []
    k_full, k_abl = set(full.state_dict()), set(abl.state_dict())
    assert k_abl < k_full and all(".mamba_layer." in k for k in k_full - k_abl)
    diff = count_parameters(full) - count_parameters(abl)
    assert diff == sum(_mamba_layer_params(c) for c in (16, 32, 64))
    with torch.no_grad():  # loading the shared part makes the ablation the full net minus Mamba
        abl.load_state_dict({k: v for k, v in full.state_dict().items() if k in k_abl}, strict=True)


def test_mamba_submodules_use_mamba_ssm_names():
    net = DualBranchSegmenter(width=4)
    keys = set(net.state_dict())
    prefixes = [name for name, mod in net.named_modules() if is_mamba_module(mod)]
    assert prefixes == [f"stages.{i}.1.mamba_layer.mamba" for i in range(3)]
    for pre in prefixes:
        assert {k[len(pre) + 1:] for k in keys if k.startswith(pre + ".")} == MAMBA_SSM_KEYS


def test_gradient_reaches_every_parameter():
    net = DualBranchSegmenter(width=4)
    out = net(torch.rand(2, 2, 16, 16, 16) * 5)
    loss = (out["lesion"] ** 2).mean() + (out["organs"] ** 2).mean()
    loss.backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().max() > 0, name


def _two_blobs(side=16):
    g = torch.arange(side, dtype=torch.float32)
    xx, yy, zz = torch.meshgrid(g, g, g, indexing="ij")
    lesion = ((xx - 4) ** 2 + (yy - 4) ** 2 + (zz - 8) ** 2) <= 9
    liver = ((xx - 11) ** 2 + (yy - 10) ** 2 + (zz - 8) ** 2) <= 16
    suv = 0.5 + 14.5 * lesion + 1.5 * liver
    noisy = suv * (1 + 0.2 * torch.randn_like(suv))
    x = torch.stack([suv, noisy])[None].repeat(2, 1, 1, 1, 1)
    return x, lesion.long()[None].repeat(2, 1, 1, 1), liver.long()[None].repeat(2, 1, 1, 1)


def test_one_adam_step_reduces_toy_segmentation_loss():
    net = DualBranchSegmenter(width=4)
    x, les, org = _two_blobs()

    def loss_fn():
        out = net(x)
        return F.cross_entropy(out["lesion"], les) + F.cross_entropy(out["organs"], org)

    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    before = loss_fn()
    opt.zero_grad()
    before.backward()
    opt.step()
    with torch.no_grad():
        after = loss_fn()
    assert after < before.detach() - 1e-3


def test_parameter_counts_width_32():
    # independent of the patch size (fully convolutional); 128^3 patches only change activations
    full, abl = DualBranchSegmenter(width=32), DualBranchSegmenter(width=32, use_mamba=False)
    assert count_parameters(full) == 13_613_194
    assert count_parameters(abl) == 12_852_490
    assert count_parameters(full) - count_parameters(abl) == sum(
        _mamba_layer_params(c) for c in (64, 128, 256))
