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
- NRMSE per class = RMSE / (max - min of the high-count reference), both taken inside the
  class's true mask. Normalising a class by its own range is what makes the paper's per-class
  values (~0.08 for liver) possible; the whole-image range would make them tiny. An empty
  region, or a region whose reference is constant (zero range, e.g. a single-voxel lesion),
  gives NaN.
- Whole-image NRMSE (``nrmse_whole``, config ``evaluation.nrmse_whole``; see `nrmse_whole`):
  by default RMSE over the body / mean of the reference over the body ("body_mean", our
  reading), the body being the CT's (`body_mask`). The paper says "normalized by the range",
  but no range reading reproduces its own tables: its whole-image values are of the order of
  its organ values (Table 4: .147 whole, .091 liver, .139 bone), while a whole-body range is set
  by the hottest voxel (bladder, brain: SUV 20-40) and makes the whole-image value ~10x
  smaller than the organs' (image range, the reading before: demo .025 whole vs .420 liver).
  "body_range" and "image_range" stay selectable.
- SUVmean of an empty mask is NaN. MTV of an empty mask is 0 mL and its TLG is 0: TLG is the
  sum of SUV x voxel volume over the mask (= SUVmean x MTV when the mask is not empty), so a
  model that misses every lesion has a TLG bias of -100 % rather than a silently dropped case.
  The TLG bias is NaN when the true TLG is 0 (no true lesion) or NaN.
- Lesion detection (our definition): true and predicted lesions are connected components with
  26-connectivity (voxels touching by a face, edge or corner belong together; our choice),
  matched one to one when their IoU (or Dice, ``evaluation.lesion_match``) is above a threshold
  (default IoU > 0.1, the detection threshold of nnDetection; our choice), by the assignment
  that maximises the summed score. TP = matched pairs, FN = unmatched true lesions, FP =
  unmatched predicted lesions, so one blob over the whole body is one FP and every lesion it
  covers an FN. Precision, recall and F1 are NaN on lesion-free images (as Dice); with lesions
  but no prediction, precision is 0. Counts are defined on every image.
