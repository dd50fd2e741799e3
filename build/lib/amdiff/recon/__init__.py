"""System model (ray-driven projector, count model), OSEM reconstruction and SUV conversion."""

from amdiff.recon.osem import angular_subsets, reconstruct_listmode, run_osem
from amdiff.recon.projector import RayProjector
from amdiff.recon.suv import concentration_to_suv, suv_to_concentration
from amdiff.recon.system import (attenuation_factors, expected_prompts, gaussian_blur,
                                 scanner_eta)

__all__ = ["RayProjector", "angular_subsets", "attenuation_factors", "concentration_to_suv",
           "expected_prompts", "gaussian_blur", "reconstruct_listmode", "run_osem", "scanner_eta",
           "suv_to_concentration"]
