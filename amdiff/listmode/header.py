"""PETSIRD headers for our cylindrical scanners: written by ``make_header``, read back by
``scanner_from_header`` and ``acquisition_from_header``, checked by ``check_scanner``.

Header layout written by ``make_header`` (read back by ``scanner_from_header``):
  * one module type; one module per angular crystal position c (``n_crystals`` modules),
    module c = rotation about z by 2*pi*c/n_crystals, no translation;
  * each module holds ``n_rings`` detecting elements: boxes of ``crystal_size_mm``
    (depth along x from the inner face, width along y, axial along z) whose inner-face
    centre sits at (radius_mm, 0, ring_z_mm[r]) in module coordinates;
  * so detection bin = element + module * n_rings = ring + crystal * n_rings (one energy
    bin), exactly as amdiff/physics/scanner.py numbers detectors;
  * energy window 435-650 keV as one bin, non-TOF (one TOF bin spanning the window);
  * the acceptance the geometry cannot express is stored twice: as detection
    efficiencies (module-pair SGID LUT = -1 for crystal pairs whose chord misses the
    transaxial FOV, module-pair efficiency 0 for ring pairs beyond max_ring_difference,
    everything else 1, so PETSIRD tools see the same LORs), and exactly, as JSON after
    the marker ``amdiff-acceptance:`` in DetectionEfficiencies.method_description.
Lengths read back from the float32 geometry are rounded to 0.1 um.

A down-sampled list records what it keeps as JSON after ``amdiff-downsampled:`` at the end
of the same text, PETSIRD's one free-text field of the header (``downsampled_description``,
read by ``kept_fraction``); the calibration factor stays the scanner's.
"""

from __future__ import annotations

import json
import math

import numpy as np
import petsird
from petsird.helpers.create import initialize_scanner_information_dimensions

from amdiff.errors import InputError
from amdiff.physics.scanner import CylindricalScanner

ENERGY_WINDOW_KEV = (435.0, 650.0)
ENERGY_RESOLUTION_AT_511 = 0.12   # typical LSO/LYSO FWHM fraction; informational only
_ACCEPTANCE_MARK = "amdiff-acceptance:"
DOWNSAMPLED_MARK = "amdiff-downsampled:"
_ROT_ATOL = 1e-5                  # float32 rotation entries
_MM_ATOL = 1e-3                   # float32 positions, mm


def _rigid(rotation: np.ndarray, translation) -> petsird.RigidTransformation:
    m = np.zeros((3, 4), dtype=np.float32)
    m[:, :3] = rotation
    m[:, 3] = translation
    return petsird.RigidTransformation(matrix=m)


def _crystal_box(size_mm) -> petsird.BoxSolidVolume:
    depth, width, axial = (float(s) for s in size_mm)
    corners = [(x, y, z) for x in (0.0, depth) for y in (-width / 2, width / 2)
               for z in (-axial / 2, axial / 2)]
    shape = petsird.BoxShape(corners=[petsird.Coordinate(c=np.array(c, dtype=np.float32))
                                      for c in corners])
    return petsird.BoxSolidVolume(shape=shape, material_id=1)


def _geometry(scanner: CylindricalScanner) -> petsird.ScannerGeometry:
    elements = petsird.ReplicatedBoxSolidVolume(object=_crystal_box(scanner.crystal_size_mm))
    for z in scanner.ring_z_mm():
        elements.transforms.append(_rigid(np.eye(3), (scanner.radius_mm, 0.0, z)))
    modules = petsird.ReplicatedDetectorModule(
        object=petsird.DetectorModule(detecting_elements=elements))
    for phi in scanner.crystal_angles():
        c, s = math.cos(phi), math.sin(phi)
        modules.transforms.append(_rigid(np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]), (0, 0, 0)))
    return petsird.ScannerGeometry(replicated_modules=[modules])


def _coded(scheme: str, value: str, meaning: str) -> petsird.DICOMBasicCodeSequence:
    return petsird.DICOMBasicCodeSequence(coding_scheme_designator=scheme, code_value=value,
                                          code_meaning=meaning)


def _as_f32(x) -> float:
    # header scalars are float32 on disk; storing them rounded makes read(write(h)) == h
    return float(np.float32(x))


