"""PETSIRD I/O: header round trip, fast codec against petsird's own reader/writer, bad files."""

import dataclasses
import io
import random
import sys
import types

import numpy as np
import petsird
import pytest
from petsird import _binary
from petsird.helpers import get_detection_efficiency

from amdiff.errors import InputError
from amdiff.listmode import header as petsird_header
from amdiff.listmode import petsird_io as pio
from amdiff.levels import clinical_percent, level_fraction, level_name, parse_level_name
from amdiff.physics.scanner import CylindricalScanner

SCANNER = CylindricalScanner(name="tiny", n_crystals=24, n_rings=5, radius_mm=150.0,
                             ring_pitch_mm=4.07, max_ring_difference=2, fov_radius_mm=100.0,
                             crystal_size_mm=(15.0, 3.5, 3.9))
ACQ = dict(subject_id="sub-007", weight_kg=70.3, height_m=1.72, injected_mbq=256.3,
           calibration_factor=0.0123)


def header(scanner=SCANNER):
    return petsird_header.make_header(scanner, **ACQ)


def random_blocks(scanner, sizes, seed=0):
    rng = np.random.default_rng(seed)
    blocks = []
    for k, n in enumerate(sizes):
        a, b = scanner.lor_detectors(rng.integers(0, scanner.n_lors, n))
        blocks.append(pio.EventBlock(1000 * k, 1000 * (k + 1),
                                     np.stack([a, b], 1).astype(np.uint32).reshape(-1, 2)))
    return blocks


def petsird_events(path):
    """All prompt lists through petsird's own object reader: [(start, stop, nested arrays)]."""
    out = []
    with petsird.BinaryPETSIRDReader(str(path)) as reader:
        reader.read_header()
        for tb in reader.read_time_blocks():
            if isinstance(tb, petsird.TimeBlock.EventTimeBlock):
                v = tb.value
                out.append((v.time_interval.start, v.time_interval.stop,
                            [[np.array([[*e.detection_bins, e.tof_idx] for e in lst],
                                       dtype=np.uint32).reshape(-1, 3) for lst in row]
                             for row in v.prompt_events]))
    return out


def generator_file(path):
    """A file from petsird's example generator (two module types, TOF, energy bins), shrunk."""
    from petsird.helpers import generator as g
    saved = (g.mtype0_def, g.mtype1_def, g.COUNT_RATE, sys.stdout)
    buf = io.BytesIO()
    g.mtype0_def = dataclasses.replace(g.mtype0_def, num_crystals_per_module=(1, 2, 3),
                                       num_modules_along_ring=8)
    g.mtype1_def = dataclasses.replace(g.mtype1_def, num_crystals_per_module=(1, 2, 4),
                                       num_modules_along_ring=6)
    g.COUNT_RATE = 40.0
    random.seed(3)
    try:
        sys.stdout = types.SimpleNamespace(buffer=buf)
        g.generate()
    finally:
        g.mtype0_def, g.mtype1_def, g.COUNT_RATE, sys.stdout = saved
    path.write_bytes(buf.getvalue())
    return path


# ---- header ----------------------------------------------------------------------------
def test_header_round_trip_scanner_and_acquisition(tmp_path):
    path = tmp_path / "a.petsird"
    h = header()
    assert pio.write_listmode(path, h, []) == 0
    back = pio.read_header(path)
    assert back == h
    assert petsird_header.scanner_from_header(back) == SCANNER          # 4.07 mm pitch survives float32
    acq = petsird_header.acquisition_from_header(back)
    assert acq == ACQ | {"height_m": 1.72}
    geom = back.scanner.scanner_geometry.replicated_modules[0]
    assert len(geom.transforms) == SCANNER.n_crystals
    assert len(geom.object.detecting_elements.transforms) == SCANNER.n_rings
    assert back.scanner.event_energy_bin_edges[0].edges.tolist() == [435.0, 650.0]
    assert back.scanner.tof_bin_edges[0][0].number_of_bins() == 1
    tracer = back.exam.radiopharmaceuticals[0]
    assert tracer.radionuclide_code_sequence.code_meaning == "^18^Fluorine"


