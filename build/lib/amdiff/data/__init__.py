"""Training data: cases from the cohort manifest and lesion-balanced patch sampling.

``load_cases`` turns the workflow's ``results/manifest.tsv`` into one ``Case`` per
(subject, low-count image); ``PatchSampler`` draws lesion-present/absent patches from them
(paper Sec. 3.2); ``grid_patches`` lays out the sliding window used for inference.
"""

from amdiff.data.cases import Case, LazyVolume, load_cases
from amdiff.data.patches import (
    PatchDataset,
    PatchSampler,
    PatchSpec,
    collate,
    cut_patch,
    grid_patches,
    plan_summary,
)

__all__ = ["Case", "LazyVolume", "PatchDataset", "PatchSampler", "PatchSpec", "collate", "cut_patch",
           "grid_patches", "load_cases", "plan_summary"]
