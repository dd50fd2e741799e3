"""Lesion sampling and placement: site, volume, shape, uptake, and containment in the host region.

Sites follow the locations listed in Table 1 of the paper (lung, liver, bone, lymph nodes in the
mediastinal, para-aortic, axillary, inguinal and cervical stations, other abdominal soft tissue).
Volumes are heavy-tailed like Table 1 (means 6-13 mL, s.d. far above the mean, minima below
0.1 mL): a log-normal body (median 1.2 mL) mixed with a 10 % bulky component (median 25 mL),
clipped to [min, max]. Lesions are ellipsoids with random axis ratios and orientation; uptake is
a lesion-to-background ratio drawn log-uniformly in [1.5, 10]. A lesion that does not fit its host
is moved, then shrunk; a site that cannot host it at all is dropped for that lesion.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from amdiff.phantom.anatomy import Anatomy
from amdiff.phantom.raster import Grid
from amdiff.phantom.shapes import Ellipsoid, Shape, random_rotation

REGION_WEIGHTS = {
    "lung": 0.20, "liver": 0.15, "bone": 0.15,
    "node_mediastinal": 0.10, "node_para_aortic": 0.08, "node_axillary": 0.07,
    "node_inguinal": 0.05, "node_cervical": 0.05, "soft_tissue": 0.15,
}
CONTRAST_RANGE = (1.5, 10.0)       # lesion-to-local-background SUV ratio (faint .. intense)
LESION_SUV_CAP = 40.0
_TRIES_PER_SIZE = 80
_SHRINK, _MAX_SHRINKS = 0.6, 8


@dataclass
class Lesion:
    region: str
    host: str
    shape: Ellipsoid
    suv: float                 # uptake of the viable part
    background_suv: float
    hu: float
    core: Ellipsoid | None = None   # necrotic core (large lesions only)
    core_suv: float = 0.0

    @property
    def volume_ml(self) -> float:
        return self.shape.volume_mm3 / 1000.0

    @property
    def suv_mean(self) -> float:
        if self.core is None:
            return self.suv
        vc = self.core.volume_mm3 / self.shape.volume_mm3
        return self.suv * (1.0 - vc) + self.core_suv * vc


def sample_volume_ml(rng: np.random.Generator, vmin: float, vmax: float) -> float:
    if rng.random() < 0.10:
        v = 25.0 * np.exp(rng.normal(0.0, 0.9))
    else:
        v = 1.2 * np.exp(rng.normal(0.0, 1.4))
    return float(np.clip(v, vmin, vmax))


def _fibonacci_sphere(n: int) -> np.ndarray:
    i = np.arange(n) + 0.5
    phi = np.arccos(1.0 - 2.0 * i / n)
    theta = np.pi * (1.0 + 5.0 ** 0.5) * i
    return np.stack([np.cos(theta) * np.sin(phi), np.sin(theta) * np.sin(phi), np.cos(phi)], 1)


_UNIT = np.concatenate([_fibonacci_sphere(160), 0.66 * _fibonacci_sphere(60),
                        0.33 * _fibonacci_sphere(20), np.zeros((1, 3))])


def probe_points(e: Ellipsoid) -> np.ndarray:
    """Points on and inside an ellipsoid used for the containment tests."""
    R = np.eye(3) if e.rotation is None else e.rotation
    return e.center + (_UNIT * e.axes) @ R.T


def _inside_all(shape: Shape, p: np.ndarray) -> bool:
    return bool(np.all(shape.sdf(p[:, 0], p[:, 1], p[:, 2]) < 0))


def _clear_of(shapes: list[Shape], p: np.ndarray, lo, hi) -> bool:
    for s in shapes:
        if np.any(s.hi < lo) or np.any(s.lo > hi):
            continue
        if np.any(s.sdf(p[:, 0], p[:, 1], p[:, 2]) <= 0):
            return False
    return True


class LesionPlacer:
    def __init__(self, anatomy: Anatomy, tissues: dict, grid: Grid, rng: np.random.Generator,
                 vmin: float, vmax: float, weights: dict[str, float] | None = None):
        self.an, self.tissues, self.grid, self.rng = anatomy, tissues, grid, rng
        self.vmin, self.vmax = vmin, vmax
        self.weights = dict(REGION_WEIGHTS if weights is None else weights)
        self.placed: list[Lesion] = []
        self.margin = float(max(grid.voxel_size_mm))
        lim = grid.half_extent_mm - 0.5 * np.asarray(grid.voxel_size_mm)
        self.grid_lo, self.grid_hi = -lim, lim

    def _candidates(self, region: str) -> list[tuple[str, Shape, str]]:
        if region in self.an.hosts:
            return self.an.hosts[region]
        return [(region, s, "soft") for s in self.an.stations.get(region, [])]

    def _avoid(self, host_name: str) -> list[Shape]:
        out = [s.shape for s in self.an.structures if s.avoid and s.name != host_name]
        out += [les.shape.grown(self.margin) for les in self.placed]
        return out

    def place(self, n: int) -> list[Lesion]:
        """Place up to n lesions (fewer only if no remaining site can host one)."""
        for _ in range(n):
            available = {r: w for r, w in self.weights.items() if w > 0}
            vol = sample_volume_ml(self.rng, self.vmin, self.vmax)
            lesion = None
            while lesion is None and available:
                names = sorted(available)
                w = np.array([available[r] for r in names], float)
                region = names[int(self.rng.choice(len(names), p=w / w.sum()))]
                lesion = self._place_in(region, vol)
                if lesion is None:
                    available.pop(region)
            if lesion is not None:
                self.placed.append(lesion)
        return self.placed

    def _place_in(self, region: str, vol_ml: float) -> Lesion | None:
        cands = [c for c in self._candidates(region)
                 if np.all(c[1].hi > self.grid_lo) and np.all(c[1].lo < self.grid_hi)]
        if not cands:
            return None
        rng = self.rng
        ratios = np.exp(rng.normal(0.0, 0.18, 3))
        ratios /= np.prod(ratios) ** (1.0 / 3.0)
        R = random_rotation(rng)
        v = vol_ml
        for _ in range(_MAX_SHRINKS + 1):
            r_eq = (3.0 * v * 1000.0 / (4.0 * np.pi)) ** (1.0 / 3.0)
            axes = r_eq * ratios
            found = self._try_fit(cands, axes, R)
            if found is not None:
                host_name, center, tissue = found
                return self._make(region, host_name, tissue, Ellipsoid(center, axes, R))
            if v <= self.vmin:
                break
            v = max(self.vmin, v * _SHRINK)
        return None

    def _try_fit(self, cands, axes, R):
        rng = self.rng
        # Larger hosts are chosen more often (bounding-box volume as a proxy).
        sizes = np.array([np.prod(np.clip(np.minimum(c[1].hi, self.grid_hi)
                                          - np.maximum(c[1].lo, self.grid_lo), 0, None))
                          for c in cands])
        if sizes.sum() <= 0:
            return None
        amax, amin = float(axes.max()), float(axes.min())
        for _ in range(_TRIES_PER_SIZE):
            name, host, tissue = cands[int(rng.choice(len(cands), p=sizes / sizes.sum()))]
            lo = np.maximum(host.lo, self.grid_lo) + amin
            hi = np.minimum(host.hi, self.grid_hi) - amin
            if np.any(hi <= lo):
                continue
            c = rng.uniform(lo, hi)
            if host.sdf(c[0], c[1], c[2]) > -amin:
                continue
            e = Ellipsoid(c, axes, R)
            p = probe_points(e)
            if np.any(p < self.grid_lo) or np.any(p > self.grid_hi):
                continue
            if not _inside_all(host, p):
                continue
            if not _clear_of(self._avoid(name), p, c - amax, c + amax):
                continue
            return name, c, tissue
        return None

    def _make(self, region, host_name, tissue, e: Ellipsoid) -> Lesion:
        rng, T = self.rng, self.tissues
        bg = T[tissue]["suv"]
        contrast = float(np.exp(rng.uniform(*np.log(CONTRAST_RANGE))))
        suv = min(LESION_SUV_CAP, contrast * bg)
        # CT appearance: soft-tissue density; hypodense in liver; lytic/sclerotic/isodense in bone.
        if region == "liver":
            hu = T["liver"]["hu"] - rng.uniform(10.0, 25.0)
        elif region == "bone":
            kind = rng.choice(3)
            hu = (60.0, 700.0, T[tissue]["hu"])[int(kind)]
        else:
            hu = float(rng.normal(35.0, 6.0))
        lesion = Lesion(region=region, host=host_name, shape=e, suv=float(suv),
                        background_suv=float(bg), hu=float(hu))
        if lesion.volume_ml > 15.0 and rng.random() < 0.4:
            lesion.core = e.scaled(0.5)
            lesion.core_suv = float(bg * rng.uniform(0.8, 1.2))
        return lesion

