"""PETSIRD list-mode files: fast streaming event I/O (the header is amdiff.listmode.header).

Event I/O bypasses petsird's per-event Python objects (~0.3 M events/s): the binary
format stores every CoincidenceEvent as three LEB128 varints (bin, bin, tof_idx), so
lists are decoded and encoded with vectorised numpy on petsird's own buffered stream
(header and rare time-block types still go through petsird's serializers). Tests check
the result against petsird's reader and writer byte for byte and event for event.

That fast path relies on petsird's private internals; amdiff.listmode.fast_path checks them
before first use, and where they differ ``RawReader`` and ``RawWriter`` use petsird's own
reader and writer instead (slower, correct; amdiff.listmode.blocks converts), with one log line.
Detector ids beyond the header's scanner are corrupt data, refused by every reader
(``RawReader``); ``amdiff.listmode.header.check_scanner`` refuses a list whose geometry is
not the configured one.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import petsird
from petsird import _binary
from petsird import binary as _pb
from petsird.helpers import get_num_detection_bins

from amdiff.errors import InputError
from amdiff.io.atomic import atomic_path
from amdiff.io.files import check_input_file
from amdiff.listmode import fast_path
from amdiff.listmode.blocks import (EventBlock, RawEventBlock, petsird_event_block, raw_event_block,
                                    serialised_header)

_MAX_VARINT_BYTES = 5             # uint32


# ---------------------------------------------------------------------------------------
# varint codec (yardl binary: unsigned LEB128, little-endian 7-bit groups)
# ---------------------------------------------------------------------------------------
def encode_varints(values) -> np.ndarray:
    """uint8 bytes of the unsigned varints of ``values`` (uint32), in order."""
    v = np.ascontiguousarray(values, dtype=np.uint32).ravel()
    if v.size == 0:
        return np.zeros(0, dtype=np.uint8)
    top = int(v.max())
    width = 1 + sum(top >= (1 << s) for s in (7, 14, 21, 28))     # bytes of the largest
    if width == 1:
        return v.astype(np.uint8)
    nbytes = np.ones(v.size, dtype=np.uint8)
    for k in range(1, width):
        nbytes += v >= (1 << (7 * k))
    # byte k of every value in column k; keep[:, k] says whether the value has that byte
    table = np.empty((v.size, width), dtype=np.uint8)
    keep = np.empty((v.size, width), dtype=bool)
    keep[:, 0] = True
    rest = v
    for k in range(width):
        col = table[:, k]
        np.bitwise_and(rest, 0x7F, out=col, casting="unsafe")
        if k < width - 1:
            more = nbytes > k + 1
            col |= more.view(np.uint8) << 7                        # continuation bit
            keep[:, k + 1] = more
            rest = rest >> 7
    return table[keep]


def _decode_complete(buf: np.ndarray, ends: np.ndarray, out: np.ndarray) -> None:
    """Decode the varints of ``buf`` ending at byte positions ``ends`` into ``out``."""
    starts = np.empty_like(ends)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    lengths = ends - starts + 1
    width = int(lengths.max())
    if width > _MAX_VARINT_BYTES or (width == _MAX_VARINT_BYTES
                                     and (buf[ends[lengths == width]] > 0x0F).any()):
        raise ValueError("corrupt event data (varint larger than uint32)")
    np.bitwise_and(buf[starts], 0x7F, out=out, casting="unsafe")
    for k in range(1, width):
        # byte k of every value; values shorter than k+1 bytes read their last byte, masked
        part = (buf[np.minimum(starts + k, ends)] & 0x7F).astype(np.uint32) << np.uint32(7 * k)
        part *= lengths > k
        out |= part


def _read_varints(stream: _binary.CodedInputStream, count: int) -> np.ndarray:
    """Read ``count`` uint32 varints from petsird's buffered input stream, vectorised."""
    out = np.empty(count, dtype=np.uint32)
    done = 0
    while done < count:
        avail = stream._last_read_count - stream._offset
        if avail <= 0:
            stream._fill_buffer(1)
            continue
        window = min(avail, (count - done) * _MAX_VARINT_BYTES)
        buf = np.frombuffer(stream._buffer, dtype=np.uint8, count=window, offset=stream._offset)
        ends = np.flatnonzero(buf < 0x80)[: count - done]
        if ends.size:
            _decode_complete(buf, ends, out[done:done + ends.size])
            done += ends.size
            stream._offset += int(ends[-1]) + 1
        del buf                                   # release the export before refilling
        if done < count and stream._last_read_count - stream._offset < _MAX_VARINT_BYTES:
            partial = stream._last_read_count - stream._offset
            stream._fill_buffer(partial + 1)      # EOFError when the file is cut here
        elif ends.size == 0:
            raise ValueError("corrupt event data (varint longer than 5 bytes)")
    return out


