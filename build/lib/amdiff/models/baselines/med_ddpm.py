"""3D Med-DDPM (Dorjsembe et al. 2024) as the paper compares it: AMDiff's conditioned diffusion
module with no semantic parts — no lesion-organ regularizer, no revision module, no segmenter —
trained with the L1 noise loss (Eq. 3) alone and sampled like AMDiff.

The paper states it used "the same conditioned diffusion module architecture used in AMDiff",
so the network is amdiff.models.denoiser.DenoiserUNet; Med-DDPM's own repository uses a
five-level UNet of base width 64 (REFERENCES.md), which we do not reproduce here.
"""

from __future__ import annotations

import torch

from amdiff.losses.diffusion import diffusion_l1
from amdiff.models.amdiff import AMDiff

publication = ("Dorjsembe Z., Pao H.-K., Odonchimed S., Xiao F. Conditional diffusion models for "
               "semantic 3D brain MRI synthesis. IEEE J Biomed Health Inform 2024; "
               "github.com/mobaidoctor/med-ddpm")
PAPER = {"denoiser": {"channels": (32, 64, 128, 256), "num_res_blocks": 1,
                      "attention_heads_channels": 32, "norm_groups": 8}, "timesteps": 250}
DEMO = {"denoiser": {"channels": (4, 8, 8, 8), "num_res_blocks": 1,
                     "attention_heads_channels": 8, "norm_groups": 4}, "timesteps": 50}


def build(**kwargs) -> AMDiff:
    return AMDiff("med_ddpm", **kwargs)


def loss(model: AMDiff, batch: dict, generator: torch.Generator | None = None) -> dict:
    """Eq. 3 on a random step: L1 between predicted and true noise."""
    x0 = model.to_diffusion(batch["hc"])
    t = model.schedule.sample_t(x0.shape[0], generator).to(x0.device)
    noise = torch.randn(x0.shape, generator=generator).to(x0.device)
    out = model.network(model.schedule.q_sample(x0, t, noise), batch["lc"], t)
    total = diffusion_l1(out, model.target(x0, t, noise))
    return {"total": total, "diff": total}
