"""List-mode OSEM for any PETSIRD scanner: TOF, attenuation, the header's efficiencies, randoms.

Where amdiff.recon.osem histograms a ring scanner's list into its LOR enumeration, this
reconstructs the events themselves, for any module layout the header describes
(amdiff.listmode.geometry): every prompt is a line between its two detection-bin points, with
its TOF bin where the module-type pair has several.

Model of event e of module-type pair (t1, t2), line L, TOF bin k:

    ybar_e = s * eta_L * a_L * (P_k x)_L + b_e,     s = T * calibration_factor * count_fraction

- eta_L: the header's detection efficiency of the two detection bins without the calibration
  factor (amdiff.listmode.efficiency); a line with eta 0 (a module pair that records nothing)
  is not part of the scanner.
- a_L = exp(-(P mu)_L / 10), mu in 1/cm on the image grid, P in mm.
- P_k: line integral weighted by the Gaussian TOF kernel of bin k (amdiff.physics.lines); for a
  pair with one TOF bin (non-TOF) no kernel.
- b_e: randoms, spread evenly over the line's TOF bins: with delayed events in the list, their
  fan-sum estimate per line (amdiff.recon.randoms; the delayeds estimate the randoms among the
  prompts); without, ``background_fraction`` x prompts (randoms + scatter, as the simulator
  defines it) flat over the scanner's lines. Scatter is not modelled otherwise (our choice for
  now).
- T: the list's duration; ``count_fraction``: see amdiff.recon.osem.

The sensitivity image is sum_L s eta_L a_L P_window^T 1 over every line of the scanner with
eta > 0, not only those with events, where P_window weights each point by the probability that
its TOF difference falls inside the pair's TOF bins at all. Energy bins of one element share
its point, so each element pair is traced once, with the efficiencies of its energy
combinations summed (E^2 fewer lines for E energy bins; the same sum). Subsets are
interleaved by event index (event i in subset i mod n), each with 1/n of the sensitivity; a
sub-iteration traces each event's line once for its forward and back projections
(LineProjector.back_of_ratio). The image is post-filtered and converted to SUV like the
histogram path's.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from amdiff.errors import InputError
from amdiff.joblog import progress as progress_of
from amdiff.listmode.efficiency import PairEfficiency
from amdiff.listmode.geometry import DetectorGeometry
from amdiff.physics.lines import LineProjector
from amdiff.recon.randoms import RandomsModel, delayed_fan_sums

log = logging.getLogger(__name__)
LINES_PER_CHUNK = 200_000


@dataclass
class PairEvents:
    """Prompts of one module-type pair: detection bins (n, 2) and TOF bins (n,)."""

    type_pair: tuple[int, int]
    bins: np.ndarray
    tof: np.ndarray


@dataclass
class ListData:
    events: list[PairEvents]
    n_delayed: int
    duration_s: float
    delayed_fans: list[np.ndarray]      # delayeds per detection bin, per module type

    @property
    def n_prompts(self) -> int:
        return sum(len(e.bins) for e in self.events)


def read_list(path) -> ListData:
    """Every prompt of a PETSIRD file by module-type pair, the delayeds' count and fan sums,
    the duration."""
    from petsird.helpers import get_num_detection_bins

    from amdiff.listmode.petsird_io import RawEventBlock, RawReader

    bins, tofs, n_delayed, first, last = {}, {}, 0, None, None
    with RawReader(path) as reader:
        info = reader.header.scanner
        n_bins = [int(get_num_detection_bins(info, t))
                  for t in range(info.scanner_geometry.number_of_module_types())]
        fans = [np.zeros(n) for n in n_bins]
        for block in reader.time_blocks():
            if not isinstance(block, RawEventBlock):
                continue
            first = block.start_ms if first is None else first
            last = block.stop_ms
            for i, row in enumerate(block.prompts):
                for j, ev in enumerate(row):
                    if len(ev):
                        bins.setdefault((i, j), []).append(ev[:, :2].astype(np.int64))
                        tofs.setdefault((i, j), []).append(ev[:, 2].astype(np.int64))
            n_delayed += sum(len(ev) for row in block.delayeds for ev in row)
            for fan, more in zip(fans, delayed_fan_sums(block.delayeds, n_bins)):
                fan += more
    events = [PairEvents(pair, np.concatenate(bins[pair]), np.concatenate(tofs[pair])) for pair in sorted(bins)]
    return ListData(events, n_delayed, 0.0 if first is None else (last - first) / 1000.0, fans)


def element_pairs(geometry: DetectorGeometry, efficiency: PairEfficiency, chunk: int = LINES_PER_CHUNK):
    """Every pair of detecting elements that records coincidences, in chunks: (type pair,
    bins (m, c, 2), eta (m, c)), where bins[:, k] are the detection bins of the element pair
    with the k-th of its c = n_energy(t1) x n_energy(t2) energy combinations. Energy bins of
    an element share its point, so the c combinations are one line with the summed efficiency.
    A combination that is not a line of the scanner has eta 0: one with no efficiency, or,
    within one module type, b1 <= b2 (PETSIRD orders a type's pairs b1 > b2; the same
    element at two energies, b1 > b2, is kept as the header lists it, and is a line of zero
    length). Element pairs with no recording combination are dropped."""
    for t1 in range(len(geometry.types)):
        for t2 in range(t1 + 1):
            e1, e2 = geometry.types[t1].n_energy, geometry.types[t2].n_energy
            n1, n2 = geometry.n_bins(t1) // e1, geometry.n_bins(t2) // e2
            combos = np.stack(np.meshgrid(np.arange(e1), np.arange(e2), indexing="ij"), -1).reshape(-1, 2)
            rows = max(1, chunk // max(1, n2 * len(combos)))
            for start in range(0, n1, rows):
                c1 = np.arange(start, min(start + rows, n1))
                elements = np.stack(np.meshgrid(c1, np.arange(n2), indexing="ij"), -1).reshape(-1, 2)
                if t1 == t2:
                    elements = elements[elements[:, 0] >= elements[:, 1]]
                bins = elements[:, None, :] * np.array([e1, e2]) + combos[None]
                eta = efficiency((t1, t2), bins.reshape(-1, 2)).reshape(bins.shape[:2])
                if t1 == t2:
                    eta[bins[..., 0] <= bins[..., 1]] = 0.0
                keep = (eta > 0).any(axis=1)
                if keep.any():
                    yield (t1, t2), bins[keep], eta[keep]


def scanner_lines(geometry: DetectorGeometry, efficiency: PairEfficiency, chunk: int = LINES_PER_CHUNK):
    """Every pair of detection bins with efficiency > 0, in chunks: (type pair, bins (m, 2),
    eta (m,)). Detection bins of one type pair the other way round are the same line: t1 >= t2,
    and b1 > b2 within a type, as PETSIRD orders events."""
    for pair, bins, eta in element_pairs(geometry, efficiency, chunk):
        recording = eta > 0
        yield pair, bins[recording], eta[recording]


class ListmodeOSEM:
    """The system of one list on one image grid: sensitivity, attenuation, event weights."""

    def __init__(self, header, mu: np.ndarray, voxel_size_mm, scale: float, *, device="cpu",
                 use_tof: bool = True, source=None, progress: bool = True):
        self.geometry = DetectorGeometry.from_header(header, source)
        self.efficiency = PairEfficiency(header, source)
        self.projector = LineProjector(mu.shape, voxel_size_mm, device=device)
        # mu-map 1/cm -> 1/mm, since the projector integrates in mm
        self.mu_per_mm = torch.as_tensor(mu, dtype=torch.float32, device=self.projector.device) / 10.0
        self.scale = float(scale)
        self.use_tof = use_tof
        self.progress = progress

    def _kernel(self, pair, tof_bins):
        """The TOF kernel argument of a pair's events in ``tof_bins``; None for a non-TOF pair,
        or with use_tof off."""
        binning = self.geometry.tof_binning(pair)
        if not (self.use_tof and binning.is_tof):
            return None
        return binning.edges, binning.fwhm_mm, tof_bins

    def _window(self, pair, n: int):
        """The kernel of ``n`` lines for the whole TOF window (one bin from the first edge to
        the last): the chance that an emission's TOF difference is recorded at all."""
        binning = self.geometry.tof_binning(pair)
        if not (self.use_tof and binning.is_tof):
            return None
        return binning.edges[[0, -1]], binning.fwhm_mm, np.zeros(n, dtype=np.int64)

    def _attenuation(self, start, end) -> torch.Tensor:
        return torch.exp(-self.projector.forward(self.mu_per_mm, start, end))

    @torch.no_grad()
    def sensitivity(self, randoms: RandomsModel | None = None) -> torch.Tensor:
        """sum over the scanner's lines of s eta a P_window^T 1; the lines are also added to
        ``randoms``, which spreads its total over them."""
        sens = torch.zeros(self.projector.shape, device=self.projector.device)
        for pair, bins, eta in progress_of(element_pairs(self.geometry, self.efficiency),
                                           desc="sensitivity", unit="chunk", enabled=self.progress, leave=False):
            if randoms is not None:
                randoms.add_lines(pair, bins[eta > 0])
            # one line per element pair: its energy combinations share the two points
            start, end = self.geometry.endpoints(pair, bins[:, 0])
            weight = self.scale * torch.as_tensor(eta.sum(axis=1), dtype=torch.float32, device=sens.device)
            sens += self.projector.back_attenuated(weight, start, end, self.mu_per_mm,
                                                   self._window(pair, len(bins)))
        return sens

    def n_tof_bins(self, pair) -> int:
        binning = self.geometry.tof_binning(pair)
        return binning.n_bins if (self.use_tof and binning.is_tof) else 1

    @torch.no_grad()
    def run(self, data: ListData, randoms: RandomsModel, iterations: int, subsets: int) -> torch.Tensor:
        """OSEM estimate of the activity x (Bq/mL) from the list's prompts."""
        if iterations < 1 or subsets < 1:
            raise ValueError("iterations and subsets must be >= 1")
        dev = self.projector.device
        sens = self.sensitivity(randoms)
        support = sens > 1e-6 * float(sens.max())
        # per event: endpoints, weight s eta a, TOF kernel, background b_e
        prepared = []
        for ev in data.events:
            start, end = self.geometry.endpoints(ev.type_pair, ev.bins)
            eta = torch.as_tensor(self.efficiency(ev.type_pair, ev.bins), dtype=torch.float32, device=dev)
            weight = self.scale * eta * self._attenuation(start, end)
            kernel = self._kernel(ev.type_pair, ev.tof)
            background = torch.as_tensor(randoms.per_line(ev.type_pair, ev.bins) / self.n_tof_bins(ev.type_pair),
                                         dtype=torch.float32, device=dev)
            prepared.append((start, end, weight, kernel, background))
        net = max(data.n_prompts - randoms.total, 1e-12)
        x = support.to(torch.float32) * (net / float(sens[support].double().sum()))
        bar = progress_of(total=iterations * subsets, desc="list-mode OSEM", unit="subset",
                          enabled=self.progress, leave=False)
        for _ in range(iterations):
            for s in range(subsets):
                update = torch.zeros_like(x)
                for start, end, weight, kernel, background in prepared:
                    rows = slice(s, None, subsets)
                    k = None if kernel is None else (kernel[0], kernel[1], kernel[2][rows])
                    update += self.projector.back_of_ratio(x, weight[rows], background[rows],
                                                           start[rows], end[rows], k)
                x = torch.where(support, x * update / (sens / subsets).clamp(min=1e-20), x)
                bar.update(1)
        bar.close()
        return x


