"""Histogram list-mode events into counts per LOR, streaming over time blocks.

Events whose detector pair is no LOR of the scanner (same angular crystal, outside the
transaxial FOV or beyond the maximum ring difference) are counted and reported as a warning
with the number lost, not silently dropped. A file with detector ids beyond its header's
scanner gives no histogram: its reader raises InputError at the end of the stream
(``petsird_io.RawReader``); recon refuses a list whose header describes another geometry
than the configured one before reading events (``amdiff.listmode.header.check_scanner``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from amdiff.physics.scanner import CylindricalScanner

log = logging.getLogger(__name__)


@dataclass
class ListmodeHistogram:
    counts: np.ndarray          # int32 counts per LOR, length scanner.n_lors
    n_events: int               # all events read
    n_without_lor: int          # events whose detector pair is no LOR
    start_ms: int | None        # first time-block start
    stop_ms: int | None         # last time-block stop

    @property
    def n_counted(self) -> int:
        return self.n_events - self.n_without_lor

    @property
    def duration_s(self) -> float:
        if self.start_ms is None:
            return 0.0
        return (self.stop_ms - self.start_ms) / 1000.0


def histogram_blocks(blocks: Iterable, scanner: CylindricalScanner) -> ListmodeHistogram:
    """Counts per LOR from blocks with ``start_ms``, ``stop_ms`` and ``bins`` (n, 2)."""
    counts = np.zeros(scanner.n_lors, dtype=np.int32)
    n_events = n_bad = 0
    start = stop = None
    for block in blocks:
        start = block.start_ms if start is None else min(start, block.start_ms)
        stop = block.stop_ms if stop is None else max(stop, block.stop_ms)
        bins = np.asarray(block.bins)
        if bins.size == 0:
            continue
        lor = scanner.lor_index(bins[:, 0], bins[:, 1])
        ok = lor >= 0
        n_events += len(lor)
        n_bad += int((~ok).sum())
        counts += np.bincount(lor[ok], minlength=scanner.n_lors)
    return ListmodeHistogram(counts, n_events, n_bad, start, stop)


def histogram_listmode_info(path, scanner: CylindricalScanner) -> ListmodeHistogram:
    """Histogram a PETSIRD file; also returns event totals and the time span of its blocks."""
    from amdiff.listmode.petsird_io import iter_event_blocks

    hist = histogram_blocks(iter_event_blocks(path), scanner)
    if hist.n_without_lor:
        log.warning("%s: %d of %d events have no LOR in scanner %s and are not histogrammed",
                    path, hist.n_without_lor, hist.n_events, scanner.name)
    return hist


def histogram_listmode(path, scanner: CylindricalScanner) -> np.ndarray:
    """Counts per LOR (int32, length ``scanner.n_lors``) of a PETSIRD list-mode file."""
    return histogram_listmode_info(path, scanner).counts
