"""Tests for the parametric whole-body FDG PET/CT phantom (amdiff.phantom)."""

import time

import numpy as np
import pytest

from amdiff.errors import InputError
from amdiff.phantom import generate_subject, hu_to_mu_511, phantom_lesion_summary
from amdiff.phantom.lesions import REGION_WEIGHTS, sample_volume_ml
from amdiff.phantom.raster import Grid, occupancy
from amdiff.phantom.shapes import Ellipsoid, Tube, ZTube, rotation_matrix
from amdiff.phantom.tissue import ORGAN_SUV_RANGE, TISSUES, sample_tissues

DEMO = ((48, 48, 96), 8.0)          # config/config.yaml demo grid
FINE = ((96, 96, 192), 4.0)         # same field of view at 4 mm
LABEL = {"liver": 1, "lung": 2, "bone": 3, "muscle": 4, "kidney": 5, "spleen": 6, "aorta": 7}
# Plausible adult volumes (L) of what lies in the field of view (lungs at free breathing).
VOLUME_RANGE_L = {"liver": (0.9, 2.2), "lung": (2.5, 7.0), "kidney": (0.15, 0.6),
                  "spleen": (0.06, 0.45), "aorta": (0.08, 0.4), "bone": (0.8, 4.0),
                  "muscle": (5.0, 25.0)}


@pytest.fixture(scope="module")
def demo():
    return generate_subject(*DEMO, seed=11)


@pytest.fixture(scope="module")
def fine():
    return generate_subject(*FINE, seed=11)


# ---------------------------------------------------------------- CT -> mu conversion
def test_hu_to_mu_hand_computed_values():
    mu = hu_to_mu_511(np.array([-1000.0, 0.0, 1000.0, -1200.0]))
    assert mu.dtype == np.float32
    assert mu[0] == pytest.approx(0.0, abs=1e-7)                 # air
    assert mu[1] == pytest.approx(0.096, abs=1e-6)               # water
    assert mu[2] == pytest.approx(5.10e-5 * 2000 + 4.71e-2, rel=1e-5)   # bone, 120 kVp: 0.1491
    assert mu[3] == 0.0                                          # below air clipped
    assert hu_to_mu_511(1000.0, kvp=140) == pytest.approx(5.64e-5 * 2000 + 4.08e-2, rel=1e-5)
    # the two segments meet at the 120 kVp break point (47 HU) and the curve is monotonic
    lo, hi = hu_to_mu_511(np.array([46.999, 47.001]))
    assert abs(hi - lo) < 5e-5
    ramp = hu_to_mu_511(np.linspace(-1000, 2000, 301))
    assert np.all(np.diff(ramp) > 0)
    with pytest.raises(ValueError):
        hu_to_mu_511(0.0, kvp=99)


# ---------------------------------------------------------------- rasterisation
def test_partial_volume_occupancy_matches_analytic_volumes():
    g = Grid((24, 24, 24), (8.0, 8.0, 8.0))
    sphere = Ellipsoid([3.0, -5.0, 1.0], [30.0, 30.0, 30.0])
    sl, occ = occupancy(sphere, g, 5)
    assert occ.sum() * 0.512 == pytest.approx(4 / 3 * np.pi * 30 ** 3 / 1000, rel=0.01)
    rot = Ellipsoid([0, 0, 0], [50.0, 20.0, 12.0], rotation_matrix(20, 35, -50))
    assert occupancy(rot, g, 5)[1].sum() * 0.512 == pytest.approx(rot.volume_mm3 / 1000, rel=0.02)
    cyl = ZTube([-40.0, 40.0], 35.0, 25.0)
    assert occupancy(cyl, g, 5)[1].sum() * 0.512 == pytest.approx(np.pi * 35 * 25 * 80 / 1000,
                                                                  rel=0.02)
    caps = Tube([[-50, 0, 0], [50, 0, 0]], 10.0)       # capsule: cylinder + sphere
    expect = (np.pi * 100 * 100 + 4 / 3 * np.pi * 1000) / 1000
    assert occupancy(caps, g, 6)[1].sum() * 0.512 == pytest.approx(expect, rel=0.03)
    # a 0.05 mL sphere on 8 mm voxels (0.512 mL) keeps its volume with fine supersampling
    tiny = Ellipsoid([1.3, 2.1, -3.7], [2.285] * 3)
    assert occupancy(tiny, g, 21)[1].sum() * 0.512 == pytest.approx(tiny.volume_mm3 / 1000,
                                                                     rel=0.05)


