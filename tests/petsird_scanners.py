"""A small two-module-type TOF PETSIRD scanner, and list-mode simulated on it from a known image.

The header is laid out as petsird's example generator lays out its scanner (replicated modules
of replicated box crystals, per-type energy bins, TOF bins per module-type pair, detection-bin
and module-pair efficiencies with an SGID table), small enough for a test:
  * type 0: 8 modules of 2 (transaxial) x 3 (axial) crystals, 2 energy bins;
  * type 1: 8 modules of 1 x 4 crystals, 1 energy bin, interleaved with type 0 on one ring;
  * every pair: 11 TOF bins of 60 mm (-330 .. 330 mm), FWHM 75 mm (500 ps);
  * detection-bin efficiencies drawn in [0.7, 1.3]; neighbouring modules record nothing (SGID -1).
The list is simulated with the reconstruction's own model (amdiff.recon.listmode_osem), with
Poisson counts per (line, TOF bin), and written with delayeds as the randoms estimate.
"""

from __future__ import annotations

import math

import numpy as np
import petsird
import torch
from petsird.helpers.create import initialize_scanner_information_dimensions

RADIUS_MM = 160.0
N_MODULES = 8                  # per type
TOF_EDGES = np.arange(-330.0, 331.0, 60.0, dtype=np.float32)
TOF_FWHM_MM = 75.0


def _box(depth, width, axial):
    corners = [(x, y, z) for x in (0.0, depth) for y in (-width / 2, width / 2) for z in (-axial / 2, axial / 2)]
    return petsird.BoxSolidVolume(shape=petsird.BoxShape(corners=[
        petsird.Coordinate(c=np.array(c, dtype=np.float32)) for c in corners]), material_id=1)


def _rigid(angle: float, translation=(0.0, 0.0, 0.0)) -> petsird.RigidTransformation:
    c, s = math.cos(angle), math.sin(angle)
    m = np.array([[c, -s, 0, 0], [s, c, 0, 0], [0, 0, 1, 0]], dtype=np.float32)
    m[:, 3] = translation
    return petsird.RigidTransformation(matrix=m)


def _module_type(crystal, transaxial: int, axial: int, pitch, offset_angle: float):
    depth, width, length = crystal
    elements = petsird.ReplicatedBoxSolidVolume(object=_box(depth, width, length))
    for a in range(axial):
        for t in range(transaxial):
            y = (t - (transaxial - 1) / 2) * pitch[0]
            z = (a - (axial - 1) / 2) * pitch[1]
            elements.transforms.append(_rigid(0.0, (RADIUS_MM, y, z)))
    module = petsird.DetectorModule(detecting_elements=elements)
    rep = petsird.ReplicatedDetectorModule(object=module)
    for k in range(N_MODULES):
        rep.transforms.append(_rigid(offset_angle + 2 * math.pi * k / N_MODULES))
    return rep


