"""Cylindrical PET scanner geometry shared by list-mode simulation and reconstruction.

Crystals sit on ``n_rings`` rings of ``n_crystals`` each. A PETSIRD detection bin
(one energy bin) is ``ring + crystal * n_rings``: module = angular position, element =
ring, matching the module/element layout written to the PETSIRD header.

A line of response (LOR) joins two crystals at different angular positions whose chord
passes within ``fov_radius_mm`` of the axis and whose ring difference is at most
``max_ring_difference``. LORs are indexed ``inplane_pair * n_ring_pairs + ring_pair``.
Coordinates are in mm, in the scanner frame: x, y transaxial, z axial, origin at the
centre; images are placed with their centre at that origin (see io.nifti.centered_affine).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import cached_property

import numpy as np

# Fields that fix which detector a detection bin is and which LORs exist (all but the name).
GEOMETRY_FIELDS = ("n_crystals", "n_rings", "radius_mm", "ring_pitch_mm", "crystal_size_mm",
                   "max_ring_difference", "fov_radius_mm")
# PETSIRD stores lengths as float32 (about 3e-5 mm at 1 m), so equal lengths may differ by that.
GEOMETRY_ATOL_MM = 1e-3


@dataclass(frozen=True)
class CylindricalScanner:
    name: str
    n_crystals: int
    n_rings: int
    radius_mm: float
    ring_pitch_mm: float
    max_ring_difference: int
    fov_radius_mm: float
    crystal_size_mm: tuple[float, float, float] = (20.0, 4.0, 4.0)  # depth, width, axial

    def __post_init__(self):
        if self.fov_radius_mm >= self.radius_mm:
            raise ValueError("fov_radius_mm must be smaller than radius_mm")
        if not 0 <= self.max_ring_difference < self.n_rings:
            raise ValueError("max_ring_difference must lie in [0, n_rings)")

    @classmethod
    def from_config(cls, cfg: dict) -> "CylindricalScanner":
        keys = ("name", "n_crystals", "n_rings", "radius_mm", "ring_pitch_mm",
                "max_ring_difference", "fov_radius_mm")
        kwargs = {k: cfg[k] for k in keys}
        if "crystal_size_mm" in cfg:
            kwargs["crystal_size_mm"] = tuple(cfg["crystal_size_mm"])
        return cls(**kwargs)

    def geometry_differences(self, other: "CylindricalScanner") -> list[tuple[str, object, object]]:
        """(field, own value, other's value) of every GEOMETRY_FIELDS entry that differs.

        Counts must be equal; lengths (mm) may differ by GEOMETRY_ATOL_MM.
        """
        out = []
        for name in GEOMETRY_FIELDS:
            mine, theirs = getattr(self, name), getattr(other, name)
            if name.endswith("_mm"):
                a = np.atleast_1d(np.asarray(mine, dtype=np.float64))
                b = np.atleast_1d(np.asarray(theirs, dtype=np.float64))
                same = a.shape == b.shape and bool(np.allclose(a, b, rtol=0.0,
                                                               atol=GEOMETRY_ATOL_MM))
            else:
                same = int(mine) == int(theirs)
            if not same:
                out.append((name, mine, theirs))
        return out

    def to_dict(self) -> dict:
        d = asdict(self)
        d["crystal_size_mm"] = list(self.crystal_size_mm)
        return d

    # ---- detectors -------------------------------------------------------------------
    @property
    def n_detectors(self) -> int:
        return self.n_crystals * self.n_rings

    @property
    def axial_length_mm(self) -> float:
        return self.n_rings * self.ring_pitch_mm

    def crystal_angles(self) -> np.ndarray:
        return 2.0 * np.pi * np.arange(self.n_crystals) / self.n_crystals

    def ring_z_mm(self) -> np.ndarray:
        return (np.arange(self.n_rings) - (self.n_rings - 1) / 2.0) * self.ring_pitch_mm

    def detector_bin(self, crystal, ring):
        return np.asarray(ring) + np.asarray(crystal) * self.n_rings

    def split_bin(self, detection_bin):
        detection_bin = np.asarray(detection_bin, dtype=np.int64)
        return detection_bin // self.n_rings, detection_bin % self.n_rings

    def detector_positions(self) -> np.ndarray:
        """(n_detectors, 3) crystal-face centres in mm, indexed by detection bin."""
        phi = self.crystal_angles()
        z = self.ring_z_mm()
        crystal, ring = self.split_bin(np.arange(self.n_detectors))
        return np.stack([self.radius_mm * np.cos(phi[crystal]),
                         self.radius_mm * np.sin(phi[crystal]),
                         z[ring]], axis=1).astype(np.float64)

    # ---- LOR enumeration ---------------------------------------------------------------
    @cached_property
    def _inplane(self):
        n = self.n_crystals
        ca, cb = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
        # chord distance from the axis: R |cos(pi (ca - cb) / n)|
        dist = self.radius_mm * np.abs(np.cos(np.pi * (ca - cb) / n))
        valid = (ca > cb) & (dist < self.fov_radius_mm)
        pairs = np.stack([ca[valid], cb[valid]], axis=1)
        lut = -np.ones((n, n), dtype=np.int64)
        lut[pairs[:, 0], pairs[:, 1]] = np.arange(len(pairs))
        return pairs, lut

    @cached_property
    def _ringpairs(self):
        r = self.n_rings
        ra, rb = np.meshgrid(np.arange(r), np.arange(r), indexing="ij")
        valid = np.abs(ra - rb) <= self.max_ring_difference
        pairs = np.stack([ra[valid], rb[valid]], axis=1)
        lut = -np.ones((r, r), dtype=np.int64)
        lut[pairs[:, 0], pairs[:, 1]] = np.arange(len(pairs))
        return pairs, lut

    @property
    def n_inplane_pairs(self) -> int:
        return len(self._inplane[0])

    @property
    def n_ring_pairs(self) -> int:
        return len(self._ringpairs[0])

    @property
    def n_lors(self) -> int:
        return self.n_inplane_pairs * self.n_ring_pairs

    def lor_detectors(self, lor=None) -> tuple[np.ndarray, np.ndarray]:
        """Detection bins (bin_a, bin_b) of LORs, with bin_a > bin_b (PETSIRD order)."""
        lor = np.arange(self.n_lors) if lor is None else np.asarray(lor, dtype=np.int64)
        p, q = np.divmod(lor, self.n_ring_pairs)
        ca, cb = self._inplane[0][p].T
        ra, rb = self._ringpairs[0][q].T
        # ca > cb, so bin_a = ra + ca*n_rings > bin_b always
        return self.detector_bin(ca, ra), self.detector_bin(cb, rb)

    def lor_index(self, bin_1, bin_2) -> np.ndarray:
        """LOR index of detection-bin pairs in either order; -1 where no LOR exists."""
        b1 = np.asarray(bin_1, dtype=np.int64)
        b2 = np.asarray(bin_2, dtype=np.int64)
        hi, lo = np.maximum(b1, b2), np.minimum(b1, b2)
        ca, ra = self.split_bin(hi)
        cb, rb = self.split_bin(lo)
        out_of_range = (hi >= self.n_detectors) | (lo < 0)
        ca, cb, ra, rb = (np.where(out_of_range, 0, v) for v in (ca, cb, ra, rb))
        # same angular crystal: no LOR; otherwise order by crystal index
        swap = ca < cb
        ca, cb = np.where(swap, cb, ca), np.where(swap, ca, cb)
        ra, rb = np.where(swap, rb, ra), np.where(swap, ra, rb)
        p = self._inplane[1][ca, cb]
        q = self._ringpairs[1][ra, rb]
        lor = p * self.n_ring_pairs + q
        return np.where(out_of_range | (p < 0) | (q < 0), -1, lor)

    def lor_endpoints(self, lor=None) -> tuple[np.ndarray, np.ndarray]:
        """Start and end points (n, 3) in mm of LORs."""
        pos = self.detector_positions()
        a, b = self.lor_detectors(lor)
        return pos[a], pos[b]