- autoPET volumes (the challenge's definition, 18-connectivity as its evaluation script): FP
  volume = the volume of whole predicted components that share no voxel with the truth, FN
  volume = that of whole true components that share no voxel with the prediction. The
  predicted volume on lesion-free images is its own column, so hallucinations there show.
- Organ masks are used as given: a lesion inside the liver counts toward the liver's SUVmean
  and NRMSE, as it does in the label maps the models are trained on.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage, optimize

from amdiff.evaluate.columns import CLASSES, METRICS, ORGANS
from amdiff.contracts import ORGAN_LABELS

ORGAN_IDS = ORGAN_LABELS
# 3x3x3 block of ones: face, edge and corner neighbours are connected.
CONNECTIVITY_26 = np.ones((3, 3, 3), dtype=bool)
# Face and edge neighbours, not corners: the autoPET script's cc3d connectivity=18.
CONNECTIVITY_18 = ndimage.generate_binary_structure(3, 2)
# Defaults of config evaluation.lesion_match (the config schema says why).
LESION_MATCH = {"metric": "iou", "threshold": 0.1}
MATCH_METRICS = ("iou", "dice")
# Readings of the whole-image NRMSE (config evaluation.nrmse_whole; see whole_image_nrmse).
NRMSE_WHOLE_READINGS = ("body_mean", "body_range", "image_range")
NRMSE_WHOLE_DEFAULT = "body_mean"
BODY_HU = -500.0   # body_mask's CT threshold (HU): between air and every tissue
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

def nrmse(pred: np.ndarray, ref: np.ndarray, mask: np.ndarray | None = None,
          normaliser: str = "range") -> float:
    """Root-mean-square error normalised by the range (or the mean) of the reference inside
    the region.

    NRMSE = sqrt(mean((pred - ref)^2 over mask)) / (max(ref[mask]) - min(ref[mask])), or
    / mean(ref[mask]) with ``normaliser="mean"``. ``ref`` is the high-count image ("the range
    of observed data", Sec. 3.2). Per class, pass that class's true mask: the range is then the
    class's own range, which is what gives the paper's per-class values (~0.08 for liver).
    ``mask=None`` evaluates the whole image. Returns NaN for an empty mask or a zero range (a
    constant reference, a one-voxel lesion), or a mean that is not positive.
    """
    if normaliser not in ("range", "mean"):
        raise ValueError(f"NRMSE normaliser must be range or mean, got {normaliser!r}")
    check_same_shape(pred=pred, ref=ref, mask=mask)
    pred = np.asarray(pred, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if mask is not None:
        region = _as_mask(mask)
        pred, ref = pred[region], ref[region]
    if ref.size == 0:
        return NAN
    scale = float(ref.max() - ref.min()) if normaliser == "range" else float(ref.mean())
    if scale <= 0:
        return NAN
    rmse = math.sqrt(float(np.mean((pred - ref) ** 2)))
    return rmse / scale


def body_mask(ct_hu: np.ndarray, axial_axis: int = 2, threshold_hu: float = BODY_HU) -> np.ndarray:
    """The patient's body in a CT (HU): voxels above ``threshold_hu``, each axial slice's holes
    filled.

    -500 HU (our choice) lies between air (-1000) and every soft tissue and bone; the lungs
    (about -850 to -700) and bowel gas fall below it but are enclosed by the body in an axial
    slice, so filling each slice's holes puts them back (filling in 3D would not: the airways
    join the lungs to the air outside). A patient table in the CT counts as body; its voxels
    hold almost no activity. ``axial_axis``: the array axis along the patient (2 for RAS-like
    arrays).
    """
    inside = np.moveaxis(np.asarray(ct_hu, dtype=np.float64) > threshold_hu, axial_axis, 0)
    filled = np.stack([ndimage.binary_fill_holes(s) for s in inside]) if inside.size else inside
    return np.moveaxis(filled, 0, axial_axis)


def whole_image_nrmse(pred: np.ndarray, ref: np.ndarray, body: np.ndarray | None = None,
                      reading: str = NRMSE_WHOLE_DEFAULT) -> float:
    """The whole-image NRMSE of Tables 2 and 4 under one of `NRMSE_WHOLE_READINGS`.

    - "body_mean" (default, our reading): RMSE over the body / mean of ``ref`` over the body.
      Fits the paper's own tables: whole-image values of the order of the organ values (Table
      4: .147 whole, .091 liver, .139 bone, .185 lesion). In SUV the body's mean is about 1
      (SUV divides by dose per body mass), so this is the RMSE in units of the mean body uptake,
      and the air around the patient (85 % of a whole-body grid) counts for nothing.
    - "body_range": RMSE over the body / range of ``ref`` over the body: the paper's words,
      restricted to the body. The range is the hottest voxel's SUV (bladder, brain), so the
      value is still ~10x below the organs'.
    - "image_range": RMSE over every voxel / range of ``ref`` over every voxel: the paper's
      words read literally, and this package's reading before; air voxels (error ~0) dilute
      the RMSE further (demo: .025 whole vs .420 liver).
    ``body`` (e.g. `body_mask` of the CT) is needed by the body readings.
    """
    if reading not in NRMSE_WHOLE_READINGS:
        raise ValueError(f"nrmse_whole reading must be one of {', '.join(NRMSE_WHOLE_READINGS)}, "
                         f"got {reading!r}")
    if reading == "image_range":
        return nrmse(pred, ref)
    if body is None:
        raise ValueError(f"nrmse_whole reading {reading!r} needs the body mask (the CT's); "
                         "image_range needs none")
    return nrmse(pred, ref, body, normaliser="mean" if reading == "body_mean" else "range")


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

def _components(mask: np.ndarray,
                structure: np.ndarray = CONNECTIVITY_26) -> tuple[np.ndarray, int]:
    labels, n = ndimage.label(_as_mask(mask), structure=structure)
    return labels, int(n)


def _untouched_voxels(labels: np.ndarray, n: int, other: np.ndarray) -> int:
    """Voxels of the labelled components that share no voxel with the mask ``other``."""
    touched = np.unique(labels[other])
    touched = touched[touched > 0]
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    return int(sizes[1:].sum() - sizes[touched].sum())


def autopet_volumes(pred_mask: np.ndarray, true_mask: np.ndarray,
                    voxel_volume_ml: float) -> dict[str, float]:
    """The autoPET challenge's false-positive and false-negative volumes (mL).

    As its evaluation script (lab-midas/autoPET ``val_script.py``, 18-connected components of
    ``cc3d``): FP volume = all voxels of the predicted components that share no voxel with the
    truth; FN volume = all voxels of the true components that share no voxel with the prediction.
    """
    check_same_shape(pred_mask=pred_mask, true_mask=true_mask)
    voxel_ml = _check_voxel_volume(voxel_volume_ml)
    pred, true = _as_mask(pred_mask), _as_mask(true_mask)
    pred_labels, n_pred = _components(pred, CONNECTIVITY_18)
    true_labels, n_true = _components(true, CONNECTIVITY_18)
    return {"autopet_fp_volume_ml": _untouched_voxels(pred_labels, n_pred, true) * voxel_ml,
            "autopet_fn_volume_ml": _untouched_voxels(true_labels, n_true, pred) * voxel_ml}


def check_lesion_match(metric: str, threshold: float) -> None:
    """ValueError unless ``metric`` is a match metric and ``threshold`` is in [0, 1)."""
    if metric not in MATCH_METRICS:
        raise ValueError(f"lesion match metric must be one of {', '.join(MATCH_METRICS)}, "
                         f"got {metric!r}")
    if not 0.0 <= float(threshold) < 1.0:
        raise ValueError(f"lesion match threshold must be in [0, 1), got {threshold!r}")


def component_overlaps(true_labels: np.ndarray, n_true: int, pred_labels: np.ndarray, n_pred: int,
                       metric: str = "iou") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(true id, predicted id, score) of every pair of components sharing at least one voxel.

    The score is the pair's IoU |T n P| / |T u P| or Dice 2|T n P| / (|T| + |P|), each
    component taken whole. Pairs that share no voxel (score 0) are not listed.
    """
    both = (true_labels > 0) & (pred_labels > 0)
    # One integer per (true, predicted) pair, so np.unique counts the shared voxels of each.
    keys = true_labels[both].astype(np.int64) * (n_pred + 1) + pred_labels[both]
    keys, shared = np.unique(keys, return_counts=True)
    true_ids, pred_ids = np.divmod(keys, n_pred + 1)
    true_sizes = np.bincount(true_labels.ravel(), minlength=n_true + 1)[true_ids]
    pred_sizes = np.bincount(pred_labels.ravel(), minlength=n_pred + 1)[pred_ids]
    if metric == "iou":
        score = shared / (true_sizes + pred_sizes - shared)
    else:
        score = 2.0 * shared / (true_sizes + pred_sizes)
    return true_ids, pred_ids, score


def match_lesions(pred_mask: np.ndarray, true_mask: np.ndarray,
                  metric: str = LESION_MATCH["metric"],
                  threshold: float = LESION_MATCH["threshold"]) -> tuple[int, int, list]:
    """One-to-one matching of true and predicted lesions: (n_true, n_pred, matched pairs).

    Lesions are 26-connected components (our choice). A (true, predicted) pair may match when
    its overlap score (``metric``: "iou" or "dice" of the two components) is strictly above
    ``threshold``; among those pairs the optimal assignment, the one maximising the summed
    score (Hungarian algorithm, ``scipy.optimize.linear_sum_assignment``), is taken, so each
    lesion matches at most once. Pairs come back as (true id, predicted id, score).
    """
    check_same_shape(pred_mask=pred_mask, true_mask=true_mask)
    check_lesion_match(metric, threshold)
    true_labels, n_true = _components(true_mask)
    pred_labels, n_pred = _components(pred_mask)
    true_ids, pred_ids, score = component_overlaps(true_labels, n_true, pred_labels, n_pred, metric)
    eligible = score > threshold
    true_ids, pred_ids, score = true_ids[eligible], pred_ids[eligible], score[eligible]
    # Assign on the eligible components only: the dense matrix stays small even when a
    # prediction is thousands of specks.
    rows, row_of = np.unique(true_ids, return_inverse=True)
    cols, col_of = np.unique(pred_ids, return_inverse=True)
    weight = np.zeros((rows.size, cols.size))
    weight[row_of, col_of] = score
    r, c = optimize.linear_sum_assignment(weight, maximize=True)
    # Eligible scores are > threshold >= 0; a zero weight is a forced non-pair.
    pairs = [(int(rows[i]), int(cols[j]), float(weight[i, j]))
             for i, j in zip(r, c) if weight[i, j] > 0]
    return n_true, n_pred, pairs


def detection_scores(tp: int, n_pred: int, n_true: int) -> dict[str, float]:
    """Lesion-wise precision TP / n_pred, recall TP / n_true and F1 2TP / (n_pred + n_true).

    Lesion-free image (n_true = 0): all three NaN, as Dice there (its hallucinations are
    scored by the false-positive count and volume instead). Lesions but nothing predicted:
    precision 0 (not NaN, so predicting nothing cannot lift a precision mean), recall 0, F1 0.
    """
    if n_true == 0:
        return {"lesion_precision": NAN, "lesion_recall": NAN, "lesion_f1": NAN}
    return {"lesion_precision": tp / n_pred if n_pred else 0.0,
            "lesion_recall": tp / n_true,
            "lesion_f1": 2.0 * tp / (n_pred + n_true)}


def lesion_detection(pred_mask: np.ndarray, true_mask: np.ndarray, voxel_volume_ml: float, *,
                     match_metric: str = LESION_MATCH["metric"],
                     match_threshold: float = LESION_MATCH["threshold"]) -> dict[str, float]:
    """Lesion-wise detection (`columns.DETECTION`): our matching, autoPET's volumes.

    - lesions_true, lesions_pred: 26-connected components of the truth and the prediction;
      lesions_tp = one-to-one matches of `match_lesions` (overlap score above the threshold),
      lesions_fn = lesions_true - TP, lesions_fp = lesions_pred - TP; precision, recall, F1
      by `detection_scores`.
    - autopet_fp_volume_ml, autopet_fn_volume_ml: `autopet_volumes` (18-connectivity).
    - lesion_free_fp_volume_ml: the predicted lesion volume on a lesion-free image (every
      predicted voxel is a hallucination there); NaN on an image with a true lesion.
    """
    voxel_ml = _check_voxel_volume(voxel_volume_ml)
    n_true, n_pred, pairs = match_lesions(pred_mask, true_mask, match_metric, match_threshold)
    tp = len(pairs)
    return {
        "lesions_true": n_true,
        "lesions_pred": n_pred,
        "lesions_tp": tp,
        "lesions_fp": n_pred - tp,
        "lesions_fn": n_true - tp,
        **detection_scores(tp, n_pred, n_true),
        **autopet_volumes(pred_mask, true_mask, voxel_ml),
        "lesion_free_fp_volume_ml": volume_ml(pred_mask, voxel_ml) if n_true == 0 else NAN,
    }


# ---------------------------------------------------------------------------------- one case

def class_masks(lesion: np.ndarray, organs: np.ndarray) -> dict[str, np.ndarray]:
    """Boolean mask per class of `columns.CLASSES` (lesion, then the seven organs)."""
    organs = np.asarray(organs)
    masks = {"lesion": _as_mask(lesion)}
    masks.update({name: organs == ORGAN_IDS[name] for name in ORGANS})
    return masks


def _nrmse_metrics(denoised, hc, true_masks, body, reading: str) -> dict[str, float]:
    row = {"nrmse_whole": whole_image_nrmse(denoised, hc, body, reading)}
    row.update({f"nrmse_{c}": nrmse(denoised, hc, true_masks[c]) for c in CLASSES})
    return row


def _suvmeans(image, masks, kind: str) -> dict[str, float]:
    return {f"suvmean_{c}_{kind}": suv_mean(image, masks[c]) for c in CLASSES}


def evaluate_case(hc: np.ndarray, lesion_true: np.ndarray, organs_true: np.ndarray,
                  voxel_volume_ml: float, *, denoised: np.ndarray | None = None,
                  lesion_pred: np.ndarray | None = None, organs_pred: np.ndarray | None = None,
                  quant_image: np.ndarray | None = None,
                  lesion_match: dict | None = None, body: np.ndarray | None = None,
                  nrmse_whole: str = NRMSE_WHOLE_DEFAULT) -> dict[str, float]:
    """All metrics of one case, as floats keyed (and ordered) by `columns.METRICS`.

    - NRMSE (whole image and each class, class regions from the TRUE masks): only with
      ``denoised``. The whole image's by the reading ``nrmse_whole`` (`whole_image_nrmse`;
      the body readings need ``body``, e.g. `body_mask` of the subject's CT).
    - Dice: lesion with ``lesion_pred``, organs with ``organs_pred``; detection with
      ``lesion_pred``, lesions matched by ``lesion_match`` ({"metric", "threshold"}, config
      evaluation.lesion_match; missing keys take `LESION_MATCH`).
    - "true" quantification: always, from ``hc`` with the true masks.
    - "auto" quantification: the model's own image (``quant_image`` if given, else ``denoised``)
      with the model's own predicted masks; NaN when the image or the masks are missing.
    Metrics that do not apply are NaN. Arrays of different shapes raise ValueError.
    """
    check_same_shape(hc=hc, lesion_true=lesion_true, organs_true=organs_true, denoised=denoised,
                     lesion_pred=lesion_pred, organs_pred=organs_pred, quant_image=quant_image,
                     body=body)
    voxel_ml = _check_voxel_volume(voxel_volume_ml)
    row = dict.fromkeys(METRICS, NAN)
    true_masks = class_masks(lesion_true, organs_true)

    if denoised is not None:
        row.update(_nrmse_metrics(denoised, hc, true_masks, body, nrmse_whole))

    if lesion_pred is not None:
        row["dice_lesion"] = dice(lesion_pred, true_masks["lesion"])
        match = {**LESION_MATCH, **(lesion_match or {})}
        row.update(lesion_detection(lesion_pred, true_masks["lesion"], voxel_ml,
                                    match_metric=match["metric"],
                                    match_threshold=match["threshold"]))
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
