"""Ray-driven projector: adjoint identity, analytic line integrals, attenuation, orientation."""

import math

import numpy as np
import pytest
import torch

from amdiff.physics.projector import RayProjector
from amdiff.physics.system import attenuation_factors
from amdiff.physics.scanner import CylindricalScanner

SCANNER = CylindricalScanner(name="test", n_crystals=96, n_rings=8, radius_mm=200.0,
                             ring_pitch_mm=8.0, max_ring_difference=1, fov_radius_mm=150.0)


def disc_fraction(n, vox, radius, centre=(0.0, 0.0), oversample=8):
    """Partial-volume occupancy (n x n) of a disc, by sub-voxel sampling."""
    sub = (np.arange(n * oversample) - (n * oversample - 1) / 2) * vox / oversample
    inside = ((sub[:, None] - centre[0]) ** 2 + (sub[None, :] - centre[1]) ** 2) <= radius ** 2
    return inside.reshape(n, oversample, n, oversample).mean(axis=(1, 3))


def direct_lor(scanner, ca, cb, ring):
    lor = scanner.lor_index(scanner.detector_bin(ca, ring), scanner.detector_bin(cb, ring))
    assert lor >= 0
    return int(lor)


def test_adjoint_identity_random_data():
    rng = np.random.default_rng(0)
    proj = RayProjector(SCANNER, (32, 32, 8), (8.0, 8.0, 8.0), points_per_chunk=50_000)
    x = torch.as_tensor(rng.random((32, 32, 8)), dtype=torch.float32)
    lors = rng.choice(SCANNER.n_lors, size=5000, replace=False)
    y = torch.as_tensor(rng.random(len(lors)), dtype=torch.float32)
    lhs = float((proj.forward(x, lors).double() * y.double()).sum())
    rhs = float((x.double() * proj.back(y, lors).double()).sum())
    assert lhs > 0
    assert abs(lhs - rhs) / abs(lhs) < 1e-4
    # all LORs, anisotropic voxels, including oblique (ring difference 1) LORs
    proj2 = RayProjector(SCANNER, (20, 24, 10), (10.0, 9.0, 6.0))
    x2 = torch.as_tensor(rng.random((20, 24, 10)), dtype=torch.float32)
    y2 = torch.as_tensor(rng.random(SCANNER.n_lors), dtype=torch.float32)
    lhs = float((proj2.forward(x2).double() * y2.double()).sum())
    rhs = float((x2.double() * proj2.back(y2).double()).sum())
    assert abs(lhs - rhs) / abs(lhs) < 1e-4


