"""f_den: the conditioned diffusion denoiser of AMDiff (paper Sec. 2.1.1, Eq. 2).

``DenoiserUNet.forward(x_t, i_lc, t)`` concatenates the noisy image I^t and the low-count
condition I_LC on the channel axis (Eq. 2, both in the diffusion domain [-1, 1]) and returns the
predicted noise eps, trained with the L1 loss of Eq. 3 elsewhere.

The network is MONAI's ``DiffusionModelUNet`` (3D, no cross-attention conditioning), configured
to the paper's description "a four-layer encoder and a three-layer decoder, with self-attention
in the lowest-resolution layer":

* encoder: four resolution levels with widths ``channels`` (three stride-2 conv downsamplings);
* decoder: three nearest-neighbour x2 upsamplings (+ conv) back to full resolution, with skip
  concatenation; MONAI's decoder also has one block at the lowest level before the first
  upsampling, so the lowest level holds encoder block, middle block and first decoder block;
* every residual block receives the timestep: sinusoidal embedding of t (width channels[0]),
  then Linear-SiLU-Linear to 4*channels[0], projected to each block's width and added after its
  first conv (DDPM, Ho et al. 2020);
* multi-head self-attention (heads of ``attention_heads_channels`` channels) only at the lowest
  level: after each residual block of the last encoder block, of the middle block and of the
  first decoder block (4 attention layers when num_res_blocks=1);
* the output conv and the second conv of every residual block start at zero (MONAI's
  ``zero_module``, as in guided diffusion), so an untrained network predicts eps = 0 exactly.

Difference from Med-DDPM (the codebase the paper cites for L_diff): Med-DDPM's 3D UNet has base
width 64 with multipliers (1, 1, 2, 3, 4) -- five levels, four downsamplings -- and attention at
16^3 feature maps plus the middle block, one head. We follow the AMDiff paper's four-level
encoder instead: default widths (32, 64, 128, 256), three downsamplings, so a 128^3 patch has a
16^3 lowest level where attention runs (4096 tokens), as in Med-DDPM. The paper does not give
widths, heads or parameter count; these defaults are our choice (28.75 M parameters, 27.04 M of
them in 3x3x3 conv weights; one 128^3 forward pass takes ~22 s on two CPU threads).

Spatial sizes must be divisible by 2^(levels-1) (8 for four levels) so the skips align.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.nets import DiffusionModelUNet
from torch import nn


class DenoiserUNet(nn.Module):
    """Noise predictor eps_theta([I^t, I_LC], t) for the conditioned DDPM (Eq. 2).

    Args:
        in_channels: channels after concatenation; 2 = noisy image + low-count condition.
        out_channels: predicted-noise channels (1).
        channels: feature widths per resolution level (len = number of encoder levels).
        num_res_blocks: residual blocks per encoder level (decoder levels get one more, for the
            extra skip of each level, as in MONAI / guided diffusion).
        attention_heads_channels: channels per attention head at the lowest level.
        norm_groups: GroupNorm groups; every width must be a multiple.
        use_flash_attention: compute attention with torch's scaled_dot_product_attention (memory
            efficient, same weights and, up to float rounding, same result).
    """

    def __init__(
        self,
        in_channels: int = 2,
        out_channels: int = 1,
        channels: Sequence[int] = (32, 64, 128, 256),
        num_res_blocks: int = 1,
        attention_heads_channels: int = 32,
        norm_groups: int = 8,
        use_flash_attention: bool = False,
    ) -> None:
        super().__init__()
        channels = tuple(int(c) for c in channels)
        if len(channels) < 2:
            raise ValueError(f"DenoiserUNet needs at least two levels, got channels={channels}")
        if in_channels < 2:
            raise ValueError("DenoiserUNet in_channels must be >= 2 (noisy image + I_LC condition)")
        if any(c % norm_groups for c in channels):
            raise ValueError(f"every width in {channels} must be a multiple of norm_groups={norm_groups}")
        if channels[-1] % attention_heads_channels:
            raise ValueError(
                f"lowest width {channels[-1]} must be a multiple of attention_heads_channels="
                f"{attention_heads_channels}"
            )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.channels = channels
        self.num_res_blocks = num_res_blocks
        self.attention_heads_channels = attention_heads_channels
        self.norm_groups = norm_groups
        # Attention only at the lowest resolution (paper Sec. 2.1.1); MONAI then also places one
        # in its middle block, which runs at that same resolution.
        attention_levels = (False,) * (len(channels) - 1) + (True,)
        self.unet = DiffusionModelUNet(
            spatial_dims=3,
            in_channels=in_channels,
            out_channels=out_channels,
            num_res_blocks=num_res_blocks,
            channels=channels,
            attention_levels=attention_levels,
            norm_num_groups=norm_groups,
            num_head_channels=attention_heads_channels,
            with_conditioning=False,
            use_flash_attention=use_flash_attention,
        )

    @property
    def size_multiple(self) -> int:
        """Every spatial size of the input must be a multiple of this (2^downsamplings)."""
        return 2 ** (len(self.channels) - 1)

    def config(self) -> dict:
        """Constructor arguments, to store next to a checkpoint and rebuild the model."""
        return {
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "channels": list(self.channels),
            "num_res_blocks": self.num_res_blocks,
            "attention_heads_channels": self.attention_heads_channels,
            "norm_groups": self.norm_groups,
        }

    def forward(self, x_t: torch.Tensor, i_lc: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        """Predict the noise in ``x_t``.

        Args:
            x_t: noisy image I^t, (B, C_x, X, Y, Z), diffusion domain [-1, 1] scaled by Eq. 1.
            i_lc: low-count condition, (B, C_c, X, Y, Z), diffusion domain; C_x + C_c = in_channels.
            t: timestep(s), int or tensor of shape () or (B,), the step index used in Eq. 1.

        Returns:
            eps (B, out_channels, X, Y, Z).
        """
        if x_t.ndim != 5 or i_lc.ndim != 5:
            raise ValueError(f"x_t and i_lc must be (B, C, X, Y, Z); got {tuple(x_t.shape)}, {tuple(i_lc.shape)}")
        if x_t.shape[0] != i_lc.shape[0] or x_t.shape[2:] != i_lc.shape[2:]:
            raise ValueError(f"x_t {tuple(x_t.shape)} and i_lc {tuple(i_lc.shape)} differ in batch or grid")
        if x_t.shape[1] + i_lc.shape[1] != self.in_channels:
            raise ValueError(
                f"x_t and i_lc carry {x_t.shape[1]} + {i_lc.shape[1]} channels, model expects {self.in_channels}"
            )
        m = self.size_multiple
        if any(s % m for s in x_t.shape[2:]):
            raise ValueError(f"spatial size {tuple(x_t.shape[2:])} is not divisible by {m}")
        batch = x_t.shape[0]
        t = torch.as_tensor(t, device=x_t.device)
        if t.ndim == 0:
            t = t.expand(batch)
        if t.shape != (batch,):
            raise ValueError(f"t must be a scalar or shape ({batch},), got {tuple(t.shape)}")
        return self.unet(torch.cat([x_t, i_lc], dim=1), timesteps=t)

    def attention_modules(self) -> list[tuple[str, nn.Module]]:
        """(name, module) of every self-attention block, for inspection."""
        from monai.networks.blocks.spatialattention import SpatialAttentionBlock

        return [(n, mod) for n, mod in self.named_modules() if isinstance(mod, SpatialAttentionBlock)]
