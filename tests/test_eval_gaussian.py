"""Table 2's training-free rows: the low-count input and the Gaussian filter whose FWHM is chosen
on the validation images (amdiff.evaluate.gaussian, `amdiff fit-gaussian`, `amdiff gaussian-filter`).

The synthetic subjects: a smooth truth (a body cylinder of SUV 1 with a broad hot blob) as the
high-count image, a Poisson-noisy version of it as the low-count image, a CT that is 0 HU in
the body and -1000 HU outside, so the body mask is the cylinder.
"""

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from amdiff.cli import main
from amdiff.errors import InputError
from amdiff.evaluate.gaussian import choose_fwhm, fit, read_fit, row_labels
from amdiff.evaluate.metrics import body_mask, nrmse, whole_image_nrmse
from amdiff.io.manifest import format_lc_pet, write_manifest
from amdiff.io.nifti import centered_affine, read_volume, write_volume

SHAPE = (32, 32, 24)
VOXEL = (4.0, 4.0, 4.0)
GRID = [0, 4, 8, 12, 16, 24]


def _images(rng, noise_free=False):
    """(hc, lc, ct, organs, lesion) of one synthetic subject."""
    x, y, z = np.meshgrid(*(np.arange(n) - (n - 1) / 2 for n in SHAPE), indexing="ij")
    body = x ** 2 + y ** 2 < 13 ** 2
    hc = body * (1.0 + 2.0 * np.exp(-((x - 3) ** 2 + y ** 2 + z ** 2) / (2 * 4.0 ** 2)))
    hc = hc.astype(np.float32)
    lc = hc.copy() if noise_free else (rng.poisson(hc * 4.0) / 4.0).astype(np.float32)
    ct = np.where(body, 0.0, -1000.0).astype(np.float32)
    organs = (body & (x < 0)).astype(np.uint8)           # liver: half of the body
    lesion = ((x - 3) ** 2 + y ** 2 + z ** 2 < 2 ** 2).astype(np.uint8)
    return hc, lc, ct, organs, lesion


def _write_subject(root, name, split, rng, noise_free=False):
    affine = centered_affine(SHAPE, VOXEL)
    hc, lc, ct, organs, lesion = _images(rng, noise_free)
    d = root / name
    for key, arr, dtype in (("hc", hc, np.float32), ("lc", lc, np.float32), ("ct", ct, np.float32),
                            ("organs", organs, np.uint8), ("lesion", lesion, np.uint8)):
        write_volume(d / f"{key}.nii.gz", arr, affine, dtype=dtype)
    return {"subject": name, "site": "mct", "split": split, "hc_pet": f"{name}/hc.nii.gz",
            "ct": f"{name}/ct.nii.gz", "lesion": f"{name}/lesion.nii.gz", "organs": f"{name}/organs.nii.gz",
            "lc_pet": format_lc_pet({"p010_r0": f"{name}/lc.nii.gz"})}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """A training manifest: a noise-free train subject (which would favour FWHM 0) and a
    noisy validation subject (which the FWHM must be chosen on)."""
    root = tmp_path_factory.mktemp("cohort")
    rng = np.random.default_rng(1)
    rows = [_write_subject(root, "s1", "train", rng, noise_free=True), _write_subject(root, "s2", "val", rng)]
    write_manifest(pd.DataFrame(rows), root / "manifest.tsv")
    return root


def _sigma(fwhm_mm, voxel_mm):
    return fwhm_mm / (2 * math.sqrt(2 * math.log(2))) / voxel_mm


def test_fwhm_is_the_minimum_of_the_validation_curve(cohort):
    record = fit(cohort / "manifest.tsv", "mct", GRID)
    # the curve computed here, independently: scipy's filter, the evaluation's NRMSE
    hc, lc, ct = (read_volume(cohort / "s2" / f"{k}.nii.gz").data for k in ("hc", "lc", "ct"))
    body = body_mask(ct)
    expected = [whole_image_nrmse(ndimage.gaussian_filter(lc, _sigma(f, 4.0)) if f else lc, hc, body)
                for f in GRID]
    assert [p["fwhm_mm"] for p in record["curve"]] == GRID
    np.testing.assert_allclose([p["nrmse_whole"] for p in record["curve"]], expected, rtol=1e-5)
    assert record["fwhm_mm"] == GRID[int(np.argmin(expected))]
    assert record["fwhm_mm"] > 0 and min(expected) < expected[0]   # smoothing helps this noise
    # only the validation subject counts (the noise-free train subject would pick 0)
    assert (record["n_subjects"], record["n_images"], list(record["per_image"])) == (1, 1, ["s2/p010_r0"])
    assert not record["at_grid_edge"] and record["nrmse_whole"] == "body_mean"


