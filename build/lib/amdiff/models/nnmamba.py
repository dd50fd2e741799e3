"""nnMamba building blocks (Gong et al. 2024, arXiv:2402.03526), re-implemented for 3D patches.

- ``SiameseMambaLayer``: "Mamba-In-Convolution with Channel-Spatial Siamese learning". A 1x1x1
  conv + norm + ReLU gives activation ``a``; ``a`` is flattened to tokens (B, L=X*Y*Z, C) and ONE
  shared Mamba reads four views of it -- as is, channel-flipped, token-order-flipped, both. Each
  output is flipped back and the four are averaged, so the causal scan sees context from both ends
  of the sequence and channels in both orders (the "augmented over channel and spatial dims"
  features of AMDiff Fig. 3). Then ``+ a`` and a 1x1x1 conv + norm + ReLU.
- ``ResidualConvBlock``: two 3x3x3 convs with a residual shortcut (nnU-Net / ResNet basic block).
- ``ResMambaBlock``: the same block with the Mamba layer (fed with the block input) added to the
  conv branch after the first conv, as in nnMamba's residual stages.
- ``make_stage``: one encoder stage; the first block downsamples by stride 2 and carries no Mamba
  (as nnMamba), the others are ResMamba blocks (or plain residual blocks for the ablation).

Normalisation: InstanceNorm3d (affine) by default, not nnMamba's BatchNorm. AMDiff trains on a few
128^3 patches per step (batch 1-2), where batch statistics are noisy and differ between training
and inference; instance statistics are per patch, as in nnU-Net. ``norm="batch"`` is available.
Instance norm needs more than one voxel per channel, hence the segmenter's minimum patch size.

Difference from nnMamba kept on purpose: each ResMamba block owns its Mamba layer (nnMamba shares
one per stage); with two blocks per stage, the AMDiff default, the two are the same network.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from amdiff.models.mamba_backend import make_mamba

NORMS = ("instance", "batch")


def make_norm(kind: str, channels: int) -> nn.Module:
    """Per-channel normalisation for 3D feature maps; ``kind`` is "instance" or "batch"."""
    if kind == "instance":
        return nn.InstanceNorm3d(channels, affine=True)
    if kind == "batch":
        return nn.BatchNorm3d(channels)
    raise ValueError(f"norm must be one of {NORMS}, got {kind!r}")


def conv_norm_act(in_ch: int, out_ch: int, kernel: int, norm: str, stride: int = 1) -> nn.Sequential:
    """Conv3d (no bias: the norm removes it) + norm + ReLU."""
    return nn.Sequential(
        nn.Conv3d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, bias=False),
        make_norm(norm, out_ch),
        nn.ReLU(inplace=True),
    )


def siamese_mamba(mamba: Callable[[torch.Tensor], torch.Tensor], tokens: torch.Tensor) -> torch.Tensor:
    """Average of ``mamba`` over the four channel/token-order flips of ``tokens`` (B, L, C).

    The views are stacked on the batch axis so the shared Mamba runs once. The result is
    equivariant to reversing the token order and to reversing the channel order.
    """
    b = tokens.shape[0]
    views = torch.cat([tokens, tokens.flip(2), tokens.flip(1), tokens.flip(1).flip(2)], dim=0)
    out = mamba(views)
    o_id, o_c, o_l, o_lc = out.split(b, dim=0)
    return (o_id + o_c.flip(2) + o_l.flip(1) + o_lc.flip(1).flip(2)) / 4.0


class SiameseMambaLayer(nn.Module):
    """nnMamba's Mamba-in-convolution layer with channel-spatial siamese views; keeps (B, C, X, Y, Z)."""

    def __init__(self, channels: int, norm: str = "instance",
                 d_state: int = 16, d_conv: int = 4, expand: int = 2):
        super().__init__()
        self.pre = conv_norm_act(channels, channels, 1, norm)
        self.mamba = make_mamba(channels, d_state=d_state, d_conv=d_conv, expand=expand)
        self.post = conv_norm_act(channels, channels, 1, norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.pre(x)
        tokens = a.flatten(2).transpose(1, 2)  # (B, L, C), L in C order over (X, Y, Z)
        mixed = siamese_mamba(self.mamba, tokens).transpose(1, 2).reshape(a.shape)
        return self.post(mixed + a)


class ResidualConvBlock(nn.Module):
    """conv3-norm-ReLU-conv3-norm, plus a shortcut (1x1x1 conv + norm when shape changes), ReLU."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, norm: str = "instance"):
        super().__init__()
        self.conv1 = conv_norm_act(in_ch, out_ch, 3, norm, stride=stride)
        self.conv2 = nn.Conv3d(out_ch, out_ch, 3, padding=1, bias=False)
        self.norm2 = make_norm(norm, out_ch)
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv3d(in_ch, out_ch, 1, stride=stride, bias=False), make_norm(norm, out_ch))
        else:
            self.shortcut = nn.Identity()
        self.act = nn.ReLU(inplace=True)

    def branch_extra(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Hook on the conv branch after the first conv; plain blocks add nothing."""
        return h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.branch_extra(self.conv1(x), x)
        h = self.norm2(self.conv2(h))
        return self.act(h + self.shortcut(x))


class ResMambaBlock(ResidualConvBlock):
    """Residual conv block whose conv branch also receives the siamese Mamba layer of its input."""

    def __init__(self, channels: int, norm: str = "instance",
                 d_state: int = 16, d_conv: int = 4, expand: int = 2):
        super().__init__(channels, channels, stride=1, norm=norm)
        self.mamba_layer = SiameseMambaLayer(channels, norm=norm, d_state=d_state,
                                             d_conv=d_conv, expand=expand)

    def branch_extra(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return h + self.mamba_layer(x)


def make_stage(in_ch: int, out_ch: int, n_blocks: int, use_mamba: bool,
               norm: str = "instance") -> nn.Sequential:
    """Encoder stage at half resolution: a stride-2 residual block, then n_blocks-1 blocks that are
    ResMamba blocks (``use_mamba``) or plain residual blocks (the nnU-Net-like ablation)."""
    if n_blocks < 2:
        raise ValueError(f"a stage needs at least 2 blocks (1 downsampling + 1 ResMamba), got {n_blocks}")
    blocks: list[nn.Module] = [ResidualConvBlock(in_ch, out_ch, stride=2, norm=norm)]
    for _ in range(n_blocks - 1):
        blocks.append(ResMambaBlock(out_ch, norm=norm) if use_mamba
                      else ResidualConvBlock(out_ch, out_ch, norm=norm))
    return nn.Sequential(*blocks)
