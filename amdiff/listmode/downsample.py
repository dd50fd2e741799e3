"""Non-overlapping down-sampling of a PETSIRD list to lower count levels.

``downsample(in_path, {percent: [path_r0, path_r1, ...]}, seed)`` writes one list per
level and realization. Semantics:

* Any PETSIRD file works (a real scanner's too, any module-type layout, TOF or not): the
  header is carried over unchanged, every time block keeps its time interval and
  position, and the events an output keeps stay in their original order and time block.
  Non-event time blocks (bed/gantry motion, signals, dead time, singles histograms) are
  copied to every output; singles, triples and quadruples inside event blocks are dropped.
* Prompts, exact counts: with N prompts in the file, the output of level f = percent/100
  gets exactly round_half_up(f * N) prompts, decided while streaming (N unknown up
  front). Prompts are cut into segments of B events, B a multiple of the LCM of the
  fractions' denominators (>= 1e5 by default), so f * B is an integer; each segment
  draws one seeded permutation and hands f * B of its events to each output. The last
  full segment is merged with the remainder (so the final segment holds between B and
  2B events, or all N when N < B) and hands out round_half_up(f * N) minus what the
  output already has; merging keeps that feasible. Memory is bounded by 2B prompts plus
  one time block, whatever the file size.
* Disjointness: realizations of one level never share an event. When the fractions x
  realizations of all levels sum to <= 1, every output is disjoint from every other
  (consecutive slices of one permutation per segment); otherwise each level draws its
  own permutation, and outputs of different levels may overlap. A group of outputs whose
  fractions sum to exactly 1 (e.g. 4 realizations of 25 %) partitions the list: its
  final segment uses cumulative rounding (output j gets round_half_up(F_j S) -
  round_half_up(F_(j-1) S) of the S events, F_j the running sum of fractions) so that
  their union is the whole input; each count then differs from f * N by less than 1.
  The same cumulative rule is the fallback when a file is too short for exact disjoint
  counts (e.g. three 30 % realizations of 5 events).
* Delayed coincidences are thinned too, with the same fraction and the same disjointness,
  but independently per event (a uniform draw picks the output), so their counts are
  binomial rather than exact; this keeps randoms estimates proportional to the prompts.
* Seeded: the same input, outputs and seed give identical files. Which events a level
  keeps depends on the whole set of requested outputs (they share permutations).
* Outputs are written atomically; on any error no output file is created or replaced.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections import deque
from fractions import Fraction
from pathlib import Path

import numpy as np

from amdiff.errors import InputError
from amdiff.io.atomic import atomic_path
from amdiff.levels import level_fraction, level_name
from amdiff.listmode.petsird_io import RawEventBlock, RawReader, RawWriter

log = logging.getLogger(__name__)
MIN_SEGMENT = 100_000
MAX_SEGMENT = 10_000_000
_PROMPT, _DELAYED = 0, 1


def round_half_up(x: Fraction) -> int:
    return math.floor(x + Fraction(1, 2))


class _Output:
    def __init__(self, percent, realization: int, path):
        self.percent = percent
        self.fraction = level_fraction(percent)
        self.realization = realization
        self.path = Path(path)
        self.prompts = 0


def _plan(outputs: dict) -> list[list[_Output]]:
    """Outputs grouped by shared permutation (see module docstring)."""
    outs, names = [], {}
    for percent, paths in outputs.items():
        try:
            name = level_name(percent)
        except ValueError as err:
            raise InputError("downsample levels", str(err)) from None
        if name in names:
            raise InputError("downsample levels", f"{percent} and {names[name]} are the same level")
        names[name] = percent
        paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
        if not paths:
            raise InputError("downsample levels", f"level {name} has no output path")
        outs += [_Output(percent, r, p) for r, p in enumerate(paths)]
    if not outs:
        raise InputError("downsample levels", "no output requested")
    outs.sort(key=lambda o: (o.fraction, o.realization))
    resolved = [o.path.resolve() for o in outs]
    if len(set(resolved)) != len(resolved):
        raise InputError("downsample outputs", "the same output path is given twice")
    total = sum(o.fraction for o in outs)
    if total <= 1:
        return [outs]
    log.warning("the requested lists hold %s %% of the events together (levels x realizations): "
                "lists of different levels may share events; each level's realizations stay "
                "disjoint", f"{float(total) * 100:g}")
    groups = {}
    for o in outs:
        groups.setdefault(o.fraction, []).append(o)
    for frac, group in groups.items():
        if frac * len(group) > 1:
            raise InputError("downsample levels", f"{len(group)} disjoint realizations of "
                             f"{level_name(group[0].percent)} need {frac * len(group) * 100} % "
                             "of the events")
    return list(groups.values())


def _segment_size(groups, block_events: int | None) -> int:
    lcm = math.lcm(*(o.fraction.denominator for g in groups for o in g))
    if block_events is None:
        size = lcm * math.ceil(MIN_SEGMENT / lcm)
        if size > MAX_SEGMENT:
            raise InputError("downsample levels", "percents with that many decimals need "
                             f"segments of {size} events; use fewer decimals")
        return size
    if block_events <= 0 or block_events % lcm:
        raise ValueError(f"block_events must be a positive multiple of {lcm}")
    return int(block_events)


class _PromptSplitter:
    """Assigns prompt i (global file order) to at most one output per group."""

    def __init__(self, groups, segment: int, seed: int):
        self.groups = groups
        self.segment = segment
        self.rngs = [np.random.default_rng([seed, _PROMPT, g]) for g in range(len(groups))]
        self.seen = self.done = self.base = 0
        self.labels = [np.zeros(0, dtype=np.int16) for _ in groups]   # for [base, done)

    def add(self, n: int) -> None:
        self.seen += n
        while self.seen - self.done >= 2 * self.segment:
            self._label(self.segment, final=False)

    def finish(self) -> None:
        if self.seen > self.done:
            self._label(self.seen - self.done, final=True)

    def _counts(self, group, size: int, final: bool) -> list[int]:
        fracs = [o.fraction for o in group]
        if not final:
            return [int(f * size) for f in fracs]          # integers: size % lcm == 0
        exact = [round_half_up(f * self.seen) - o.prompts_planned for f, o in zip(fracs, group)]
        if sum(fracs) < 1 and sum(exact) <= size:
            return exact
        bounds = [round_half_up(sum(fracs[:j + 1]) * size) for j in range(len(fracs))]
        return list(np.diff([0] + bounds))

    def _label(self, size: int, final: bool) -> None:
        for g, group in enumerate(self.groups):
            counts = self._counts(group, size, final)
            # a uniformly random ordered sample = the head of a random permutation;
            # consecutive slices of it go to the group's outputs
            picked = self.rngs[g].choice(size, sum(counts), replace=False, shuffle=True)
            labels = np.full(size, -1, dtype=np.int16)
            labels[picked] = np.repeat(np.arange(len(group), dtype=np.int16), counts)
            for o, c in zip(group, counts):
                o.prompts_planned += int(c)
            self.labels[g] = np.concatenate([self.labels[g], labels])
        self.done += size

    def take(self, start: int, stop: int) -> list[np.ndarray]:
        """Labels (one array per group) of prompts [start, stop); forgets those before start."""
        if start - self.base > self.segment:
            self.labels = [lab[start - self.base:] for lab in self.labels]
            self.base = start
        return [lab[start - self.base:stop - self.base] for lab in self.labels]


def _flatten(matrix) -> tuple[np.ndarray, list[int], list[int]]:
    """Concatenated (n, 3) events, row lengths, list lengths of a nested coincidence matrix."""
    lists = [ev for row in matrix for ev in row]
    if len(lists) == 1:
        events = lists[0]
    else:
        events = np.concatenate(lists) if lists else np.zeros((0, 3), dtype=np.uint32)
    return events, [len(row) for row in matrix], [len(ev) for ev in lists]


def _nest(events: np.ndarray, selected: np.ndarray, shape: list[int], sizes: list[int]):
    """The selected events split back into the nested matrix shape of the input."""
    cuts = np.searchsorted(selected, np.cumsum(sizes)[:-1])
    parts = iter(np.split(events[selected], cuts))
    return [[next(parts) for _ in range(k)] for k in shape]


class _PendingBlock:
    def __init__(self, block: RawEventBlock, prompt_start: int, groups, rngs):
        self.block = block
        self.prompts, self.p_shape, self.p_sizes = _flatten(block.prompts)
        self.delayeds, self.d_shape, self.d_sizes = _flatten(block.delayeds)
        block.prompts = block.delayeds = None      # keep one copy of the events
        self.start, self.stop = prompt_start, prompt_start + len(self.prompts)
        # delayeds: independent uniform draw -> output by cumulative fraction intervals
        self.d_labels = []
        for group, rng in zip(groups, rngs):
            edges = np.cumsum([float(o.fraction) for o in group])
            u = rng.random(len(self.delayeds))
            lab = np.searchsorted(edges, u, side="right").astype(np.int16)
            lab[lab == len(group)] = -1
            self.d_labels.append(lab)


def downsample(in_path, outputs: dict, seed: int, block_events: int | None = None) -> dict:
    """Write disjoint low-count lists of ``in_path``: {percent: [path per realization]}.

    Returns {output path: number of prompts written}. Semantics: module docstring.
    """
    groups = _plan(outputs)
    segment = _segment_size(groups, block_events)
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    all_outs = [o for g in groups for o in g]
    in_path = Path(in_path)
    if in_path.resolve() in {o.path.resolve() for o in all_outs}:
        raise InputError(in_path, "an output path equals the input list")
    for o in all_outs:
        o.prompts_planned = 0

    splitter = _PromptSplitter(groups, segment, int(seed))
    delayed_rngs = [np.random.default_rng([int(seed), _DELAYED, g]) for g in range(len(groups))]
    pending: deque = deque()

    with RawReader(in_path) as reader, contextlib.ExitStack() as stack:
        header = reader.header_bytes()           # carried over byte for byte
        writers = []
        for o in all_outs:
            tmp = stack.enter_context(atomic_path(o.path))
            writer = RawWriter(tmp, header_bytes=header)
            stack.callback(writer.close)
            writers.append(writer)

        def emit(ready_all: bool) -> None:
            while pending:
                item = pending[0]
                if isinstance(item, _PendingBlock):
                    if not ready_all and item.stop > splitter.done:
                        return
                    _write_block(item, splitter.take(item.start, item.stop), groups, writers)
                else:
                    for w in writers:
                        w.write_time_block(item)
                pending.popleft()

        for block in reader.time_blocks():
            if isinstance(block, RawEventBlock):
                item = _PendingBlock(block, splitter.seen, groups, delayed_rngs)
                pending.append(item)
                splitter.add(len(item.prompts))
            else:
                pending.append(block)
            emit(ready_all=False)
        splitter.finish()
        emit(ready_all=True)

        for o in all_outs:
            if o.prompts != o.prompts_planned:   # guards the bookkeeping above
                raise RuntimeError(f"{o.path}: wrote {o.prompts} prompts, planned "
                                   f"{o.prompts_planned}")
    return {str(o.path): o.prompts for o in all_outs}


def _write_block(item: _PendingBlock, prompt_labels, groups, writers) -> None:
    k = 0
    for group, p_lab, d_lab in zip(groups, prompt_labels, item.d_labels):
        for j, out in enumerate(group):
            p_sel = np.flatnonzero(p_lab == j)
            d_sel = np.flatnonzero(d_lab == j)
            writers[k].write_event_block(
                item.block.start_ms, item.block.stop_ms,
                _nest(item.prompts, p_sel, item.p_shape, item.p_sizes),
                _nest(item.delayeds, d_sel, item.d_shape, item.d_sizes))
            out.prompts += len(p_sel)
            k += 1
