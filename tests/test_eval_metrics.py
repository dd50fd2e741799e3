"""Evaluation metrics against values worked out by hand or from geometry."""

from __future__ import annotations

import math

import numpy as np
import pytest

from amdiff.evaluate.columns import CLASSES, DETECTION, DICE, METRICS, NRMSE, ORGANS
from amdiff.evaluate.metrics import (dice, evaluate_case, lesion_detection, lesion_quantification,
                                     nrmse, organ_dice, suv_mean, tlg_bias_pct, volume_ml)
from amdiff.io.nifti import Volume, centered_affine

# Anisotropic voxels, so a swapped axis or a wrong voxel volume shows.
VOXEL_MM = (2.0, 2.0, 3.0)
VOXEL_ML = 2.0 * 2.0 * 3.0 / 1000.0
LIVER, LUNG, BONE, MUSCLE, KIDNEY, SPLEEN, AORTA = range(1, 8)


def sphere_mask(shape, voxel_mm, radius_mm):
    """Voxels whose centre lies within radius_mm of the grid centre."""
    axes = [(np.arange(n) - (n - 1) / 2.0) * v for n, v in zip(shape, voxel_mm)]
    x, y, z = np.meshgrid(*axes, indexing="ij")
    return x**2 + y**2 + z**2 <= radius_mm**2


# ---------------------------------------------------------------------------------- quantification

def test_voxel_volume_used_here_matches_the_nifti_volume_class():
    vol = Volume(np.zeros((4, 4, 4)), centered_affine((4, 4, 4), VOXEL_MM))
    assert vol.voxel_volume_ml == pytest.approx(VOXEL_ML)


def test_sphere_mtv_suvmean_and_tlg():
    radius = 15.0
    mask = sphere_mask((24, 24, 16), VOXEL_MM, radius)
    image = np.where(mask, 5.0, 1.0)  # SUV 5 lesion in SUV 1 background

    quant = lesion_quantification(image, mask, VOXEL_ML)

    assert quant["mtv_ml"] == mask.sum() * VOXEL_ML
    assert quant["mtv_ml"] == volume_ml(mask, VOXEL_ML)
    sphere_ml = 4.0 / 3.0 * math.pi * radius**3 / 1000.0
    assert quant["mtv_ml"] == pytest.approx(sphere_ml, rel=0.05)
    assert quant["suvmean"] == pytest.approx(5.0)
    assert quant["tlg"] == pytest.approx(5.0 * quant["mtv_ml"])
    assert suv_mean(image, mask) == pytest.approx(5.0)
    assert suv_mean(image, ~mask) == pytest.approx(1.0)


def test_tlg_bias_of_a_prediction_with_10_percent_higher_suv():
    mask = sphere_mask((24, 24, 16), VOXEL_MM, 12.0)
    hc = np.where(mask, 5.0, 1.0)
    true = lesion_quantification(hc, mask, VOXEL_ML)
    auto = lesion_quantification(1.1 * hc, mask, VOXEL_ML)
    assert tlg_bias_pct(auto["tlg"], true["tlg"]) == pytest.approx(10.0)


def test_tlg_bias_of_a_prediction_covering_half_the_lesion():
    hc = np.full((8, 8, 8), 1.0)
    lesion = np.zeros(hc.shape, bool)
    lesion[2:6, 2:6, 2:6] = True
    hc[lesion] = 4.0
    half = lesion.copy()
    half[4:6] = False  # 32 of the 64 voxels
    true = lesion_quantification(hc, lesion, VOXEL_ML)
    auto = lesion_quantification(hc, half, VOXEL_ML)
    assert auto["mtv_ml"] == pytest.approx(true["mtv_ml"] / 2)
    assert tlg_bias_pct(auto["tlg"], true["tlg"]) == pytest.approx(-50.0)


