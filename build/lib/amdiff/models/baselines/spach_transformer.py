"""Spach Transformer (Jang et al., IEEE TMI 2023): 3D PET denoiser with channel-wise global and
spatial local self-attention, one of the paper's denoising baselines (Table 2).

Architecture (as in the authors' code, github.com/sijang/SpachTransformer; REFERENCES.md):

* Restormer-like 3D encoder-decoder ("channel" branch). A 3x3x3 conv embeds I_LC to ``dim``
  channels; four levels of widths dim, 2dim, 4dim, 8dim (16/32/64/128) with heads 1/2/4/8.
  Every block is pre-norm: x + MDTA(LN(x)), then x + GDFN(LN(x)), LN over channels per voxel.
  - MDTA ("transposed" attention): q, k, v from a 1x1x1 conv then a depthwise 3x3x3 conv; per
    head, q and k are L2-normalised along the N voxels and the attention map is the C_h x C_h
    matrix softmax(T * q k^T) with a learned temperature T per head, so its cost is linear in N
    and global over the whole patch.
  - GDFN: 1x1x1 conv to 2 * hidden, depthwise 3x3x3 conv, GELU(x1) * x2 gate, 1x1x1 conv back.
  - Down: 3x3x3 conv doubling the width, then trilinear x0.5. Up: 3x3x3 conv halving the width,
    then trilinear x2.
  - Decoder: at 1/4 and 1/2 the upsampled map is concatenated with the encoder skip and reduced
    by a 1x1x1 conv; at full resolution the concatenation (2 dim channels) is kept, followed by
    the last decoder level and the refinement blocks at width 2 dim, a 3x3x3 output conv and
    the global residual: output = conv(features) + input.
* Swin branch ("spatial" branch, local shifted-window attention): patch embedding 4^3 to
  ``swin_embed_dim`` (64) channels with LayerNorm, a learned absolute position embedding
  (trilinearly resized to the token grid), stage 1 (depth 4, 4 heads) at 1/4 resolution,
  patch merging (8C -> 2C linear), stage 2 (depth 8, 8 heads) at 1/8; windows 6^3 with
  relative position bias, MLP ratio 4, no qkv bias, stochastic depth rising linearly to 0.3.
  Each stage output passes a LayerNorm. The blocks, window attention, masks and patch merging
  are MONAI's (monai.networks.nets.swin_unetr BasicLayer / PatchMerging, blocks.PatchEmbed).
  MONAI's ``SwinTransformer`` itself does not fit: it always builds and runs four stages and
  returns stage outputs after patch merging, whereas Spach uses two stages and their outputs
  before merging.
* Fusion (concatenation + 1x1x1 conv at matching resolution): at 1/8, [latent (8 dim), Swin
  stage 2 (2 embed)] -> 8 dim; at 1/4, [upsampled latent (4 dim), encoder level 3 (4 dim),
  Swin stage 1 (embed)] -> 4 dim. With dim 16 and embed 64 these are the authors' 256 -> 128
  and 192 -> 64 reductions.

Choices where the authors' repository offers several versions (all configurable):

* Blocks per level (1, 2, 4, 6) and one refinement block, from the authors' research version
  (``SwinRestormer``, whose blocks are MDTA + GDFN as described in the paper). Their cleaned
  release uses (1, 1, 1, 1) with three refinement blocks and an extra full-conv gated
  feed-forward per block; another file keeps Restormer's (4, 6, 6, 8).
* Feed-forward expansion 1, convs without bias, LayerNorm with bias, as in all versions.
* The absolute position embedding is a (1, 64, 56, 56, 56) parameter (from the Swin default
  pretrain size 224 / patch 4), 11.24 M of the ~15 M parameters, resized to the token grid of
  each input. ``swin_pos_grid=0`` drops it.

Input domain and sizes:

* ``forward(i_lc)`` takes SUV (B, 1, X, Y, Z) and returns SUV of the same shape. Inside, the
  network works on SUV / ``suv_scale`` (fixed 20 SUV, the diffusion cut-off of AMDiff; linear
  and without clipping, so lesions above 20 SUV and the exact global residual are preserved; no
  per-batch statistics, so the SUV scale is kept).
* Every spatial side must be a multiple of 8 (``SIDE_MULTIPLE``): three exact halvings of the
  Restormer branch, and the Swin 1/4 and 1/8 maps (patch 4, one merging) must align with them.
  Multiples of 32 are not needed: Swin windows pad internally (MONAI). 128^3 patches, as the
  AMDiff paper uses for all comparison models, qualify.

Training (authors' train.py): L1 loss, Adam lr 1e-4. ``loss`` is the L1 between prediction and
I_HC in the normalised domain (SUV / 20), i.e. the SUV L1 divided by 20.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks import PatchEmbed
from monai.networks.nets.swin_unetr import BasicLayer, PatchMerging
from torch import nn

publication = ("Jang S.-I., Pan T., Li Y., Heidari P., Chen J., Li Q., Gong K. Spach Transformer: "
               "spatial and channel-wise transformer based on local and global self-attentions for "
               "PET image denoising. IEEE Trans Med Imaging 2023 (arXiv 2209.03300); "
               "github.com/sijang/SpachTransformer")

SUV_SCALE = 20.0  # SUV per network unit (same 20 SUV as AMDiff's diffusion cut-off)
SIDE_MULTIPLE = 8  # spatial sides: three halvings (Restormer) = patch 4 x one merging (Swin)
SWIN_PATCH = 4  # fixed: the Swin stage-1 map must sit at the Restormer's 1/4 level

PAPER = {
    "dim": 16, "num_blocks": (1, 2, 4, 6), "heads": (1, 2, 4, 8), "num_refinement_blocks": 1,
    "ffn_expansion_factor": 1.0, "swin_embed_dim": 64, "swin_depths": (4, 8),
    "swin_heads": (4, 8), "swin_window": (6, 6, 6), "swin_drop_path": 0.3, "swin_pos_grid": 56,
    "suv_scale": SUV_SCALE,
}
DEMO = {
    "dim": 4, "num_blocks": (1, 1, 1, 1), "heads": (1, 1, 2, 2), "num_refinement_blocks": 1,
    "ffn_expansion_factor": 1.0, "swin_embed_dim": 8, "swin_depths": (2, 2),
    "swin_heads": (2, 2), "swin_window": (2, 2, 2), "swin_drop_path": 0.0, "swin_pos_grid": 4,
    "suv_scale": SUV_SCALE,
}


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channel axis of (B, C, X, Y, Z), separately at every voxel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.movedim(1, -1)).movedim(-1, 1)


class MDTA(nn.Module):
    """Multi-Dconv-head transposed attention: global attention across channels (C_h x C_h map)."""

    def __init__(self, dim: int, heads: int, bias: bool = False):
        super().__init__()
        if dim % heads:
            raise ValueError(f"MDTA width {dim} is not a multiple of heads={heads}")
        self.heads = heads
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.qkv = nn.Conv3d(dim, 3 * dim, 1, bias=bias)
        self.qkv_dwconv = nn.Conv3d(3 * dim, 3 * dim, 3, padding=1, groups=3 * dim, bias=bias)
        self.project_out = nn.Conv3d(dim, dim, 1, bias=bias)

    def _split(self, t: torch.Tensor) -> torch.Tensor:
        b, c = t.shape[:2]
        return t.reshape(b, self.heads, c // self.heads, -1)  # (B, heads, C_h, N)

    def attention(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(attention map (B, heads, C_h, C_h), values (B, heads, C_h, N)) for features x."""
        q, k, v = (self._split(t) for t in self.qkv_dwconv(self.qkv(x)).chunk(3, dim=1))
        # unit-norm rows over voxels: logits are cosine similarities in [-T, T]
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        return (q @ k.transpose(-2, -1) * self.temperature).softmax(dim=-1), v

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        attn, v = self.attention(x)
        return self.project_out((attn @ v).reshape(x.shape))