def test_chunking_does_not_change_result():
    rng = np.random.default_rng(1)
    x = rng.random((16, 16, 8)).astype(np.float32)
    big = RayProjector(SCANNER, x.shape, (12.0, 12.0, 8.0))
    small = RayProjector(SCANNER, x.shape, (12.0, 12.0, 8.0), points_per_chunk=3000)
    torch.testing.assert_close(big.forward(x), small.forward(x), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("offset_crystals", [0, 4, 9])
def test_line_integral_through_uniform_cylinder(offset_crystals):
    n, vox, r = 64, 4.0, 80.0
    image = np.repeat(disc_fraction(n, vox, r)[:, :, None], 8, axis=2).astype(np.float32)
    proj = RayProjector(SCANNER, image.shape, (vox, vox, 8.0))
    # opposite crystals give a central LOR; shifting one end by m crystals moves the chord to
    # distance d = R sin(pi m / n) from the axis
    ca, cb = 48 + offset_crystals, 0
    d = SCANNER.radius_mm * math.sin(math.pi * offset_crystals / SCANNER.n_crystals)
    expected = 2.0 * math.sqrt(r ** 2 - d ** 2)
    lor = direct_lor(SCANNER, ca, cb, ring=3)
    got = float(proj.forward(image, [lor])[0])
    assert got == pytest.approx(expected, abs=vox)
    # ... and a ring-difference-1 LOR is longer by 1/cos(tilt)
    lor_oblique = int(SCANNER.lor_index(SCANNER.detector_bin(ca, 3), SCANNER.detector_bin(cb, 4)))
    chord = 2 * SCANNER.radius_mm * math.cos(math.pi * offset_crystals / SCANNER.n_crystals)
    stretch = math.hypot(chord, SCANNER.ring_pitch_mm) / chord
    got_oblique = float(proj.forward(image, [lor_oblique])[0])
    assert got_oblique == pytest.approx(expected * stretch, abs=vox)


def test_orientation_of_axes_off_centre_cylinder():
    """A cylinder at +x in slices 2-3 only: every direct LOR sees its analytic chord."""
    n, vox, r, cx, cy = 48, 5.0, 40.0, 45.0, -15.0
    image = np.zeros((n, n, 8), dtype=np.float32)
    image[:, :, 2:4] = disc_fraction(n, vox, r, centre=(cx, cy))[:, :, None]
    proj = RayProjector(SCANNER, image.shape, (vox, vox, 8.0))
    lors = np.arange(SCANNER.n_lors)
    a, b = SCANNER.lor_endpoints(lors)
    direct = a[:, 2] == b[:, 2]
    lors, a, b = lors[direct], a[direct], b[direct]
    u = (b - a)[:, :2] / np.linalg.norm((b - a)[:, :2], axis=1, keepdims=True)
    rel = np.array([cx, cy]) - a[:, :2]
    dist = np.abs(rel[:, 0] * u[:, 1] - rel[:, 1] * u[:, 0])
    chord = 2 * np.sqrt(np.clip(r ** 2 - dist ** 2, 0, None))
    in_slab = np.isin(np.round(a[:, 2] / 8.0 + 3.5).astype(int), [2, 3])
    expected = np.where(in_slab, chord, 0.0)
    got = proj.forward(image, lors).numpy()
    clear = (dist < r - 2 * vox) | (dist > r + 2 * vox)        # away from the rim
    assert np.abs(got - expected)[clear].max() < vox
    assert (expected[clear] > 0).sum() > 100 and (expected[clear] == 0).sum() > 100


def test_attenuation_of_water_cylinder_matches_exp_mu_l():
    mu_water, n, vox, r = 0.096, 64, 4.0, 100.0      # 1/cm, voxels, mm, mm
    mu = np.repeat(mu_water * disc_fraction(n, vox, r)[:, :, None], 8, axis=2)
    proj = RayProjector(SCANNER, mu.shape, (vox, vox, 8.0))
    for m in (0, 6):
        d = SCANNER.radius_mm * math.sin(math.pi * m / SCANNER.n_crystals)
        length_cm = 2 * math.sqrt(r ** 2 - d ** 2) / 10.0
        lor = direct_lor(SCANNER, 48 + m, 0, ring=5)
        a = float(attenuation_factors(proj, mu.astype(np.float32), [lor])[0])
        assert a == pytest.approx(math.exp(-mu_water * length_cm), rel=0.02)


def test_lor_outside_image_projects_to_zero():
    # a small image leaves the outermost LORs (chord distance ~150 mm) outside its box
    proj = RayProjector(SCANNER, (8, 8, 8), (8.0, 8.0, 8.0))
    lor = direct_lor(SCANNER, 48 + 22, 0, ring=0)   # d = 200 sin(22 pi / 96) ~ 131 mm
    assert float(proj.forward(np.ones((8, 8, 8), np.float32), [lor])[0]) == 0.0
    back = proj.back(torch.ones(1), [lor])
    assert float(back.abs().sum()) == 0.0


@pytest.mark.parametrize("shape,vox", [((24, 20, 8), (8.0, 9.0, 8.0)),     # rings on slice centres
                                       ((24, 20, 7), (8.0, 9.0, 9.5)),     # rings between slices
                                       ((24, 20, 1), (8.0, 9.0, 40.0))])   # one thick slice
def test_planar_fast_path_equals_3d_path_and_is_adjoint(shape, vox):
    scanner = CylindricalScanner(name="direct", n_crystals=96, n_rings=8, radius_mm=200.0,
                                 ring_pitch_mm=8.0, max_ring_difference=0, fov_radius_mm=150.0)
    rng = np.random.default_rng(2)
    x = torch.as_tensor(rng.random(shape), dtype=torch.float32)
    lors = rng.permutation(scanner.n_lors)[: scanner.n_lors // 2]   # unsorted, pairs repeat
    fast = RayProjector(scanner, shape, vox)
    slow = RayProjector(scanner, shape, vox, planar=False)
    assert fast.planar and not slow.planar
    y_fast = fast.forward(x, lors)
    torch.testing.assert_close(y_fast, slow.forward(x, lors), rtol=1e-4, atol=1e-3)
    v = torch.as_tensor(rng.random(len(lors)), dtype=torch.float32)
    b_fast = fast.back(v, lors)
    torch.testing.assert_close(b_fast, slow.back(v, lors), rtol=1e-4, atol=1e-3)
    lhs = float((y_fast.double() * v.double()).sum())
    rhs = float((x.double() * b_fast.double()).sum())
    assert abs(lhs - rhs) / lhs < 1e-4


def test_planar_subsets_project_as_their_rows_of_the_whole():
    # the matrix of each pair set is cut from the whole and cached per set: a subset, the
    # whole, and the subset again must agree, forward and back
    scanner = CylindricalScanner(name="direct", n_crystals=96, n_rings=6, radius_mm=200.0,
                                 ring_pitch_mm=8.0, max_ring_difference=0, fov_radius_mm=150.0)
    proj = RayProjector(scanner, (24, 20, 6), (8.0, 9.0, 8.0))
    rng = np.random.default_rng(5)
    x = torch.as_tensor(rng.random(proj.shape), dtype=torch.float32)
    subset = np.sort(rng.choice(scanner.n_lors, scanner.n_lors // 3, replace=False))
    part = proj.forward(x, subset)
    whole = proj.forward(x)
    torch.testing.assert_close(part, whole[subset])
    torch.testing.assert_close(proj.forward(x, subset[::-1].copy()), part.flip(0))
    v = torch.zeros(scanner.n_lors)
    v[subset] = torch.as_tensor(rng.random(len(subset)), dtype=torch.float32)
    torch.testing.assert_close(proj.back(v[subset], subset), proj.back(v), rtol=1e-5, atol=1e-5)