def test_detecting_element_positions_match_scanner_geometry():
    """Transform of element r in module c applied to the inner-face centre = detector_positions."""
    rep = header().scanner.scanner_geometry.replicated_modules[0]
    pos = SCANNER.detector_positions()
    for crystal in (0, 5, 17):
        m = np.asarray(rep.transforms[crystal].matrix, dtype=float)
        for ring in (0, 4):
            e = np.asarray(rep.object.detecting_elements.transforms[ring].matrix, dtype=float)
            face = m[:, :3] @ e[:, 3] + m[:, 3]
            np.testing.assert_allclose(face, pos[SCANNER.detector_bin(crystal, ring)], atol=1e-3)


def test_detection_efficiency_is_calibration_on_lors_and_zero_elsewhere():
    h = header()
    pair = petsird.TypeOfModulePair((0, 0))
    rng = np.random.default_rng(1)
    hi = rng.integers(0, SCANNER.n_detectors, 300)
    lo = rng.integers(0, SCANNER.n_detectors, 300)
    hi, lo = np.maximum(hi, lo), np.minimum(hi, lo)
    lor = SCANNER.lor_index(hi, lo)
    assert (lor >= 0).any() and (lor < 0).any()
    for a, b, ok in zip(hi.tolist(), lo.tolist(), (lor >= 0).tolist()):
        event = petsird.CoincidenceEvent(detection_bins=[a, b], tof_idx=0)
        eff = get_detection_efficiency(h.scanner, pair, event)
        assert eff == pytest.approx(ACQ["calibration_factor"] if ok else 0.0, rel=1e-6)


def test_acceptance_derived_from_efficiencies_when_json_missing():
    h = header()
    h.scanner.detection_efficiencies.method_description = "measured"
    derived = petsird_header.scanner_from_header(h)
    assert derived.max_ring_difference == SCANNER.max_ring_difference
    assert derived.n_lors == SCANNER.n_lors
    for got, want in zip(derived.lor_detectors(), SCANNER.lor_detectors()):
        np.testing.assert_array_equal(got, want)


def test_foreign_headers_raise_input_error(tmp_path):
    gen = pio.read_header(generator_file(tmp_path / "gen.petsird"))
    with pytest.raises(InputError, match="PETSIRD_TEST.*2 module types"):
        petsird_header.scanner_from_header(gen, source="gen.petsird")
    h = header()
    h.scanner.scanner_geometry.replicated_modules[0].transforms[3].matrix[0, 3] = 5.0
    with pytest.raises(InputError, match="'tiny'.*rotations"):
        petsird_header.scanner_from_header(h)
    h = header()
    h.exam = None
    with pytest.raises(InputError, match="radiopharmaceutical"):
        petsird_header.acquisition_from_header(h)


# ---- events ----------------------------------------------------------------------------
def test_events_round_trip_and_agree_with_petsird_reader(tmp_path):
    path = tmp_path / "a.petsird"
    blocks = random_blocks(SCANNER, [5, 0, 20_000, 3, 1])      # small ones stay in the buffer
    assert pio.write_listmode(path, header(), iter(blocks)) == sum(len(b.bins) for b in blocks)
    got = list(pio.iter_event_blocks(path))
    assert [(b.start_ms, b.stop_ms) for b in got] == [(b.start_ms, b.stop_ms) for b in blocks]
    for g, b in zip(got, blocks):
        assert g.bins.dtype == np.uint32 and g.bins.shape == b.bins.shape
        np.testing.assert_array_equal(g.bins, b.bins)
    ref = petsird_events(path)
    for (start, stop, nested), b in zip(ref, blocks):
        assert start == b.start_ms and stop == b.stop_ms
        np.testing.assert_array_equal(nested[0][0][:, :2], b.bins)
        assert not nested[0][0][:, 2].any()
    assert pio.count_events(path) == (20_009, 5000)


