"""AMDiff's dual-branch nnMamba segmenter f_seg (paper Sec. 2.2.2, Fig. 3).

Input: two channels [P_HCR, I_LC] in SUV, (B, 2, X, Y, Z). Output: {"lesion": (B, 2, X, Y, Z),
"organs": (B, 8, X, Y, Z)} logits at input resolution (softmax per head is the caller's).

Shared encoder: stem (two 3x3x3 convs at full resolution, width w) and three ResMamba stages, each
halving the resolution, at widths 2w, 4w, 8w. Two separate three-level decoders (lesion, organs):
trilinear x2 upsampling, concatenation with the encoder skip of that resolution, double conv; then
a 1x1x1 head. ``use_mamba=False`` is the paper's "without ResMamba" ablation: the ResMamba blocks
become plain residual conv blocks (an nnU-Net-like residual encoder), everything else identical.

Intensity normalisation inside the network: asinh(SUV). It is ~SUV below 1 and ~log(2 SUV) above,
so the 0-20 range that carries most tissue contrast stays spread out while lesion SUVs of 100-200
(P_HCR and I_LC are not cut off) stay within ~6; it is odd and smooth, so slightly negative values
of the revised map P_HCR pass through without clipping or NaNs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from amdiff.models.mamba_backend import is_mamba_module
from amdiff.models.nnmamba import NORMS, conv_norm_act, make_stage

N_LEVELS = 3  # downsampling stages; patch sides must be multiples of 2**N_LEVELS
MIN_SIDE = 2 ** (N_LEVELS + 1)  # deepest map >= 2 voxels per side (instance norm needs > 1 voxel)


def normalise_suv(x: torch.Tensor) -> torch.Tensor:
    """Compress SUV for the network input: asinh, see module docstring."""
    return torch.asinh(x)


class Decoder(nn.Module):
    """Three-level decoder: (trilinear x2, concat skip, double conv) x 3, then 1x1x1 logits head."""

    def __init__(self, widths: tuple[int, ...], n_classes: int, norm: str):
        super().__init__()
        # widths = encoder widths from full resolution to deepest, e.g. (w, 2w, 4w, 8w)
        self.steps = nn.ModuleList()
        for deep, skip in zip(widths[:0:-1], widths[-2::-1]):
            self.steps.append(nn.Sequential(
                conv_norm_act(deep + skip, skip, 3, norm), conv_norm_act(skip, skip, 3, norm)))
        self.head = nn.Conv3d(widths[0], n_classes, 1)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        h = feats[-1]
        for step, skip in zip(self.steps, feats[-2::-1]):
            h = F.interpolate(h, scale_factor=2, mode="trilinear", align_corners=False)
            h = step(torch.cat([h, skip], dim=1))
        return self.head(h)


class DualBranchSegmenter(nn.Module):
    """Shared stem + 3 ResMamba stages; separate lesion and organ decoders."""

    def __init__(self, in_channels: int = 2, width: int = 16, n_lesion_classes: int = 2,
                 n_organ_classes: int = 8, use_mamba: bool = True, blocks_per_stage: int = 2,
                 norm: str = "instance"):
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        if min(in_channels, width, n_lesion_classes, n_organ_classes) < 1:
            raise ValueError("DualBranchSegmenter: channel and class counts must be positive")
        self.in_channels = in_channels
        self.use_mamba = use_mamba
        widths = tuple(width * 2 ** i for i in range(N_LEVELS + 1))  # w, 2w, 4w, 8w
        self.stem = nn.Sequential(conv_norm_act(in_channels, width, 3, norm),
                                  conv_norm_act(width, width, 3, norm))
        self.stages = nn.ModuleList(
            make_stage(widths[i], widths[i + 1], blocks_per_stage, use_mamba, norm)
            for i in range(N_LEVELS))
        self.lesion_decoder = Decoder(widths, n_lesion_classes, norm)
        self.organ_decoder = Decoder(widths, n_organ_classes, norm)

    def _check(self, x: torch.Tensor) -> None:
        if x.ndim != 5 or x.shape[1] != self.in_channels:
            raise ValueError(f"DualBranchSegmenter: expected (B, {self.in_channels}, X, Y, Z), "
                             f"got {tuple(x.shape)}")
        bad = [s for s in x.shape[2:] if s % 2 ** N_LEVELS or s < MIN_SIDE]
        if bad:
            raise ValueError(f"DualBranchSegmenter: patch sides must be multiples of "
                             f"{2 ** N_LEVELS} and >= {MIN_SIDE}, got {tuple(x.shape[2:])}")

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Encoder features from full resolution to 1/8, widths w..8w."""
        feats = [self.stem(normalise_suv(x))]
        for stage in self.stages:
            feats.append(stage(feats[-1]))
        return feats

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        self._check(x)
        feats = self.encode(x)
        return {"lesion": self.lesion_decoder(feats), "organs": self.organ_decoder(feats)}

    def mamba_modules(self) -> list[nn.Module]:
        """The Mamba mixers inside the encoder (empty for the ablation)."""
        return [m for m in self.modules() if is_mamba_module(m)]