def make_header(scanner: CylindricalScanner, *, subject_id: str, weight_kg: float,
                height_m: float, injected_mbq: float, calibration_factor: float,
                model_name: str | None = None) -> petsird.Header:
    """A PETSIRD header for ``scanner`` and one 18F-FDG exam (layout: module docstring)."""
    info = petsird.ScannerInformation(model_name=model_name or scanner.name,
                                      scanner_geometry=_geometry(scanner),
                                      collimator_type="NONE")
    info.bulk_materials = [petsird.BulkMaterial(id=1, name="LYSO", density=_as_f32(7.1))]  # g/cm3
    initialize_scanner_information_dimensions(info, 1, allocate_detection_bin_efficiencies=True,
                                              allocate_module_pair_efficiencies=True)
    # non-TOF: one bin covering every path difference a coincidence can have
    window = 2.0 * (scanner.radius_mm + scanner.crystal_size_mm[0])
    info.tof_bin_edges[0][0] = petsird.BinEdges(edges=np.array([-window, window], np.float32))
    info.tof_resolution[0][0] = _as_f32(2.0 * window)
    info.event_energy_bin_edges[0] = petsird.BinEdges(
        edges=np.array(ENERGY_WINDOW_KEV, dtype=np.float32))
    info.energy_resolution_at_511[0] = _as_f32(ENERGY_RESOLUTION_AT_511)
    info.single_event_policy = petsird.SingleEventPolicy.NONE
    info.prompt_event_policy = petsird.CoincidencePolicy.REJECT_HIGHER_MULTIPLES
    info.delayed_event_policy = petsird.CoincidencePolicy.NONE
    info.triple_event_policy = petsird.TripleEventPolicy.NONE
    info.quadruple_event_policy = petsird.QuadrupleEventPolicy.NONE

    eff = info.detection_efficiencies
    eff.calibration_factor = _as_f32(calibration_factor)
    acceptance = {"max_ring_difference": int(scanner.max_ring_difference),
                  "fov_radius_mm": float(scanner.fov_radius_mm)}
    eff.method_description = ("Unit efficiencies inside the acceptance, 0 outside. "
                              f"{_ACCEPTANCE_MARK} {json.dumps(acceptance)}")
    eff.detection_bin_efficiencies[0] = [1.0] * scanner.n_detectors
    # crystal pair (a > b) is a LOR when its chord passes within the FOV (scanner.py);
    # all such pairs share one ring-pair matrix, hence one SGID
    n = scanner.n_crystals
    step = np.subtract.outer(np.arange(n), np.arange(n))
    chord = scanner.radius_mm * np.abs(np.cos(np.pi * step / n))
    accepted = np.tril(chord < scanner.fov_radius_mm, k=-1)
    eff.module_pair_sgidlut[0][0] = [[0 if accepted[a, b] else -1 for b in range(a + 1)]
                                     for a in range(n)]
    rings = np.arange(scanner.n_rings)
    ring_ok = np.abs(rings[:, None] - rings[None, :]) <= scanner.max_ring_difference
    eff.module_pair_efficiencies_vectors[0][0] = (
        [petsird.ModulePairEfficiencies(values=ring_ok.astype(float).tolist(), sgid=0)]
        if accepted.any() else [])

    patient = petsird.DICOMPatientInformation(patient_id=str(subject_id),
                                              patients_weight=_as_f32(weight_kg),
                                              patients_size=_as_f32(height_m))
    tracer = petsird.DICOMRadiopharmaceuticalInformation(
        radionuclide_total_dose=_as_f32(injected_mbq),
        radiopharmaceutical_code_sequence=_coded("SCT", "35321007", "Fluorodeoxyglucose F^18^"),
        radionuclide_code_sequence=_coded("SCT", "77004003", "^18^Fluorine"))
    exam = petsird.ExamInformation(modality="PT", patient=patient, radiopharmaceuticals=[tracer])
    return petsird.Header(scanner=info, exam=exam)


def _mm(x) -> float:
    return round(float(x), 4)


