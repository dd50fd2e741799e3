"""Evaluation metrics against values worked out by hand or from geometry."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from amdiff.evaluate.columns import CLASSES, DETECTION, DICE, METRICS, NRMSE, ORGANS
from amdiff.evaluate.metrics import (BODY_HU, NRMSE_WHOLE_READINGS, autopet_volumes, body_mask,
                                     dice, evaluate_case, lesion_detection,
                                     lesion_quantification, match_lesions, nrmse, organ_dice,
                                     suv_mean, tlg_bias_pct, volume_ml, whole_image_nrmse)
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


def body_in_air(seed=0):
    """A 40x40x48 torso (axial axis 2) in air: CT, SUV truth, high-count and denoised images.

    Soft tissue SUV 0.8, liver 2.2, lungs 0.4 (CT -800 HU, enclosed by the body), a bladder
    of SUV 30 that sets the image's range. Noise of variance proportional to SUV (Poisson-like)
    in the high-count image and, smaller, in the denoised one.
    """
    shape = (40, 40, 48)
    x, y, z = np.meshgrid(*(np.arange(n) - (n - 1) / 2 for n in shape), indexing="ij")
    body = ((x / 14) ** 2 + (y / 9) ** 2 <= 1) & (np.abs(z) < 20)
    lungs = (((np.abs(x) - 6) / 4) ** 2 + (y / 5) ** 2 <= 1) & (z > 6) & (z < 16)
    liver = ((x + 5) / 6) ** 2 + (y / 5) ** 2 + ((z - 1) / 4) ** 2 <= 1
    bladder = (x / 3) ** 2 + (y / 3) ** 2 + ((z + 15) / 3) ** 2 <= 1
    ct = np.where(body, 40.0, -1000.0)
    ct[lungs] = -800.0
    organs = np.zeros(shape, np.uint8)
    organs[liver], organs[lungs] = LIVER, LUNG
    suv = np.where(body, 0.8, 0.0)
    suv[liver], suv[lungs], suv[bladder] = 2.2, 0.4, 30.0
    rng = np.random.default_rng(seed)
    hc = suv + np.sqrt(0.01 * suv) * rng.standard_normal(shape)
    denoised = hc + np.sqrt(0.005 * suv) * rng.standard_normal(shape)
    return hc, denoised, organs, ct, body


def test_body_mask_fills_the_lungs_but_not_the_air_around_the_body():
    _, _, organs, ct, body = body_in_air()
    assert (ct[organs == LUNG] < BODY_HU).all()          # below the threshold, yet inside
    np.testing.assert_array_equal(body_mask(ct), body)
    # Another axial axis: the same body, moved with its axes.
    moved = np.moveaxis(ct, 2, 0)
    np.testing.assert_array_equal(body_mask(moved, axial_axis=0), np.moveaxis(body, 2, 0))


def test_whole_image_nrmse_readings_by_hand():
    ref = np.zeros((6, 1, 1))
    ref[1:4, 0, 0] = [1.0, 2.0, 6.0]        # body voxels 1..3 (mean 3, range 5); air around
    ref[5, 0, 0] = 0.0
    body = ref > 0
    pred = ref.copy()
    pred[1:4, 0, 0] += [0.3, -0.3, 0.3]     # RMSE over the body 0.3; over all 6 voxels sqrt(.045)
    assert whole_image_nrmse(pred, ref, body) == pytest.approx(0.3 / 3.0)          # body_mean
    assert whole_image_nrmse(pred, ref, body, "body_range") == pytest.approx(0.3 / 5.0)
    assert whole_image_nrmse(pred, ref, None, "image_range") == pytest.approx(
        math.sqrt(0.27 / 6) / 6.0)
    assert NRMSE_WHOLE_READINGS == ("body_mean", "body_range", "image_range")
    with pytest.raises(ValueError, match="body mask"):
        whole_image_nrmse(pred, ref)
    with pytest.raises(ValueError, match="one of"):
        whole_image_nrmse(pred, ref, body, "range")


def test_whole_image_nrmse_of_a_body_in_air_is_of_the_order_of_the_organ_values():
    """The paper's Table 4: .147 whole, .091 liver. Over the body and by its mean SUV the whole
    image lands among the organs; by the image's range (set by the bladder) it is ~100x lower."""
    hc, denoised, organs, ct, _ = body_in_air()
    no_lesion = np.zeros(hc.shape, np.uint8)
    rows = {reading: evaluate_case(hc, no_lesion, organs, VOXEL_ML, denoised=denoised,
                                   body=body_mask(ct), nrmse_whole=reading)
            for reading in NRMSE_WHOLE_READINGS}
    default = evaluate_case(hc, no_lesion, organs, VOXEL_ML, denoised=denoised, body=body_mask(ct))
    assert default["nrmse_whole"] == rows["body_mean"]["nrmse_whole"]
    liver, lung = rows["body_mean"]["nrmse_liver"], rows["body_mean"]["nrmse_lung"]
    assert 0.05 < liver < 0.2 and 0.05 < lung < 0.2        # organ values like the paper's
    assert 0.3 * liver < rows["body_mean"]["nrmse_whole"] < 3 * liver
    for reading in ("body_range", "image_range"):
        assert rows[reading]["nrmse_whole"] < 0.05 * liver, reading


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
    true[10, 2, 2] = true[11, 3, 3] = True  # D: corner-touching pair = one lesion (26-conn.),
    pred[10, 2, 2] = True                   #    hit on one of its two voxels (IoU 1/2)
    pred[2, 15, 15] = pred[3, 16, 16] = True  # FP: corner-touching pair = one blob
    return pred, true


