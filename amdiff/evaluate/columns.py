"""The per-case metrics table: one row per (model, site, subject, count level, realization).

Every evaluation module speaks this vocabulary, so the table written by `amdiff evaluate`
is what the statistics, tables and figures read. A metric that does not apply to a model
(Dice of a pure denoiser, NRMSE of a pure segmenter) or is undefined for a case (Dice when
the ground truth is empty) is NaN; NaN values are left out of means and of paired tests.
"""

from __future__ import annotations

from amdiff.contracts import ORGAN_NAMES as ORGANS      # liver, lung, bone, muscle, kidney, spleen, aorta
from amdiff.contracts import SEMANTIC_CLASSES as CLASSES  # semantic classes s = 1..8 of the paper

# count_percent: the level in percent of the full (high-count) list, which names it (p005);
# clinical_percent: the same in percent of the site's standard clinical count, on which the
# paper's "below 20 %" and "below 5 %" cases are chosen (Vision's 16.7 % level is 100 %).
KEYS = ("model", "site", "subject", "level", "realization", "count_percent", "clinical_percent")
PAIR_KEYS = ("site", "subject", "level", "realization")   # one low-count input: pairs two models
SUBJECT_KEYS = ("site", "subject")   # the independent unit: tests and bootstrap resample subjects
ALL_SITES = "all"                                         # the group pooling every site; shown "All"

NRMSE = ("nrmse_whole", *(f"nrmse_{c}" for c in CLASSES))
DICE = tuple(f"dice_{c}" for c in CLASSES)
# Quantification (Sec. 3.2, Fig. 7): "true" from the high-count image with the true masks,
# "auto" from the model's own denoised image and masks. MTV in mL, TLG = SUVmean x MTV in
# SUV*mL (= g), SUVmean in SUV (g/mL); bias in percent of the true value.
QUANT = ("mtv_true_ml", "mtv_auto_ml", "tlg_true", "tlg_auto", "tlg_bias_pct",
         *(f"suvmean_{c}_{kind}" for c in CLASSES for kind in ("true", "auto")))
# Lesion-wise detection, our definition: 26-connected components matched one to one by overlap
# (metrics.match_lesions); precision, recall, F1 NaN on lesion-free images. autoPET's FP/FN
# volumes by its own definition (18-connectivity), in mL; the predicted volume on lesion-free
# images (NaN where there is a lesion) shows hallucinations that Dice leaves out.
DETECTION = ("lesions_true", "lesions_pred", "lesions_tp", "lesions_fp", "lesions_fn",
             "lesion_precision", "lesion_recall", "lesion_f1",
             "autopet_fp_volume_ml", "autopet_fn_volume_ml", "lesion_free_fp_volume_ml")

METRICS = (*NRMSE, *DICE, *QUANT, *DETECTION)
COLUMNS = (*KEYS, *METRICS)

# Which way is better, for bold-face and for the direction of claimed effects.
LOWER_IS_BETTER = {*NRMSE, "autopet_fp_volume_ml", "autopet_fn_volume_ml", "lesion_free_fp_volume_ml",
                   "lesions_fp", "lesions_fn"}
HIGHER_IS_BETTER = {*DICE, "lesions_tp", "lesion_precision", "lesion_recall", "lesion_f1"}
CLOSEST_TO_ZERO_IS_BETTER = {"tlg_bias_pct"}

# Display names as the paper prints them; unknown models are shown by their workflow name.
MODEL_LABELS = {
    "lowcount_input": "Low-count input",       # Table 2's training-free rows (not in the paper)
    "gaussian_filter": "Gaussian filter",      # its tables label carries the chosen FWHM
    "amdiff": "AMDiff",
    "amdiff_no_revision": "w/o denoising revision",
    "amdiff_no_organ_reg": "w/o organ regularizer",
    "amdiff_no_lesion_reg": "w/o lesion regularizer",
    "amdiff_no_lor": "w/o lesion-organ regularizer",
    "amdiff_no_resmamba": "w/o ResMamba",
    "leqmod_gan": "LeqMod-GAN",
    "spach_transformer": "SpachTransformer",
    "med_ddpm": "3D Med-DDPM",
    "swin_unetr": "SwinUNETR",
    "nnmamba": "nnMamba",
    "medsam3d": "Med-SAM",
}


def model_label(model: str, standalone: bool = False) -> str:
    """The paper's name; ``standalone`` prefixes ablations with "AMDiff" (figure panels)."""
    label = MODEL_LABELS.get(model, model)
    return f"AMDiff {label}" if standalone and label.startswith("w/o") else label
