"""AMDiff networks: conditioned diffusion denoiser f_den, revision module f_rev, segmenter f_seg."""

from amdiff.models.denoiser import DenoiserUNet
from amdiff.models.params import count_parameters, describe
from amdiff.models.revision import RevisionModule
from amdiff.models.segmenter import DualBranchSegmenter

__all__ = ["DenoiserUNet", "DualBranchSegmenter", "RevisionModule", "count_parameters", "describe"]