# ---------------------------------------------------------------------------------------
# raw time-block stream shared by the readers, the writer and downsample
# ---------------------------------------------------------------------------------------
_EVENT_TAG = 0
_TIME_BLOCK_CASES = [
    (petsird.TimeBlock.EventTimeBlock, _pb.EventTimeBlockSerializer()),
    (petsird.TimeBlock.ExternalSignalTimeBlock, _pb.ExternalSignalTimeBlockSerializer()),
    (petsird.TimeBlock.BedMovementTimeBlock, _pb.BedMovementTimeBlockSerializer()),
    (petsird.TimeBlock.GantryMovementTimeBlock, _pb.GantryMovementTimeBlockSerializer()),
    (petsird.TimeBlock.DeadTimeTimeBlock, _pb.DeadTimeTimeBlockSerializer()),
    (petsird.TimeBlock.SinglesHistogramTimeBlock, _pb.SinglesHistogramTimeBlockSerializer()),
]
_TIME_BLOCK = _binary.UnionSerializer(petsird.TimeBlock, _TIME_BLOCK_CASES)
_EVENT_FIELDS = dict(_pb.EventTimeBlockSerializer()._field_serializers)
_TRIPLES = _EVENT_FIELDS["triple_events"]
_QUADRUPLES = _EVENT_FIELDS["quadruple_events"]


def _read_event_lists(stream, limit: int, width: int) -> list:
    """A vector of event lists, each as (n, width) uint32 (``width`` varints per event)."""
    out = []
    for _ in range(stream.read_unsigned_varint()):
        n = stream.read_unsigned_varint()
        if width * n > limit:
            raise ValueError(f"corrupt event list length {n}")
        out.append(_read_varints(stream, width * n).reshape(n, width))
    return out


def _read_coincidence_matrix(stream, limit: int) -> list:
    """Coincidences per module-type pair as (n, 3) uint32 [bin_1, bin_2, tof_idx]."""
    return [_read_event_lists(stream, limit, 3) for _ in range(stream.read_unsigned_varint())]


def _read_event_block(stream, limit: int) -> RawEventBlock:
    start = stream.read_unsigned_varint()
    stop = stream.read_unsigned_varint()
    singles = _read_event_lists(stream, limit, 2)     # per module type: [detection_bin, time_offset]
    prompts = _read_coincidence_matrix(stream, limit)
    delayeds = _read_coincidence_matrix(stream, limit)
    return RawEventBlock(start, stop, prompts, delayeds, singles,
                         _TRIPLES.read(stream), _QUADRUPLES.read(stream))


def _check_file(path: Path) -> None:
    if not path.exists():
        raise InputError(path, "file not found")
    if path.is_dir():
        raise InputError(path, "is a directory, expected a PETSIRD list-mode file")
    check_input_file(path, "PETSIRD list-mode file")   # a FIFO or device: refused before it is opened
    if path.stat().st_size == 0:
        raise InputError(path, "empty file (0 bytes), expected a PETSIRD list-mode file")
    with open(path, "rb") as f:
        if f.read(len(_binary.MAGIC_BYTES)) != _binary.MAGIC_BYTES:
            raise InputError(path, "not a PETSIRD binary file (no 'yardl' magic bytes)")


def _corrupt(path: Path, err: BaseException) -> InputError:
    # BufferError: petsird's stream cannot refill a varint cut by the end of the file
    what = ("file ends early" if isinstance(err, (EOFError, BufferError))
            else f"{type(err).__name__}: {err}")
    return InputError(path, f"truncated or corrupt PETSIRD list-mode file ({what})")


def _detection_bins_per_type(header: petsird.Header, path: Path) -> list[int]:
    """Number of detection bins (elements x energy bins) of every module type of the header."""
    info = header.scanner
    try:
        return [int(get_num_detection_bins(info, t))
                for t in range(info.scanner_geometry.number_of_module_types())]
    except (IndexError, AttributeError, TypeError):
        raise InputError(path, "header does not give the detecting elements and energy bins of "
                               "every module type") from None


