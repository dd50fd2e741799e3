"""The data contracts every stage shares (DESIGN.md): one home for each, imported everywhere.

Organ label maps (organs.nii.gz, uint8) hold 0 for background and 1..7 for the organ classes
below; lesion masks hold 0 and 1. The paper's semantic classes s (Eqs. 5, 7, 9) are the lesion
(s = 1) and the organs (s = k + 1 for organ label k), with s = 0 the background of both.
"""

from __future__ import annotations

import shlex
import string
from dataclasses import dataclass

from amdiff.errors import InputError

ORGAN_CLASSES = {1: "liver", 2: "lung", 3: "bone", 4: "muscle", 5: "kidney", 6: "spleen", 7: "aorta"}
N_ORGAN_CLASSES = len(ORGAN_CLASSES)
ORGAN_NAMES = tuple(ORGAN_CLASSES.values())          # liver, lung, bone, muscle, kidney, spleen, aorta
ORGAN_LABELS = {name: label for label, name in ORGAN_CLASSES.items()}
SEMANTIC_CLASSES = ("lesion", *ORGAN_NAMES)          # the paper's s = 1..8

SPLITS = ("train", "val", "test")                    # a subject's split (manifest column split)

# The six comparison models of Tables 2 and 3: denoisers write denoised.nii.gz, segmenters
# lesion.nii.gz and organs.nii.gz (fed with the low-count image and Med-DDPM's output).
COMPARISON_DENOISERS = ("leqmod_gan", "spach_transformer", "med_ddpm")
COMPARISON_SEGMENTERS = ("swin_unetr", "nnmamba", "medsam3d")
COMPARISON_MODELS = COMPARISON_DENOISERS + COMPARISON_SEGMENTERS



# AMDiff and its ablations (Table 4, plus amdiff_no_lor: the abstract's and Fig. 7's "without
# the lesion-organ-specific regularizer"), and Med-DDPM, the same diffusion module without
# semantic parts: which parts each trains with (amdiff.models.amdiff builds them).
@dataclass(frozen=True)
class Variant:
    revision: bool = True
    drop_lesion_reg: bool = False
    drop_organ_reg: bool = False
    use_mamba: bool = True
    segmentation: bool = True

    def loss_terms(self) -> tuple[str, ...]:
        """The terms of Eq. 10 this variant trains with, e.g. ("diff", "lor", "rev", "seg")."""
        terms = ["diff"]
        if self.segmentation:
            if not (self.drop_lesion_reg and self.drop_organ_reg):
                terms.append("lor")
            if self.revision:   # L_rev supervises f_rev's output: no module, no term
                terms.append("rev")
            terms.append("seg")
        return tuple(terms)


VARIANTS = {
    "amdiff": Variant(),
    "amdiff_no_revision": Variant(revision=False),
    "amdiff_no_organ_reg": Variant(drop_organ_reg=True),
    "amdiff_no_lesion_reg": Variant(drop_lesion_reg=True),
    "amdiff_no_lor": Variant(drop_lesion_reg=True, drop_organ_reg=True),
    "amdiff_no_resmamba": Variant(use_mamba=False),
    "med_ddpm": Variant(revision=False, segmentation=False),
}
ABLATIONS = tuple(name for name in VARIANTS if name not in ("amdiff", "med_ddpm"))

# The external reconstruction engine's command template (config sites.<site>.recon.command):
# the placeholders the workflow fills, checked when the config is read and again by the engine.
RECON_PLACEHOLDERS = {
    "listmode": "the PETSIRD list-mode file to reconstruct",
    "mumap": "the attenuation map (1/cm, NIfTI) on the image grid",
    "output": "the NIfTI image the engine writes (Bq/mL, on the mu-map's grid)",
    "iterations": "the site's recon.iterations",
    "subsets": "the site's recon.subsets",
    "postfilter_fwhm_mm": "the site's recon.postfilter_fwhm_mm",
    "count_fraction": "share of the full list's counts this list holds (1 for the full list)",
    "shape": "the image grid as X,Y,Z voxels",
    "voxel_size_mm": "the voxel size as X,Y,Z mm",
}
RECON_REQUIRED = ("listmode", "output")


def template_fields(template: str, source: str) -> list[str]:
    """The placeholder names in ``template``; one-line InputError (naming ``source``) when the
    template is not a command line, names an unknown placeholder or lacks a required one."""
    try:
        words = shlex.split(template)
        fields = [name for word in words for _, name, _, _ in string.Formatter().parse(word) if name is not None]
    except ValueError as exc:
        raise InputError(source, f"recon.command is not a valid command line ({exc})") from None
    if not words:
        raise InputError(source, "recon.command is empty")
    unknown = sorted({f for f in fields if f not in RECON_PLACEHOLDERS})
    if unknown:
        raise InputError(source, f"recon.command: unknown placeholder {{{unknown[0]}}}; "
                                 f"known: {', '.join('{' + k + '}' for k in RECON_PLACEHOLDERS)}")
    missing = [f for f in RECON_REQUIRED if f not in fields]
    if missing:
        raise InputError(source, f"recon.command must contain {{{missing[0]}}}")
    if words[0].startswith("{"):
        raise InputError(source, "recon.command must start with the engine's program, not a placeholder")
    return fields