def test_empty_lesion_mask_quantification():
    image = np.full((4, 4, 4), 3.0)
    empty = np.zeros(image.shape, bool)
    quant = lesion_quantification(image, empty, VOXEL_ML)
    assert quant["mtv_ml"] == 0.0
    assert quant["tlg"] == 0.0          # no lesion, no glycolysis: a miss is a -100 % bias
    assert math.isnan(quant["suvmean"])
    assert math.isnan(suv_mean(image, empty))


def test_tlg_bias_edge_cases():
    assert tlg_bias_pct(0.0, 20.0) == pytest.approx(-100.0)
    assert tlg_bias_pct(30.0, 20.0) == pytest.approx(50.0)
    assert math.isnan(tlg_bias_pct(5.0, 0.0))
    assert math.isnan(tlg_bias_pct(5.0, float("nan")))


@pytest.mark.parametrize("bad", [0.0, -0.012, float("nan"), float("inf")])
def test_voxel_volume_must_be_positive(bad):
    with pytest.raises(ValueError, match="voxel_volume_ml"):
        volume_ml(np.ones((2, 2, 2)), bad)


# ---------------------------------------------------------------------------------- NRMSE

def ramp(shape, top):
    """Values rising linearly from 0 to `top` along the first axis."""
    line = np.linspace(0.0, top, shape[0])
    return np.broadcast_to(line[:, None, None], shape).copy()


@pytest.mark.parametrize("offset", [0.5, -2.0])
def test_nrmse_constant_offset_is_offset_over_range(offset):
    ref = ramp((11, 4, 3), 8.0)
    assert nrmse(ref + offset, ref) == pytest.approx(abs(offset) / 8.0)


def test_nrmse_of_identical_images_is_zero():
    ref = ramp((5, 5, 5), 3.0)
    assert nrmse(ref, ref) == 0.0


def test_nrmse_in_a_mask_uses_the_range_inside_the_mask():
    ref = ramp((11, 4, 3), 100.0)          # 0, 10, ..., 100 along axis 0
    mask = np.zeros(ref.shape, bool)
    mask[2:5] = True                        # reference values 20..40: range 20
    pred = ref.copy()
    pred[mask] += 3.0
    pred[~mask] += 50.0                     # errors outside the mask must not count
    assert nrmse(pred, ref, mask) == pytest.approx(3.0 / 20.0)


def test_nrmse_rms_of_mixed_errors():
    ref = np.zeros((2, 1, 1))
    ref[1] = 4.0                            # range 4
    pred = ref + np.array([3.0, -1.0])[:, None, None]  # rms = sqrt((9 + 1) / 2)
    assert nrmse(pred, ref) == pytest.approx(math.sqrt(5.0) / 4.0)


def test_nrmse_undefined_cases_are_nan():
    ref = np.full((4, 4, 4), 2.0)
    assert math.isnan(nrmse(ref + 1.0, ref))                        # zero range
    assert math.isnan(nrmse(ref, ref, np.zeros(ref.shape, bool)))   # empty mask
    one_voxel = np.zeros(ref.shape, bool)
    one_voxel[1, 2, 3] = True
    varied = ramp((4, 4, 4), 9.0)
    # One voxel has no range of its own, however wrong the prediction is.
    assert math.isnan(nrmse(varied + 5.0, varied, one_voxel))
    assert math.isnan(nrmse(varied, varied, one_voxel))


def test_nrmse_shape_mismatch_names_the_arrays():
    with pytest.raises(ValueError, match="pred.*ref|ref.*pred"):
        nrmse(np.zeros((3, 3, 3)), np.zeros((3, 3, 4)))


# ---------------------------------------------------------------------------------- Dice

def test_dice_of_two_overlapping_cubes():
    a = np.zeros((8, 8, 8), bool)
    b = np.zeros((8, 8, 8), bool)
    a[0:4, 0:4, 0:4] = True                 # 64 voxels
    b[2:6, 2:6, 2:6] = True                 # 64 voxels, overlap 2x2x2 = 8
    assert dice(a, b) == pytest.approx(2 * 8 / (64 + 64))
    assert dice(b, a) == dice(a, b)
    assert dice(a, a) == 1.0