def autopet_reference(true, pred, voxel_ml):
    """autoPET's false_pos_pix / false_neg_pix written out component by component, as its
    script does with cc3d, here with scipy's 18-connectivity: (FP mL, FN mL)."""
    structure_18 = ndimage.generate_binary_structure(3, 2)

    def untouched_voxels(mask, other):
        labels, n = ndimage.label(mask, structure=structure_18)
        return sum(int((labels == i).sum()) for i in range(1, n + 1) if not other[labels == i].any())

    return untouched_voxels(pred, true) * voxel_ml, untouched_voxels(true, pred) * voxel_ml


def test_lesion_detection_counts_and_volumes():
    pred, true = detection_scene()
    det = lesion_detection(pred, true, VOXEL_ML)
    assert det["lesions_true"] == 4         # A, B, C, D (D counted once under 26-connectivity)
    assert det["lesions_pred"] == 4         # the grazing cube, C's voxel, D's voxel, the FP pair
    # A is grazed at one voxel (IoU 1/53): not found; C (IoU 1) and D (IoU 1/2) are.
    assert det["lesions_tp"] == 2
    assert det["lesions_fn"] == 2           # A, B
    assert det["lesions_fp"] == 2           # the grazing cube, the corner-touching blob
    assert det["lesion_precision"] == det["lesion_recall"] == det["lesion_f1"] == 0.5
    # autoPET (18-connectivity): the FP pair is two components that touch nothing, D two
    # lesions of which (11, 3, 3) is missed; the cube touches A, so it is no FP volume.
    assert det["autopet_fp_volume_ml"] == pytest.approx(2 * VOXEL_ML)
    assert det["autopet_fn_volume_ml"] == pytest.approx((8 + 1) * VOXEL_ML)
    assert math.isnan(det["lesion_free_fp_volume_ml"])   # the image has lesions
    assert set(det) == set(DETECTION)


def test_detection_on_a_lesion_free_case_scores_false_positives():
    _, true = detection_scene()
    empty = np.zeros(true.shape, bool)
    det = lesion_detection(true, empty, VOXEL_ML)   # every predicted voxel is a false positive
    assert det["lesions_true"] == det["lesions_tp"] == det["lesions_fn"] == 0
    assert det["lesions_fp"] == det["lesions_pred"] == 4
    assert det["autopet_fp_volume_ml"] == pytest.approx(true.sum() * VOXEL_ML)
    assert det["lesion_free_fp_volume_ml"] == pytest.approx(true.sum() * VOXEL_ML)
    assert det["autopet_fn_volume_ml"] == 0.0
    # Undefined without a true lesion, as Dice; the hallucination shows in the FP columns.
    for key in ("lesion_precision", "lesion_recall", "lesion_f1"):
        assert math.isnan(det[key]), key


