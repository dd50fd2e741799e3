"""Per-case evaluation metrics of Sec. 3.2: NRMSE, Dice, quantification and lesion detection.

Pure numpy/scipy functions on arrays already on one grid; reading files is the caller's job.
`evaluate_case` returns one row of the per-case table, keyed exactly by `columns.METRICS`.

Units
- Images in SUV (g/mL). Volumes in mL: voxel count x voxel volume in mL
  (`Volume.voxel_volume_ml`, 1 mL = 1000 mm^3). TLG in SUV*mL (= g). Bias in percent.

Conventions (one for the whole package; NaN values are left out of means and paired tests)
- Masks: a lesion mask is "voxel > 0"; an organ label map holds 0 background and
  1..7 = liver, lung, bone, muscle, kidney, spleen, aorta (`columns.ORGANS`).
- Dice = 2|P n G| / (|P| + |G|). Empty ground truth -> NaN: the score is undefined there
  (as MONAI's ``ignore_empty=True`` and the autoPET challenge, which judges hallucinations on
  lesion-free cases by the false-positive volume instead). Non-empty truth with an empty
  prediction -> 0.
- NRMSE = RMSE / (max - min of the high-count reference), both taken inside the evaluated
  region: the whole image, or one class mask. Normalising a class by its own range is what makes
  the paper's per-class values (~0.08 for liver) possible; the whole-image range would make
  them tiny. An empty region, or a region whose reference is constant (zero range, e.g. a
  single-voxel lesion), gives NaN.
- SUVmean of an empty mask is NaN. MTV of an empty mask is 0 mL and its TLG is 0: TLG is the
  sum of SUV x voxel volume over the mask (= SUVmean x MTV when the mask is not empty), so a
  model that misses every lesion has a TLG bias of -100 % rather than a silently dropped case.
  The TLG bias is NaN when the true TLG is 0 (no true lesion) or NaN.
- Lesion detection uses connected components with 26-connectivity (voxels touching by a face,
  edge or corner belong together). A true lesion is detected when any predicted voxel overlaps
  it; a predicted component is a false positive when it overlaps no true voxel. FP/FN volumes
  are the autoPET challenge definitions: the volume of whole predicted components that touch no
  true lesion, and of whole true components that no prediction touches. (The autoPET script
  itself labels with 18-connectivity; this package uses 26 throughout.) All detection numbers
  are defined on lesion-free cases too (0 true lesions, FP count and volume as predicted).
- Organ masks are used as given: a lesion inside the liver counts toward the liver's SUVmean
  and NRMSE, as it does in the label maps the models are trained on.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from amdiff.evaluate.columns import CLASSES, METRICS, ORGANS
from amdiff.labels.totalseg import ORGAN_CLASSES

ORGAN_IDS = {name: label for label, name in ORGAN_CLASSES.items()}
# 3x3x3 block of ones: face, edge and corner neighbours are connected.
CONNECTIVITY_26 = np.ones((3, 3, 3), dtype=bool)
NAN = float("nan")


# ---------------------------------------------------------------------------------- checks

def check_same_shape(**arrays: np.ndarray | None) -> None:
    """Raise ValueError naming the arrays whose shapes differ from the first one given."""
    given = [(name, np.shape(a)) for name, a in arrays.items() if a is not None]
    if not given:
        return
    first_name, first_shape = given[0]
    for name, shape in given[1:]:
        if shape != first_shape:
            raise ValueError(f"shape mismatch: {name} has shape {shape}, "
                             f"{first_name} has shape {first_shape}")


def _check_voxel_volume(voxel_volume_ml: float) -> float:
    v = float(voxel_volume_ml)
    if not math.isfinite(v) or v <= 0:
        raise ValueError(f"voxel_volume_ml must be positive (mL), got {voxel_volume_ml!r}")
    return v


def _as_mask(mask: np.ndarray) -> np.ndarray:
    return np.asarray(mask) > 0


# ---------------------------------------------------------------------------------- NRMSE

def nrmse(pred: np.ndarray, ref: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Root-mean-square error normalised by the range of the reference inside the region.

    NRMSE = sqrt(mean((pred - ref)^2 over mask)) / (max(ref[mask]) - min(ref[mask])).
    ``ref`` is the high-count image ("the range of observed data", Sec. 3.2). Per class, pass
    that class's true mask: the range is then the class's own range, which is what gives the
    paper's per-class values (~0.08 for liver). ``mask=None`` evaluates the whole image.
    Returns NaN for an empty mask or a zero range (a constant reference, a one-voxel lesion).
    """
    check_same_shape(pred=pred, ref=ref, mask=mask)
    pred = np.asarray(pred, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if mask is not None:
        region = _as_mask(mask)
        pred, ref = pred[region], ref[region]
    if ref.size == 0:
        return NAN
    data_range = float(ref.max() - ref.min())
    if data_range == 0:
        return NAN
    rmse = math.sqrt(float(np.mean((pred - ref) ** 2)))
    return rmse / data_range


# ---------------------------------------------------------------------------------- Dice

def dice(pred_mask: np.ndarray, true_mask: np.ndarray) -> float:
    """Dice 2|P n G| / (|P| + |G|) of two binary masks (voxel > 0 is inside).

    NaN when the ground truth is empty (undefined); 0 when only the prediction is empty.
    """
    check_same_shape(pred_mask=pred_mask, true_mask=true_mask)
    pred, true = _as_mask(pred_mask), _as_mask(true_mask)
    n_true = int(true.sum())
    if n_true == 0:
        return NAN
    overlap = int(np.logical_and(pred, true).sum())
    return 2.0 * overlap / (int(pred.sum()) + n_true)


def organ_dice(organs_pred: np.ndarray, organs_true: np.ndarray) -> dict[str, float]:
    """Dice per organ class of two label maps, keyed by organ name (liver, lung, ...)."""
    check_same_shape(organs_pred=organs_pred, organs_true=organs_true)
    organs_pred, organs_true = np.asarray(organs_pred), np.asarray(organs_true)
    return {name: dice(organs_pred == ORGAN_IDS[name], organs_true == ORGAN_IDS[name])
            for name in ORGANS}


# ---------------------------------------------------------------------------------- quantification

def volume_ml(mask: np.ndarray, voxel_volume_ml: float) -> float:
    """Volume of a mask in mL: voxel count x voxel volume (mL)."""
    return float(_as_mask(mask).sum()) * _check_voxel_volume(voxel_volume_ml)


def suv_mean(image: np.ndarray, mask: np.ndarray) -> float:
    """Mean SUV inside the mask; NaN for an empty mask."""
    check_same_shape(image=image, mask=mask)
    values = np.asarray(image, dtype=np.float64)[_as_mask(mask)]
    return float(values.mean()) if values.size else NAN


def lesion_quantification(image: np.ndarray, lesion_mask: np.ndarray,
                          voxel_volume_ml: float) -> dict[str, float]:
    """MTV (mL), SUVmean (SUV) and TLG = SUVmean x MTV (SUV*mL) of the lesion mask.

    An empty mask gives MTV 0, SUVmean NaN and TLG 0 (no lesion, no glycolysis).
    """
    check_same_shape(image=image, lesion_mask=lesion_mask)
    voxel_ml = _check_voxel_volume(voxel_volume_ml)
    values = np.asarray(image, dtype=np.float64)[_as_mask(lesion_mask)]
    mtv = values.size * voxel_ml
    # Summing SUV x voxel volume equals SUVmean x MTV, and stays 0 (not NaN) for no lesion.
    tlg = float(values.sum()) * voxel_ml
    return {"mtv_ml": mtv, "suvmean": float(values.mean()) if values.size else NAN, "tlg": tlg}


def tlg_bias_pct(tlg_auto: float, tlg_true: float) -> float:
    """Relative TLG bias 100 (auto - true) / true in percent; NaN when true is 0 or NaN."""
    if not math.isfinite(tlg_true) or tlg_true == 0:
        return NAN
    return 100.0 * (tlg_auto - tlg_true) / tlg_true


# ---------------------------------------------------------------------------------- detection

def _components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    labels, n = ndimage.label(_as_mask(mask), structure=CONNECTIVITY_26)
    return labels, int(n)


def lesion_detection(pred_mask: np.ndarray, true_mask: np.ndarray,
                     voxel_volume_ml: float) -> dict[str, float]:
    """Lesion-wise detection counts and autoPET false-positive / false-negative volumes.

    Components use 26-connectivity. Returns lesions_true, lesions_tp (true components touched
    by the prediction), lesions_fn (true components untouched), lesions_fp (predicted
    components touching no true voxel), fp_volume_ml and fn_volume_ml (whole volumes of those
    untouched predicted / true components, in mL).
    """
    check_same_shape(pred_mask=pred_mask, true_mask=true_mask)
    voxel_ml = _check_voxel_volume(voxel_volume_ml)
    pred, true = _as_mask(pred_mask), _as_mask(true_mask)
    true_labels, n_true = _components(true)
    pred_labels, n_pred = _components(pred)

    # Component ids that overlap the other mask (id 0 is background).
    true_hit = np.unique(true_labels[pred])
    true_hit = true_hit[true_hit > 0]
    pred_hit = np.unique(pred_labels[true])
    pred_hit = pred_hit[pred_hit > 0]

    true_sizes = np.bincount(true_labels.ravel(), minlength=n_true + 1)
    pred_sizes = np.bincount(pred_labels.ravel(), minlength=n_pred + 1)
    fn_voxels = int(true_sizes[1:].sum() - true_sizes[true_hit].sum())
    fp_voxels = int(pred_sizes[1:].sum() - pred_sizes[pred_hit].sum())
    return {
        "lesions_true": n_true,
        "lesions_tp": int(true_hit.size),
        "lesions_fn": n_true - int(true_hit.size),
        "lesions_fp": n_pred - int(pred_hit.size),
        "fp_volume_ml": fp_voxels * voxel_ml,
        "fn_volume_ml": fn_voxels * voxel_ml,
    }


# ---------------------------------------------------------------------------------- one case

def class_masks(lesion: np.ndarray, organs: np.ndarray) -> dict[str, np.ndarray]:
    """Boolean mask per class of `columns.CLASSES` (lesion, then the seven organs)."""
    organs = np.asarray(organs)
    masks = {"lesion": _as_mask(lesion)}
    masks.update({name: organs == ORGAN_IDS[name] for name in ORGANS})
    return masks


def _nrmse_metrics(denoised, hc, true_masks) -> dict[str, float]:
    row = {"nrmse_whole": nrmse(denoised, hc)}
    row.update({f"nrmse_{c}": nrmse(denoised, hc, true_masks[c]) for c in CLASSES})
    return row


def _suvmeans(image, masks, kind: str) -> dict[str, float]:
    return {f"suvmean_{c}_{kind}": suv_mean(image, masks[c]) for c in CLASSES}


def evaluate_case(hc: np.ndarray, lesion_true: np.ndarray, organs_true: np.ndarray,
                  voxel_volume_ml: float, *, denoised: np.ndarray | None = None,
                  lesion_pred: np.ndarray | None = None, organs_pred: np.ndarray | None = None,
                  quant_image: np.ndarray | None = None) -> dict[str, float]:
    """All metrics of one case, as floats keyed (and ordered) by `columns.METRICS`.

    - NRMSE (whole image and each class, class regions from the TRUE masks): only with
      ``denoised``.
    - Dice: lesion with ``lesion_pred``, organs with ``organs_pred``; detection with
      ``lesion_pred``.
    - "true" quantification: always, from ``hc`` with the true masks.
    - "auto" quantification: the model's own image (``quant_image`` if given, else ``denoised``)
      with the model's own predicted masks; NaN when the image or the masks are missing.
    Metrics that do not apply are NaN. Arrays of different shapes raise ValueError.
    """
    check_same_shape(hc=hc, lesion_true=lesion_true, organs_true=organs_true, denoised=denoised,
                     lesion_pred=lesion_pred, organs_pred=organs_pred, quant_image=quant_image)
    voxel_ml = _check_voxel_volume(voxel_volume_ml)
    row = dict.fromkeys(METRICS, NAN)
    true_masks = class_masks(lesion_true, organs_true)

    if denoised is not None:
        row.update(_nrmse_metrics(denoised, hc, true_masks))

    if lesion_pred is not None:
        row["dice_lesion"] = dice(lesion_pred, true_masks["lesion"])
        row.update(lesion_detection(lesion_pred, true_masks["lesion"], voxel_ml))
    if organs_pred is not None:
        row.update({f"dice_{name}": d for name, d in organ_dice(organs_pred, organs_true).items()})

    true_quant = lesion_quantification(hc, true_masks["lesion"], voxel_ml)
    row["mtv_true_ml"], row["tlg_true"] = true_quant["mtv_ml"], true_quant["tlg"]
    row.update(_suvmeans(hc, true_masks, "true"))

    auto_image = quant_image if quant_image is not None else denoised
    if auto_image is not None and lesion_pred is not None:
        auto_quant = lesion_quantification(auto_image, lesion_pred, voxel_ml)
        row["mtv_auto_ml"], row["tlg_auto"] = auto_quant["mtv_ml"], auto_quant["tlg"]
        row["suvmean_lesion_auto"] = auto_quant["suvmean"]
        row["tlg_bias_pct"] = tlg_bias_pct(row["tlg_auto"], row["tlg_true"])
    if auto_image is not None and organs_pred is not None:
        organ_masks = class_masks(np.zeros(np.shape(organs_pred), bool), organs_pred)
        row.update({f"suvmean_{c}_auto": suv_mean(auto_image, organ_masks[c]) for c in ORGANS})

    return {key: float(row[key]) for key in METRICS}
