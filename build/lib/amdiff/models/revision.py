"""f_rev: the denoising revision module of AMDiff (paper Sec. 2.2.1, Eq. 6).

    P_HCR = f_rev(P_HC, I_LC) = I_LC + s * g([P_HC, I_LC] / s)

P_HC is the diffusion output mapped back to SUV (so it never exceeds the diffusion cutoff of
20 SUV); I_LC is the low-count image in SUV, not cut off. The direct skip to I_LC is what
restores the range above the cutoff (paper: "a direct skip connection to the original low-count
input I_LC is included to restore information lost due to the data range cutoff"); g, the
"consecutive convolutional layers", learns the correction from I_LC towards the high-count
image, using P_HC where it is informative.

g = n_layers x (3x3x3 conv [-> norm] -> LeakyReLU(0.2)), then a 1x1x1 conv whose weight and
bias start at zero, so at initialisation P_HCR == I_LC exactly and training starts from the
low-count image instead of from noise.

Scaling: inputs are divided by the fixed normaliser s = ``suv_scale`` (10 SUV by default) and
g's output multiplied back, so conv weights see O(1) values (liver ~1-3 SUV -> 0.1-0.3, lesions
~5-30 SUV -> 0.5-3) whatever the SUV range. s is a constant, not a per-patch statistic, so
the same voxel value means the same thing in every patch.

Normalisation (``norm``, config ``models.revision.norm``; the paper only says "consecutive
convolutional layers"):
- ``"none"`` (default, our choice): no normalisation layer. Every output voxel is then a fixed
  function of the inputs within ``n_layers`` voxels of it (``receptive_radius``), so the module
  is context-free: on a 128^3 training patch and on a whole 440x440x620 volume it computes the
  same value wherever the patch holds that neighbourhood, and inference may apply it to the
  whole volume at once (no seams). The fixed SUV scale s already keeps activations O(1), which
  is the job a normalisation layer would otherwise do.
- ``"group"``: GroupNorm after each conv (the form used before). Its statistics are taken over
  the whole input, so the output depends on the input's extent (a 32^3 body patch and the whole
  volume differed by ~94 % in the correction); inference then runs the module through the same
  sliding window and blending as the denoiser, so it sees windows of the training patch size.
"""

from __future__ import annotations

import torch
from torch import nn


def _groups(channels: int, max_groups: int = 8) -> int:
    """Largest group count <= max_groups that divides ``channels``."""
    for g in range(min(max_groups, channels), 0, -1):
        if channels % g == 0:
            return g
    return 1


NORMS = ("none", "group")


class RevisionModule(nn.Module):
    """P_HCR = I_LC + s * g([P_HC, I_LC] / s), all tensors (B, 1, X, Y, Z) in SUV.

    Args:
        hidden: feature width of the conv layers.
        n_layers: number of 3x3x3 conv [+ norm] + LeakyReLU layers (>= 1).
        suv_scale: fixed SUV normaliser s (SUV); see module docstring.
        negative_slope: LeakyReLU slope.
        norm: "none" (context-free) or "group" (GroupNorm); see module docstring.
    """

    def __init__(
        self, hidden: int = 16, n_layers: int = 3, suv_scale: float = 10.0, negative_slope: float = 0.2,
        norm: str = "none",
    ) -> None:
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"RevisionModule needs n_layers >= 1, got {n_layers}")
        if hidden < 1:
            raise ValueError(f"RevisionModule needs hidden >= 1, got {hidden}")
        if not suv_scale > 0:
            raise ValueError(f"RevisionModule needs suv_scale > 0, got {suv_scale}")
        if norm not in NORMS:
            raise ValueError(f"RevisionModule norm must be one of {NORMS}, got {norm!r}")
        self.norm = norm
        self.hidden = hidden
        self.n_layers = n_layers
        self.negative_slope = negative_slope
        # A buffer, so the normaliser travels with the state dict and the device.
        self.register_buffer("suv_scale", torch.tensor(float(suv_scale)))
        layers: list[nn.Module] = []
        width = 2
        for _ in range(n_layers):
            layers.append(nn.Conv3d(width, hidden, kernel_size=3, padding=1))
            if norm == "group":
                layers.append(nn.GroupNorm(_groups(hidden), hidden))
            layers.append(nn.LeakyReLU(negative_slope))
            width = hidden
        self.body = nn.Sequential(*layers)
        self.head = nn.Conv3d(hidden, 1, kernel_size=1)
        # Zero head: the correction is 0 at initialisation, so P_HCR starts as I_LC exactly.
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def config(self) -> dict:
        """Constructor arguments, to store next to a checkpoint and rebuild the model."""
        return {
            "hidden": self.hidden,
            "n_layers": self.n_layers,
            "suv_scale": float(self.suv_scale),
            "negative_slope": self.negative_slope,
            "norm": self.norm,
        }

    @property
    def context_free(self) -> bool:
        """True when an output voxel depends only on inputs within ``receptive_radius`` of it."""
        return self.norm == "none"

    @property
    def receptive_radius(self) -> int:
        """Voxels of context each side: one per 3x3x3 conv (the head is 1x1x1)."""
        return self.n_layers

    def forward(self, p_hc: torch.Tensor, i_lc: torch.Tensor) -> torch.Tensor:
        """Revise the diffusion output.

        Args:
            p_hc: denoised image P_HC in SUV (cut off at the diffusion range), (B, 1, X, Y, Z).
            i_lc: low-count image I_LC in SUV, full range, same shape.

        Returns:
            P_HCR in SUV, (B, 1, X, Y, Z).
        """
        if p_hc.ndim != 5 or p_hc.shape[1] != 1:
            raise ValueError(f"p_hc must be (B, 1, X, Y, Z), got {tuple(p_hc.shape)}")
        if i_lc.shape != p_hc.shape:
            raise ValueError(f"i_lc {tuple(i_lc.shape)} and p_hc {tuple(p_hc.shape)} differ in shape")
        s = self.suv_scale
        correction = self.head(self.body(torch.cat([p_hc, i_lc], dim=1) / s))
        return i_lc + s * correction
