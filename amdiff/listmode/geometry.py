"""Where every detection bin of any PETSIRD scanner sits, and its TOF binning, from the header.

PETSIRD describes a scanner as module types, each a replicated module (one rigid transform per
module) holding replicated detecting elements (one transform per element, a box shape each).
A detection bin of module type t is ``energy + n_energy * (element + n_elements * module)``
(petsird.helpers.expand_detection_bins). ``DetectorGeometry`` gives, per module type, the point
of each detection bin in the gantry frame (mm): the centre of the element's face nearest the
scanner axis (``interaction="face"``, the entrance point, as amdiff's ring scanner places its
crystals) or the box's centre (``"centre"``); our choice, PETSIRD leaves the interaction depth
to the reconstruction. Energy bins of one element share its point.

TOF (PETSIRD's convention): a coincidence's TOF index k says that (t1 - t2) c / 2 lay in
``[edges[k], edges[k + 1])`` mm, with t1 and t2 the arrival times at the first and second
detection bin. That difference equals the emission point's signed distance from the midpoint of
the line towards the *second* detector, measured with a Gaussian error of FWHM
``tof_resolution`` (mm). A scanner whose module-type pair has one TOF bin is non-TOF there.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import petsird

from amdiff.errors import InputError

INTERACTIONS = ("face", "centre")


def _matrices(transforms) -> np.ndarray:
    """(n, 3, 4) float64 rigid transforms."""
    return np.stack([np.asarray(t.matrix, dtype=np.float64).reshape(3, 4) for t in transforms])


def _apply(m: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Transforms (..., 3, 4) applied to points (..., k, 3)."""
    return np.einsum("...ij,...kj->...ki", m[..., :3], points) + m[..., None, :, 3]


@dataclass
class ModuleType:
    """One module type: the point (n_bins, 3) of every detection bin, and its energy bins."""

    points: np.ndarray
    n_energy: int


@dataclass
class TofBinning:
    """TOF bin edges (mm) and resolution (FWHM, mm) of one module-type pair."""

    edges: np.ndarray
    fwhm_mm: float

    @property
    def n_bins(self) -> int:
        return len(self.edges) - 1

    @property
    def is_tof(self) -> bool:
        return self.n_bins > 1


class DetectorGeometry:
    """Detection-bin points and TOF binning of every module type (pair) of a PETSIRD header."""

    def __init__(self, types: list[ModuleType], tof: dict[tuple[int, int], TofBinning]):
        self.types = types
        self.tof = tof

    @classmethod
    def from_header(cls, header: petsird.Header, source=None, interaction: str = "face"):
        where = source or "PETSIRD header"
        if interaction not in INTERACTIONS:
            raise ValueError(f"interaction must be one of {INTERACTIONS}, got {interaction!r}")
        info = header.scanner
        try:
            modules = info.scanner_geometry.replicated_modules
            types = [cls._module_type(info, t, rep, interaction) for t, rep in enumerate(modules)]
            tof = {}
            for i in range(len(types)):
                for j in range(i + 1):
                    edges = np.asarray(info.tof_bin_edges[i][j].edges, dtype=np.float64)
                    tof[i, j] = TofBinning(edges, float(info.tof_resolution[i][j]))
        except (IndexError, AttributeError, TypeError, ValueError) as err:
            raise InputError(where, f"header does not describe every detecting element and TOF bin "
                                    f"({type(err).__name__}: {err})") from None
        for (i, j), binning in tof.items():
            if binning.n_bins < 1 or not np.all(np.diff(binning.edges) > 0):
                raise InputError(where, f"TOF bin edges of module types {i}, {j} are not increasing")
            if binning.is_tof and not binning.fwhm_mm > 0:
                raise InputError(where, f"TOF resolution of module types {i}, {j} is {binning.fwhm_mm} mm")
        return cls(types, tof)

    @staticmethod
    def _module_type(info, t: int, rep, interaction: str) -> ModuleType:
        elements = rep.object.detecting_elements
        corners = np.stack([np.asarray(c.c, dtype=np.float64) for c in elements.object.shape.corners])
        per_element = _apply(_matrices(elements.transforms), corners[None])           # (n_el, 8, 3)
        modules = _matrices(rep.transforms)                                          # (n_mod, 3, 4)
        world = _apply(modules[:, None], per_element[None])                          # (n_mod, n_el, 8, 3)
        if interaction == "centre":
            points = world.mean(axis=2)
        else:   # the 4 corners nearest the scanner axis: the entrance face of a radial crystal
            radial = np.hypot(world[..., 0], world[..., 1])
            nearest = np.argsort(radial, axis=2, kind="stable")[..., :4]
            points = np.take_along_axis(world, nearest[..., None], axis=2).mean(axis=2)
        edges = info.event_energy_bin_edges[t]
        n_energy = max(1, int(edges.number_of_bins()))
        # detection bin = energy + n_energy * (element + n_elements * module)
        points = np.repeat(points.reshape(-1, 3), n_energy, axis=0)
        return ModuleType(points, n_energy)

    def n_bins(self, module_type: int) -> int:
        return len(self.types[module_type].points)

    def endpoints(self, type_pair: tuple[int, int], bins: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Points (n, 3) of the first and second detection bin of coincidences (n, >=2) of a
        module-type pair (the first bin in a module of type_pair[0])."""
        first, second = (self.types[t].points for t in type_pair)
        bins = np.asarray(bins)
        return first[bins[:, 0]], second[bins[:, 1]]

    def tof_binning(self, type_pair: tuple[int, int]) -> TofBinning:
        i, j = type_pair
        return self.tof[max(i, j), min(i, j)]
