"""QC figure (pixels land where the data are) and cohort summary (hand-computed numbers)."""

from __future__ import annotations

import math

import matplotlib.image as mpimg
import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from amdiff.errors import InputError
from amdiff.io.nifti import centered_affine, write_volume
from amdiff.qc import (cohort_markdown, cohort_summary, lesion_stats_from_masks, level_percent,
                       qc_figure, write_cohort_summary)

# Anisotropic voxels so the aspect-ratio handling is exercised: 64 mm wide, 80 mm tall.
SHAPE = (16, 10, 40)
VOXEL = (4.0, 5.0, 2.0)
AFFINE = centered_affine(SHAPE, VOXEL)
VOXEL_ML = 4.0 * 5.0 * 2.0 / 1000.0


def _subject(tmp_path, hot=(12, 5, 30), lesion_at=((3, 5, 10),), noise_sd=None, seed=0):
    """A box 'body' (SUV 1) with a liver block (SUV 2), a hot 2x2x2 cube (SUV 20) and lesions."""
    suv = np.zeros(SHAPE, np.float32)
    suv[2:14, 2:8, 2:38] = 1.0
    organs = np.zeros(SHAPE, np.uint8)
    organs[2:14, 2:8, 2:38] = 4
    organs[8:13, 3:7, 14:24] = 1  # liver
    organs[3:7, 3:7, 26:34] = 2   # lung
    suv[organs == 1] = 2.0
    i, j, k = hot
    suv[i:i + 2, j:j + 2, k:k + 2] = 20.0
    lesion = np.zeros(SHAPE, np.uint8)
    for (a, b, c) in lesion_at:
        lesion[a, b, c] = 1
    paths = {name: tmp_path / f"{name}.nii.gz" for name in ("hc", "lesion", "organs")}
    write_volume(paths["hc"], suv, AFFINE)
    write_volume(paths["lesion"], lesion, AFFINE, np.uint8)
    write_volume(paths["organs"], organs, AFFINE, np.uint8)
    lc = {}
    rng = np.random.default_rng(seed)
    for name, sd in (noise_sd or {}).items():
        noisy = np.clip(suv + rng.normal(0.0, sd, SHAPE) * (suv > 0), 0, None)
        lc[name] = tmp_path / f"{name}.nii.gz"
        write_volume(lc[name], noisy, AFFINE)
    return paths, lc, suv


def _pixel(box, i, k):
    """PNG (row, col) of the centre of voxel column (i, k) in a panel: radiological, head up."""
    x0, y0, x1, y1 = box
    col = x0 + (SHAPE[0] - 1 - i + 0.5) / SHAPE[0] * (x1 - x0)
    row = y0 + (SHAPE[2] - 1 - k + 0.5) / SHAPE[2] * (y1 - y0)
    return int(row), int(col)


def _crop(png, box):
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    return png[y0 + 2:y1 - 2, x0 + 2:x1 - 2, :3]  # skip the frame line


def _render(tmp_path, name="qc.png", **kw):
    paths, lc, suv = _subject(tmp_path, **kw)
    out = tmp_path / name
    info = qc_figure(paths["hc"], lc, paths["lesion"], paths["organs"], out, "site / sub-01")
    return info, mpimg.imread(out), out, suv


# ---------------------------------------------------------------------------- level names

@pytest.mark.parametrize("name, percent", [("p005", 5), ("p00625", 6.25), ("p0125", 12.5),
                                           ("p040", 40), ("p0167", 16.7), ("p100", 100),
                                           ("p0025", 2.5), ("p005_r1", 5)])
def test_level_percent(name, percent):
    assert level_percent(name) == pytest.approx(percent, abs=1e-12)


@pytest.mark.parametrize("name", ["5", "p05", "p5", "pabc", "p000", "p101", "lc_p005", "p0050",
                                  "p005_rx"])
def test_level_percent_rejects(name):
    with pytest.raises(InputError):
        level_percent(name)


