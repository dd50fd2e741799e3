"""Non-overlapping down-sampling of a PETSIRD list to lower count levels.

``downsample(in_path, {percent: [path_r0, path_r1, ...]}, seed)`` writes one list per
level and realization. Semantics:

* Any PETSIRD file works (a real scanner's too, any module-type layout, TOF or not): every
  time block keeps its time interval and position, and the events an output keeps stay in
  their original order and time block.
* What a thinned list is (our choice; PETSIRD is silent): an acquisition at the same count
  rates that recorded the fraction f of everything, i.e. of f times the duration, spread over
  the original time line. So every count is thinned with f and everything that is a rate or
  a state is carried:
    - prompts: exact counts (below);
    - delayeds, singles, triples and quadruples inside event blocks: each event independently
      (below), so their counts are binomial;
    - singles histograms: each bin's count binomially (multinomially across the outputs that
      share events, so that they stay disjoint);
    - dead time (alive fractions), external signals, bed and gantry motion: copied unchanged.
      The alive fraction is a property of the count rate, which thinning does not change.
  A rate estimated from a thinned list (singles for randoms, say) divides by f times the
  interval. f is therefore recorded in each output's header (the ``amdiff-downsampled:``
  record, amdiff.listmode.header), relative to the original acquisition when the input was
  itself down-sampled; the rest of the header is copied.
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
* Delayeds and the other event kinds are thinned with the same fraction and the same
  disjointness, but independently per event (a uniform draw picks the output; one seeded
  stream per kind), so their counts are binomial rather than exact; this keeps randoms
  estimates proportional to the prompts.
* Seeded: the same input, outputs and seed give identical files. Which events a level
  keeps depends on the whole set of requested outputs (they share permutations).
* Outputs are written atomically; on any error no output file is created or replaced.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from collections import deque
from fractions import Fraction
from pathlib import Path

import numpy as np
import petsird

from amdiff.errors import InputError
from amdiff.io.atomic import atomic_path
from amdiff.levels import level_fraction, level_name
from amdiff.listmode.blocks import serialised_header
from amdiff.listmode.header import downsampled_description, kept_fraction
from amdiff.listmode.petsird_io import RawEventBlock, RawReader, RawWriter

log = logging.getLogger(__name__)
MIN_SEGMENT = 100_000
MAX_SEGMENT = 10_000_000
# one seeded random stream per event kind (and group of outputs)
_PROMPT, _DELAYED, _SINGLE, _TRIPLE, _QUADRUPLE, _HISTOGRAM = range(6)
THINNED = ["prompts (exact counts)", "delayeds", "singles", "triples", "quadruples",
           "singles histograms"]
CARRIED = ["dead time", "external signals", "bed movement", "gantry movement"]


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


def _flatten(matrix, width: int = 3) -> tuple[np.ndarray, list[int], list[int]]:
    """Concatenated (n, width) events, row lengths, list lengths of a nested event matrix."""
    lists = [ev for row in matrix for ev in row]
    if len(lists) == 1:
        events = lists[0]
    else:
        events = np.concatenate(lists) if lists else np.zeros((0, width), dtype=np.uint32)
    return events, [len(row) for row in matrix], [len(ev) for ev in lists]


def _nest(events: np.ndarray, selected: np.ndarray, shape: list[int], sizes: list[int]):
    """The selected events split back into the nested matrix shape of the input."""
    cuts = np.searchsorted(selected, np.cumsum(sizes)[:-1])
    parts = iter(np.split(events[selected], cuts))
    return [[next(parts) for _ in range(k)] for k in shape]


def _leaves(nested, depth: int):
    """The event lists at ``depth`` of petsird's nested lists (triples: 3, quadruples: 4)."""
    if depth == 0:
        yield nested
        return
    for item in nested:
        yield from _leaves(item, depth - 1)


def _select_nested(nested, depth: int, keep: np.ndarray):
    """The same nesting, holding the events whose flat index has ``keep`` True."""
    offset = 0

    def pick(item, d):
        nonlocal offset
        if d:
            return [pick(x, d - 1) for x in item]
        chosen = [e for e, k in zip(item, keep[offset:offset + len(item)]) if k]
        offset += len(item)
        return chosen
    return pick(nested, depth)