def test_detection_on_a_lesion_free_case_without_prediction_has_zero_fp_volume():
    empty = np.zeros((8, 8, 8), bool)
    det = lesion_detection(empty, empty, VOXEL_ML)
    assert det["lesion_free_fp_volume_ml"] == 0.0 and det["lesions_fp"] == 0
    assert math.isnan(det["lesion_f1"])


def test_detection_with_an_empty_prediction_misses_everything():
    _, true = detection_scene()
    det = lesion_detection(np.zeros(true.shape, bool), true, VOXEL_ML)
    assert det["lesions_fn"] == det["lesions_true"] == 4
    assert det["lesions_tp"] == det["lesions_fp"] == 0
    # Nothing predicted on an image with lesions: precision 0, not NaN (no reward for silence).
    assert det["lesion_precision"] == det["lesion_recall"] == det["lesion_f1"] == 0.0
    assert det["autopet_fn_volume_ml"] == pytest.approx(true.sum() * VOXEL_ML)
    assert det["autopet_fp_volume_ml"] == 0.0


def body_with_lesions(shape=(48, 48, 48)):
    """A box-shaped body filling most of the grid, with four small lesions inside."""
    body = np.zeros(shape, bool)
    body[2:-2, 4:-4, 2:-2] = True
    true = np.zeros(shape, bool)
    for corner in ((8, 10, 8), (20, 30, 12), (35, 15, 30), (12, 36, 40)):
        true[tuple(slice(c, c + 2) for c in corner)] = True   # 2x2x2 voxels each
    return body, true


def test_segmenting_the_whole_body_finds_no_lesion():
    """nnMamba's demo failure: one blob over the body touches every lesion but matches none."""
    body, true = body_with_lesions()
    det = lesion_detection(body, true, VOXEL_ML)
    assert det["lesions_true"] == 4 and det["lesions_pred"] == 1
    assert det["lesions_tp"] == 0 and det["lesions_fn"] == 4 and det["lesions_fp"] == 1
    assert det["lesion_precision"] == det["lesion_recall"] == det["lesion_f1"] == 0.0


def test_segmenting_the_whole_body_in_pieces_has_recall_1_but_precision_and_f1_near_0():
    """Every lesion segmented exactly, and the rest of the body labelled too, as 5^3 blocks
    one voxel apart (kept a voxel away from the lesions): recall 1, precision and F1 ~ 0."""
    body, true = body_with_lesions()
    grid = np.indices(body.shape) % 6 < 5                   # 5-voxel blocks, 1-voxel gaps
    near_lesion = ndimage.binary_dilation(true, np.ones((3, 3, 3), bool), iterations=2)
    pred = true | (body & grid.all(axis=0) & ~near_lesion)
    assert pred.sum() > 0.5 * body.sum()                    # more than half the body is "lesion"
    det = lesion_detection(pred, true, VOXEL_ML)
    assert det["lesion_recall"] == 1.0
    assert det["lesion_precision"] < 0.01
    assert det["lesion_f1"] < 0.02


def test_exact_prediction_has_precision_recall_and_f1_of_1():
    _, true = detection_scene()
    det = lesion_detection(true, true, VOXEL_ML)
    assert det["lesion_precision"] == det["lesion_recall"] == det["lesion_f1"] == 1.0
    assert det["lesions_tp"] == det["lesions_true"] == 4
    assert det["lesions_fp"] == det["lesions_fn"] == 0
    assert det["autopet_fp_volume_ml"] == det["autopet_fn_volume_ml"] == 0.0


@pytest.mark.parametrize("metric", ["iou", "dice"])
def test_small_lesion_touched_by_a_large_blob_is_not_a_true_positive(metric):
    true = np.zeros((16, 16, 16), bool)
    true[5:7, 5:7, 5:7] = True              # 8 voxels
    blob = np.zeros_like(true)
    blob[2:12, 2:12, 2:12] = True           # 1000 voxels around it: IoU .008, Dice .016
    det = lesion_detection(blob, true, VOXEL_ML, match_metric=metric, match_threshold=0.1)
    assert det["lesions_tp"] == 0 and det["lesions_fn"] == 1 and det["lesions_fp"] == 1
    # Threshold 0 is "any overlap", still one to one: then it counts.
    det = lesion_detection(blob, true, VOXEL_ML, match_metric=metric, match_threshold=0.0)
    assert det["lesions_tp"] == 1 and det["lesions_fp"] == 0