# ---------------------------------------------------------------------------- QC figure

def test_figure_is_a_png_of_the_reported_size(tmp_path):
    info, png, out, _ = _render(tmp_path, noise_sd={"p010": 0.3})
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out.stat().st_size > 20_000
    assert png.shape[:2] == info.shape_px
    assert set(info.panels) == {"hc", "p010", "labels"}
    # Atomic write: no temporary sibling is left behind.
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_panels_keep_physical_aspect(tmp_path):
    info, _, _, _ = _render(tmp_path)
    for box in info.panels.values():
        x0, y0, x1, y1 = box
        assert (x1 - x0) / (y1 - y0) == pytest.approx(64.0 / 80.0, rel=0.02)


def test_hot_spot_is_drawn_where_it_is_and_moves_with_it(tmp_path):
    spots = []
    for n, hot in enumerate([(11, 4, 30), (3, 4, 6)]):
        d = tmp_path / f"case{n}"
        d.mkdir()
        info, png, _, _ = _render(d, hot=hot)
        box = info.panels["hc"]
        grey = png[..., :3].mean(axis=2)
        panel = _crop(png, box).mean(axis=2)
        # The hot cube (SUV 20 > window) is the darkest region of the inverted-grey MIP.
        r, c = _pixel(box, hot[0] + 0.5, hot[2] + 0.5)
        assert grey[r, c] < 0.05
        assert grey[r, c] == pytest.approx(panel.min(), abs=1e-6)
        # Outside the body the MIP is white.
        r0, c0 = _pixel(box, 0, 20)
        assert grey[r0, c0] > 0.95
        spots.append((r, c))
    # Large x (patient right) is drawn on the viewer's left; high z (head) on top.
    (r_a, c_a), (r_b, c_b) = spots
    assert c_a < c_b and r_a < r_b


def test_lesion_overlay_is_red_exactly_where_the_mask_projects(tmp_path):
    lesions = ((3, 5, 10), (12, 2, 35))
    info, png, _, _ = _render(tmp_path, lesion_at=lesions)
    box = info.panels["labels"]
    rgb = png[..., :3]
    red = (rgb[..., 0] > 0.95) & (rgb[..., 1] < 0.05) & (rgb[..., 2] < 0.05)
    for (i, _, k) in lesions:
        r, c = _pixel(box, i, k)
        assert red[r, c]
    # A liver-only column and a muscle column are not red; nor are the PET panels.
    assert not red[_pixel(box, 10, 18)]
    assert not red[_pixel(box, 6, 20)]
    x0, y0, x1, y1 = (int(v) for v in info.panels["hc"])
    assert not red[y0:y1, x0:x1].any()
    # Red area matches two projected voxels (each (x1-x0)/16 by (y1-y0)/40 pixels).
    bx0, by0, bx1, by1 = box
    expected = 2 * (bx1 - bx0) / SHAPE[0] * (by1 - by0) / SHAPE[2]
    in_panel = red[int(by0):int(by1), int(bx0):int(bx1)]
    assert in_panel.sum() == pytest.approx(expected, rel=0.1)


def test_organ_colours_differ_and_levels_are_ordered(tmp_path):
    info, png, _, _ = _render(tmp_path, noise_sd={"p040": 0.1, "p005": 0.6, "p0125": 0.3})
    # Panels ordered HC, then increasing count level, left to right.
    order = sorted(info.panels, key=lambda n: info.panels[n][0])
    assert order == ["hc", "p005", "p0125", "p040", "labels"]
    box = info.panels["labels"]
    liver = png[_pixel(box, 10, 18)][:3]
    lung = png[_pixel(box, 5, 30)][:3]
    muscle = png[_pixel(box, 6, 10)][:3]
    assert np.abs(liver - lung).max() > 0.2 and np.abs(liver - muscle).max() > 0.2
    # Noise: liver CV rises as the count level falls (sd 0.1, 0.3, 0.6 on liver SUV 2).
    cv = {n: info.stats[n]["liver_cv_pct"] for n in ("hc", "p040", "p0125", "p005")}
    assert cv["hc"] == pytest.approx(0.0, abs=1e-6)
    assert cv["p040"] < cv["p0125"] < cv["p005"]
    assert cv["p005"] == pytest.approx(30.0, rel=0.25)  # 100 * 0.6 / 2