def two_type_tof_header(calibration_factor: float = 1.0, seed: int = 0) -> petsird.Header:
    rng = np.random.default_rng(seed)
    types = [_module_type((15.0, 8.0, 6.0), 2, 3, (9.0, 7.0), 0.0),
             _module_type((12.0, 10.0, 4.5), 1, 4, (0.0, 5.0), math.pi / N_MODULES)]
    geometry = petsird.ScannerGeometry(replicated_modules=types)
    info = petsird.ScannerInformation(model_name="two-type-tof", scanner_geometry=geometry)
    info.bulk_materials = [petsird.BulkMaterial(id=1, name="LYSO", density=7.1)]
    initialize_scanner_information_dimensions(info, 2, allocate_detection_bin_efficiencies=True,
                                              allocate_module_pair_efficiencies=True)
    n_energy = (2, 1)
    for t in range(2):
        info.event_energy_bin_edges[t] = petsird.BinEdges(
            edges=np.linspace(435.0, 650.0, n_energy[t] + 1, dtype=np.float32))
        info.energy_resolution_at_511[t] = 0.12
        for u in range(t + 1):
            info.tof_bin_edges[t][u] = petsird.BinEdges(edges=TOF_EDGES)
            info.tof_resolution[t][u] = TOF_FWHM_MM
    eff = info.detection_efficiencies
    eff.calibration_factor = calibration_factor
    per_module = [6 * 2, 4]
    for t in range(2):
        eff.detection_bin_efficiencies[t] = rng.uniform(0.7, 1.3, N_MODULES * per_module[t]).astype(np.float32)
    for t in range(2):
        for u in range(t + 1):
            # module k of type t sits at angle 2 pi k / 8 (+ pi/8 for type 1): neighbours record nothing
            lut = []
            for m1 in range(N_MODULES):
                row = []
                for m2 in range(N_MODULES if t != u else m1 + 1):
                    steps = (m1 - m2 + (0.5 if t != u else 0.0)) % N_MODULES
                    row.append(-1 if min(steps, N_MODULES - steps) < 1.0 else 0)
                lut.append(row)
            eff.module_pair_sgidlut[t][u] = lut
            values = rng.uniform(0.9, 1.1, (per_module[t], per_module[u])).astype(np.float32)
            eff.module_pair_efficiencies_vectors[t][u] = [petsird.ModulePairEfficiencies(values=values, sgid=0)]
    info.single_event_policy = petsird.SingleEventPolicy.NONE
    info.prompt_event_policy = petsird.CoincidencePolicy.REJECT_HIGHER_MULTIPLES
    info.delayed_event_policy = petsird.CoincidencePolicy.REJECT_HIGHER_MULTIPLES
    patient = petsird.DICOMPatientInformation(patient_id="phantom", patients_weight=70.0, patients_size=1.7)
    tracer = petsird.DICOMRadiopharmaceuticalInformation(radionuclide_total_dose=300.0)
    exam = petsird.ExamInformation(modality="PT", patient=patient, radiopharmaceuticals=[tracer])
    return petsird.Header(scanner=info, exam=exam)


def simulate(path, header, activity: np.ndarray, mu: np.ndarray, voxel_mm, duration_s: float,
             randoms_per_line: float, seed: int = 0) -> dict:
    """Poisson list-mode of ``activity`` (Bq/mL) on ``header``'s scanner, the reconstruction's own
    model; delayeds drawn with the randoms' mean. Returns the counts."""
    from amdiff.listmode.petsird_io import RawWriter
    from amdiff.recon.listmode_osem import ListmodeOSEM, scanner_lines

    rng = np.random.default_rng(seed)
    scale = duration_s * float(header.scanner.detection_efficiencies.calibration_factor)
    system = ListmodeOSEM(header, mu, voxel_mm, scale, progress=False)
    image = torch.as_tensor(activity, dtype=torch.float32)
    n_types = len(system.geometry.types)
    prompts = [[[] for _ in range(t + 1)] for t in range(n_types)]
    delayeds = [[[] for _ in range(t + 1)] for t in range(n_types)]
    for pair, bins, eta in scanner_lines(system.geometry, system.efficiency):
        start, end = system.geometry.endpoints(pair, bins)
        weight = scale * torch.as_tensor(eta, dtype=torch.float32) * system._attenuation(start, end)
        n_tof = system.n_tof_bins(pair)
        for k in range(n_tof):
            kernel = system._kernel(pair, np.full(len(bins), k))
            mean = (weight * system.projector.forward(image, start, end, kernel)).numpy() + randoms_per_line / n_tof
            n = rng.poisson(mean)
            events = np.repeat(np.column_stack([bins, np.full(len(bins), k)]), n, axis=0)
            prompts[pair[0]][pair[1]].append(events)
        n_random = rng.poisson(np.full(len(bins), randoms_per_line))
        delayeds[pair[0]][pair[1]].append(np.repeat(np.column_stack([bins, np.zeros(len(bins))]), n_random, axis=0))

    def stacked(matrix):
        return [[rng.permutation(np.concatenate(c)).astype(np.uint32) if c else np.zeros((0, 3), np.uint32)
                 for c in row] for row in matrix]
    prompts, delayeds = stacked(prompts), stacked(delayeds)
    writer = RawWriter(path, header)
    writer.write_event_block(0, int(duration_s * 1000), prompts, delayeds)
    writer.close()
    return {"prompts": sum(len(e) for row in prompts for e in row),
            "delayeds": sum(len(e) for row in delayeds for e in row)}