def test_lesion_match_threshold_is_strict_and_the_metric_selectable():
    true = np.zeros((12, 12, 12), bool)
    true[2:6, 2:6, 2:6] = True              # 64 voxels
    pred = np.zeros_like(true)
    pred[2:6, 2:6, 2:4] = True              # its half: IoU 1/2, Dice 2/3
    assert lesion_detection(pred, true, VOXEL_ML, match_threshold=0.5)["lesions_tp"] == 0
    assert lesion_detection(pred, true, VOXEL_ML, match_threshold=0.49)["lesions_tp"] == 1
    assert lesion_detection(pred, true, VOXEL_ML, match_metric="dice",
                            match_threshold=0.6)["lesions_tp"] == 1


def test_one_predicted_lesion_matches_at_most_one_true_lesion():
    true = np.zeros((16, 16, 16), bool)
    true[4:7, 4:7, 2:5] = True              # two 27-voxel lesions
    true[4:7, 4:7, 8:11] = True
    pred = np.zeros_like(true)
    pred[4:7, 4:7, 2:11] = True             # one bar over both: IoU 27/81 with each
    det = lesion_detection(pred, true, VOXEL_ML)
    assert det["lesions_tp"] == 1 and det["lesions_fn"] == 1 and det["lesions_fp"] == 0
    assert det["lesion_precision"] == 1.0 and det["lesion_recall"] == 0.5


def test_matching_maximises_the_summed_overlap():
    """Rods along y: greedy-by-best-pair takes (T1, P1), IoU .43, and leaves T2 alone; the
    optimal assignment takes (T1, P2) .30 + (T2, P1) .27 and finds both lesions."""
    true = np.zeros((5, 20, 5), bool)
    pred = np.zeros_like(true)
    true[2, 0:10, 2] = True                 # T1: y 0-9
    true[2, 11:15, 2] = True                # T2: y 11-14
    pred[2, 4:14, 2] = True                 # P1: y 4-13, 6 voxels of T1 and 3 of T2
    pred[2, 0:3, 2] = True                  # P2: y 0-2, 3 voxels of T1
    n_true, n_pred, pairs = match_lesions(pred, true, "iou", 0.1)
    assert (n_true, n_pred) == (2, 2)
    assert sorted((t, p) for t, p, _ in pairs) == [(1, 1), (2, 2)]   # labels run along y
    assert [score for _, _, score in sorted(pairs)] == pytest.approx([3 / 10, 3 / 11])
    assert lesion_detection(pred, true, VOXEL_ML)["lesions_tp"] == 2


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_autopet_volumes_equal_the_challenge_definition(seed):
    rng = np.random.default_rng(seed)
    true = ndimage.binary_opening(rng.random((24, 24, 24)) < 0.2) | (rng.random((24, 24, 24)) < 0.01)
    pred = ndimage.binary_opening(rng.random((24, 24, 24)) < 0.2) | (rng.random((24, 24, 24)) < 0.01)
    vols = autopet_volumes(pred, true, VOXEL_ML)
    fp, fn = autopet_reference(true, pred, VOXEL_ML)
    assert vols["autopet_fp_volume_ml"] == pytest.approx(fp)
    assert vols["autopet_fn_volume_ml"] == pytest.approx(fn)


def test_autopet_volumes_use_18_connectivity_where_26_would_differ():
    """Components touching only at a corner: one under 26-connectivity, two under 18."""
    true = np.zeros((12, 12, 12), bool)
    pred = np.zeros_like(true)
    true[2:4, 2:4, 2:4] = pred[2:4, 2:4, 2:4] = True   # a lesion, found ...
    pred[4:6, 4:6, 4:6] = True                          # ... plus a blob at its corner
    true[7:9, 7:9, 7:9] = pred[7:9, 7:9, 7:9] = True    # a lesion, found ...
    true[9:11, 9:11, 9:11] = True                       # ... with a corner neighbour, missed
    vols = autopet_volumes(pred, true, VOXEL_ML)
    assert (vols["autopet_fp_volume_ml"], vols["autopet_fn_volume_ml"]) == pytest.approx(
        autopet_reference(true, pred, VOXEL_ML))
    assert vols["autopet_fp_volume_ml"] == pytest.approx(8 * VOXEL_ML)
    assert vols["autopet_fn_volume_ml"] == pytest.approx(8 * VOXEL_ML)
    # The same definition with 26-connectivity sees no FP or FN volume at all.
    labels_26, _ = ndimage.label(pred, structure=np.ones((3, 3, 3)))
    assert all(true[labels_26 == i].any() for i in range(1, labels_26.max() + 1))