def test_ellipsoid_distance_is_conservative():
    rng = np.random.default_rng(0)
    e = Ellipsoid([5.0, -3.0, 2.0], [40.0, 15.0, 25.0], rotation_matrix(10, -30, 60))
    u = rng.standard_normal((20000, 3))
    surf = e.center + (u / np.linalg.norm(u, axis=1, keepdims=True) * e.axes) @ e.rotation.T
    p = e.center + rng.uniform(-70, 70, (300, 3))
    true = np.min(np.linalg.norm(p[:, None, :] - surf[None, :, :], axis=2), axis=1)
    d = e.sdf(p[:, 0], p[:, 1], p[:, 2])
    assert np.all(np.abs(d) <= true + 0.5)      # never overestimates (0.5 mm surface sampling)
    assert np.array_equal(d < 0, e.contains(p))


# ---------------------------------------------------------------- volumes, labels, units
def test_arrays_dtypes_and_centred_affine(demo):
    shape = DEMO[0]
    for name in ("suv", "ct", "mu"):
        arr = getattr(demo, name)
        assert arr.shape == shape and arr.dtype == np.float32 and np.all(np.isfinite(arr))
    assert demo.organs.dtype == np.uint8 and demo.lesions.dtype == np.uint8
    assert set(np.unique(demo.organs)) <= set(range(8))
    assert set(np.unique(demo.lesions)) <= {0, 1}
    centre = demo.affine @ np.array([(n - 1) / 2 for n in shape] + [1.0])
    assert np.allclose(centre[:3], 0.0)
    assert np.allclose(np.diag(demo.affine)[:3], 8.0)
    assert demo.sex in ("M", "F") and 140 < demo.height_cm < 200 and 40 < demo.weight_kg < 130
    assert demo.suv.min() >= 0.0


@pytest.mark.parametrize("which", ["demo", "fine"])
def test_every_organ_present_with_plausible_volume(which, request):
    s = request.getfixturevalue(which)
    vv = s.voxel_volume_ml
    for organ, lab in LABEL.items():
        vol_l = (s.organs == lab).sum() * vv / 1000.0
        lo, hi = VOLUME_RANGE_L[organ]
        assert lo <= vol_l <= hi, (which, organ, vol_l)


def test_organ_volumes_agree_across_voxel_sizes(demo, fine):
    for organ in ("liver", "lung", "spleen", "kidney"):
        v8 = (demo.organs == LABEL[organ]).sum() * demo.voxel_volume_ml
        v4 = (fine.organs == LABEL[organ]).sum() * fine.voxel_volume_ml
        assert v8 == pytest.approx(v4, rel=0.15), organ


def test_organ_suv_matches_literature_ranges(fine):
    t = fine.meta["tissues"]
    checks = {"liver": "liver", "lung": "lung", "spleen": "spleen", "kidney": "kidney",
              "aorta": "blood", "muscle": "muscle"}
    for organ, tissue in checks.items():
        lo, hi = ORGAN_SUV_RANGE[tissue]
        med = float(np.median(fine.suv[fine.organs == LABEL[organ]]))
        assert lo * 0.95 <= med <= hi * 1.05, (organ, med)
        assert med == pytest.approx(t[tissue]["suv"], rel=0.1), organ
    assert ORGAN_SUV_RANGE["marrow"][0] <= t["marrow"]["suv"] <= ORGAN_SUV_RANGE["marrow"][1]
    # confounders outside the label map are hot: brain cortex, bladder urine
    assert fine.suv.max() >= min(t["urine"]["suv"], t["brain_gm"]["suv"]) * 0.9


def test_tissue_sampling_is_centred_on_literature_values():
    rng = np.random.default_rng(3)
    draws = [sample_tissues(rng) for _ in range(400)]
    for name, spec in TISSUES.items():
        suv = np.array([d[name]["suv"] for d in draws])
        assert suv.min() >= spec.suv[2] - 1e-9 and suv.max() <= spec.suv[3] + 1e-9, name
    liver = np.mean([d["liver"]["suv"] for d in draws])
    assert 2.0 <= liver <= 2.4
    bladder = np.array([d["urine"]["suv"] for d in draws])
    assert bladder.min() >= 10 and bladder.max() <= 40 and np.median(bladder) > 15