class GDFN(nn.Module):
    """Gated-Dconv feed-forward network: GELU-gated depthwise-conv features."""

    def __init__(self, dim: int, expansion: float, bias: bool = False):
        super().__init__()
        hidden = int(dim * expansion)
        self.project_in = nn.Conv3d(dim, 2 * hidden, 1, bias=bias)
        self.dwconv = nn.Conv3d(2 * hidden, 2 * hidden, 3, padding=1, groups=2 * hidden, bias=bias)
        self.project_out = nn.Conv3d(hidden, dim, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = self.dwconv(self.project_in(x)).chunk(2, dim=1)
        return self.project_out(F.gelu(x1) * x2)


class ChannelTransformerBlock(nn.Module):
    """Pre-norm Restormer block: x + MDTA(LN(x)), then x + GDFN(LN(x))."""

    def __init__(self, dim: int, heads: int, expansion: float, bias: bool = False):
        super().__init__()
        self.norm1 = ChannelLayerNorm(dim)
        self.attn = MDTA(dim, heads, bias)
        self.norm2 = ChannelLayerNorm(dim)
        self.ffn = GDFN(dim, expansion, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))


def _blocks(n: int, dim: int, heads: int, expansion: float, bias: bool) -> nn.Sequential:
    return nn.Sequential(*(ChannelTransformerBlock(dim, heads, expansion, bias) for _ in range(n)))


