"""List-mode event blocks as numpy arrays, and their conversion to and from petsird's objects.

``EventBlock`` (prompts of one module type, for reconstruction) and ``RawEventBlock`` (every
module-type pair, prompts and delayeds, for down-sampling) are what the fast reader and writer
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
    """One EventTimeBlock with coincidence lists as (n, 3) uint32 [bin_1, bin_2, tof_idx].

    ``prompts[i][j]`` / ``delayeds[i][j]`` keep the file's nesting (module-type pairs).
    ``other_events`` says singles, triples or quadruples were present (not kept).
    """

    start_ms: int
    stop_ms: int
    prompts: list = field(default_factory=list)
    delayeds: list = field(default_factory=list)
    other_events: bool = False



def event_array(events) -> np.ndarray:
    """petsird CoincidenceEvents as (n, 3) uint32 [bin_1, bin_2, tof_idx]."""
    out = np.zeros((len(events), 3), dtype=np.uint32)
    for k, e in enumerate(events):
        out[k] = (e.detection_bins[0], e.detection_bins[1], e.tof_idx)
    return out


def raw_event_block(block: petsird.EventTimeBlock) -> RawEventBlock:
    def nonempty(x):
        return any(nonempty(y) for y in x) if isinstance(x, list) else True
    return RawEventBlock(
        block.time_interval.start, block.time_interval.stop,
        [[event_array(ev) for ev in row] for row in block.prompt_events],
        [[event_array(ev) for ev in row] for row in block.delayed_events],
        nonempty(block.single_events) or nonempty(block.triple_events)
        or nonempty(block.quadruple_events))


def petsird_event_block(start_ms: int, stop_ms: int, prompts, delayeds) -> petsird.EventTimeBlock:
    def events(matrix):
        return [[[petsird.CoincidenceEvent(detection_bins=[int(a), int(b)], tof_idx=int(t))
                  for a, b, t in np.asarray(ev).reshape(-1, 3)] for ev in row] for row in matrix]
    return petsird.EventTimeBlock(time_interval=petsird.TimeInterval(start=int(start_ms), stop=int(stop_ms)),
                                  prompt_events=events(prompts), delayed_events=events(delayeds))


def serialised_header(header: petsird.Header) -> bytes:
    """What petsird's writer puts before the time blocks (magic, schema, header)."""
    buf = io.BytesIO()
    writer = petsird.BinaryPETSIRDWriter(buf)
    writer.write_header(header)
    writer.write_time_blocks([])
    writer.close()
    return buf.getvalue()[:-1]           # less the end-of-stream marker of the empty stream