def reconstruct_any_scanner(listmode_path, mu: np.ndarray, affine, recon_cfg: dict, out_path=None,
                            device: str = "cpu", *, count_fraction: float = 1.0,
                            background_fraction: float | None = None, use_tof: bool = True,
                            progress: bool = True):
    """List-mode OSEM of any PETSIRD scanner's list on the mu-map's grid; the SUV image is
    written to ``out_path`` (atomically) when given. Returns (activity Bq/mL, SUV) arrays."""
    from amdiff.io.nifti import write_volume
    from amdiff.listmode.header import acquisition_from_header
    from amdiff.listmode.petsird_io import read_header
    from amdiff.physics.suv import concentration_to_suv
    from amdiff.io.nifti import voxel_size_from_affine
    from amdiff.physics.system import gaussian_blur

    listmode_path = Path(listmode_path)
    header = read_header(listmode_path)
    acq = acquisition_from_header(header, source=listmode_path)
    data = read_list(listmode_path)
    if data.n_prompts == 0 or data.duration_s <= 0:
        raise InputError(listmode_path, "list-mode file holds no prompts or no time blocks")
    if data.n_delayed:
        randoms = RandomsModel(data.n_delayed, data.delayed_fans)
    elif background_fraction is not None:
        randoms = RandomsModel(float(background_fraction) * data.n_prompts)
    else:
        raise InputError(listmode_path, "no delayed events to estimate the randoms from, and no "
                                        "background_fraction given")
    vox = voxel_size_from_affine(affine)
    scale = data.duration_s * float(acq["calibration_factor"]) * float(count_fraction)
    system = ListmodeOSEM(header, mu, vox, scale, device=device, use_tof=use_tof,
                          source=listmode_path, progress=progress)
    log.info("%s: %d prompts, %d delayeds, %.1f s, scale %.4g, %d module type(s)", listmode_path.name,
             data.n_prompts, data.n_delayed, data.duration_s, scale, len(system.geometry.types))
    x = system.run(data, randoms, int(recon_cfg["iterations"]), int(recon_cfg["subsets"]))
    activity = x.cpu().numpy()
    image = gaussian_blur(activity, float(recon_cfg["postfilter_fwhm_mm"]), vox)
    suv = concentration_to_suv(np.clip(image, 0, None), acq["weight_kg"], acq["injected_mbq"])
    if out_path is not None:
        write_volume(out_path, suv, affine)
    return activity, suv