class _BinCheck:
    """Counts coincidences whose detection bins lie beyond the header's scanner (corrupt data:
    no detector has that id) and remembers the first one, for one error at the end."""

    def __init__(self, n_bins: list[int]):
        self.n_bins = n_bins
        self.seen = {"prompt": 0, "delayed": 0, "single": 0}
        self.bad = 0
        self.first = None

    def add(self, kind: str, matrix: list, block_index: int) -> None:
        for i, row in enumerate(matrix):
            for j, events in enumerate(row):
                if len(events):
                    self._add_list(kind, events, i, j, block_index)
                self.seen[kind] += len(events)

    def add_singles(self, singles: list, block_index: int) -> None:
        for t, events in enumerate(singles):
            if len(events) and t < len(self.n_bins) and events[:, 0].max() >= self.n_bins[t]:
                k = int(np.flatnonzero(events[:, 0] >= self.n_bins[t])[0])
                if self.first is None:
                    self.first = (f"single event {self.seen['single'] + k} (time block {block_index}) "
                                  f"with detector id {int(events[k, 0])}")
                self.bad += int((events[:, 0] >= self.n_bins[t]).sum())
            self.seen["single"] += len(events)

    def _add_list(self, kind, events, i, j, block_index) -> None:
        # List [i][j] holds bins of module types i and j. Rows beyond the header's types are
        # not checked but carried: petsird 0.12's example generator writes its last row twice.
        if max(i, j) >= len(self.n_bins):
            return
        lim_i, lim_j = self.n_bins[i], self.n_bins[j]
        if events[:, 0].max() < lim_i and events[:, 1].max() < lim_j:
            return
        bad = np.flatnonzero((events[:, 0] >= lim_i) | (events[:, 1] >= lim_j))
        if self.first is None:
            k = int(bad[0])
            self.first = (f"{kind} event {self.seen[kind] + k} (time block {block_index}) "
                          f"with detector ids {int(events[k, 0])}, {int(events[k, 1])}")
        self.bad += len(bad)

    def error(self, path: Path) -> InputError | None:
        if not self.bad:
            return None
        total = sum(self.seen.values())
        scanner = (f"{self.n_bins[0]} detection bins" if len(self.n_bins) == 1 else
                   f"detection bins per module type {', '.join(map(str, self.n_bins))}")
        return InputError(path, f"{self.bad} of {total} events have detector ids out of range "
                                f"(the header's scanner has {scanner}); first: {self.first}")


class RawReader:
    """Open a PETSIRD file: ``.header`` then ``time_blocks()`` yields RawEventBlock for
    event blocks and petsird.TimeBlock objects for every other time-block type.

    Detector ids (detection bins) beyond the header's scanner are corrupt data: when the
    stream ends, ``time_blocks()`` raises one InputError with their count and the first one.
    """

    def __init__(self, path, fast: bool | None = None):
        self.path = Path(path)
        self.fast = fast_path.use_fast_path() if fast is None else fast
        _check_file(self.path)
        self._size = self.path.stat().st_size
        self._file = open(self.path, "rb")
        try:
            self._reader = petsird.BinaryPETSIRDReader(self._file)
            self.header = self._reader.read_header()
            if self.fast:
                stream = self._reader._stream
                self._header_end = self._file.tell() - (stream._last_read_count - stream._offset)
        except RuntimeError as err:
            self._file.close()
            if "schema" in str(err):
                raise InputError(self.path, "PETSIRD schema differs from the installed petsird "
                                 "(written by another PETSIRD version?)") from None
            raise _corrupt(self.path, err) from None
        except Exception as err:  # any decoding failure of a cut or garbled header
            self._file.close()
            raise _corrupt(self.path, err) from None
        try:
            self._n_bins = _detection_bins_per_type(self.header, self.path)
        except InputError:
            self._file.close()
            raise

    def header_bytes(self) -> bytes:
        """The file's bytes up to the time blocks (magic, schema, header), for copying. Without
        the fast path: the header serialised again by petsird, the same bytes for a file
        written with this schema."""
        if not self.fast:
            return serialised_header(self.header)
        with open(self.path, "rb") as f:
            return f.read(self._header_end)

    def close(self):
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def time_blocks(self) -> Iterator:
        check = _BinCheck(self._n_bins)
        try:
            for index, block in enumerate(self._blocks()):
                if isinstance(block, RawEventBlock):
                    check.add("prompt", block.prompts, index)
                    check.add("delayed", block.delayeds, index)
                    check.add_singles(block.singles, index)
                yield block
        except InputError:
            raise
        except Exception as err:
            raise _corrupt(self.path, err) from None
        # after the whole stream, so that the error counts every bad event
        if (error := check.error(self.path)) is not None:
            raise error

    def _blocks(self) -> Iterator:
        if not self.fast:
            for block in self._reader.read_time_blocks():
                yield (raw_event_block(block.value) if isinstance(block, petsird.TimeBlock.EventTimeBlock)
                       else block)
            return
        stream = self._reader._stream
        while (count := stream.read_unsigned_varint()) > 0:
            for _ in range(count):
                tag = stream.read_byte()
                if tag == _EVENT_TAG:
                    yield _read_event_block(stream, self._size)
                elif tag < len(_TIME_BLOCK_CASES):
                    case_type, serializer = _TIME_BLOCK_CASES[tag]
                    yield case_type(serializer.read(stream))
                else:
                    raise ValueError(f"unknown time-block type {tag}")


