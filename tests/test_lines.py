"""Line integrals between any points (the list-mode projector of any PETSIRD geometry) and the
detection-bin points read from PETSIRD headers: exact adjoint with and without TOF, TOF bins
that add up to the non-TOF value, PETSIRD's TOF sign, and the ring scanner read back from its
header projecting as the ring projector does."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from petsird.helpers import get_num_detection_bins

from amdiff.listmode.geometry import DetectorGeometry
from amdiff.listmode.header import make_header
from amdiff.listmode.petsird_io import read_header
from amdiff.physics.lines import LineProjector
from amdiff.physics.projector import RayProjector
from amdiff.physics.scanner import CylindricalScanner

SHAPE, VOXEL = (18, 16, 10), (6.0, 7.0, 5.0)
SCANNER = CylindricalScanner(name="ring", n_crystals=40, n_rings=6, radius_mm=160.0, ring_pitch_mm=6.0,
                             max_ring_difference=3, fov_radius_mm=120.0, crystal_size_mm=(15.0, 4.0, 5.0))


def _lines(n, rng, radius=160.0):
    """Random chords of a cylinder (some miss the image box), as a scanner records them."""
    phi = rng.uniform(0, 2 * np.pi, (n, 2))
    z = rng.uniform(-40, 40, (n, 2))
    start = np.stack([radius * np.cos(phi[:, 0]), radius * np.sin(phi[:, 0]), z[:, 0]], 1)
    end = np.stack([radius * np.cos(phi[:, 1]), radius * np.sin(phi[:, 1]), z[:, 1]], 1)
    return start, end


@pytest.fixture
def projector():
    torch.set_num_threads(1)
    return LineProjector(SHAPE, VOXEL, points_per_chunk=4000)     # several chunks


@pytest.mark.parametrize("with_tof", [False, True])
def test_back_projection_is_the_exact_adjoint(projector, with_tof):
    rng = np.random.default_rng(0)
    start, end = _lines(700, rng)
    edges = np.linspace(-200, 200, 9)
    tof = (edges, 40.0, rng.integers(0, 8, 700)) if with_tof else None
    x = rng.random(SHAPE).astype(np.float32)
    y = rng.random(700).astype(np.float32)
    lhs = float(torch.dot(projector.forward(x, start, end, tof).double(), torch.as_tensor(y).double()))
    rhs = float((projector.back(y, start, end, tof).double() * torch.as_tensor(x).double()).sum())
    assert lhs > 0 and abs(lhs - rhs) <= 1e-5 * abs(lhs)


@pytest.mark.parametrize("with_tof", [False, True])
def test_attenuated_back_projection_is_back_projection_of_the_transmitted_values(projector, with_tof):
    """The sensitivity's fused operation traces each line once for both projections; it must
    equal back(values * exp(-forward(mu))), the TOF kernel weighting the back-projection only."""
    rng = np.random.default_rng(1)
    start, end = _lines(700, rng)
    tof = (np.linspace(-200, 200, 9), 40.0, rng.integers(0, 8, 700)) if with_tof else None
    mu = (0.02 * rng.random(SHAPE)).astype(np.float32)            # 1/mm: transmissions 0.1-1
    values = rng.random(700).astype(np.float32)
    transmission = torch.exp(-projector.forward(mu, start, end))
    assert float(transmission.min()) < 0.5                           # the attenuation matters
    expected = projector.back(torch.as_tensor(values) * transmission, start, end, tof)
    fused = projector.back_attenuated(values, start, end, mu, tof)
    torch.testing.assert_close(fused, expected, rtol=1e-5, atol=1e-6 * float(expected.max()))


@pytest.mark.parametrize("with_tof", [False, True])
def test_back_of_ratio_is_the_two_pass_em_back_projection(projector, with_tof):
    """The list-mode EM update's fused operation must equal back(w / (w P x + b)) computed in
    two passes, with the TOF kernel in both projections."""
    rng = np.random.default_rng(2)
    start, end = _lines(700, rng)
    tof = (np.linspace(-200, 200, 9), 40.0, rng.integers(0, 8, 700)) if with_tof else None
    x = rng.random(SHAPE).astype(np.float32)
    weight = torch.as_tensor(rng.uniform(0.2, 2.0, 700), dtype=torch.float32)
    background = torch.as_tensor(rng.uniform(0.0, 5.0, 700), dtype=torch.float32)
    expected_counts = weight * projector.forward(x, start, end, tof) + background
    expected = projector.back(weight / expected_counts.clamp(min=1e-20), start, end, tof)
    fused = projector.back_of_ratio(x, weight, background, start, end, tof)
    assert float(expected.max()) > 0
    torch.testing.assert_close(fused, expected, rtol=1e-5, atol=1e-6 * float(expected.max()))


def test_tof_bins_add_up_to_the_non_tof_line_integral(projector):
    rng = np.random.default_rng(1)
    start, end = _lines(300, rng)
    edges = np.linspace(-400, 400, 21)          # wider than any line: nothing falls outside
    x = rng.random(SHAPE).astype(np.float32)
    plain = projector.forward(x, start, end)
    by_bin = sum(projector.forward(x, start, end, (edges, 50.0, np.full(300, k))) for k in range(20))
    assert float(plain.max()) > 30
    torch.testing.assert_close(by_bin, plain, rtol=1e-4, atol=1e-3)


def test_tof_follows_petsird_sign_and_localises_a_point_source(projector):
    """A hot voxel near the line's end: its counts land in the TOF bin of positive offset s
    ((t1 - t2) c / 2 > 0: the first detector was reached later)."""
    x = np.zeros(SHAPE, np.float32)
    x[14, 8, 5] = 1.0                                       # at +24 mm along x (voxel centres)
    centre_x = (14 - (SHAPE[0] - 1) / 2) * VOXEL[0]
    y_mm = (8 - (SHAPE[1] - 1) / 2) * VOXEL[1]
    z_mm = (5 - (SHAPE[2] - 1) / 2) * VOXEL[2]
    start, end = np.array([[-160.0, y_mm, z_mm]]), np.array([[160.0, y_mm, z_mm]])
    edges = np.arange(-160.0, 161.0, 10.0)
    counts = np.array([float(projector.forward(x, start, end, (edges, 15.0, [k]))[0])
                       for k in range(len(edges) - 1)])
    peak = int(counts.argmax())
    assert edges[peak] <= centre_x < edges[peak + 1] and centre_x > 0
    flipped = np.array([float(projector.forward(x, end, start, (edges, 15.0, [k]))[0])
                        for k in range(len(edges) - 1)])
    np.testing.assert_allclose(flipped, counts[::-1], rtol=1e-5, atol=1e-7)   # s changes sign


def test_a_uniform_box_integrates_to_its_length(projector):
    x = np.ones(SHAPE, np.float32)
    start, end = np.array([[-300.0, 0.0, 0.0]]), np.array([[300.0, 0.0, 0.0]])
    # between the outer voxel centres and the box's faces (half a voxel) the interpolation falls
    # linearly from 1 to 1/2 (zero half a voxel further out): length minus a quarter voxel;
    # to the midpoint rule's error on those ramps (< 0.1 %)
    expected = SHAPE[0] * VOXEL[0] - VOXEL[0] / 4
    assert float(projector.forward(x, start, end)[0]) == pytest.approx(expected, rel=1e-3)


# ---- geometry from PETSIRD headers -------------------------------------------------------------
def _ring_header():
    return make_header(SCANNER, subject_id="s", weight_kg=70.0, height_m=1.7, injected_mbq=300.0,
                       calibration_factor=1.0)


def test_ring_header_points_are_the_crystal_faces_and_centres():
    face = DetectorGeometry.from_header(_ring_header())
    assert len(face.types) == 1 and face.types[0].n_energy == 1
    np.testing.assert_allclose(face.types[0].points, SCANNER.detector_positions(), atol=1e-4)
    centre = DetectorGeometry.from_header(_ring_header(), interaction="centre").types[0].points
    np.testing.assert_allclose(np.hypot(centre[:, 0], centre[:, 1]), 160.0 + 7.5, atol=1e-4)
    assert not face.tof_binning((0, 0)).is_tof


def test_the_ring_scanner_read_from_its_header_projects_as_the_ring_projector():
    """Today's LOR-enumerated path and the geometry-general one give the same line integrals."""
    torch.set_num_threads(1)
    geometry = DetectorGeometry.from_header(_ring_header())
    ring = RayProjector(SCANNER, SHAPE, VOXEL, planar=False)
    lors = np.random.default_rng(2).choice(SCANNER.n_lors, 500, replace=False)
    a, b = SCANNER.lor_detectors(lors)
    start, end = geometry.endpoints((0, 0), np.stack([a, b], 1))
    x = np.random.default_rng(3).random(SHAPE).astype(np.float32)
    torch.testing.assert_close(LineProjector(SHAPE, VOXEL).forward(x, start, end), ring.forward(x, lors),
                               rtol=1e-4, atol=1e-3)


def test_two_module_types_with_tof_and_energy_bins(tmp_path):
    """petsird's example scanner: every detection bin of both module types has a point, the
    energy bins of one element share it, and the TOF binning per type pair is read."""
    from tests.test_listmode_io import generator_file

    header = read_header(generator_file(tmp_path / "gen.petsird"))
    geometry = DetectorGeometry.from_header(header)
    for t, kind in enumerate(geometry.types):
        assert len(kind.points) == get_num_detection_bins(header.scanner, t)
        assert np.isfinite(kind.points).all()
        n_en = kind.n_energy
        blocks = kind.points.reshape(-1, n_en, 3)
        assert (blocks == blocks[:, :1]).all()
        assert len(np.unique(blocks[:, 0].round(3), axis=0)) == len(blocks)   # distinct elements
    assert geometry.types[0].n_energy == 3
    tof = geometry.tof_binning((0, 0))
    assert tof.is_tof and tof.n_bins == 11 and tof.fwhm_mm == pytest.approx(9.0)
    assert geometry.tof_binning((0, 1)) is geometry.tof_binning((1, 0))
