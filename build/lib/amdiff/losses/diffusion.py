"""The diffusion loss of AMDiff, paper Eq. 3: L1 between the network's output and its target,
the noise (the paper's prediction) or v (``diffusion.prediction: v``, see AMDiff.target)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from amdiff.errors import InputError


def diffusion_l1(eps_pred: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """L_diff, paper Eq. 3: ||eps_recon - eps||_1.

    Normalisation: mean absolute error over every element (batch, channel, voxel), as in
    Med-DDPM (Dorjsembe et al., 2024), so the value does not depend on patch or batch size.
    Scalar tensor.
    """
    if eps_pred.shape != eps.shape:
        raise InputError("diffusion_l1",
                         f"predicted noise {tuple(eps_pred.shape)} and noise {tuple(eps.shape)} differ in shape")
    return F.l1_loss(eps_pred, eps, reduction="mean")


class DiffusionL1Loss(nn.Module):
    """nn.Module form of `diffusion_l1`."""

    def forward(self, eps_pred, eps):
        return diffusion_l1(eps_pred, eps)
