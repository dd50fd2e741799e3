"""AMDiff: semantic-informed denoiser + denoising-informed segmenter (paper Fig. 2).

One module holds f_den (conditioned diffusion UNet), f_rev (revision) and f_seg (dual-branch
segmenter), plus the cosine schedule. The ablations of Table 4 are variants of this module:

- ``amdiff_no_revision``: no f_rev; the segmenter gets [P_HC, I_LC] directly, and L_rev, which
  supervises f_rev's output, does not exist (Eq. 10 without it).
- ``amdiff_no_organ_reg`` / ``amdiff_no_lesion_reg``: L_lor without the organ / lesion terms
  (the loss, not the network, changes) -- Table 4's two partial ablations.
- ``amdiff_no_lor``: L_lor removed entirely (lesion and organ terms) -- the abstract's and Fig. 7's
  "without the lesion-organ-specific regularizer" (TLG bias -30.83 %).
- ``amdiff_no_resmamba``: the segmenter's encoder uses plain residual conv blocks.

``amdiff.contracts.VARIANTS`` is the one table of these switches: this module builds each
variant from it, the trainer reads its loss switches (``Variant.loss_terms``), the evaluation
tables its ablations, reports/models.md lists them, and the tests check they agree.

``med_ddpm`` is the comparison model 3D Med-DDPM (Dorjsembe et al. 2024) as the paper uses it:
the same conditioned diffusion module with no semantic parts (no L_lor, no revision module, no
segmenter), trained with L_diff alone.
"""

from __future__ import annotations


import torch
from torch import nn

from amdiff.contracts import VARIANTS
from amdiff.diffusion.schedule import CosineSchedule, diffusion_to_suv, suv_to_diffusion
from amdiff.models.denoiser import DenoiserUNet
from amdiff.models.revision import RevisionModule
from amdiff.models.segmenter import DualBranchSegmenter


# what f_den predicts (config diffusion.prediction): the noise (paper Eq. 3) or v
PREDICTIONS = ("eps", "v")



class AMDiff(nn.Module):
    def __init__(self, variant: str = "amdiff", denoiser: dict | None = None,
                 revision: dict | None = None, segmenter: dict | None = None,
                 timesteps: int = 250, suv_cutoff: float = 20.0, prediction: str = "eps"):
        super().__init__()
        if prediction not in PREDICTIONS:
            raise ValueError(f"unknown diffusion prediction {prediction!r}; choose from {PREDICTIONS}")
        if variant not in VARIANTS:
            raise ValueError(f"unknown AMDiff variant {variant!r}; choose from {sorted(VARIANTS)}")
        self.variant_name = variant
        self.variant = VARIANTS[variant]
        den = dict(denoiser or {})
        if "channels" in den:
            den["channels"] = tuple(den["channels"])
        self.denoiser = DenoiserUNet(**den)
        self.revision = RevisionModule(**(revision or {})) if self.variant.revision else None
        self.segmenter = (DualBranchSegmenter(use_mamba=self.variant.use_mamba, **(segmenter or {}))
                          if self.variant.segmentation else None)
        self.schedule = CosineSchedule(timesteps)
        self.suv_cutoff = float(suv_cutoff)
        self.prediction = prediction

    # ---- domains ----------------------------------------------------------------------
    def to_diffusion(self, suv: torch.Tensor) -> torch.Tensor:
        return suv_to_diffusion(suv, self.suv_cutoff)

    def to_suv(self, x: torch.Tensor) -> torch.Tensor:
        return diffusion_to_suv(x, self.suv_cutoff)

    # ---- pieces used by training and inference -----------------------------------------
    def network(self, x_t: torch.Tensor, i_lc_suv: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """f_den(I^t (+) I_LC, t), Eq. 2 (the condition enters in the diffusion domain): the
        noise (prediction "eps", the paper's) or v (prediction "v")."""
        return self.denoiser(x_t, self.to_diffusion(i_lc_suv), t)

    def eps(self, x_t: torch.Tensor, i_lc_suv: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The predicted noise, whatever the network predicts: what the samplers step with."""
        out = self.network(x_t, i_lc_suv, t)
        return out if self.prediction == "eps" else self.schedule.eps_from_v(x_t, t, out)

    def target(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """What ``network`` is trained to output (L_diff's target): the noise, or v."""
        return noise if self.prediction == "eps" else self.schedule.v_target(x0, t, noise)

    def x0_estimate(self, x_t: torch.Tensor, t: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """The one-step x0 estimate (P_HC before clamping) from the network's output."""
        if self.prediction == "eps":
            return self.schedule.predict_x0(x_t, t, out)
        return self.schedule.x0_from_v(x_t, t, out)

    def revise(self, p_hc_suv: torch.Tensor, i_lc_suv: torch.Tensor) -> torch.Tensor:
        """P_HCR = f_rev(P_HC, I_LC) (Eq. 6); without the module, P_HC itself."""
        return p_hc_suv if self.revision is None else self.revision(p_hc_suv, i_lc_suv)

    def segment(self, p_hcr_suv: torch.Tensor, i_lc_suv: torch.Tensor) -> dict[str, torch.Tensor]:
        """P_seg = f_seg(P_HCR (+) I_LC), Eq. 8."""
        return self.segmenter(torch.cat([p_hcr_suv, i_lc_suv], dim=1))

    def lor_switches(self) -> dict:
        return {"drop_lesion": self.variant.drop_lesion_reg, "drop_organs": self.variant.drop_organ_reg}

    def parameter_groups(self) -> tuple[list, list]:
        """(denoiser parameters, revision + segmenter parameters): separate learning rates."""
        seg = [] if self.segmenter is None else list(self.segmenter.parameters())
        if self.revision is not None:
            seg += list(self.revision.parameters())
        return list(self.denoiser.parameters()), seg


def build_model(variant: str, config: dict) -> AMDiff:
    """An AMDiff variant sized by the config's ``models`` and ``diffusion`` sections (Med-DDPM's
    SUV cutoff may come from ``baselines.med_ddpm``, see `suv_cutoff_of`)."""
    models, diffusion = config["models"], config["diffusion"]
    return AMDiff(variant, denoiser=models["denoiser"], revision=models.get("revision"),
                  segmenter=models.get("segmenter") if VARIANTS[variant].segmentation else None,
                  timesteps=diffusion["timesteps"],
                  suv_cutoff=suv_cutoff_of(variant, config),
                  prediction=config["diffusion"]["prediction"])


def suv_cutoff_of(variant: str, config: dict) -> float:
    """SUV cutoff of a variant's diffusion target: ``diffusion.suv_cutoff``, except for
    ``med_ddpm`` when ``baselines.med_ddpm.suv_cutoff`` is set (null or absent: the same cutoff).

    Sharing AMDiff's cutoff is our choice (the paper says only "the same conditioned diffusion
    module"); it makes SUV above the cutoff unreachable for Med-DDPM, which has no revision
    module to restore it, so an audit can lift the cap for Med-DDPM alone. Checkpoints store
    the whole config, so inference rebuilds the model with the cutoff it was trained with.
    """
    own = ((config.get("baselines") or {}).get("med_ddpm") or {}).get("suv_cutoff")
    if variant == "med_ddpm" and own is not None:
        return float(own)
    return float(config["diffusion"]["suv_cutoff"])