def test_ct_hu_and_mu_units(fine):
    ct, mu, org = fine.ct, fine.mu, fine.organs
    assert np.array_equal(mu, hu_to_mu_511(ct))
    assert ct[0, 0, 0] == -1000.0 and mu[0, 0, 0] == 0.0            # air outside the body
    lung_hu, lung_mu = np.median(ct[org == 2]), np.median(mu[org == 2])
    liver_hu, liver_mu = np.median(ct[org == 1]), np.median(mu[org == 1])
    bone_mu, muscle_mu = np.median(mu[org == 3]), np.median(mu[org == 4])
    assert -900 <= lung_hu <= -750 and lung_mu < 0.03
    assert 40 <= liver_hu <= 75 and 0.096 <= liver_mu <= 0.104
    assert 0.096 <= muscle_mu <= 0.104
    assert bone_mu > liver_mu + 0.005 and np.median(ct[org == 3]) > 150
    assert ct.max() > 700                                          # cortical bone present


def test_body_fits_grid_and_arms_follow_the_field_of_view(demo):
    # 384 mm is too narrow for arms at the sides: they are raised out of the field
    assert demo.meta["arms"] == "none"
    for face in (demo.ct[0], demo.ct[-1], demo.ct[:, 0], demo.ct[:, -1]):
        assert np.all(face == -1000.0)
    wide = generate_subject((72, 72, 40), 8.0, seed=11, params={"lesions_per_subject": [0, 0]})
    assert wide.meta["arms"] == "sides" and wide.meta["xy_fit_scale"] == 1.0
    forced = generate_subject(*DEMO, seed=11, params={"arms": "sides"})
    assert forced.meta["xy_fit_scale"] < 1.0


# ---------------------------------------------------------------- lesions
def test_laterality_follows_ras(demo):
    """RAS+: +x is the patient's right. The liver lies right, spleen and heart apex left."""
    def centroid_x(mask):
        i = np.argwhere(mask).mean(0)
        return float((demo.affine[:3, :3] @ i + demo.affine[:3, 3])[0])

    assert centroid_x(demo.organs == LABEL["liver"]) > 20
    assert centroid_x(demo.organs == LABEL["spleen"]) < -20
    assert centroid_x(demo.organs == LABEL["aorta"]) < 10   # descending aorta left of the spine
    assert demo.affine[0, 0] > 0


def test_every_lesion_in_mask_and_table_consistent(demo, fine):
    for s in (demo, fine):
        tab = s.lesion_table
        assert 2 <= len(tab) <= 6
        assert np.array_equal(s.lesions > 0, s.lesion_ids > 0)
        vv = s.voxel_volume_ml
        for row in tab:
            assert row["region"] in REGION_WEIGHTS
            assert row["mask_voxels"] >= 1
            assert (s.lesion_ids == row["lesion_id"]).sum() == row["mask_voxels"]
            c = np.linalg.solve(s.affine, np.array(row["center_mm"] + [1.0]))[:3]
            idx = tuple(int(np.floor(v + 0.5)) for v in c)
            assert s.lesion_ids[idx] == row["lesion_id"]
            assert row["occupancy_volume_ml"] == pytest.approx(row["volume_ml"], rel=0.03)
            if row["volume_ml"] > 25 * vv:      # partial volume matters little for big lesions
                assert row["mask_voxels"] * vv == pytest.approx(row["volume_ml"], rel=0.25)
            assert 0.05 <= row["volume_ml"] <= 200.0
            assert row["suv_max_true"] >= row["suv_mean_true"] > row["background_suv"] > 0


def test_lesions_lie_in_their_host_organ():
    s = generate_subject(*FINE, seed=5, params={"lesions_per_subject": [10, 10],
                                                 "lesion_region_weights": {"lung": 1, "liver": 1,
                                                                           "bone": 1}})
    assert len(s.lesion_table) == 10
    host_label = {"lung": 2, "liver": 1, "bone": 3}
    for row in s.lesion_table:
        sel = s.lesion_ids == row["lesion_id"]
        labels = s.organs[sel]
        # the mask sits in the host class (border voxels may straddle a neighbour)
        assert np.mean(labels == host_label[row["region"]]) >= 0.6, row
        # and the activity it displaced is the host tissue's (up to the 4 % uptake texture)
        assert row["background_suv"] == pytest.approx(row["host_tissue_suv"], rel=0.15), row


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_small_lesion_activity_is_preserved_on_coarse_voxels(seed):
    small = {"lesions_per_subject": [1, 1], "min_lesion_volume_ml": 0.05,
             "max_lesion_volume_ml": 0.06}
    a = generate_subject(*DEMO, seed=seed, params=small)
    b = generate_subject(*DEMO, seed=seed, params={**small, "lesions_per_subject": [0, 0]})
    assert np.array_equal(a.organs, b.organs)          # lesions leave the anatomy unchanged
    (row,) = a.lesion_table
    assert 0.05 <= row["volume_ml"] <= 0.06 and row["mask_voxels"] == 1
    excess = float((a.suv.astype(np.float64) - b.suv).sum()) * a.voxel_volume_ml
    expected = row["volume_ml"] * (row["suv_mean_true"] - row["background_suv"])
    assert excess == pytest.approx(expected, rel=0.10)