def _resample(n_in: int, n_out: int, scale: float) -> nn.Sequential:
    """3x3x3 conv (width change) then trilinear resampling by ``scale`` (0.5 down, 2 up)."""
    return nn.Sequential(nn.Conv3d(n_in, n_out, 3, padding=1, bias=False),
                         nn.Upsample(scale_factor=scale, mode="trilinear", align_corners=False))


class SwinBranch(nn.Module):
    """Two-stage 3D Swin encoder returning its (1/4, 1/8) stage outputs, each layer-normed.

    Stage outputs are taken before patch merging, as in the authors' code; MONAI's window
    attention pads every map to window multiples and shrinks a window to a map smaller than it.
    """

    def __init__(self, in_channels: int, embed_dim: int, depths: Sequence[int],
                 heads: Sequence[int], window: Sequence[int], mlp_ratio: float,
                 drop_path: float, pos_grid: int):
        super().__init__()
        if len(depths) != 2 or len(heads) != 2:
            raise ValueError(f"Spach's Swin branch has two stages; got depths={depths}, heads={heads}")
        self.patch_embed = PatchEmbed(SWIN_PATCH, in_channels, embed_dim, nn.LayerNorm, 3)
        # learned absolute position field, resized to the token grid of each input
        self.pos_embed = (nn.Parameter(torch.empty(1, embed_dim, pos_grid, pos_grid, pos_grid))
                          if pos_grid > 0 else None)
        if self.pos_embed is not None:
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        rates = torch.linspace(0, drop_path, sum(depths)).tolist()  # stochastic depth per block
        dims = (embed_dim, 2 * embed_dim)
        self.stage1 = BasicLayer(dims[0], depths[0], heads[0], tuple(window), rates[:depths[0]],
                                 mlp_ratio, qkv_bias=False, downsample=None)
        self.merge = PatchMerging(dims[0], nn.LayerNorm, 3)  # 2^3 neighbours: 8C -> 2C
        self.stage2 = BasicLayer(dims[1], depths[1], heads[1], tuple(window), rates[depths[0]:],
                                 mlp_ratio, qkv_bias=False, downsample=None)
        self.norm1, self.norm2 = ChannelLayerNorm(dims[0]), ChannelLayerNorm(dims[1])
        self.out_channels = dims

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = self.patch_embed(x)
        if self.pos_embed is not None:
            t = t + F.interpolate(self.pos_embed, size=t.shape[2:], mode="trilinear",
                                  align_corners=False)
        s1 = self.stage1(t.contiguous())
        merged = self.merge(s1.movedim(1, -1)).movedim(-1, 1)  # PatchMerging is channel-last
        s2 = self.stage2(merged.contiguous())
        return self.norm1(s1), self.norm2(s2)