def test_dice_empty_conventions():
    empty = np.zeros((4, 4, 4), bool)
    full = np.ones((4, 4, 4), bool)
    assert math.isnan(dice(empty, empty))   # undefined: no truth
    assert math.isnan(dice(full, empty))    # hallucination on an empty case: judged by FP volume
    assert dice(empty, full) == 0.0


def test_dice_treats_label_values_above_zero_as_inside():
    a = np.zeros((4, 4, 4), np.uint8)
    a[:2] = 1
    assert dice(a * 3, a) == 1.0


def test_organ_dice_per_class():
    truth = np.zeros((10, 10, 10), np.uint8)
    truth[0:4, 0:4, 0:4] = LIVER            # 64
    truth[6:10, 0:4, 0:4] = LUNG            # 64
    truth[0:2, 6:8, 6:8] = SPLEEN           # 8
    pred = np.zeros_like(truth)
    pred[0:4, 0:4, 0:4] = LIVER             # perfect
    pred[6:10, 0:4, 0:2] = LUNG             # half of the lung: 2*32/(32+64)
    pred[5, 5, 5] = KIDNEY                  # kidney absent from truth
    # spleen missed entirely
    scores = organ_dice(pred, truth)
    assert tuple(scores) == ORGANS
    assert scores["liver"] == 1.0
    assert scores["lung"] == pytest.approx(2 * 32 / (32 + 64))
    assert scores["spleen"] == 0.0
    for absent in ("bone", "muscle", "kidney", "aorta"):
        assert math.isnan(scores[absent])


# ---------------------------------------------------------------------------------- detection

def detection_scene():
    shape = (20, 20, 20)
    true = np.zeros(shape, bool)
    pred = np.zeros(shape, bool)
    true[2:5, 2:5, 2:5] = True              # A: 27 voxels, grazed by a larger prediction
    pred[4:7, 4:7, 4:7] = True              #    overlapping A at (4, 4, 4) only
    true[10:12, 10:12, 10:12] = True        # B: 8 voxels, missed
    true[17, 17, 17] = True                 # C: single voxel, hit exactly
    pred[17, 17, 17] = True
    true[10, 2, 2] = true[11, 3, 3] = True  # D: corner-touching pair = one lesion,
    pred[10, 2, 2] = True                   #    hit on one of its two voxels
    pred[2, 15, 15] = pred[3, 16, 16] = True  # FP: corner-touching pair = one blob
    return pred, true


def test_lesion_detection_counts_and_volumes():
    pred, true = detection_scene()
    det = lesion_detection(pred, true, VOXEL_ML)
    assert det["lesions_true"] == 4         # A, B, C, D (D counted once under 26-connectivity)
    assert det["lesions_tp"] == 3           # A, C, D
    assert det["lesions_fn"] == 1           # B
    assert det["lesions_fp"] == 1           # the corner-touching blob
    # Whole untouched components only: the prediction's 26 voxels outside A are not "FP volume".
    assert det["fp_volume_ml"] == pytest.approx(2 * VOXEL_ML)
    assert det["fn_volume_ml"] == pytest.approx(8 * VOXEL_ML)
    assert set(det) == set(DETECTION)


def test_detection_on_a_lesion_free_case_scores_false_positives():
    _, true = detection_scene()
    empty = np.zeros(true.shape, bool)
    det = lesion_detection(true, empty, VOXEL_ML)   # every predicted voxel is a false positive
    assert det["lesions_true"] == det["lesions_tp"] == det["lesions_fn"] == 0
    assert det["lesions_fp"] == 4
    assert det["fp_volume_ml"] == pytest.approx(true.sum() * VOXEL_ML)
    assert det["fn_volume_ml"] == 0.0


def test_detection_with_an_empty_prediction_misses_everything():
    _, true = detection_scene()
    det = lesion_detection(np.zeros(true.shape, bool), true, VOXEL_ML)
    assert det["lesions_fn"] == det["lesions_true"] == 4
    assert det["lesions_tp"] == det["lesions_fp"] == 0
    assert det["fn_volume_ml"] == pytest.approx(true.sum() * VOXEL_ML)
    assert det["fp_volume_ml"] == 0.0