def test_large_lesion_mask_volume():
    s = generate_subject(*FINE, seed=4, params={"lesions_per_subject": [1, 1],
                                                 "min_lesion_volume_ml": 30.0,
                                                 "max_lesion_volume_ml": 30.0})
    (row,) = s.lesion_table
    assert row["volume_ml"] == pytest.approx(30.0)
    assert row["mask_voxels"] * s.voxel_volume_ml == pytest.approx(30.0, rel=0.15)


def test_lesion_volumes_are_heavy_tailed():
    rng = np.random.default_rng(1)
    v = np.array([sample_volume_ml(rng, 0.05, 200.0) for _ in range(5000)])
    assert v.min() >= 0.05 and v.max() <= 200.0
    assert 0.7 <= np.median(v) <= 2.5
    assert v.mean() > 2.5 * np.median(v)              # a few large lesions dominate the mean
    assert 0.01 <= np.mean(v < 0.1) <= 0.10
    assert 0.05 <= np.mean(v > 10) <= 0.25


def test_lesion_summary(demo):
    rows = phantom_lesion_summary(demo)
    assert len(rows) == len(demo.lesion_table)
    for r, t in zip(rows, demo.lesion_table):
        assert r["tlg_true"] == pytest.approx(t["suv_mean_true"] * t["volume_ml"], rel=1e-2)
        assert r["site"] in {"lung", "liver", "bone", "soft_tissue", "lymph_node"}


# ---------------------------------------------------------------- determinism, speed, errors
def test_deterministic_and_seed_sensitive(demo):
    again = generate_subject(*DEMO, seed=11)
    for name in ("suv", "ct", "mu", "organs", "lesions"):
        assert np.array_equal(getattr(demo, name), getattr(again, name)), name
    assert demo.lesion_table == again.lesion_table
    other = generate_subject(*DEMO, seed=12)
    assert not np.array_equal(demo.suv, other.suv)
    assert not np.array_equal(demo.organs, other.organs)


def test_demo_grid_is_fast():
    t0 = time.perf_counter()
    generate_subject(*DEMO, seed=99)
    assert time.perf_counter() - t0 < 3.0


def test_demo_config_phantom_section_is_accepted():
    yaml = pytest.importorskip("yaml")
    from pathlib import Path
    cfg_path = Path(__file__).resolve().parents[1] / "config" / "config.yaml"
    if not cfg_path.is_file():
        pytest.skip("no demo config")
    cfg = yaml.safe_load(cfg_path.read_text())
    s = generate_subject(*DEMO, seed=cfg["seed"], params=cfg["phantom"])
    lo, hi = cfg["phantom"]["lesions_per_subject"]
    assert lo <= len(s.lesion_table) <= hi


@pytest.mark.parametrize("kwargs, fragment", [
    ({"params": {"lesion_count": 3}}, "unknown key"),
    ({"params": {"lesions_per_subject": [4, 2]}}, "lesions_per_subject"),
    ({"params": {"min_lesion_volume_ml": 0}}, "min_lesion_volume_ml"),
    ({"params": {"lesion_region_weights": {"brain": 1}}}, "lesion_region_weights"),
    ({"shape": (48, 48)}, "shape"),
    ({"voxel_size_mm": (8, -8, 8)}, "voxel size"),
    ({"seed": -1}, "seed"),
])
def test_bad_input_raises_input_error(kwargs, fragment):
    args = {"shape": DEMO[0], "voxel_size_mm": DEMO[1], "seed": 0, **kwargs}
    with pytest.raises(InputError, match=fragment):
        generate_subject(**args)
