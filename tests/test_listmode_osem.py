"""List-mode OSEM of any PETSIRD scanner: a two-module-type TOF scanner's list simulated from a
known phantom is reconstructed to the right activity, TOF lowers the noise at equal counts, the
header's efficiencies match petsird's own helper, and on a ring scanner list-mode MLEM gives the
histogram path's image."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from petsird.helpers import get_detection_efficiency, get_num_detection_bins

from amdiff.io.nifti import centered_affine
from amdiff.listmode.efficiency import PairEfficiency
from amdiff.listmode.header import make_header
from amdiff.listmode.petsird_io import EventBlock, write_listmode
from amdiff.physics.projector import RayProjector
from amdiff.physics.scanner import CylindricalScanner
from amdiff.physics.system import attenuation_factors
from amdiff.recon.listmode_osem import reconstruct_any_scanner, scanner_lines
from amdiff.recon.osem import run_osem
from tests.petsird_scanners import simulate, two_type_tof_header

SHAPE, VOXEL = (24, 24, 4), (6.0, 6.0, 6.0)
NO_FILTER = {"iterations": 3, "subsets": 4, "postfilter_fwhm_mm": 0.0}


def _phantom():
    """A water cylinder (r 50 mm) of 10 Bq/mL with a hot rod (r 10 mm) of 40 Bq/mL."""
    x = (np.arange(SHAPE[0]) - (SHAPE[0] - 1) / 2) * VOXEL[0]
    xx, yy = np.meshgrid(x, x, indexing="ij")
    body = xx ** 2 + yy ** 2 <= 50 ** 2
    hot = (xx - 20) ** 2 + yy ** 2 <= 10 ** 2
    activity = np.repeat((10.0 * body + 30.0 * hot)[:, :, None], SHAPE[2], 2).astype(np.float32)
    mu = np.repeat((0.096 * body)[:, :, None], SHAPE[2], 2).astype(np.float32)
    background = (xx ** 2 + yy ** 2 <= 35 ** 2) & ((xx - 20) ** 2 + yy ** 2 > 16 ** 2)
    return activity, mu, background, hot


@pytest.fixture(scope="module")
def two_type_list(tmp_path_factory):
    torch.set_num_threads(1)
    header = two_type_tof_header(calibration_factor=0.02)
    activity, mu, background, hot = _phantom()
    path = tmp_path_factory.mktemp("lm") / "two_type.petsird"
    counts = simulate(path, header, activity, mu, VOXEL, duration_s=60.0, randoms_per_line=0.5)
    images = {tof: reconstruct_any_scanner(path, mu, centered_affine(SHAPE, VOXEL), NO_FILTER,
                                           use_tof=tof, progress=False)[0] for tof in (True, False)}
    return counts, images, background, hot, path


def test_the_two_type_tof_list_has_both_module_types_and_tof_bins(two_type_list, tmp_path):
    counts, *_ = two_type_list
    assert counts["prompts"] > 300_000 and counts["delayeds"] > 1000


@pytest.mark.slow
def test_uniform_activity_and_hot_rod_are_recovered(two_type_list):
    _, images, background, hot, _ = two_type_list
    tof = images[True][:, :, 1:3]
    assert tof[background].mean() == pytest.approx(10.0, rel=0.05)
    assert tof[hot].mean() / tof[background].mean() > 2.0          # true contrast 4, a 10 mm rod


@pytest.mark.slow
def test_tof_gives_lower_noise_than_non_tof_at_equal_counts(two_type_list):
    _, images, background, _, _ = two_type_list
    noise = {tof: images[tof][:, :, 1:3][background].std() / images[tof][:, :, 1:3][background].mean()
             for tof in (True, False)}
    assert images[False][:, :, 1:3][background].mean() == pytest.approx(10.0, rel=0.05)
    assert noise[True] < 0.8 * noise[False], noise


@pytest.mark.slow
def test_downsample_and_recon_commands_give_suv_images_at_the_same_scale(two_type_list, tmp_path):
    """`amdiff downsample` then `amdiff recon` (recon.engine: listmode) of the two-type TOF
    list: the full list's SUV image is the library's, and a 25 % list (its count share read
    from its header) has the same mean SUV in the uniform region."""
    from amdiff.cli import main
    from amdiff.io.nifti import read_volume, write_volume
    from amdiff.physics.suv import concentration_to_suv
    from tests.test_bad_inputs import _config

    _, images, background, _, path = two_type_list
    mu_path = write_volume(tmp_path / "mu.nii.gz", _phantom()[1], centered_affine(SHAPE, VOXEL))

    def listmode_engine(cfg):
        cfg["sites"]["mct"]["recon"] = {"engine": "listmode", **NO_FILTER}
    config = _config(tmp_path, listmode_engine)
    assert main(["downsample", "--input", str(path), "--levels", "25", "--seed", "2",
                 "--outdir", str(tmp_path / "ds")]) == 0
    suv = {}
    for name, listmode in (("full", path), ("p025", tmp_path / "ds" / "p025_r0.petsird")):
        out = tmp_path / f"{name}.nii.gz"
        assert main(["recon", "--config", str(config), "--site", "mct", "--listmode", str(listmode),
                     "--mumap", str(mu_path), "--out", str(out)]) == 0
        suv[name] = read_volume(out, kind="suv").data[:, :, 1:3]
    np.testing.assert_allclose(suv["full"], concentration_to_suv(images[True], 70.0, 300.0)[:, :, 1:3],
                               rtol=1e-5, atol=1e-6)
    assert suv["p025"][background].mean() == pytest.approx(suv["full"][background].mean(), rel=0.05)


def test_pair_efficiencies_match_petsirds_helper():
    header = two_type_tof_header()
    efficiency = PairEfficiency(header)
    rng = np.random.default_rng(0)
    for pair in ((0, 0), (1, 0), (1, 1)):
        n1, n2 = (get_num_detection_bins(header.scanner, t) for t in pair)
        bins = np.stack([rng.integers(0, n1, 400), rng.integers(0, n2, 400)], 1)
        if pair[0] == pair[1]:
            bins = np.sort(bins, 1)[:, ::-1]
        expected = [get_detection_efficiency(header.scanner, pair, int(a), int(b), with_calibration_factor=False)
                    for a, b in bins]
        np.testing.assert_allclose(efficiency(pair, bins), expected, rtol=1e-6)
        assert 0 < np.mean(np.equal(expected, 0)) < 1 or pair == (1, 1)   # some pairs record nothing


def test_scanner_lines_are_every_recording_pair_once():
    header = two_type_tof_header()
    efficiency = PairEfficiency(header)
    from amdiff.listmode.geometry import DetectorGeometry
    geometry = DetectorGeometry.from_header(header)
    seen = {}
    for pair, bins, eta in scanner_lines(geometry, efficiency, chunk=500):
        assert (eta > 0).all()
        seen.setdefault(pair, []).append(bins)
    n = [get_num_detection_bins(header.scanner, t) for t in (0, 1)]
    for pair, chunks in seen.items():
        bins = np.concatenate(chunks)
        assert len(np.unique(bins, axis=0)) == len(bins)
        every = np.stack(np.meshgrid(np.arange(n[pair[0]]), np.arange(n[pair[1]]), indexing="ij"), -1).reshape(-1, 2)
        if pair[0] == pair[1]:
            every = every[every[:, 0] > every[:, 1]]
        assert len(bins) == int((efficiency(pair, every) > 0).sum())


def test_the_sensitivity_traced_per_element_pair_is_the_sum_over_every_detection_bin_pair():
    """Energy bins share their element's point, so the sensitivity traces element pairs with
    summed efficiencies; it must equal the plain sum of s eta a P_window^T 1 over every pair of
    detection bins (type 0 has two energy bins), and the randoms must see every such pair."""
    torch.set_num_threads(1)
    from amdiff.recon.listmode_osem import ListmodeOSEM
    from amdiff.recon.randoms import RandomsModel

    header = two_type_tof_header()
    activity, mu, *_ = _phantom()
    system = ListmodeOSEM(header, mu, VOXEL, 3.0, progress=False)
    rng = np.random.default_rng(2)
    fans = [rng.uniform(0.5, 1.5, system.geometry.n_bins(t)) for t in (0, 1)]
    merged_randoms, plain_randoms = RandomsModel(100.0, fans), RandomsModel(100.0, fans)
    merged = system.sensitivity(merged_randoms)
    plain = torch.zeros_like(merged)
    n_lines = 0
    for pair, bins, eta in scanner_lines(system.geometry, system.efficiency):
        start, end = system.geometry.endpoints(pair, bins)
        weight = 3.0 * torch.as_tensor(eta, dtype=torch.float32) * system._attenuation(start, end)
        plain += system.projector.back(weight, start, end, system._window(pair, len(bins)))
        plain_randoms.add_lines(pair, bins)
        n_lines += len(bins)
    n = [get_num_detection_bins(header.scanner, t) for t in (0, 1)]
    assert n_lines > n[0] * n[1]                       # energy pairs: more lines than elements
    torch.testing.assert_close(merged, plain, rtol=1e-4, atol=1e-5 * float(plain.max()))
    assert merged_randoms.norm == pytest.approx(plain_randoms.norm, rel=1e-12)


def test_on_a_ring_scanner_list_mode_mlem_gives_the_histogram_image(tmp_path):
    """One subset (MLEM), the same model: the event-by-event path and today's histogram path
    (angular subsets of the LOR enumeration) give the same image to float rounding."""
    torch.set_num_threads(1)
    scanner = CylindricalScanner(name="ring", n_crystals=48, n_rings=4, radius_mm=200.0, ring_pitch_mm=6.0,
                                 max_ring_difference=2, fov_radius_mm=140.0)
    shape, vox = (16, 16, 4), (8.0, 8.0, 6.0)       # the image box lies inside the FOV circle
    header = make_header(scanner, subject_id="r", weight_kg=70.0, height_m=1.7, injected_mbq=300.0,
                         calibration_factor=0.05)
    rng = np.random.default_rng(4)
    activity = rng.uniform(1.0, 3.0, shape).astype(np.float32)
    mu = np.full(shape, 0.05, np.float32)
    projector = RayProjector(scanner, shape, vox)
    atten = attenuation_factors(projector, mu)
    duration = 10.0
    mean = duration * 0.05 * np.asarray(atten) * projector.forward(activity).numpy() + 0.2
    counts = rng.poisson(mean)
    lors = np.repeat(np.arange(scanner.n_lors), counts)
    a, b = scanner.lor_detectors(rng.permutation(lors))
    path = tmp_path / "ring.petsird"
    write_listmode(path, header, [EventBlock(0, int(duration * 1000), np.stack([np.maximum(a, b), np.minimum(a, b)], 1))])
    background_fraction = 0.2 * scanner.n_lors / counts.sum()      # b = 0.2 per LOR, as simulated
    config = {"iterations": 3, "subsets": 1, "postfilter_fwhm_mm": 0.0}
    listed, _ = reconstruct_any_scanner(path, mu, centered_affine(shape, vox), config,
                                        background_fraction=background_fraction, progress=False)
    histogram = run_osem(projector, counts, duration * 0.05, atten, 0.2, 3, 1, progress=False).numpy()
    assert histogram.max() > 1.0
    np.testing.assert_allclose(listed, histogram, rtol=1e-4, atol=1e-4 * histogram.max())


def test_fan_sum_randoms_follow_the_singles_where_flat_randoms_do_not():
    """Delayeds drawn from randoms 2 tau s_i s_j (singles varying threefold): the fan-sum
    estimate per line is within a few % of the truth, sums to the delayeds, and beats flat."""
    from amdiff.recon.randoms import RandomsModel, delayed_fan_sums

    rng = np.random.default_rng(6)
    n = 60
    singles = rng.uniform(0.5, 1.5, n)
    lines = np.array([(i, j) for i in range(n) for j in range(i)])
    truth = 40.0 * singles[lines[:, 0]] * singles[lines[:, 1]]
    delayeds = np.repeat(lines, rng.poisson(truth), axis=0)
    fans = delayed_fan_sums([[delayeds]], [n])
    estimates = {}
    for name, model in (("fan", RandomsModel(len(delayeds), fans)), ("flat", RandomsModel(len(delayeds)))):
        model.add_lines((0, 0), lines)
        estimates[name] = model.per_line((0, 0), lines)
        assert estimates[name].sum() == pytest.approx(len(delayeds))
    error = {k: np.median(np.abs(v / truth - 1)) for k, v in estimates.items()}
    assert error["fan"] < 0.05 and error["flat"] > 0.15, error