def test_non_ras_storage_gives_the_same_picture(tmp_path):
    """A volume stored LAS (x flipped, negative x step in the affine) shows the same anatomy."""
    (tmp_path / "ras").mkdir()
    _, png, _, _ = _render(tmp_path / "ras")
    paths, _, _ = _subject(tmp_path)
    flip = np.diag([-1.0, 1.0, 1.0, 1.0])
    flip[0, 3] = SHAPE[0] - 1                       # voxel i' = n-1-i
    las = AFFINE @ flip
    for name, dtype in (("hc", np.float32), ("lesion", np.uint8), ("organs", np.uint8)):
        data = np.asanyarray(nib.load(paths[name]).dataobj)[::-1]
        write_volume(paths[name], data, las, dtype)
    qc_figure(paths["hc"], {}, paths["lesion"], paths["organs"], tmp_path / "las.png",
              "site / sub-01")
    np.testing.assert_array_equal(mpimg.imread(tmp_path / "las.png"), png)


def test_stats_total_and_window(tmp_path):
    info, _, _, suv = _render(tmp_path)
    assert info.stats["hc"]["total_suv_ml"] == pytest.approx(float(suv.sum()) * VOXEL_ML, rel=1e-6)
    assert info.suv_window == (0.0, pytest.approx(float(np.percentile(suv, 99.9)), rel=1e-6))
    paths, _, _ = _subject(tmp_path)
    fixed = qc_figure(paths["hc"], {}, paths["lesion"], paths["organs"], tmp_path / "f.png", "t",
                      suv_max=10.0)
    assert fixed.suv_window == (0.0, 10.0)


def test_mismatched_grid_names_both_files(tmp_path):
    paths, _, suv = _subject(tmp_path)
    bad = tmp_path / "p005.nii.gz"
    write_volume(bad, suv[:, :, :-2], centered_affine((16, 10, 38), VOXEL))
    with pytest.raises(InputError) as err:
        qc_figure(paths["hc"], {"p005": bad}, paths["lesion"], paths["organs"],
                  tmp_path / "x.png", "t")
    assert "p005.nii.gz" in str(err.value) and "hc.nii.gz" in str(err.value)
    shifted = AFFINE.copy()
    shifted[0, 3] += 4.0
    write_volume(paths["organs"], np.zeros(SHAPE, np.uint8), shifted, np.uint8)
    with pytest.raises(InputError, match="organs.nii.gz.*affine differs from .*hc.nii.gz"):
        qc_figure(paths["hc"], {}, paths["lesion"], paths["organs"], tmp_path / "x.png", "t")
    assert not (tmp_path / "x.png").exists()


def test_non_binary_lesion_mask_is_rejected(tmp_path):
    paths, _, _ = _subject(tmp_path)
    write_volume(paths["lesion"], np.full(SHAPE, 2, np.uint8), AFFINE, np.uint8)
    with pytest.raises(InputError, match="lesion.nii.gz.*binary"):
        qc_figure(paths["hc"], {}, paths["lesion"], paths["organs"], tmp_path / "x.png", "t")


# ---------------------------------------------------------------------------- lesion stats

def _lesion_case(tmp_path, mask, suv):
    aff = centered_affine(mask.shape, (2.0, 2.0, 2.0))  # 0.008 mL voxels
    write_volume(tmp_path / "suv.nii.gz", suv, aff)
    write_volume(tmp_path / "les.nii.gz", mask, aff, np.uint8)
    return tmp_path / "suv.nii.gz", tmp_path / "les.nii.gz", aff