def test_fit_gaussian_writes_the_record_and_says_when_the_grid_is_too_narrow(cohort, tmp_path, capsys):
    out = tmp_path / "fit.json"
    assert main(["fit-gaussian", "--manifest", str(cohort / "manifest.tsv"), "--site", "mct",
                 "--fwhm-grid", "0,2", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["fwhm_mm"] == 2.0 and record["at_grid_edge"]
    assert "extend evaluation.gaussian_filter.fwhm_mm_grid" in capsys.readouterr().out
    assert read_fit(out) == 2.0


def test_choose_fwhm_breaks_ties_towards_less_smoothing_and_skips_nan():
    assert choose_fwhm([8, 0, 4], [0.5, 0.7, 0.5]) == 4.0
    assert choose_fwhm([0, 4, 8], [math.nan, 0.9, 0.8]) == 8.0
    with pytest.raises(ValueError):
        choose_fwhm([0, 4], [math.nan, math.nan])


def test_a_site_without_validation_subjects_is_one_clear_error(cohort):
    with pytest.raises(InputError, match="no validation subjects of site 'vision'"):
        fit(cohort / "manifest.tsv", "vision", GRID)


def test_the_filter_uses_each_axis_voxel_size(tmp_path):
    rng = np.random.default_rng(2)
    data = rng.gamma(2.0, 0.5, (20, 18, 16)).astype(np.float32)
    voxel = (2.0, 2.5, 4.0)                                      # anisotropic
    write_volume(tmp_path / "lc.nii.gz", data, centered_affine(data.shape, voxel))
    (tmp_path / "fit.json").write_text(json.dumps({"fwhm_mm": 6.0}))
    assert main(["gaussian-filter", "--lc", str(tmp_path / "lc.nii.gz"), "--fit", str(tmp_path / "fit.json"),
                 "--out-dir", str(tmp_path / "pred")]) == 0
    out = read_volume(tmp_path / "pred" / "denoised.nii.gz", "suv")
    expected = ndimage.gaussian_filter(data, sigma=[_sigma(6.0, v) for v in voxel])
    np.testing.assert_allclose(out.data, expected, rtol=1e-6, atol=1e-7)
    assert not np.allclose(out.data, ndimage.gaussian_filter(data, sigma=_sigma(6.0, 2.0)))
    np.testing.assert_allclose(out.affine, centered_affine(data.shape, voxel))


def test_several_images_in_one_call_are_each_filtered_on_their_own_grid(tmp_path):
    """The workflow's job passes all of a subject's images: each --lc goes to its own --out-dir,
    filtered with its own voxel size."""
    rng = np.random.default_rng(4)
    images = {"p005_r0": (2.0, 2.5, 4.0), "p040_r0": (4.0, 4.0, 2.0)}
    for name, voxel in images.items():
        data = rng.gamma(2.0, 0.5, (20, 18, 16)).astype(np.float32)
        write_volume(tmp_path / f"lc_{name}.nii.gz", data, centered_affine(data.shape, voxel))
    assert main(["gaussian-filter", "--fwhm-mm", "6", "--lc", *[str(tmp_path / f"lc_{n}.nii.gz") for n in images],
                 "--out-dir", *[str(tmp_path / "pred" / n) for n in images]]) == 0
    for name, voxel in images.items():
        lc = read_volume(tmp_path / f"lc_{name}.nii.gz", "suv").data
        out = read_volume(tmp_path / "pred" / name / "denoised.nii.gz", "suv").data
        np.testing.assert_allclose(out, ndimage.gaussian_filter(lc, sigma=[_sigma(6.0, v) for v in voxel]),
                                   rtol=1e-6, atol=1e-7)


def test_the_lowcount_row_is_the_nrmse_of_the_input_itself(cohort, tmp_path):
    d = cohort / "s2"
    pred = tmp_path / "lowcount_input" / "p010_r0"
    assert main(["gaussian-filter", "--lc", str(d / "lc.nii.gz"), "--fwhm-mm", "0", "--out-dir", str(pred)]) == 0
    out = tmp_path / "metrics.tsv"
    assert main(["evaluate", "--model", "lowcount_input", "--site", "mct", "--subject", "s2",
                 "--hc", str(d / "hc.nii.gz"), "--lesion", str(d / "lesion.nii.gz"),
                 "--organs", str(d / "organs.nii.gz"), "--ct", str(d / "ct.nii.gz"),
                 "--outputs", "denoised", "--prediction", f"p010_r0={pred}", "--out", str(out)]) == 0
    row = pd.read_csv(out, sep="\t").iloc[0]
    hc, lc, ct, organs = (read_volume(d / f"{k}.nii.gz").data for k in ("hc", "lc", "ct", "organs"))
    assert row["nrmse_whole"] == pytest.approx(whole_image_nrmse(lc, hc, body_mask(ct)), rel=1e-5)
    assert row["nrmse_liver"] == pytest.approx(nrmse(lc, hc, organs == 1), rel=1e-5)
    assert math.isnan(row["dice_lesion"])                         # a denoiser: no masks


def test_row_labels_name_the_fwhm_of_each_group():
    same = row_labels({"mct": 6.0, "vision": 6.0})["gaussian_filter"]
    assert same == {"mct": "Gaussian filter (FWHM 6 mm)", "vision": "Gaussian filter (FWHM 6 mm)",
                    "all": "Gaussian filter (FWHM 6 mm)"}
    mixed = row_labels({"mct": 6.0, "uexplorer": 2.5})["gaussian_filter"]
    assert mixed["uexplorer"] == "Gaussian filter (FWHM 2.5 mm)"
    assert mixed["all"] == "Gaussian filter (each site's FWHM)"