def _acceptance_from_efficiencies(info, n_crystals, n_rings, radius) -> dict:
    """max ring difference and FOV radius implied by the efficiencies (foreign headers)."""
    eff = info.detection_efficiencies
    mrd = n_rings - 1
    try:
        vectors = eff.module_pair_efficiencies_vectors[0][0]
        lut = eff.module_pair_sgidlut[0][0]
    except (IndexError, TypeError):
        vectors, lut = [], []
    if vectors:
        ok = np.zeros((n_rings, n_rings), dtype=bool)
        for v in vectors:
            ok |= np.asarray(v.values, dtype=float) > 0
        ra, rb = np.nonzero(ok)
        mrd = int(np.abs(ra - rb).max()) if len(ra) else 0
    dist = radius * np.abs(np.cos(np.pi * np.arange(n_crystals) / n_crystals))  # by |ca - cb|
    if not lut:
        return {"max_ring_difference": mrd, "fov_radius_mm": _mm(dist[1:].max() + 1e-3)}
    acc = np.zeros(n_crystals, dtype=bool)
    rej = np.zeros(n_crystals, dtype=bool)
    for a, row in enumerate(lut):
        for b, sgid in enumerate(row):
            (acc if sgid >= 0 else rej)[a - b] = True
    if not acc.any() or (acc & rej).any() or dist[acc].max() >= dist[rej].min():
        raise ValueError("its coincidence LUT is not a transaxial field-of-view cut")
    return {"max_ring_difference": mrd,
            "fov_radius_mm": _mm((dist[acc].max() + dist[rej].min()) / 2)}


def scanner_from_header(header: petsird.Header, source=None) -> CylindricalScanner:
    """The CylindricalScanner a header describes; InputError if it is not our layout."""
    info = header.scanner
    where = str(source) if source is not None else "PETSIRD header"

    def fail(problem):
        raise InputError(where, f"scanner model {info.model_name!r} cannot be used: {problem}")

    geom = info.scanner_geometry
    if geom.number_of_module_types() != 1:
        fail(f"{geom.number_of_module_types()} module types; one cylindrical ring of "
             "modules (one per angular crystal position) is expected")
    energy = info.event_energy_bin_edges
    if len(energy) != 1 or energy[0].number_of_bins() != 1:
        fail("not exactly one energy bin")
    rep = geom.replicated_modules[0]
    elements = rep.object.detecting_elements
    n_crystals, n_rings = len(rep.transforms), len(elements.transforms)
    if n_crystals < 3 or n_rings < 1:
        fail(f"{n_crystals} modules of {n_rings} elements")
    mods = np.stack([np.asarray(t.matrix, dtype=np.float64) for t in rep.transforms])
    phi = 2 * np.pi * np.arange(n_crystals) / n_crystals
    c, s = np.cos(phi), np.sin(phi)
    want = np.zeros((n_crystals, 3, 3))
    want[:, 0, 0], want[:, 0, 1], want[:, 1, 0], want[:, 1, 1], want[:, 2, 2] = c, -s, s, c, 1
    if not (np.allclose(mods[:, :, :3], want, atol=_ROT_ATOL)
            and np.allclose(mods[:, :, 3], 0, atol=_MM_ATOL)):
        fail("modules are not one ring of equal rotations about the z axis")
    els = np.stack([np.asarray(t.matrix, dtype=np.float64) for t in elements.transforms])
    corners = np.stack([np.asarray(k.c, dtype=np.float64) for k in elements.object.shape.corners])
    lo, hi = corners.min(axis=0), corners.max(axis=0)
    face = els[:, :, 3] + np.array([lo[0], (lo[1] + hi[1]) / 2, (lo[2] + hi[2]) / 2])
    z = face[:, 2]
    pitch = (z[-1] - z[0]) / (n_rings - 1) if n_rings > 1 else hi[2] - lo[2]
    ideal_z = (np.arange(n_rings) - (n_rings - 1) / 2) * pitch
    if not (np.allclose(els[:, :, :3], np.eye(3), atol=_ROT_ATOL)
            and np.allclose(face[:, 0], face[0, 0], atol=_MM_ATOL)
            and np.allclose(face[:, 1], 0, atol=_MM_ATOL)
            and pitch > 0 and np.allclose(z, ideal_z, atol=_MM_ATOL)):
        fail("detecting elements are not one axial column of equally spaced, centred rings")
    radius = _mm(face[0, 0])
    try:
        acceptance = (_marked_json(info.detection_efficiencies.method_description, _ACCEPTANCE_MARK)
                      or _acceptance_from_efficiencies(info, n_crystals, n_rings, radius))
        return CylindricalScanner(
            name=info.model_name, n_crystals=n_crystals, n_rings=n_rings, radius_mm=radius,
            ring_pitch_mm=_mm(pitch), max_ring_difference=int(acceptance["max_ring_difference"]),
            fov_radius_mm=float(acceptance["fov_radius_mm"]),
            crystal_size_mm=tuple(_mm(v) for v in hi - lo))
    except (ValueError, KeyError, TypeError) as err:
        fail(str(err))