def test_lesion_stats_on_hand_made_volume(tmp_path):
    mask = np.zeros((12, 12, 12), np.uint8)
    suv = np.full((12, 12, 12), 1.0, np.float32)
    mask[1:3, 1:3, 1:3] = 1; suv[1:3, 1:3, 1:3] = 5.0            # 2^3 cube, SUV 5
    mask[5:8, 5:8, 5:8] = 1; suv[5:8, 5:8, 5:8] = 3.0            # 3^3 cube, SUV 3 ...
    suv[6, 6, 6] = 7.0                                            # ... with one hotter voxel
    mask[10, 1, 10] = 1; suv[10, 1, 10] = 2.5                     # single voxel
    mask[10, 10, 1] = 1; mask[11, 11, 2] = 1                      # corner-touching pair
    suv[10, 10, 1], suv[11, 11, 2] = 4.0, 6.0
    stats = lesion_stats_from_masks(*_lesion_case(tmp_path, mask, suv)[:2])
    by_size = {s["n_voxels"]: s for s in stats}
    assert len(stats) == 4 and sorted(by_size) == [1, 2, 8, 27]   # 26-connectivity joins the pair
    assert by_size[8]["volume_ml"] == pytest.approx(8 * 0.008)
    assert (by_size[8]["suv_mean"], by_size[8]["suv_max"]) == (pytest.approx(5.0), 5.0)
    assert by_size[27]["volume_ml"] == pytest.approx(27 * 0.008)
    assert by_size[27]["suv_mean"] == pytest.approx((26 * 3.0 + 7.0) / 27)
    assert by_size[27]["suv_max"] == pytest.approx(7.0)
    assert by_size[1]["volume_ml"] == pytest.approx(0.008)
    assert by_size[1]["suv_mean"] == by_size[1]["suv_max"] == pytest.approx(2.5)
    assert by_size[2]["suv_mean"] == pytest.approx(5.0) and by_size[2]["suv_max"] == 6.0
    # Centroid of the 3^3 cube is voxel (6, 6, 6): (6 - 5.5) * 2 mm = 1 mm on each axis.
    assert by_size[27]["centroid_mm"] == pytest.approx((1.0, 1.0, 1.0))


def test_lesion_stats_empty_and_mismatch(tmp_path):
    suv_path, les_path, _ = _lesion_case(tmp_path, np.zeros((6, 6, 6), np.uint8),
                                         np.ones((6, 6, 6), np.float32))
    assert lesion_stats_from_masks(suv_path, les_path) == []
    write_volume(les_path, np.zeros((6, 6, 5), np.uint8), centered_affine((6, 6, 5), (2, 2, 2)),
                 np.uint8)
    with pytest.raises(InputError, match="les.nii.gz.*suv.nii.gz"):
        lesion_stats_from_masks(suv_path, les_path)


# ---------------------------------------------------------------------------- cohort summary

ROWS = [
    {"site": "mct", "subject": "s1", "split": "train", "events": 2_000_000, "dose_mbq": 250.0,
     "events_per_level": {"p005": 100_000, "p040": [800_000, 820_000]},
     "lesions": [{"volume_ml": 1.0, "suv_max": 5.0}, {"volume_ml": 3.0, "suv_max_true": 9.0}]},
    {"site": "mct", "subject": "s2", "split": "train", "events": 4_000_000, "dose_mbq": 260.0,
     "events_per_level": {"p005": 200_000}, "lesions": []},
    {"site": "mct", "subject": "s3", "split": "test", "events": 6_000_000, "dose_mbq": 270.0,
     "events_per_level": {"p005": 300_000, "p040": 2_400_000},
     "lesions": [{"volume_ml": 0.5, "suv_max": 4.0, "suv_mean": 2.0}]},
    {"site": "vision", "subject": "v1", "split": "test", "events": 3_000_000,
     "events_per_level": {"p0167": 500_000}, "lesions": [{"volume_ml": 2.0, "suv_max": 8.0}]},
]


