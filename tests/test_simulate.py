"""List-mode simulation and histogramming: count totals, Poisson statistics, determinism."""

import logging
import math

import numpy as np
import pytest

from amdiff.errors import InputError
from amdiff.io.nifti import centered_affine
from amdiff.recon.histogram import histogram_blocks, histogram_listmode
from amdiff.listmode.header import acquisition_from_header, scanner_from_header
from amdiff.listmode.petsird_io import EventBlock, iter_event_blocks, read_header
from amdiff.listmode.simulate import event_blocks, expected_counts, simulate_listmode
from amdiff.physics.suv import suv_to_concentration
from amdiff.physics.scanner import CylindricalScanner

SCANNER = CylindricalScanner(name="sim-test", n_crystals=96, n_rings=8, radius_mm=200.0,
                             ring_pitch_mm=8.0, max_ring_difference=1, fov_radius_mm=150.0)
SHAPE, VOX = (32, 32, 8), (8.0, 8.0, 8.0)
AFFINE = centered_affine(SHAPE, VOX)
WEIGHT_KG, DOSE_MBQ, MU_WATER = 70.0, 300.0, 0.096


def cylinder(radius_mm=100.0, oversample=1):
    """Cylinder spanning all slices; with oversample > 1, partial-volume voxel fractions."""
    n = SHAPE[0] * oversample
    c = (np.arange(n) - (n - 1) / 2) * VOX[0] / oversample
    disc = (c[:, None] ** 2 + c[None, :] ** 2) <= radius_mm ** 2
    disc = disc.reshape(SHAPE[0], oversample, SHAPE[1], oversample).mean(axis=(1, 3))
    return np.repeat(disc[:, :, None], SHAPE[2], axis=2).astype(np.float32)


def chord_mm(r):
    """Analytic chord length of every LOR through a centred cylinder of radius r (mm)."""
    a, b = SCANNER.lor_endpoints()
    d_xy = b[:, :2] - a[:, :2]
    dist = np.abs(a[:, 0] * d_xy[:, 1] - a[:, 1] * d_xy[:, 0]) / np.linalg.norm(d_xy, axis=1)
    stretch = np.linalg.norm(b - a, axis=1) / np.linalg.norm(d_xy, axis=1)
    return 2 * np.sqrt(np.clip(r ** 2 - dist ** 2, 0, None)) * stretch, dist


def acquisition(**kw):
    acq = {"dose_mbq": DOSE_MBQ, "duration_s": 60.0, "sensitivity_cps_per_kbq": 10.0,
           "count_scale": 0.1, "background_fraction": 0.0, "psf_fwhm_mm": 0.0}
    acq.update(kw)
    return acq


def simulate(path, seed=1, **kw):
    cyl = cylinder()
    return simulate_listmode(path, 2.0 * cyl, MU_WATER * cyl, AFFINE, SCANNER, acquisition(**kw),
                             subject_id="s1", weight_kg=WEIGHT_KG, height_m=1.75, seed=seed,
                             return_counts=True)


def test_total_counts_without_attenuation_equal_sensitivity_times_activity():
    """The 20 cm calibration cylinder filling the axial FOV gives S * A * T * count_scale."""
    cyl = cylinder(100.0)
    suv = 2.0 * cyl
    acq = acquisition()
    model = expected_counts(suv, 0 * cyl, AFFINE, SCANNER, acq, WEIGHT_KG)
    conc = suv_to_concentration(suv, WEIGHT_KG, DOSE_MBQ)             # Bq/mL
    activity_kbq = float(conc.sum()) * np.prod(VOX) / 1000.0 / 1000.0
    expected = 10.0 * activity_kbq * acq["duration_s"] * acq["count_scale"]
    assert model["trues"].sum() == pytest.approx(expected, rel=1e-4)
    assert model["background"] == 0.0
    assert model["calibration_factor"] == pytest.approx(model["eta"] * 0.1)


def test_attenuated_total_matches_analytic_chord_average():
    """With water: sum_i L_i exp(-mu L_i) / sum_i L_i of the analytic chords of each LOR."""
    r = 100.0
    cyl = cylinder(r, oversample=8)
    acq = acquisition()
    plain = expected_counts(2 * cyl, 0 * cyl, AFFINE, SCANNER, acq, WEIGHT_KG)["trues"].sum()
    water = expected_counts(2 * cyl, MU_WATER * cyl, AFFINE, SCANNER, acq, WEIGHT_KG)["trues"].sum()
    length_mm, _ = chord_mm(r)
    factor = np.sum(length_mm * np.exp(-MU_WATER * length_mm / 10)) / np.sum(length_mm)
    assert 0.1 < factor < 0.3
    # 8 mm voxels: trilinear interpolation smooths the rim, where chords change steeply and
    # exp(-mu L) is largest; the ratio is +3.4 % here, +2.1 % at 4 mm and +1.5 % at 2 mm
    assert water / plain == pytest.approx(factor, rel=0.05)