def _marked_json(text: str | None, mark: str) -> dict | None:
    """The JSON object written after ``mark`` in ``text`` (None when the mark is absent);
    whatever follows the object (another mark) is not part of it."""
    at = (text or "").find(mark)
    if at < 0:
        return None
    rest = text[at + len(mark):]
    found, _ = json.JSONDecoder().raw_decode(rest, len(rest) - len(rest.lstrip()))
    if not isinstance(found, dict):
        raise ValueError(f"{mark} is not followed by a JSON object")
    return found


def downsampled_description(description: str | None, record_json: str) -> str:
    """``description`` with its down-sampling record (if any) replaced by ``record_json``."""
    text = description or ""
    at = text.find(DOWNSAMPLED_MARK)
    kept = text[:at].rstrip() if at >= 0 else text
    return f"{kept} {DOWNSAMPLED_MARK} {record_json}".lstrip()


def downsampling_record(header: petsird.Header, source=None) -> dict | None:
    """The record ``amdiff downsample`` wrote into a list it made (None for any other list)."""
    try:
        record = _marked_json(header.scanner.detection_efficiencies.method_description,
                              DOWNSAMPLED_MARK)
        if record is not None and not 0 < float(record["kept_fraction"]) <= 1:
            raise ValueError(f"kept_fraction {record['kept_fraction']} is not in (0, 1]")
    except (ValueError, KeyError, TypeError) as err:
        raise InputError(source or "PETSIRD header",
                         f"unreadable {DOWNSAMPLED_MARK} record in the header: {err}") from None
    return record


def kept_fraction(header: petsird.Header, source=None) -> float:
    """Share of the original acquisition's events this list holds: 1 unless it is a
    down-sampled list, which records it."""
    record = downsampling_record(header, source)
    return 1.0 if record is None else float(record["kept_fraction"])


def _geometry_value(value) -> str:
    if isinstance(value, (tuple, list)):
        return "(" + ", ".join(_geometry_value(v) for v in value) + ")"
    return str(value) if isinstance(value, (int, np.integer)) else repr(round(float(value), 4))


def check_scanner(header: petsird.Header, expected: CylindricalScanner, source,
                  expected_source: str) -> CylindricalScanner:
    """The header's scanner, or InputError naming every geometry field that differs from
    ``expected`` (the site's configured scanner, described by ``expected_source``)."""
    listed = scanner_from_header(header, source)
    diffs = listed.geometry_differences(expected)
    if diffs:
        what = "; ".join(f"{name} is {_geometry_value(mine)} in the list, "
                         f"{_geometry_value(theirs)} in the config" for name, mine, theirs in diffs)
        raise InputError(source, f"scanner geometry differs from {expected_source}: {what}")
    return listed


def _f32(x) -> float:
    """A float32 header value as the shortest decimal that stores it (70.3, not 70.30000305)."""
    return float(str(np.float32(x)))


def acquisition_from_header(header: petsird.Header, source=None) -> dict:
    """weight_kg, height_m, injected_mbq (MBq at injection), calibration_factor, subject_id."""
    where = str(source) if source is not None else "PETSIRD header"
    exam = header.exam
    if exam is None or not exam.radiopharmaceuticals:
        raise InputError(where, "header has no exam with a radiopharmaceutical "
                                "(patient weight and injected activity are needed for SUV)")
    out = {"subject_id": exam.patient.patient_id,
           "weight_kg": _f32(exam.patient.patients_weight),
           "height_m": _f32(exam.patient.patients_size),
           "injected_mbq": _f32(exam.radiopharmaceuticals[0].radionuclide_total_dose),
           "calibration_factor": _f32(header.scanner.detection_efficiencies.calibration_factor)}
    for key in ("weight_kg", "injected_mbq", "calibration_factor"):
        if not out[key] > 0:
            raise InputError(where, f"header {key} is {out[key]}, must be > 0")
    return out