def test_cohort_summary_numbers():
    df = cohort_summary(ROWS)
    assert list(df["site"]) == ["mct", "vision"]
    mct, vis = df.iloc[0], df.iloc[1]
    assert (mct.n_subjects, mct.n_train, mct.n_val, mct.n_test) == (3, 2, 0, 1)
    assert (vis.n_subjects, vis.n_train, vis.n_val, vis.n_test) == (1, 0, 0, 1)
    assert mct.events_M_mean == pytest.approx(4.0) and mct.events_M_sd == pytest.approx(2.0)
    assert mct.events_M_p005_mean == pytest.approx(0.2)
    assert mct.events_M_p005_sd == pytest.approx(0.1)
    # p040: subject means 0.81 M (two realizations) and 2.4 M.
    assert mct.events_M_p040_mean == pytest.approx((0.81 + 2.4) / 2)
    assert mct.events_M_p040_sd == pytest.approx(abs(2.4 - 0.81) / math.sqrt(2))
    assert math.isnan(mct.events_M_p0167_mean) and vis.events_M_p0167_mean == pytest.approx(0.5)
    assert mct.lesions_total == 3
    assert mct.lesions_per_subject_mean == pytest.approx(1.0)
    assert mct.lesions_per_subject_sd == pytest.approx(1.0)           # counts 2, 0, 1
    assert mct.lesion_volume_ml_mean == pytest.approx(1.5)
    assert mct.lesion_volume_ml_sd == pytest.approx(math.sqrt(((0.5) ** 2 + 1.5 ** 2 + 1.0) / 2))
    assert (mct.lesion_volume_ml_min, mct.lesion_volume_ml_max) == (0.5, 3.0)
    assert mct.lesion_suvmax_mean == pytest.approx(6.0)
    assert mct.lesion_suvmax_sd == pytest.approx(math.sqrt((1 + 9 + 4) / 2))
    assert mct.dose_mbq_mean == pytest.approx(260.0) and mct.dose_mbq_sd == pytest.approx(10.0)
    assert math.isnan(vis.dose_mbq_mean) and math.isnan(vis.events_M_sd)


def test_cohort_summary_files(tmp_path):
    df = cohort_summary(ROWS)
    write_cohort_summary(df, tmp_path / "t" / "cohort.tsv", tmp_path / "t" / "cohort.md")
    back = pd.read_csv(tmp_path / "t" / "cohort.tsv", sep="\t")
    pd.testing.assert_frame_equal(back, df, check_dtype=False, rtol=1e-5)
    md = (tmp_path / "t" / "cohort.md").read_text()
    assert md == cohort_markdown(df)
    assert "| | mct | vision |" in md
    assert "| Train/val/test subjects | 2/0/1 | 0/0/1 |" in md
    assert "260.0 ± 10.0" in md
    assert "1.50 ± 1.32 (min: 0.500, max: 3.00)" in md
    assert "5 %: 0.200 ± 0.100" in md and "16.7 %: 0.500 ± –" in md


@pytest.mark.parametrize("change, match", [
    ({"split": "holdout"}, "split must be one of"),
    ({"events": "many"}, "events must be a number"),
    ({"lesions": [{"suv_max": 3.0}]}, "no volume_ml"),
    ({"lesions": [{"volume_ml": 1.0}]}, "neither suv_max nor suv_max_true"),
    ({"subject": "s2"}, "listed twice"),
])
def test_cohort_summary_bad_rows(change, match):
    rows = [dict(ROWS[0]), dict(ROWS[1])]
    rows[0].update(change)
    with pytest.raises(InputError, match=match):
        cohort_summary(rows)
    with pytest.raises(InputError, match="no subjects"):
        cohort_summary([])