def test_lesion_match_settings_are_checked():
    _, true = detection_scene()
    with pytest.raises(ValueError, match="metric"):
        lesion_detection(true, true, VOXEL_ML, match_metric="hausdorff")
    with pytest.raises(ValueError, match="threshold"):
        lesion_detection(true, true, VOXEL_ML, match_threshold=1.0)


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
    body = organs > 0                       # the phantom's body: its labelled voxels
    row = evaluate_case(hc, lesion, organs, VOXEL_ML, denoised=denoised, body=body)
    assert row["nrmse_whole"] == pytest.approx(0.2 / hc[body].mean())   # body_mean, the default
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
                        organs_pred=organs, body=organs > 0)
    assert row["nrmse_whole"] == 0.0
    for c in CLASSES:
        assert row[f"dice_{c}"] == 1.0
        assert row[f"suvmean_{c}_auto"] == pytest.approx(row[f"suvmean_{c}_true"])
    # The single-voxel lesion has no range, but the 9-voxel lesion class does.
    assert all(row[f"nrmse_{c}"] == 0.0 for c in CLASSES)
    assert row["tlg_bias_pct"] == 0.0
    assert row["lesions_fp"] == row["lesions_fn"] == row["autopet_fp_volume_ml"] == 0.0
    assert row["lesion_f1"] == 1.0


def test_model_that_misses_every_lesion_has_minus_100_percent_bias():
    hc, lesion, organs = phantom()
    row = evaluate_case(hc, lesion, organs, VOXEL_ML, denoised=hc,
                        lesion_pred=np.zeros_like(lesion), organs_pred=organs, body=organs > 0)
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
    row = evaluate_case(hc, no_lesion, organs, VOXEL_ML, denoised=hc, lesion_pred=blob,
                        body=organs > 0)
    assert math.isnan(row["dice_lesion"])
    assert math.isnan(row["nrmse_lesion"])
    assert math.isnan(row["tlg_bias_pct"])
    assert row["tlg_true"] == 0.0
    assert row["lesions_true"] == 0.0 and row["lesions_fp"] == 1.0
    assert row["autopet_fp_volume_ml"] == pytest.approx(4 * VOXEL_ML)
    assert row["lesion_free_fp_volume_ml"] == pytest.approx(4 * VOXEL_ML)
    assert math.isnan(row["lesion_f1"]) and math.isnan(row["lesion_recall"])


def test_evaluate_case_matches_lesions_as_configured():
    hc, lesion, organs = phantom()
    half = lesion.copy()
    half[3:5, 3:5, 3] = 0                   # half of the 8-voxel lesion: IoU 1/2, Dice 2/3
    row = evaluate_case(hc, lesion, organs, VOXEL_ML, lesion_pred=half)
    assert row["lesions_tp"] == 2.0         # default IoU > 0.1
    row = evaluate_case(hc, lesion, organs, VOXEL_ML, lesion_pred=half,
                        lesion_match={"metric": "dice", "threshold": 0.7})
    assert row["lesions_tp"] == 1.0 and row["lesions_fn"] == 1.0 and row["lesions_fp"] == 1.0


@pytest.mark.parametrize("name", ["denoised", "lesion_pred", "organs_pred", "quant_image"])
def test_evaluate_case_shape_mismatch_names_the_array(name):
    hc, lesion, organs = phantom()
    with pytest.raises(ValueError, match=name):
        evaluate_case(hc, lesion, organs, VOXEL_ML, **{name: np.zeros((16, 16, 15))})


def test_evaluate_case_true_masks_must_match_the_image():
    hc, lesion, organs = phantom()
    with pytest.raises(ValueError, match="organs_true"):
        evaluate_case(hc, lesion, organs[:, :, :-1], VOXEL_ML)
