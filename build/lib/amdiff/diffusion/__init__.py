"""Diffusion schedule and samplers, kept apart from the networks (diffusers-style)."""

from amdiff.diffusion.samplers import (EpsModel, ddim_sample, ddim_step, ddim_timesteps,
                                       ddpm_sample, ddpm_step, sample)
from amdiff.diffusion.schedule import (SUV_CUTOFF, CosineSchedule, cosine_alpha_bar,
                                       diffusion_to_suv, suv_to_diffusion)

__all__ = ["SUV_CUTOFF", "CosineSchedule", "EpsModel", "cosine_alpha_bar", "ddim_sample",
           "ddim_step", "ddim_timesteps", "ddpm_sample", "ddpm_step", "diffusion_to_suv", "sample",
           "suv_to_diffusion"]
