"""Parametric whole-body 18F-FDG PET/CT phantom (anatomy in mm, partial-volume rasterisation)."""

from amdiff.phantom.generate import (DEFAULT_PARAMS, PhantomSubject, generate_subject,
                                     phantom_lesion_summary)
from amdiff.phantom.tissue import hu_to_mu_511

__all__ = ["DEFAULT_PARAMS", "PhantomSubject", "generate_subject", "hu_to_mu_511",
           "phantom_lesion_summary"]