# ---------------------------------------------------------------------------------- one case

def phantom(seed=0):
    """A 16^3 case: every organ class present, two lesions in the liver, noisy uptake."""
    rng = np.random.default_rng(seed)
    organs = np.zeros((16, 16, 16), np.uint8)
    organs[1:15, 1:15, 1:15] = MUSCLE
    organs[2:8, 2:8, 2:8] = LIVER
    organs[9:14, 2:7, 2:8] = LUNG
    organs[2:5, 10:14, 2:6] = BONE
    organs[10:13, 10:13, 2:5] = KIDNEY
    organs[6:9, 10:13, 9:12] = SPLEEN
    organs[11:13, 11:13, 8:14] = AORTA
    lesion = np.zeros(organs.shape, np.uint8)
    lesion[3:5, 3:5, 3:5] = 1               # 8 voxels
    lesion[6, 6, 6] = 1                     # a single-voxel lesion
    base = {0: 0.1, LIVER: 2.0, LUNG: 0.5, BONE: 1.5, MUSCLE: 0.8, KIDNEY: 3.0, SPLEEN: 1.8,
            AORTA: 1.6}
    hc = np.vectorize(base.get)(organs).astype(np.float64)
    hc[lesion > 0] = 8.0
    hc += rng.normal(0.0, 0.1, hc.shape)    # every class has a non-zero range
    return hc, lesion, organs


def test_evaluate_case_keys_are_the_metric_columns():
    hc, lesion, organs = phantom()
    row = evaluate_case(hc, lesion, organs, VOXEL_ML)
    assert tuple(row) == METRICS
    assert all(isinstance(v, float) for v in row.values())


def test_true_quantification_is_always_computed():
    hc, lesion, organs = phantom()
    row = evaluate_case(hc, lesion, organs, VOXEL_ML)
    assert row["mtv_true_ml"] == pytest.approx(9 * VOXEL_ML)
    assert row["tlg_true"] == pytest.approx(hc[lesion > 0].sum() * VOXEL_ML)
    assert row["suvmean_liver_true"] == pytest.approx(hc[organs == LIVER].mean())
    assert row["suvmean_lesion_true"] == pytest.approx(hc[lesion > 0].mean())
    for key in (*NRMSE, *DICE, *DETECTION, "mtv_auto_ml", "tlg_auto", "tlg_bias_pct"):
        assert math.isnan(row[key]), key


def test_denoiser_only_case_has_nrmse_but_no_dice_or_auto_values():
    hc, lesion, organs = phantom()
    denoised = hc + 0.2
    row = evaluate_case(hc, lesion, organs, VOXEL_ML, denoised=denoised)
    assert row["nrmse_whole"] == pytest.approx(0.2 / (hc.max() - hc.min()))
    liver = hc[organs == LIVER]
    assert row["nrmse_liver"] == pytest.approx(0.2 / (liver.max() - liver.min()))
    assert all(math.isfinite(row[f"nrmse_{c}"]) for c in CLASSES)
    for key in (*DICE, *DETECTION, "mtv_auto_ml", "tlg_auto", "tlg_bias_pct"):
        assert math.isnan(row[key]), key
    assert all(math.isnan(row[f"suvmean_{c}_auto"]) for c in CLASSES)


def test_segmenter_with_quant_image_gives_auto_values_without_nrmse():
    hc, lesion, organs = phantom()
    quant_image = 1.1 * hc                  # e.g. its input image: 10 % higher everywhere
    half_liver = organs.copy()
    half_liver[2:5][half_liver[2:5] == LIVER] = MUSCLE  # predicts half of the liver (108 voxels)
    row = evaluate_case(hc, lesion, organs, VOXEL_ML, lesion_pred=lesion, organs_pred=half_liver,
                        quant_image=quant_image)
    assert all(math.isnan(row[k]) for k in NRMSE)
    assert row["dice_lesion"] == 1.0
    assert row["dice_liver"] == pytest.approx(2 * 108 / (108 + 216))
    assert row["mtv_auto_ml"] == pytest.approx(row["mtv_true_ml"])
    assert row["tlg_bias_pct"] == pytest.approx(10.0)
    assert row["suvmean_lesion_auto"] == pytest.approx(1.1 * row["suvmean_lesion_true"])
    assert row["suvmean_lung_auto"] == pytest.approx(1.1 * row["suvmean_lung_true"])
    assert row["suvmean_liver_auto"] == pytest.approx(1.1 * hc[half_liver == LIVER].mean())
    assert row["lesions_tp"] == row["lesions_true"] == 2.0


