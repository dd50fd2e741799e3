"""nnMamba comparison segmenter (Gong et al. 2024; AMDiff paper Sec. 4.2, Table 3).

The segmentation network of the nnMamba repository (lhaof/nnMamba, nnMamba.py, ``nnMambaSeg``):
- stem: two 3x3x3 conv-norm-ReLU, the first with stride 2, width w (32 at paper size);
- three residual stages at 2w, 4w, 8w, each of ``blocks_per_stage`` (3) basic blocks; the first
  block downsamples (stride 2, 1x1x1 conv shortcut) and has no Mamba; in the other blocks the
  siamese Mamba layer of the block input is added to the conv branch after its second conv+norm,
  before the residual sum. ONE ``SiameseMambaLayer`` per stage is shared by that stage's blocks;
- skips (stem and stages 1-2) rescaled by squeeze-excitation: sigmoid(W2 ReLU(W1 mean_xyz f)),
  hidden width C // 16 (at least 1 for tiny demo widths);
- decoder: 4 steps of trilinear x2 upsampling + double conv-norm-ReLU, the first three after
  concatenating the SE-rescaled skip, the fourth at full resolution.

Deliberate differences from the repository (documented in reports/models.md):
- Two heads, as every segmenter here: 1x1x1 convs for lesion (2 classes) and organs (8 classes)
  on the last decoder features. nnMamba's last double conv maps straight to the classes and ends
  in BN + ReLU (non-negative logits); here it keeps width w and the linear heads give the logits.
  One network with two heads differs from AMDiff's shared encoder + two decoders: that split is
  AMDiff's design choice, and the comparison is meant to show what it adds.
- Conv layers followed by a norm carry no bias (the norm cancels it); the repo's decoder convs
  have one. Together with the heads this changes the count by < 0.5 %.
- No deep-supervision heads: the interface returns full-resolution logits only.
- Mamba backend from ``amdiff.models.mamba_backend`` (mamba_ssm on CUDA, else mambapy); the four
  siamese views run as one batch, which computes the same as the repo's four calls.
Normalisation: BatchNorm3d as the repo (``norm="batch"``); ``norm="instance"`` is available.

Input: [I_LC, denoised] in SUV, (B, 2, X, Y, Z), normalised inside by asinh. Sides must be
multiples of 16 (stem + three stages halve); the 1/16 map must hold more than one value per
channel for the norm (instance: > 1 voxel; batch, while training: batch x voxels > 1).

Loss: AMDiff's segmentation loss (CE + focal Dice, ``form="focal_tversky"``), shared with the
other segmenters; nnMamba's nnU-Net trainer uses Dice + CE (with deep supervision), the same two
terms up to the focal exponent.
"""

from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import nn

from amdiff.models.baselines.common import amdiff_segmentation_loss, check_segmenter_input, segmenter_input
from amdiff.models.mamba_backend import is_mamba_module
from amdiff.models.nnmamba import NORMS, ResidualConvBlock, SiameseMambaLayer, conv_norm_act
from amdiff.models.segmenter import normalise_suv

publication = ("Gong H, Kang L, Wang Y, Wan X, Li H. nnMamba: 3D biomedical image segmentation, "
               "classification and landmark detection with state space model. arXiv:2402.03526 "
               "(2024); ISBI 2025. Code: github.com/lhaof/nnMamba (nnMamba.py, nnMambaSeg)")

N_LESION, N_ORGAN = 2, 8
N_STAGES = 3
DIVISOR = 2 ** (N_STAGES + 1)  # stem stride 2 and three stride-2 stages

PAPER = dict(in_channels=2, width=32, blocks_per_stage=3, norm="batch", se_ratio=16)
DEMO = dict(in_channels=2, width=8, blocks_per_stage=3, norm="batch", se_ratio=16)