class SpachTransformer(nn.Module):
    """Spach Transformer denoiser: SUV in, SUV out (see module docstring).

    Args:
        in_channels / out_channels: 1 / 1 (the global residual adds the input to the output).
        dim: width of level 1; levels have dim * (1, 2, 4, 8).
        num_blocks: channel-transformer blocks per level (encoder; the decoder mirrors 1-3).
        heads: MDTA heads per level.
        num_refinement_blocks: blocks at full resolution after the decoder.
        ffn_expansion_factor: GDFN hidden width / block width.
        bias: biases in the convs of the channel branch (the authors: False).
        swin_embed_dim, swin_depths, swin_heads, swin_window, swin_mlp_ratio, swin_drop_path:
            the Swin branch (patch 4, two stages).
        swin_pos_grid: side of the learned absolute position field (0: none).
        suv_scale: SUV per network unit.
    """

    def __init__(self, in_channels: int = 1, out_channels: int = 1, dim: int = 16,
                 num_blocks: Sequence[int] = (1, 2, 4, 6), heads: Sequence[int] = (1, 2, 4, 8),
                 num_refinement_blocks: int = 1, ffn_expansion_factor: float = 1.0,
                 bias: bool = False, swin_embed_dim: int = 64, swin_depths: Sequence[int] = (4, 8),
                 swin_heads: Sequence[int] = (4, 8), swin_window: Sequence[int] = (6, 6, 6),
                 swin_mlp_ratio: float = 4.0, swin_drop_path: float = 0.3, swin_pos_grid: int = 56,
                 suv_scale: float = SUV_SCALE):
        super().__init__()
        if in_channels != out_channels:
            raise ValueError("the global residual needs in_channels == out_channels")
        if len(num_blocks) != 4 or len(heads) != 4:
            raise ValueError(f"four levels expected; got num_blocks={num_blocks}, heads={heads}")
        if not suv_scale > 0:
            raise ValueError(f"suv_scale must be > 0, got {suv_scale}")
        self.in_channels = in_channels
        self.suv_scale = float(suv_scale)
        d, e, ex = dim, swin_embed_dim, ffn_expansion_factor
        w = (d, 2 * d, 4 * d, 8 * d)
        self.patch_embed = nn.Conv3d(in_channels, d, 3, padding=1, bias=bias)
        self.encoder1 = _blocks(num_blocks[0], w[0], heads[0], ex, bias)
        self.down1_2 = _resample(w[0], w[1], 0.5)
        self.encoder2 = _blocks(num_blocks[1], w[1], heads[1], ex, bias)
        self.down2_3 = _resample(w[1], w[2], 0.5)
        self.encoder3 = _blocks(num_blocks[2], w[2], heads[2], ex, bias)
        self.down3_4 = _resample(w[2], w[3], 0.5)
        self.latent = _blocks(num_blocks[3], w[3], heads[3], ex, bias)

        self.swin = SwinBranch(in_channels, e, swin_depths, swin_heads, swin_window,
                               swin_mlp_ratio, swin_drop_path, swin_pos_grid)
        s4, s8 = self.swin.out_channels
        self.fuse4 = nn.Conv3d(w[3] + s8, w[3], 1, bias=bias)  # 1/8: latent + Swin stage 2

        self.up4_3 = _resample(w[3], w[2], 2.0)
        self.fuse3 = nn.Conv3d(w[2] + w[2] + s4, w[2], 1, bias=bias)  # 1/4: + skip + Swin 1
        self.decoder3 = _blocks(num_blocks[2], w[2], heads[2], ex, bias)
        self.up3_2 = _resample(w[2], w[1], 2.0)
        self.fuse2 = nn.Conv3d(2 * w[1], w[1], 1, bias=bias)
        self.decoder2 = _blocks(num_blocks[1], w[1], heads[1], ex, bias)
        self.up2_1 = _resample(w[1], w[0], 2.0)
        # full resolution keeps the concatenated 2 dim channels (no reduction), as the authors do
        self.decoder1 = _blocks(num_blocks[0], 2 * w[0], heads[0], ex, bias)
        self.refinement = _blocks(num_refinement_blocks, 2 * w[0], heads[0], ex, bias)
        self.output = nn.Conv3d(2 * w[0], out_channels, 3, padding=1, bias=bias)

    def normalise(self, suv: torch.Tensor) -> torch.Tensor:
        """SUV -> network domain (division by the fixed ``suv_scale``)."""
        return suv / self.suv_scale

    def check_input(self, x: torch.Tensor) -> None:
        """ValueError unless x is (B, in_channels, X, Y, Z) with every side a multiple of 8."""
        if x.ndim != 5 or x.shape[1] != self.in_channels:
            raise ValueError(f"SpachTransformer expects (B, {self.in_channels}, X, Y, Z), "
                             f"got {tuple(x.shape)}")
        bad = [s for s in x.shape[2:] if s % SIDE_MULTIPLE or s == 0]
        if bad:
            raise ValueError(f"SpachTransformer needs spatial sides that are multiples of "
                             f"{SIDE_MULTIPLE} (three halvings; Swin patch 4 + one merging), "
                             f"got {tuple(x.shape[2:])}")

    def forward(self, i_lc: torch.Tensor) -> torch.Tensor:
        """Denoise I_LC (SUV) -> high-count estimate (SUV), same shape."""
        self.check_input(i_lc)
        x = self.normalise(i_lc)
        enc1 = self.encoder1(self.patch_embed(x))
        enc2 = self.encoder2(self.down1_2(enc1))
        enc3 = self.encoder3(self.down2_3(enc2))
        latent = self.latent(self.down3_4(enc3))
        swin4, swin8 = self.swin(x)

        h = self.fuse4(torch.cat([latent, swin8], 1))
        h = self.decoder3(self.fuse3(torch.cat([self.up4_3(h), enc3, swin4], 1)))
        h = self.decoder2(self.fuse2(torch.cat([self.up3_2(h), enc2], 1)))
        h = self.refinement(self.decoder1(torch.cat([self.up2_1(h), enc1], 1)))
        return (self.output(h) + x) * self.suv_scale  # global residual, back to SUV


def build(**kwargs) -> SpachTransformer:
    return SpachTransformer(**kwargs)


def loss(model: SpachTransformer, batch: dict) -> dict[str, torch.Tensor]:
    """Authors' objective: L1(prediction, I_HC), here in the normalised domain (SUV / suv_scale)."""
    pred = model(batch["lc"])
    l1 = F.l1_loss(model.normalise(pred), model.normalise(batch["hc"]))
    return {"total": l1, "l1": l1, "l1_suv": l1.detach() * model.suv_scale}
