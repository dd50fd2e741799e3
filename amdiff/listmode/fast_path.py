"""Whether the fast list-mode reader and writer (amdiff.listmode.petsird_io) can be trusted
with the installed petsird.

They rely on petsird's private internals (its stream's buffer fields, the serializers' field
layout, the order of the time-block types), verified for petsird ``VERIFIED_PETSIRD``. Before
first use, ``fast_path_problem`` checks the installed version and round-trips one block of
every time-block type between petsird's writer and the fast reader, and between the fast
writer and petsird's bytes. ``use_fast_path`` says whether to use them, and logs once why not.
"""

from __future__ import annotations

import functools
import importlib.metadata
import logging
import tempfile
from pathlib import Path

import petsird

from amdiff.listmode.blocks import RawEventBlock, raw_event_block, same_event_block, serialised_header

log = logging.getLogger(__name__)
# the petsird release whose internals the fast reader and writer were written and tested against
VERIFIED_PETSIRD = "0.12.0"


def probe_blocks() -> list:
    """One block of every time-block type, with values that need multi-byte varints."""
    tv = petsird.TimeInterval
    coincidence = petsird.CoincidenceEvent
    return [
        petsird.TimeBlock.EventTimeBlock(petsird.EventTimeBlock(
            time_interval=tv(start=5, stop=300),
            single_events=[[petsird.SingleEvent(detection_bin=200, time_offset_in_time_block=70_000),
                             petsird.SingleEvent(detection_bin=3, time_offset_in_time_block=0)]],
            prompt_events=[[[coincidence(detection_bins=[300, 2], tof_idx=3),
                             coincidence(detection_bins=[130, 129], tof_idx=0)]]],
            delayed_events=[[[coincidence(detection_bins=[7, 1], tof_idx=0)]]],
            triple_events=[[[[petsird.TripleEvent(detection_bins=[400, 9, 1], tof_indices=[2, 150])]]]],
            quadruple_events=[[[[[]]]]])),
        petsird.TimeBlock.ExternalSignalTimeBlock(petsird.ExternalSignalTimeBlock(
            time_interval=tv(start=300, stop=301), signal_id=3,
            signal_values=[1.5, -2.0])),   # float32-exact
        petsird.TimeBlock.BedMovementTimeBlock(petsird.BedMovementTimeBlock(time_interval=tv(start=301, stop=302))),
        petsird.TimeBlock.GantryMovementTimeBlock(petsird.GantryMovementTimeBlock(time_interval=tv(start=302, stop=303))),
        petsird.TimeBlock.DeadTimeTimeBlock(petsird.DeadTimeTimeBlock(time_interval=tv(start=303, stop=304))),
        petsird.TimeBlock.SinglesHistogramTimeBlock(petsird.SinglesHistogramTimeBlock(
            time_interval=tv(start=304, stop=400),
            singles_per_detection_bin_histogram=[[0, 1, 300]])),
    ]


def _probe(folder: Path) -> str | None:
    """Round-trip one block of every time-block type between petsird's writer and the fast
    reader, and the fast writer and petsird's bytes; what differs, or None."""
    from amdiff.listmode.header import make_header
    from amdiff.listmode.petsird_io import RawReader, RawWriter   # which imports this module
    from amdiff.physics.scanner import CylindricalScanner

    scanner = CylindricalScanner.from_config({
        "name": "probe", "n_crystals": 32, "n_rings": 16, "radius_mm": 300.0, "ring_pitch_mm": 4.0,
        "max_ring_difference": 15, "fov_radius_mm": 250.0})
    header = make_header(scanner, subject_id="probe", weight_kg=70.0, height_m=1.75,
                         injected_mbq=300.0, calibration_factor=1.0)
    blocks = probe_blocks()
    reference = folder / "reference.petsird"
    with open(reference, "wb") as f:
        writer = petsird.BinaryPETSIRDWriter(f)
        writer.write_header(header)
        for block in blocks:
            writer.write_time_blocks([block])
        writer.close()
    with RawReader(reference, fast=True) as reader:
        if serialised_header(reader.header) != serialised_header(header):
            return "the fast reader reads another header than petsird wrote"
        got = list(reader.time_blocks())
        header_bytes = reader.header_bytes()
    expected = [raw_event_block(b.value) if isinstance(b, petsird.TimeBlock.EventTimeBlock) else b
                for b in blocks]
    for k, (ours, theirs) in enumerate(zip(got, expected)):
        same = (type(ours) is type(theirs)) and (
            same_event_block(ours, theirs) if isinstance(ours, RawEventBlock) else repr(ours) == repr(theirs))
        if not same:
            return f"the fast reader reads time block {k} ({type(theirs).__name__}) differently"
    if len(got) != len(expected):
        return f"the fast reader reads {len(got)} time blocks of {len(expected)}"
    ours_path = folder / "fast.petsird"
    writer = RawWriter(ours_path, header_bytes=header_bytes, fast=True)
    for block, raw in zip(blocks, expected):
        if isinstance(raw, RawEventBlock):
            writer.write_raw_block(raw)
        else:
            writer.write_time_block(block)
    writer.close()
    if ours_path.read_bytes() != reference.read_bytes():
        return "the fast writer's bytes differ from petsird's"
    return None


@functools.lru_cache(maxsize=None)
def fast_path_problem() -> str | None:
    """Why the fast reader and writer cannot be used with the installed petsird (a version
    other than VERIFIED_PETSIRD, or a failed round trip), or None when they can."""
    installed = importlib.metadata.version("petsird")
    if installed != VERIFIED_PETSIRD:
        return f"petsird {installed} is installed, the fast list-mode path was verified with {VERIFIED_PETSIRD}"
    try:
        with tempfile.TemporaryDirectory(prefix="amdiff-petsird-probe-") as folder:
            return _probe(Path(folder))
    except Exception as err:   # internals renamed or moved: that is the answer too
        return f"the fast list-mode path's layout check failed ({type(err).__name__}: {err})"


@functools.lru_cache(maxsize=None)
def use_fast_path() -> bool:
    """True when the fast path agrees with petsird; otherwise logs, once, why petsird's own
    (slower) reader and writer are used."""
    problem = fast_path_problem()
    if problem is not None:
        log.warning("%s; using petsird's own reader and writer (slower, correct)", problem)
    return problem is None