class RawWriter:
    """Write a PETSIRD file: header, then time blocks from numpy lists (see RawEventBlock).

    The bytes are those petsird's BinaryPETSIRDWriter writes for the same content, one
    time block per stream chunk (tested). ``header_bytes`` (RawReader.header_bytes())
    copies a header verbatim instead of serialising ``header``.
    """

    def __init__(self, path, header: petsird.Header | None = None, *,
                 header_bytes: bytes | None = None, fast: bool | None = None):
        self.fast = fast_path.use_fast_path() if fast is None else fast
        self._file = open(path, "wb")
        if not self.fast:
            if header_bytes is not None:
                header = petsird.BinaryPETSIRDReader(io.BytesIO(header_bytes)).read_header()
            self._writer = petsird.BinaryPETSIRDWriter(self._file)
            self._writer.write_header(header)
            self._blocks_written = False
            return
        self._stream = _binary.CodedOutputStream(self._file, buffer_size=1 << 20)
        if header_bytes is not None:
            self._stream.write_bytes(header_bytes)
        else:
            self._stream.write_bytes(_binary.MAGIC_BYTES)
            _binary.write_fixed_int32(self._stream, _binary.CURRENT_BINARY_FORMAT_VERSION)
            _binary.string_serializer.write(self._stream, petsird.BinaryPETSIRDWriter.schema)
            _pb.HeaderSerializer().write(self._stream, header)

    def write_event_block(self, start_ms: int, stop_ms: int, prompts: list,
                          delayeds: list = (), *, singles: list = (), triples: list = (),
                          quadruples: list = ()) -> None:
        """One EventTimeBlock (the lists as in RawEventBlock)."""
        if not 0 <= start_ms <= stop_ms < 2 ** 32:
            raise ValueError(f"bad time interval [{start_ms}, {stop_ms}] ms")
        if not self.fast:
            self._write_library_block(petsird.TimeBlock.EventTimeBlock(petsird_event_block(
                RawEventBlock(start_ms, stop_ms, prompts, delayeds, singles, triples, quadruples))))
            return
        # chunk of 1 item, union tag, interval, singles, prompts, delayeds: all varints
        head = self._write_lists([1, _EVENT_TAG, start_ms, stop_ms], singles)
        for matrix in (prompts, delayeds):
            head.append(len(matrix))
            for row in matrix:
                head = self._write_lists(head, row)
        self._write_values(head)
        _TRIPLES.write(self._stream, list(triples))      # rare kinds: petsird's serializers
        _QUADRUPLES.write(self._stream, list(quadruples))

    def _write_lists(self, head: list, lists) -> list:
        """Write ``head`` and a vector of event lists; returns the varints still to write."""
        head.append(len(lists))
        for events in lists:
            head.append(len(events))
            if len(events):
                self._write_values(head)
                head = []
                self._write_values(events)
        return head

    def write_raw_block(self, block: RawEventBlock) -> None:
        self.write_event_block(block.start_ms, block.stop_ms, block.prompts, block.delayeds,
                               singles=block.singles, triples=block.triples,
                               quadruples=block.quadruples)

    def _write_values(self, values) -> None:
        self._stream.write_bytes(memoryview(encode_varints(values)))

    def write_time_block(self, block: petsird.TimeBlock) -> None:
        if not self.fast:
            self._write_library_block(block)
            return
        self._stream.write_unsigned_varint(1)
        _TIME_BLOCK.write(self._stream, block)

    def _write_library_block(self, block: petsird.TimeBlock) -> None:
        self._writer.write_time_blocks([block])   # one block per stream chunk, as the fast path
        self._blocks_written = True

    def close(self) -> None:
        try:
            if not self.fast:
                if not self._blocks_written:      # petsird's writer needs the (empty) stream
                    self._writer.write_time_blocks([])
                self._writer.close()
                return
            self._stream.write_unsigned_varint(0)                   # end of the stream
            self._stream.flush()
        finally:
            self._file.close()