class _Thinner:
    """Independent thinning of every event kind but the prompts: one seeded stream per kind
    and group of outputs; labels say which output of the group an event goes to (-1: none)."""

    def __init__(self, groups, seed: int):
        self.groups = groups
        self.edges = [np.cumsum([float(o.fraction) for o in group]) for group in groups]
        self.rngs = {kind: [np.random.default_rng([seed, kind, g]) for g in range(len(groups))]
                     for kind in (_DELAYED, _SINGLE, _TRIPLE, _QUADRUPLE, _HISTOGRAM)}

    def labels(self, kind: int, n: int) -> list[np.ndarray]:
        out = []
        for edges, rng in zip(self.edges, self.rngs[kind]):
            lab = np.searchsorted(edges, rng.random(n), side="right").astype(np.int16)
            lab[lab == len(edges)] = -1
            out.append(lab)
        return out

    def histograms(self, block):
        """A singles-histogram time block per output (group by group): each bin's count split
        multinomially over the group's outputs and the events no output keeps."""
        value = block.value
        fields = ("singles_per_singles_unit_histogram", "singles_per_detection_bin_histogram")
        out = []
        for group, rng in zip(self.groups, self.rngs[_HISTOGRAM]):
            shares = [float(o.fraction) for o in group]
            pvals = shares + [max(0.0, 1.0 - sum(shares))]
            split = {name: [rng.multinomial(np.asarray(row, dtype=np.int64), pvals)
                            if len(row) else np.zeros((0, len(pvals)), np.int64)
                            for row in getattr(value, name)] for name in fields}
            for j in range(len(group)):
                out.append(petsird.TimeBlock.SinglesHistogramTimeBlock(
                    petsird.SinglesHistogramTimeBlock(
                        time_interval=value.time_interval,
                        **{name: [[int(c) for c in row[:, j]] for row in split[name]]
                           for name in fields})))
        return out


class _PendingBlock:
    def __init__(self, block: RawEventBlock, prompt_start: int, thinner: _Thinner):
        self.block = block
        self.prompts, self.p_shape, self.p_sizes = _flatten(block.prompts)
        self.delayeds, self.d_shape, self.d_sizes = _flatten(block.delayeds)
        self.singles, _, self.s_sizes = _flatten([block.singles], width=2)
        block.prompts = block.delayeds = block.singles = None      # keep one copy of the events
        self.start, self.stop = prompt_start, prompt_start + len(self.prompts)
        self.d_labels = thinner.labels(_DELAYED, len(self.delayeds))
        self.s_labels = thinner.labels(_SINGLE, len(self.singles))
        self.t_labels = thinner.labels(_TRIPLE, sum(map(len, _leaves(block.triples, 3))))
        self.q_labels = thinner.labels(_QUADRUPLE, sum(map(len, _leaves(block.quadruples, 4))))


def _output_headers(reader: RawReader, outs: list, seed: int) -> list[bytes]:
    """Each output's header bytes: the input's, with its down-sampling record.

    The header is serialised once with a blank record of the longest record's length (a JSON
    object of "~"), which is then overwritten by each output's record padded with spaces to that
    length, so no length prefix changes: a scanner header of tens of MB is not serialised once
    per output.
    """
    header = reader.header
    efficiencies = header.scanner.detection_efficiencies
    original = efficiencies.method_description
    input_fraction = kept_fraction(header, reader.path)
    records = [json.dumps({"kept_fraction": input_fraction * float(o.fraction),
                           "of_input": float(o.fraction), "level": level_name(o.percent),
                           "realization": o.realization, "seed": seed,
                           "thinned": THINNED, "carried": CARRIED}) for o in outs]
    width = max(map(len, records))
    blank = "{" + "~" * (width - 2) + "}"
    try:
        efficiencies.method_description = downsampled_description(original, blank)
        template = serialised_header(header)
        if template.count(blank.encode()) != 1:      # not unique in the bytes: serialise each
            out = []
            for record in records:
                efficiencies.method_description = downsampled_description(original, record)
                out.append(serialised_header(header))
            return out
    finally:
        efficiencies.method_description = original
    return [template.replace(blank.encode(), record.ljust(width).encode())
            for record in records]


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
    thinner = _Thinner(groups, int(seed))
    pending: deque = deque()

    with RawReader(in_path) as reader, contextlib.ExitStack() as stack:
        writers = []
        for o, header in zip(all_outs, _output_headers(reader, all_outs, int(seed))):
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
                elif isinstance(item, petsird.TimeBlock.SinglesHistogramTimeBlock):
                    for w, histogram in zip(writers, thinner.histograms(item)):
                        w.write_time_block(histogram)
                else:
                    for w in writers:
                        w.write_time_block(item)
                pending.popleft()

        for block in reader.time_blocks():
            if isinstance(block, RawEventBlock):
                item = _PendingBlock(block, splitter.seen, thinner)
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
    for g, (group, p_lab) in enumerate(zip(groups, prompt_labels)):
        for j, out in enumerate(group):
            p_sel = np.flatnonzero(p_lab == j)
            writers[k].write_event_block(
                item.block.start_ms, item.block.stop_ms,
                _nest(item.prompts, p_sel, item.p_shape, item.p_sizes),
                _nest(item.delayeds, np.flatnonzero(item.d_labels[g] == j), item.d_shape, item.d_sizes),
                singles=_nest(item.singles, np.flatnonzero(item.s_labels[g] == j),
                              [len(item.s_sizes)], item.s_sizes)[0],
                triples=_select_nested(item.block.triples, 3, item.t_labels[g] == j),
                quadruples=_select_nested(item.block.quadruples, 4, item.q_labels[g] == j))
            out.prompts += len(p_sel)
            k += 1
