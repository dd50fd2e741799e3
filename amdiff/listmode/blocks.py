"""List-mode event blocks as numpy arrays, and their conversion to and from petsird's objects.

``EventBlock`` (prompts of one module type, for reconstruction) and ``RawEventBlock`` (every
event kind of an event time block, for down-sampling) are what the fast reader and writer
of amdiff.listmode.petsird_io exchange. The conversions go through petsird's own objects: they
are the fallback where the fast path is not trusted, and the reference it is probed against
(amdiff.listmode.fast_path).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np
import petsird


@dataclass
class EventBlock:
    """Prompt coincidences of one time block: bins (n, 2) uint32, bins[:, 0] >= bins[:, 1]."""

    start_ms: int
    stop_ms: int
    bins: np.ndarray


@dataclass
class RawEventBlock:
    """One EventTimeBlock, every event kind in the file's nesting.

    ``prompts[i][j]`` / ``delayeds[i][j]``: (n, 3) uint32 [bin_1, bin_2, tof_idx] per
    module-type pair. ``singles[t]``: (n, 2) uint32 [detection_bin, time_offset_ps] per module
    type. ``triples`` / ``quadruples``: petsird's own nested lists of event objects (rare, so
    not worth a vectorised codec).
    """

    start_ms: int
    stop_ms: int
    prompts: list = field(default_factory=list)
    delayeds: list = field(default_factory=list)
    singles: list = field(default_factory=list)
    triples: list = field(default_factory=list)
    quadruples: list = field(default_factory=list)


def same_event_block(a: RawEventBlock, b: RawEventBlock) -> bool:
    """Whether two blocks hold the same events of every kind in the same nesting."""
    def same_arrays(x, y):
        if isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
            return np.array_equal(x, y)
        return len(x) == len(y) and all(same_arrays(u, v) for u, v in zip(x, y))
    return ((a.start_ms, a.stop_ms) == (b.start_ms, b.stop_ms)
            and all(same_arrays(x, y) for x, y in ((a.prompts, b.prompts), (a.delayeds, b.delayeds),
                                                  (a.singles, b.singles)))
            and list(a.triples) == list(b.triples) and list(a.quadruples) == list(b.quadruples))


def event_array(events) -> np.ndarray:
    """petsird CoincidenceEvents as (n, 3) uint32 [bin_1, bin_2, tof_idx]."""
    out = np.zeros((len(events), 3), dtype=np.uint32)
    for k, e in enumerate(events):
        out[k] = (e.detection_bins[0], e.detection_bins[1], e.tof_idx)
    return out


def single_array(singles) -> np.ndarray:
    """petsird SingleEvents as (n, 2) uint32 [detection_bin, time_offset_in_time_block]."""
    out = np.zeros((len(singles), 2), dtype=np.uint32)
    for k, e in enumerate(singles):
        out[k] = (e.detection_bin, e.time_offset_in_time_block)
    return out


def raw_event_block(block: petsird.EventTimeBlock) -> RawEventBlock:
    return RawEventBlock(
        block.time_interval.start, block.time_interval.stop,
        [[event_array(ev) for ev in row] for row in block.prompt_events],
        [[event_array(ev) for ev in row] for row in block.delayed_events],
        [single_array(ev) for ev in block.single_events],
        block.triple_events, block.quadruple_events)


def petsird_event_block(block: RawEventBlock) -> petsird.EventTimeBlock:
    def events(matrix):
        return [[[petsird.CoincidenceEvent(detection_bins=[int(a), int(b)], tof_idx=int(t))
                  for a, b, t in np.asarray(ev).reshape(-1, 3)] for ev in row] for row in matrix]
    singles = [[petsird.SingleEvent(detection_bin=int(b), time_offset_in_time_block=int(t))
                for b, t in np.asarray(ev).reshape(-1, 2)] for ev in block.singles]
    interval = petsird.TimeInterval(start=int(block.start_ms), stop=int(block.stop_ms))
    return petsird.EventTimeBlock(time_interval=interval, single_events=singles,
                                  prompt_events=events(block.prompts),
                                  delayed_events=events(block.delayeds),
                                  triple_events=list(block.triples),
                                  quadruple_events=list(block.quadruples))


def serialised_header(header: petsird.Header) -> bytes:
    """What petsird's writer puts before the time blocks (magic, schema, header)."""
    buf = io.BytesIO()
    writer = petsird.BinaryPETSIRDWriter(buf)
    writer.write_header(header)
    writer.write_time_blocks([])
    writer.close()
    return buf.getvalue()[:-1]           # less the end-of-stream marker of the empty stream