# ---------------------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------------------
def read_header(path) -> petsird.Header:
    with RawReader(path) as reader:
        return reader.header


def _single_type_layout(header: petsird.Header, path) -> int:
    """Number of energy bins folded into EventBlock bins; InputError if several module types."""
    n_types = header.scanner.scanner_geometry.number_of_module_types()
    if n_types != 1:
        raise InputError(path, f"{n_types} detector module types; the event reader handles "
                               "one (use downsample, which carries any layout)")
    edges = header.scanner.event_energy_bin_edges
    return max(1, int(edges[0].number_of_bins())) if edges else 1


def iter_event_blocks(path) -> Iterator[EventBlock]:
    """Stream the prompts of every event time block, in file order.

    Delayeds, singles and non-event time blocks are skipped. TOF bins are summed over
    (tof_idx dropped) and several energy bins are merged (bin // n_energy_bins), which
    leaves valid non-TOF data. Memory holds one time block at a time.
    """
    with RawReader(path) as reader:
        n_energy = _single_type_layout(reader.header, reader.path)
        for block in reader.time_blocks():
            if not isinstance(block, RawEventBlock):
                continue
            lists = [ev for row in block.prompts for ev in row]
            events = lists[0] if len(lists) == 1 else (
                np.concatenate(lists) if lists else np.zeros((0, 3), np.uint32))
            bins = np.ascontiguousarray(events[:, :2])
            if n_energy > 1:
                bins //= np.uint32(n_energy)
            yield EventBlock(int(block.start_ms), int(block.stop_ms), bins)


def count_events(path) -> tuple[int, int]:
    """(number of prompts, duration in ms from the first event block start to the last stop)."""
    n = 0
    first = last = None
    with RawReader(path) as reader:
        for block in reader.time_blocks():
            if isinstance(block, RawEventBlock):
                n += sum(len(ev) for row in block.prompts for ev in row)
                first = block.start_ms if first is None else first
                last = block.stop_ms
    return n, (0 if first is None else int(last - first))


def _checked_bins(bins, n_bins: int) -> np.ndarray:
    bins = np.asarray(bins)
    if bins.ndim != 2 or bins.shape[1] != 2 or (bins.size and bins.dtype.kind not in "iu"):
        raise ValueError(f"EventBlock.bins must be an (n, 2) integer array, got {bins.shape} "
                         f"{bins.dtype}")
    if bins.size and (bins.min() < 0 or bins.max() >= n_bins):
        raise ValueError(f"detection bins outside [0, {n_bins})")
    if (bins[:, 0] < bins[:, 1]).any():
        raise ValueError("PETSIRD order requires bins[:, 0] >= bins[:, 1]")
    out = np.zeros((len(bins), 3), dtype=np.uint32)   # tof_idx 0
    out[:, :2] = bins
    return out


def write_listmode(path, header: petsird.Header, blocks: Iterable[EventBlock]) -> int:
    """Write ``header`` and the prompts of ``blocks`` (streamed, atomic); returns the count."""
    n_types = header.scanner.scanner_geometry.number_of_module_types()
    if n_types != 1:
        raise ValueError(f"write_listmode writes one module type, header has {n_types}")
    n_bins = get_num_detection_bins(header.scanner, 0)
    n = 0
    with atomic_path(path) as tmp:
        writer = RawWriter(tmp, header)
        with contextlib.closing(writer):
            for block in blocks:
                events = _checked_bins(block.bins, n_bins)
                writer.write_event_block(int(block.start_ms), int(block.stop_ms), [[events]])
                n += len(events)
    return n