def test_segmenter_without_an_image_has_no_auto_quantification():
    hc, lesion, organs = phantom()
    row = evaluate_case(hc, lesion, organs, VOXEL_ML, lesion_pred=lesion, organs_pred=organs)
    assert row["dice_lesion"] == 1.0
    for c in CLASSES:
        assert math.isnan(row[f"suvmean_{c}_auto"])
    assert math.isnan(row["mtv_auto_ml"]) and math.isnan(row["tlg_bias_pct"])


def test_perfect_prediction():
    hc, lesion, organs = phantom()
    row = evaluate_case(hc, lesion, organs, VOXEL_ML, denoised=hc, lesion_pred=lesion,
                        organs_pred=organs)
    assert row["nrmse_whole"] == 0.0
    for c in CLASSES:
        assert row[f"dice_{c}"] == 1.0
        assert row[f"suvmean_{c}_auto"] == pytest.approx(row[f"suvmean_{c}_true"])
    # The single-voxel lesion has no range, but the 9-voxel lesion class does.
    assert all(row[f"nrmse_{c}"] == 0.0 for c in CLASSES)
    assert row["tlg_bias_pct"] == 0.0
    assert row["lesions_fp"] == row["lesions_fn"] == row["fp_volume_ml"] == 0.0


def test_model_that_misses_every_lesion_has_minus_100_percent_bias():
    hc, lesion, organs = phantom()
    row = evaluate_case(hc, lesion, organs, VOXEL_ML, denoised=hc,
                        lesion_pred=np.zeros_like(lesion), organs_pred=organs)
    assert row["dice_lesion"] == 0.0
    assert row["tlg_auto"] == 0.0 and row["mtv_auto_ml"] == 0.0
    assert row["tlg_bias_pct"] == pytest.approx(-100.0)
    assert math.isnan(row["suvmean_lesion_auto"])
    assert row["lesions_fn"] == 2.0


def test_lesion_free_case_leaves_lesion_scores_undefined_but_counts_false_positives():
    hc, _, organs = phantom()
    no_lesion = np.zeros(organs.shape, np.uint8)
    blob = no_lesion.copy()
    blob[3:5, 3:5, 3] = 1                   # 4 hallucinated voxels
    row = evaluate_case(hc, no_lesion, organs, VOXEL_ML, denoised=hc, lesion_pred=blob)
    assert math.isnan(row["dice_lesion"])
    assert math.isnan(row["nrmse_lesion"])
    assert math.isnan(row["tlg_bias_pct"])
    assert row["tlg_true"] == 0.0
    assert row["lesions_true"] == 0.0 and row["lesions_fp"] == 1.0
    assert row["fp_volume_ml"] == pytest.approx(4 * VOXEL_ML)


@pytest.mark.parametrize("name", ["denoised", "lesion_pred", "organs_pred", "quant_image"])
def test_evaluate_case_shape_mismatch_names_the_array(name):
    hc, lesion, organs = phantom()
    with pytest.raises(ValueError, match=name):
        evaluate_case(hc, lesion, organs, VOXEL_ML, **{name: np.zeros((16, 16, 15))})


def test_evaluate_case_true_masks_must_match_the_image():
    hc, lesion, organs = phantom()
    with pytest.raises(ValueError, match="organs_true"):
        evaluate_case(hc, lesion, organs[:, :, :-1], VOXEL_ML)
