"""The fast list-mode path's guard: a petsird whose internals differ is detected before use, and
petsird's own reader and writer then give the same files (byte for byte) and the same events."""

import logging

import numpy as np
import petsird
import pytest

from amdiff.listmode import fast_path
from amdiff.listmode import petsird_io as pio
from amdiff.listmode.blocks import same_event_block
from amdiff.listmode.downsample import downsample
from tests.test_listmode_io import generator_file


@pytest.fixture
def fresh_guard():
    """The guard's verdict is cached per process: start and end each test without it."""
    fast_path.fast_path_problem.cache_clear()
    fast_path.use_fast_path.cache_clear()
    yield
    fast_path.fast_path_problem.cache_clear()
    fast_path.use_fast_path.cache_clear()


def test_the_fast_path_holds_for_the_pinned_petsird(fresh_guard):
    assert fast_path.fast_path_problem() is None
    assert fast_path.use_fast_path()


def test_another_petsird_version_is_not_trusted(fresh_guard, monkeypatch):
    monkeypatch.setattr(fast_path.importlib.metadata, "version", lambda name: "0.13.0")
    assert fast_path.fast_path_problem() == (f"petsird 0.13.0 is installed, the fast list-mode path was verified "
                                       f"with {fast_path.VERIFIED_PETSIRD}")


def test_a_reordered_time_block_union_is_detected(fresh_guard, monkeypatch):
    """As if petsird had moved a time-block type: the probe's round trip no longer agrees."""
    cases = list(pio._TIME_BLOCK_CASES)
    cases[1], cases[4] = cases[4], cases[1]
    monkeypatch.setattr(pio, "_TIME_BLOCK_CASES", cases)
    problem = fast_path.fast_path_problem()
    assert problem is not None and "time block 1" in problem


def test_a_changed_event_encoding_is_detected(fresh_guard, monkeypatch):
    """As if the writer's layout were off (a field more after the time interval)."""
    write = pio.RawWriter.write_event_block

    def shifted(self, start_ms, stop_ms, prompts, delayeds=(), **kinds):
        return write(self, start_ms, stop_ms + 1, prompts, delayeds, **kinds)
    monkeypatch.setattr(pio.RawWriter, "write_event_block", shifted)
    assert fast_path.fast_path_problem() == "the fast writer's bytes differ from petsird's"


def _every_block_type(path):
    """A list with prompts, delayeds, singles and triples of two module types (TOF indices set),
    and every other time-block type in between, written by petsird's own writer."""
    rng = np.random.default_rng(1)
    with petsird.BinaryPETSIRDReader(str(generator_file(path.with_suffix(".gen")))) as reader:
        header = reader.read_header()
        blocks = list(reader.read_time_blocks())
    others = [b for b in fast_path.probe_blocks() if not isinstance(b, petsird.TimeBlock.EventTimeBlock)]
    with petsird.BinaryPETSIRDWriter(str(path)) as writer:
        writer.write_header(header)
        for k, block in enumerate(blocks):
            value = block.value
            value.delayed_events = [[list(rng.permutation(ev))[: len(ev) // 2] for ev in row]
                                    for row in value.prompt_events]
            value.single_events = [[petsird.SingleEvent(detection_bin=int(b), time_offset_in_time_block=int(t))
                                    for b, t in zip(rng.integers(0, 40, 30), rng.integers(0, 2 ** 31, 30))]
                                   for _ in range(2)]
            triple = petsird.TripleEvent(detection_bins=[5, 200, 3], tof_indices=[1, 130])
            value.triple_events = [[[[triple] * k]], [[[]], [[], [triple]]]]
            writer.write_time_blocks([block])
            if k < len(others):
                writer.write_time_blocks([others[k]])
    return path


def test_petsird_own_reader_and_writer_give_the_fast_paths_files(fresh_guard, tmp_path, monkeypatch, caplog):
    src = _every_block_type(tmp_path / "in.petsird")
    fast_outputs = {5: [tmp_path / "fast_a.petsird", tmp_path / "fast_b.petsird"], 50: [tmp_path / "fast_c.petsird"]}
    fast_counts = downsample(src, fast_outputs, seed=11)
    with pio.RawReader(src) as reader:
        assert reader.fast
        fast_blocks = list(reader.time_blocks())
        fast_header = reader.header_bytes()

    monkeypatch.setattr(fast_path, "fast_path_problem", lambda: "petsird 9.9 is installed (test)")
    fast_path.use_fast_path.cache_clear()
    with caplog.at_level(logging.WARNING, logger="amdiff.listmode.fast_path"):
        slow_outputs = {p: [tmp_path / f"slow_{q.name}" for q in paths] for p, paths in fast_outputs.items()}
        slow_counts = downsample(src, slow_outputs, seed=11)
        with pio.RawReader(src) as reader:
            assert not reader.fast
            slow_blocks = list(reader.time_blocks())
            assert reader.header_bytes() == fast_header
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["petsird 9.9 is installed (test); using petsird's own reader and writer (slower, correct)"]

    assert list(slow_counts.values()) == list(fast_counts.values())
    for fast, slow in zip(sum(fast_outputs.values(), []), sum(slow_outputs.values(), [])):
        assert slow.read_bytes() == fast.read_bytes()
    assert [type(b) for b in slow_blocks] == [type(b) for b in fast_blocks]
    assert sum(isinstance(b, pio.RawEventBlock) for b in fast_blocks) > 1
    assert {type(b).__name__ for b in fast_blocks} >= {"TimeBlock.DeadTimeTimeBlock", "TimeBlock.SinglesHistogramTimeBlock"}
    for fast, slow in zip(fast_blocks, slow_blocks):
        if isinstance(fast, pio.RawEventBlock):
            assert same_event_block(slow, fast)
        else:
            assert repr(slow) == repr(fast)
