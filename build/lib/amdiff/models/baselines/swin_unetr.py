"""SwinUNETR-V2 comparison segmenter (AMDiff paper Sec. 4.2, Table 3), MONAI's network unchanged.

The paper cites He et al., "SwinUNETR-V2: stronger Swin transformers with stagewise convolutions
for 3D medical image segmentation" (MICCAI 2023), which MONAI implements as
``monai.networks.nets.SwinUNETR(use_v2=True)``: a Swin transformer encoder (patch 2, window 7,
depths 2/2/2/2, heads 3/6/12/24) whose stages each start with a residual conv block (the V2
change), UNETR-style conv skips and decoder. ``PAPER`` uses feature_size 48 as in the Swin UNETR
papers (1 in / 1 out: 62.2 M parameters for V1, 72.8 M for V2).

Two outputs: ONE SwinUNETR with out_channels = 2 + 8, whose output layer (a 1x1x1 conv on the
last decoder features) is split into the lesion logits (channels 0-1: background, lesion) and the
organ logits (channels 2-9: background, liver, lung, bone, muscle, kidney, spleen, aorta). The
channel slices of a 1x1x1 conv are two independent linear heads on shared features, so this is a
shared-decoder, two-head network with each head's own softmax -- the closest to AMDiff's
lesion/organ outputs that keeps MONAI's network as published. A shared encoder with two MONAI
decoders would need MONAI's internals re-wired, i.e. no longer the published model.

Input: [I_LC, denoised] in SUV, (B, 2, X, Y, Z), normalised inside by asinh (as AMDiff's
segmenter, ``amdiff.models.segmenter.normalise_suv``). Sides must be multiples of 32 (five
halvings: patch embedding + four merges); with instance norm (MONAI's default) the deepest 1/32
map must also hold more than one voxel, e.g. 32 x 32 x 64 or 64^3, since instance statistics of a
single voxel are undefined.

Loss: AMDiff's segmentation loss (``amdiff_segmentation_loss``); the Swin UNETR papers train with
Dice + CE, which that loss (CE + a focal Dice per class) contains up to the focal exponent.
"""

from __future__ import annotations


import torch
from monai.networks.nets import SwinUNETR
from torch import nn

from amdiff.losses.regularizers import WeightsLike
from amdiff.models.baselines.common import amdiff_segmentation_loss, check_segmenter_input, segmenter_input
from amdiff.models.segmenter import normalise_suv

publication = ("He Y, Nath V, Yang D, Tang Y, Myronenko A, Xu D. SwinUNETR-V2: stronger Swin "
               "transformers with stagewise convolutions for 3D medical image segmentation. "
               "MICCAI 2023, LNCS 14223:416-426. Code: MONAI monai.networks.nets.SwinUNETR "
               "(use_v2=True), github.com/Project-MONAI/MONAI")

N_LESION, N_ORGAN = 2, 8
NORMS = ("instance", "batch")
DIVISOR = 32  # 2**5: patch embedding (2) and four patch merges

PAPER = dict(in_channels=2, feature_size=48, depths=(2, 2, 2, 2), num_heads=(3, 6, 12, 24),
             window_size=7, use_v2=True, norm_name="instance")
DEMO = dict(in_channels=2, feature_size=12, depths=(1, 1, 1, 1), num_heads=(3, 6, 12, 24),
            window_size=7, use_v2=True, norm_name="instance")


class SwinUNETRSegmenter(nn.Module):
    """MONAI SwinUNETR(-V2) with 10 output channels split into lesion (2) and organ (8) logits."""

    def __init__(self, in_channels: int = 2, feature_size: int = 48,
                 depths: tuple[int, ...] = (2, 2, 2, 2), num_heads: tuple[int, ...] = (3, 6, 12, 24),
                 window_size: int = 7, use_v2: bool = True, norm_name: str = "instance",
                 dropout_path_rate: float = 0.0, use_checkpoint: bool = False):
        super().__init__()
        if feature_size < 12 or feature_size % 12:
            raise ValueError(f"SwinUNETR: feature_size must be a positive multiple of 12, got {feature_size}")
        if in_channels < 1:
            raise ValueError(f"SwinUNETR: in_channels must be positive, got {in_channels}")
        if norm_name not in NORMS:
            raise ValueError(f"SwinUNETR: norm_name must be one of {NORMS}, got {norm_name!r}")
        self.in_channels = in_channels
        self.norm_name = norm_name
        self.net = SwinUNETR(in_channels=in_channels, out_channels=N_LESION + N_ORGAN,
                             feature_size=feature_size, depths=tuple(depths),
                             num_heads=tuple(num_heads), window_size=window_size, use_v2=use_v2,
                             norm_name=norm_name, dropout_path_rate=dropout_path_rate,
                             use_checkpoint=use_checkpoint)

    def _check(self, x: torch.Tensor) -> None:
        check_segmenter_input(x, "SwinUNETR", self.in_channels, DIVISOR, self.norm_name, self.training)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        self._check(x)
        logits = self.net(normalise_suv(x))
        return {"lesion": logits[:, :N_LESION], "organs": logits[:, N_LESION:]}


def build(**kwargs) -> SwinUNETRSegmenter:
    """SwinUNETRSegmenter(**kwargs); ``build(**PAPER)`` is the publication's size."""
    return SwinUNETRSegmenter(**kwargs)


# ---------------------------------------------------------------- loss shared by the segmenters



def loss(model: nn.Module, batch: dict[str, torch.Tensor], weights: WeightsLike = None) -> dict[str, torch.Tensor]:
    """Forward ``model`` on [lc, denoised] and return AMDiff's segmentation loss terms ("total", ...)."""
    return amdiff_segmentation_loss(model(segmenter_input(batch)), batch, weights)
