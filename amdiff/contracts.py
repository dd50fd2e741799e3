"""The data contracts every stage shares (DESIGN.md): one home for each, imported everywhere.

Organ label maps (organs.nii.gz, uint8) hold 0 for background and 1..7 for the organ classes
below; lesion masks hold 0 and 1. The paper's semantic classes s (Eqs. 5, 7, 9) are the lesion
(s = 1) and the organs (s = k + 1 for organ label k), with s = 0 the background of both.
"""

from __future__ import annotations

ORGAN_CLASSES = {1: "liver", 2: "lung", 3: "bone", 4: "muscle", 5: "kidney", 6: "spleen", 7: "aorta"}
N_ORGAN_CLASSES = len(ORGAN_CLASSES)
ORGAN_NAMES = tuple(ORGAN_CLASSES.values())          # liver, lung, bone, muscle, kidney, spleen, aorta
ORGAN_LABELS = {name: label for label, name in ORGAN_CLASSES.items()}
SEMANTIC_CLASSES = ("lesion", *ORGAN_NAMES)          # the paper's s = 1..8

# The six comparison models of Tables 2 and 3: denoisers write denoised.nii.gz, segmenters
# lesion.nii.gz and organs.nii.gz (fed with the low-count image and Med-DDPM's output).
COMPARISON_DENOISERS = ("leqmod_gan", "spach_transformer", "med_ddpm")
COMPARISON_SEGMENTERS = ("swin_unetr", "nnmamba", "medsam3d")
COMPARISON_MODELS = COMPARISON_DENOISERS + COMPARISON_SEGMENTERS