def test_fast_writer_is_byte_identical_to_petsird_writer(tmp_path):
    h = header()
    blocks = random_blocks(SCANNER, [4, 0, 3000])
    ours = tmp_path / "ours.petsird"
    pio.write_listmode(ours, h, blocks)
    ref = tmp_path / "ref.petsird"
    with petsird.BinaryPETSIRDWriter(str(ref)) as w:
        w.write_header(h)
        for b in blocks:   # one time block per stream chunk, as write_listmode does
            events = [petsird.CoincidenceEvent(detection_bins=[int(x), int(y)], tof_idx=0)
                      for x, y in b.bins]
            etb = petsird.EventTimeBlock(
                time_interval=petsird.TimeInterval(start=b.start_ms, stop=b.stop_ms),
                prompt_events=[[events]])
            w.write_time_blocks([petsird.TimeBlock.EventTimeBlock(etb)])
    assert ours.read_bytes() == ref.read_bytes()


@pytest.mark.parametrize("values", [
    [0, 1, 127, 128, 255, 16383, 16384, 2**21 - 1, 2**21, 2**28 - 1, 2**28, 2**32 - 1],
    [5] * 7, [2**32 - 1] * 3])
def test_varint_codec_matches_petsird(values):
    sink = io.BytesIO()
    stream = _binary.CodedOutputStream(sink)
    for v in values:
        stream.write_unsigned_varint(v)
    stream.flush()
    encoded = pio.encode_varints(np.array(values, dtype=np.uint32))
    assert encoded.tobytes() == sink.getvalue()
    back = pio._read_varints(_binary.CodedInputStream(io.BytesIO(sink.getvalue())), len(values))
    assert back.tolist() == values


def test_varints_crossing_the_stream_buffer(tmp_path):
    """Values straddling petsird's 64 KiB input buffer are reassembled."""
    values = np.random.default_rng(2).integers(0, 2**32, 100_000, dtype=np.uint64)
    data = pio.encode_varints(values.astype(np.uint32)).tobytes()
    stream = _binary.CodedInputStream(io.BytesIO(b"\x01" * 7 + data), buffer_size=1000)
    assert stream.read_byte() == 1
    head = [stream.read_unsigned_varint() for _ in range(6)]
    assert head == [1] * 6
    np.testing.assert_array_equal(pio._read_varints(stream, len(values)), values)


def test_generator_file_with_two_module_types(tmp_path):
    path = generator_file(tmp_path / "gen.petsird")
    ref = petsird_events(path)
    with pio.RawReader(path) as reader:
        ours = [b for b in reader.time_blocks() if isinstance(b, pio.RawEventBlock)]
    assert len(ours) == len(ref) > 0
    n = 0
    for block, (start, stop, nested) in zip(ours, ref):
        assert (block.start_ms, block.stop_ms) == (start, stop)
        assert [len(r) for r in block.prompts] == [len(r) for r in nested]
        for row, ref_row in zip(block.prompts, nested):
            for ev, ref_ev in zip(row, ref_row):
                np.testing.assert_array_equal(ev, ref_ev)
                n += len(ev)
    assert ref[0][2][0][0][:, 2].max() > 0                   # TOF indices were carried
    assert pio.count_events(path)[0] == n
    with pytest.raises(InputError, match="gen.petsird.*2 detector module types"):
        next(pio.iter_event_blocks(path))


def test_energy_bins_are_folded_into_detecting_elements(tmp_path):
    h = header()
    h.scanner.event_energy_bin_edges[0] = petsird.BinEdges(
        edges=np.array([435.0, 511.0, 650.0], dtype=np.float32))
    det = np.array([[7, 3], [100, 99], [50, 0]], dtype=np.uint32)
    energy = np.array([[1, 0], [0, 1], [1, 1]], dtype=np.uint32)
    events = np.zeros((3, 3), dtype=np.uint32)
    events[:, :2] = 2 * det + energy                         # PETSIRD: energy + n_en * element
    writer = pio.RawWriter(tmp_path / "e.petsird", h)
    writer.write_event_block(0, 10, [[events]])
    writer.close()
    (block,) = pio.iter_event_blocks(tmp_path / "e.petsird")
    np.testing.assert_array_equal(block.bins, det)