def test_background_fraction_and_psf_preserve_totals():
    cyl = cylinder(60.0)
    base = expected_counts(2 * cyl, MU_WATER * cyl, AFFINE, SCANNER, acquisition(), WEIGHT_KG)
    blur = expected_counts(2 * cyl, MU_WATER * cyl, AFFINE, SCANNER,
                           acquisition(psf_fwhm_mm=8.0, background_fraction=0.25), WEIGHT_KG)
    total_bg = blur["background"] * SCANNER.n_lors
    assert total_bg / (total_bg + blur["trues"].sum()) == pytest.approx(0.25, rel=1e-6)
    # a 60 mm cylinder well inside the grid: blurring moves activity, not its amount (up to
    # the small change in attenuation seen by the blurred edge)
    assert blur["trues"].sum() == pytest.approx(base["trues"].sum(), rel=0.03)
    # the PSF spreads counts onto LORs that just miss the cylinder
    _, dist = chord_mm(60.0)
    rim = (dist > 66.0) & (dist < 74.0)
    assert base["trues"][rim].sum() < 0.5 * blur["trues"][rim].sum()


def test_simulated_list_is_poisson_deterministic_and_histograms_exactly(tmp_path):
    out = simulate(tmp_path / "a.petsird", seed=7, background_fraction=0.2)
    counts = out["counts"]
    assert out["events"] == counts.sum() > 100_000
    # Poisson: standardised residuals have mean 0 and variance 1 over all LORs
    model = expected_counts(2 * cylinder(), MU_WATER * cylinder(), AFFINE, SCANNER,
                            acquisition(background_fraction=0.2), WEIGHT_KG)
    ybar = model["trues"] + model["background"]
    z = (counts - ybar) / np.sqrt(ybar)
    assert abs(z.mean()) < 0.03 and z.var() == pytest.approx(1.0, abs=0.03)
    assert out["events"] == pytest.approx(ybar.sum(), abs=5 * math.sqrt(ybar.sum()))
    # the histogram of the written list is exactly the sampled counts
    header = read_header(tmp_path / "a.petsird")
    scanner = scanner_from_header(header)
    np.testing.assert_array_equal(histogram_listmode(tmp_path / "a.petsird", scanner), counts)
    acq = acquisition_from_header(header)
    assert acq["calibration_factor"] == pytest.approx(out["calibration_factor"], rel=1e-6)
    assert acq["injected_mbq"] == pytest.approx(DOSE_MBQ)
    # one block per second covering [0, T], PETSIRD bin order, time-uniform event rate
    blocks = list(iter_event_blocks(tmp_path / "a.petsird"))
    assert [(b.start_ms, b.stop_ms) for b in blocks] == [(1000 * i, 1000 * (i + 1))
                                                         for i in range(60)]
    assert all((b.bins[:, 0] > b.bins[:, 1]).all() for b in blocks)
    per_block = np.array([len(b.bins) for b in blocks])
    chi2 = ((per_block - per_block.mean()) ** 2 / per_block.mean()).sum()
    assert chi2 < 60 + 5 * math.sqrt(2 * 60)
    # same seed, same file; another seed, other counts
    simulate(tmp_path / "b.petsird", seed=7, background_fraction=0.2)
    assert (tmp_path / "a.petsird").read_bytes() == (tmp_path / "b.petsird").read_bytes()
    other = simulate(tmp_path / "c.petsird", seed=8, background_fraction=0.2)["counts"]
    assert not np.array_equal(other, counts)


def test_event_blocks_streamed_in_slices_keep_every_count():
    rng = np.random.default_rng(3)
    counts = rng.poisson(2.0, size=SCANNER.n_lors)
    blocks = list(event_blocks(counts, SCANNER, 10.5, rng, block_ms=1000,
                               events_per_slice=20_000))     # forces several time slices
    assert len(blocks) == 11 and blocks[-1].stop_ms == 10_500
    hist = histogram_blocks(blocks, SCANNER)
    np.testing.assert_array_equal(hist.counts, counts)
    assert hist.duration_s == pytest.approx(10.5)
    rates = np.array([len(b.bins) / (b.stop_ms - b.start_ms) for b in blocks])
    assert np.all(np.abs(rates / rates.mean() - 1) < 0.05)


def test_histogram_counts_and_reports_events_without_lor(tmp_path, caplog):
    bin_a, bin_b = SCANNER.lor_detectors([0, 5, 5])
    good = np.stack([bin_a, bin_b], axis=1)
    same_crystal = np.array([[SCANNER.detector_bin(3, 2), SCANNER.detector_bin(3, 1)]])
    far_rings = np.array([[SCANNER.detector_bin(50, 7), SCANNER.detector_bin(1, 0)]])
    blocks = [EventBlock(0, 1000, np.concatenate([good, same_crystal]).astype(np.uint32)),
              EventBlock(1000, 2000, far_rings.astype(np.uint32))]
    hist = histogram_blocks(blocks, SCANNER)
    assert hist.n_events == 5 and hist.n_without_lor == 2 and hist.n_counted == 3
    assert hist.counts[0] == 1 and hist.counts[5] == 2 and hist.counts.sum() == 3

    from amdiff.listmode.header import make_header
    from amdiff.listmode.petsird_io import write_listmode
    header = make_header(SCANNER, subject_id="x", weight_kg=70, height_m=1.7, injected_mbq=300,
                         calibration_factor=1.0)
    write_listmode(tmp_path / "x.petsird", header, blocks)
    with caplog.at_level(logging.WARNING):
        counts = histogram_listmode(tmp_path / "x.petsird", SCANNER)
    assert counts.sum() == 3
    assert "2 of 5 events have no LOR" in caplog.text