class NNMambaBlock(ResidualConvBlock):
    """nnMamba's basic block: ReLU(norm(conv(conv_norm_relu(x))) [+ mamba(x)] + shortcut(x))."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, norm: str = "batch",
                 mamba_layer: SiameseMambaLayer | None = None):
        super().__init__(in_ch, out_ch, stride=stride, norm=norm)
        if mamba_layer is not None and (stride != 1 or in_ch != out_ch):
            raise ValueError("NNMambaBlock: the Mamba branch needs an unchanged shape (stride 1, in == out)")
        self.mamba_layer = mamba_layer  # may be shared with the other blocks of the stage

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm2(self.conv2(self.conv1(x)))
        if self.mamba_layer is not None:
            h = h + self.mamba_layer(x)
        return self.act(h + self.shortcut(x))


def make_stage(in_ch: int, out_ch: int, n_blocks: int, norm: str) -> nn.Sequential:
    """Stride-2 block without Mamba, then n_blocks - 1 blocks sharing one siamese Mamba layer."""
    if n_blocks < 2:
        raise ValueError(f"nnMamba stage needs >= 2 blocks (1 downsampling + Mamba blocks), got {n_blocks}")
    shared = SiameseMambaLayer(out_ch, norm=norm)
    blocks = [NNMambaBlock(in_ch, out_ch, stride=2, norm=norm)]
    blocks += [NNMambaBlock(out_ch, out_ch, norm=norm, mamba_layer=shared) for _ in range(n_blocks - 1)]
    return nn.Sequential(*blocks)


class SqueezeExcite(nn.Module):
    """Channel rescaling f * sigmoid(W2 ReLU(W1 mean_xyz f)) (Hu et al. 2018), nnMamba's skip attention."""

    def __init__(self, channels: int, ratio: int = 16):
        super().__init__()
        hidden = max(1, channels // ratio)
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        w = torch.sigmoid(self.fc2(F.relu(self.fc1(f.mean(dim=(2, 3, 4))))))
        return f * w[:, :, None, None, None]


def double_conv(in_ch: int, out_ch: int, norm: str) -> nn.Sequential:
    return nn.Sequential(conv_norm_act(in_ch, out_ch, 3, norm), conv_norm_act(out_ch, out_ch, 3, norm))


class NNMambaSegmenter(nn.Module):
    """nnMambaSeg with lesion and organ 1x1x1 heads on the last decoder features."""

    def __init__(self, in_channels: int = 2, width: int = 32, blocks_per_stage: int = 3,
                 norm: str = "batch", se_ratio: int = 16):
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"nnMamba: norm must be one of {NORMS}, got {norm!r}")
        if min(in_channels, width, se_ratio) < 1:
            raise ValueError("nnMamba: in_channels, width and se_ratio must be positive")
        self.in_channels, self.norm = in_channels, norm
        widths = tuple(width * 2 ** i for i in range(N_STAGES + 1))  # w, 2w, 4w, 8w
        self.stem = nn.Sequential(conv_norm_act(in_channels, width, 3, norm, stride=2),
                                  conv_norm_act(width, width, 3, norm))
        self.stages = nn.ModuleList(make_stage(widths[i], widths[i + 1], blocks_per_stage, norm)
                                    for i in range(N_STAGES))
        self.skip_se = nn.ModuleList(SqueezeExcite(c, se_ratio) for c in widths[:-1])
        # deep + skip -> skip width, from 1/16 up to 1/2 resolution (repo: 12w->4w, 6w->2w, 3w->w)
        self.up_convs = nn.ModuleList(double_conv(deep + skip, skip, norm)
                                      for deep, skip in zip(widths[:0:-1], widths[-2::-1]))
        self.final_conv = double_conv(width, width, norm)  # after the 4th upsampling, full resolution
        self.lesion_head = nn.Conv3d(width, N_LESION, 1)
        self.organ_head = nn.Conv3d(width, N_ORGAN, 1)

    def _check(self, x: torch.Tensor) -> None:
        check_segmenter_input(x, "nnMamba", self.in_channels, DIVISOR, self.norm, self.training)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        self._check(x)
        feats = [self.stem(normalise_suv(x))]
        for stage in self.stages:
            feats.append(stage(feats[-1]))
        skips = [se(f) for se, f in zip(self.skip_se, feats[:-1])]
        h = feats[-1]
        for conv, skip in zip(self.up_convs, skips[::-1]):
            h = F.interpolate(h, scale_factor=2, mode="trilinear", align_corners=False)
            h = conv(torch.cat([h, skip], dim=1))
        h = self.final_conv(F.interpolate(h, scale_factor=2, mode="trilinear", align_corners=False))
        return {"lesion": self.lesion_head(h), "organs": self.organ_head(h)}

    def mamba_layers(self) -> list[SiameseMambaLayer]:
        """The distinct siamese Mamba layers (one per stage)."""
        return [m for m in self.modules() if isinstance(m, SiameseMambaLayer)]

    def mamba_modules(self) -> list[nn.Module]:
        """The distinct Mamba mixers (one per stage)."""
        return [m for m in self.modules() if is_mamba_module(m)]


def build(**kwargs) -> NNMambaSegmenter:
    """NNMambaSegmenter(**kwargs); ``build(**PAPER)`` is the publication's size."""
    return NNMambaSegmenter(**kwargs)


def loss(model: nn.Module, batch: dict[str, torch.Tensor], weights=None) -> dict[str, torch.Tensor]:
    """Forward ``model`` on [lc, denoised]; AMDiff's segmentation loss terms ("total", "ce", ...)."""
    return amdiff_segmentation_loss(model(segmenter_input(batch)), batch, weights)