def test_write_listmode_rejects_bad_bins_and_leaves_nothing(tmp_path):
    path = tmp_path / "bad.petsird"
    bad = [pio.EventBlock(0, 1, np.array([[1, 2]], dtype=np.uint32))]
    with pytest.raises(ValueError, match="bins\\[:, 0\\] >= bins\\[:, 1\\]"):
        pio.write_listmode(path, header(), bad)
    with pytest.raises(ValueError, match="outside"):
        pio.write_listmode(path, header(), [pio.EventBlock(0, 1, np.array([[120, 2]]))])
    assert list(tmp_path.iterdir()) == []


# ---- bad files ---------------------------------------------------------------------------
@pytest.fixture
def good_file(tmp_path):
    path = tmp_path / "good.petsird"
    pio.write_listmode(path, header(), random_blocks(SCANNER, [4000, 4000]))
    return path


def _all_readers(path):
    pio.count_events(path)
    list(pio.iter_event_blocks(path))


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(InputError, match="nope.petsird: file not found"):
        _all_readers(tmp_path / "nope.petsird")
    (tmp_path / "empty.petsird").write_bytes(b"")
    with pytest.raises(InputError, match="empty.petsird: empty file"):
        _all_readers(tmp_path / "empty.petsird")


def test_garbage_bytes(tmp_path):
    path = tmp_path / "garbage.petsird"
    path.write_bytes(np.random.default_rng(0).bytes(5000))
    with pytest.raises(InputError, match="garbage.petsird: not a PETSIRD binary file"):
        pio.read_header(path)
    path.write_bytes(b"yardl" + np.random.default_rng(1).bytes(5000))  # right magic, then junk
    with pytest.raises(InputError, match="garbage.petsird: .*(corrupt|schema)"):
        _all_readers(path)


@pytest.mark.parametrize("keep", [0.02, 0.5, 0.999, -1])
def test_truncated_files(good_file, keep):
    data = good_file.read_bytes()
    cut = len(data) - 1 if keep == -1 else int(len(data) * keep)  # -1: only the end marker lost
    good_file.write_bytes(data[:cut])
    with pytest.raises(InputError, match="good.petsird: truncated or corrupt"):
        _all_readers(good_file)


# ---- level names -------------------------------------------------------------------------
@pytest.mark.parametrize("percent,name", [(5, "p005"), (6.25, "p00625"), (12.5, "p0125"),
                                          (40, "p040"), (16.7, "p0167"), (100, "p100"),
                                          (2.5, "p0025"), (0.5, "p0005"), (40.0, "p040")])
def test_level_names_round_trip(percent, name):
    assert level_name(percent) == name
    assert parse_level_name(name) == percent


def test_level_fraction_is_exact_decimal():
    assert level_fraction(6.25) * 16 == 1
    assert level_fraction(16.7).denominator == 1000


@pytest.mark.parametrize("percent,standard,clinical", [
    (5, 100, 5.0), (20, 100, 20.0), (2.5, 100, 2.5),      # full list = clinical scan (mCT I, uExplorer)
    (16.7, 16.7, 100.0),                                  # Vision's standard-count image
    (1.12, 5.6, 20.0),                                    # exactly 20 % (float: 20.000000000000004)
    (40, 16.7, 100 * 40 / 16.7)])                         # mCT Group II's 40 %: 240 %
def test_clinical_percent_is_the_level_over_the_standard_count(percent, standard, clinical):
    assert clinical_percent(percent, standard) == pytest.approx(clinical, rel=1e-12)
    if clinical in (20.0, 100.0):
        assert clinical_percent(percent, standard) == clinical


@pytest.mark.parametrize("standard", [0, -1, 101, float("nan"), "x"])
def test_bad_standard_counts(standard):
    with pytest.raises(ValueError, match="standard count"):
        clinical_percent(5, standard)


@pytest.mark.parametrize("bad", ["p5", "p0050", "x005", "p000", "p101", "p00", "p005r0"])
def test_bad_level_names(bad):
    with pytest.raises(ValueError):
        parse_level_name(bad)


@pytest.mark.parametrize("bad", [0, -5, 100.5, float("nan"), "abc"])
def test_bad_percents(bad):
    with pytest.raises(ValueError):
        level_name(bad)