def test_bad_simulation_input_is_reported():
    cyl = cylinder()
    with pytest.raises(InputError, match="count_scale"):
        acq = acquisition()
        del acq["count_scale"]
        expected_counts(cyl, cyl, AFFINE, SCANNER, acq, WEIGHT_KG)
    with pytest.raises(InputError, match="same grid"):
        expected_counts(cyl, cyl[:, :, :4], AFFINE, SCANNER, acquisition(), WEIGHT_KG)
    with pytest.raises(InputError, match="negative"):
        expected_counts(cyl, -cyl, AFFINE, SCANNER, acquisition(), WEIGHT_KG)


# ---- the simulate stage: per-split acquisition (sites.<site>.acquisition_by_split) ----------
def _stage_config(tmp_path, override):
    """The demo config with one tiny mct site (1 train, 1 test subject) on the SCANNER above."""
    import yaml

    from tests.conftest import REPO

    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    site = cfg["sites"]["mct"]
    site["split"] = {"train": 1, "val": 0, "test": 1}
    site["image"] = {"shape": list(SHAPE), "voxel_size_mm": list(VOX)}
    site["scanner"] = SCANNER.to_dict()
    site["acquisition"].update(dose_mbq=[300.0, 0.0], duration_s=4, count_scale=0.01)
    if override is not None:
        site["acquisition_by_split"] = override
    cfg["sites"] = {"mct": site}
    cfg["training"]["train_sites"] = {"mct": ["mct"]}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _run_simulate(tmp_path, config, subject, *extra):
    from amdiff.cli import main
    from amdiff.io.nifti import write_volume

    cyl = cylinder()
    suv = write_volume(tmp_path / "suv.nii.gz", 2.0 * cyl, AFFINE)
    mu = write_volume(tmp_path / "mumap.nii.gz", MU_WATER * cyl, AFFINE)
    out = tmp_path / subject
    status = main(["simulate", "--config", str(config), "--site", "mct", "--subject", subject,
                   "--suv", str(suv), "--mumap", str(mu), "--weight-kg", str(WEIGHT_KG),
                   "--out", str(out / "full.petsird"), "--summary", str(out / "acquisition.json"),
                   *extra])
    return status, out


def test_test_subject_gets_its_splits_acquisition_and_a_train_subject_does_not(tmp_path):
    """mct001 is train, mct002 test: only the test list has the override's dose and duration."""
    import json

    config = _stage_config(tmp_path, {"test": {"dose_mbq": [600.0, 0.0], "duration_s": 8}})
    summaries = {}
    for subject in ("mct001", "mct002"):
        status, out = _run_simulate(tmp_path, config, subject)
        assert status == 0
        summaries[subject] = json.loads((out / "acquisition.json").read_text())
        header = acquisition_from_header(read_header(out / "full.petsird"))
        assert header["injected_mbq"] == pytest.approx(summaries[subject]["dose_mbq"])
        last = list(iter_event_blocks(out / "full.petsird"))[-1]
        assert last.stop_ms == 1000 * summaries[subject]["duration_s"]
    train, test = summaries["mct001"], summaries["mct002"]
    assert (train["split"], train["dose_mbq"], train["duration_s"]) == ("train", 300.0, 4.0)
    assert (test["split"], test["dose_mbq"], test["duration_s"]) == ("test", 600.0, 8.0)
    # twice the dose for twice the time: four times the expected counts of the same image
    assert test["expected_trues"] == pytest.approx(4 * train["expected_trues"], rel=1e-6)
    # --split (the workflow passes each subject's split) wins over the synthetic cohort's split
    (tmp_path / "own").mkdir()
    status, out = _run_simulate(tmp_path / "own", config, "mct001", "--split", "test")
    assert status == 0
    assert json.loads((out / "acquisition.json").read_text())["duration_s"] == 8.0


def test_unknown_split_with_an_override_is_one_error_line(tmp_path, capsys):
    config = _stage_config(tmp_path, {"test": {"duration_s": 8}})
    status, out = _run_simulate(tmp_path, config, "own007")
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1
    assert "sites.mct.acquisition_by_split" in err[0] and "pass --split" in err[0]
    assert not (out / "full.petsird").exists()
    # without an override the site's acquisition applies to any subject
    status, _ = _run_simulate(tmp_path, _stage_config(tmp_path, None), "own007")
    assert status == 0
