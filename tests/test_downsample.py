"""Non-overlapping down-sampling: exact counts, disjointness, order, determinism, bad input.

Input events carry unique ids: event i is the detection-bin pair (a, b) with
i = a (a + 1) / 2 + b, b <= a (triangular numbering), so ids survive the round trip.
"""

import logging
from fractions import Fraction

import numpy as np
import petsird
import pytest

from amdiff.errors import InputError
from amdiff.listmode import header as petsird_header
from amdiff.listmode import petsird_io as pio
from amdiff.listmode.downsample import downsample, round_half_up
from amdiff.physics.scanner import CylindricalScanner

SCANNER = CylindricalScanner(name="ids", n_crystals=64, n_rings=64, radius_mm=300.0,
                             ring_pitch_mm=4.0, max_ring_difference=5, fov_radius_mm=250.0)
HEADER = petsird_header.make_header(SCANNER, subject_id="s", weight_kg=70.0, height_m=1.7,
                         injected_mbq=300.0, calibration_factor=1.0)


def ids_to_bins(ids):
    a = ((np.sqrt(8 * ids.astype(np.float64) + 1) - 1) // 2).astype(np.int64)
    return np.stack([a, ids - a * (a + 1) // 2], axis=1).astype(np.uint32)


def bins_to_ids(bins):
    a = bins[:, 0].astype(np.int64)
    return a * (a + 1) // 2 + bins[:, 1]


def write_input(path, n, block_sizes=None, seed=0):
    """n events with ids 0..n-1 in time order, split into time blocks of random sizes."""
    rng = np.random.default_rng(seed)
    if block_sizes is None:
        cuts = np.sort(rng.integers(0, n + 1, max(1, n // 150)))
        block_sizes = np.diff(np.concatenate([[0], cuts, [n]]))
    ids = np.arange(n)
    bins = ids_to_bins(ids)
    assert np.array_equal(bins_to_ids(bins), ids)
    edges = np.concatenate([[0], np.cumsum(block_sizes)])
    blocks = [pio.EventBlock(10 * k, 10 * (k + 1), bins[edges[k]:edges[k + 1]])
              for k in range(len(block_sizes))]
    pio.write_listmode(path, HEADER, blocks)
    return path


def read_ids(path):
    """[(start_ms, ids of the block)] of a file."""
    return [(b.start_ms, bins_to_ids(b.bins)) for b in pio.iter_event_blocks(path)]


def all_ids(path):
    blocks = read_ids(path)
    return np.concatenate([ids for _, ids in blocks]) if blocks else np.zeros(0, np.int64)


def without_record(header):
    """The header with the down-sampling record taken out of its free text."""
    text = header.scanner.detection_efficiencies.method_description
    at = text.find(petsird_header.DOWNSAMPLED_MARK)
    assert at >= 0, "no down-sampling record"
    header.scanner.detection_efficiencies.method_description = text[:at].rstrip()
    return header


def outputs_for(tmp_path, spec):
    return {p: [tmp_path / f"p{p}_r{r}.petsird" for r in range(k)] for p, k in spec.items()}


# ---- counts ------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [0, 1, 7, 199, 200, 201, 400, 403, 1017, 2399])
def test_exact_counts_for_any_length(tmp_path, n):
    src = write_input(tmp_path / "in.petsird", n)
    outs = outputs_for(tmp_path, {5: 1, 10: 2, 20: 1})           # fractions sum to 0.45
    counts = downsample(src, outs, seed=3, block_events=200)    # B = 200 (lcm 20)
    for percent, paths in outs.items():
        want = (2 * percent * n + 100) // 200                    # round_half_up(p n / 100)
        for p in paths:
            assert counts[str(p)] == want == len(all_ids(p))


def test_exact_counts_with_default_segment(tmp_path):
    n = 250_017                                                  # > 2 default segments
    src = write_input(tmp_path / "in.petsird", n, block_sizes=[50_000] * 5 + [17])
    outs = outputs_for(tmp_path, {5: 1, 16.7: 1, 40: 1})
    counts = downsample(src, outs, seed=1)
    assert [counts[str(p[0])] for p in outs.values()] == [12501, 41753, 100007]
    ids = [set(all_ids(p[0]).tolist()) for p in outs.values()]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])


def test_round_half_up():
    assert [round_half_up(Fraction(k, 2)) for k in range(5)] == [0, 1, 1, 2, 2]
    assert round_half_up(Fraction(5, 100) * 10) == 1 and round_half_up(Fraction(1, 20) * 9) == 0


# ---- disjointness --------------------------------------------------------------------------
def test_all_outputs_disjoint_when_fractions_sum_to_at_most_one(tmp_path):
    src = write_input(tmp_path / "in.petsird", 3001)
    outs = outputs_for(tmp_path, {5: 2, 10: 1, 20: 2, 12.5: 1})   # 0.1 + 0.1 + 0.4 + 0.125
    downsample(src, outs, seed=7, block_events=200)
    seen = np.concatenate([all_ids(p) for ps in outs.values() for p in ps])
    assert len(seen) == len(np.unique(seen)) > 0
    assert seen.min() >= 0 and seen.max() < 3001


def test_levels_overlap_but_realizations_stay_disjoint_when_sum_exceeds_one(tmp_path, caplog):
    n = 2003
    src = write_input(tmp_path / "in.petsird", n)
    outs = outputs_for(tmp_path, {40: 2, 50: 2})                   # 0.8 + 1.0 > 1
    with caplog.at_level(logging.WARNING, logger="amdiff.listmode.downsample"):
        counts = downsample(src, outs, seed=5, block_events=100)
    # the overlap is said, once, with the share the lists hold together
    (warning,) = [r.getMessage() for r in caplog.records]
    assert "hold 180 % of the events" in warning and "may share events" in warning
    caplog.clear()
    (tmp_path / "disjoint").mkdir()
    downsample(src, outputs_for(tmp_path / "disjoint", {40: 1, 50: 1}), seed=5, block_events=100)
    assert caplog.records == []                                    # 90 %: disjoint, nothing to say
    r40 = [set(all_ids(p).tolist()) for p in outs[40]]
    r50 = [set(all_ids(p).tolist()) for p in outs[50]]
    assert not r40[0] & r40[1] and not r50[0] & r50[1]
    assert r40[0] & r50[0]                                        # independent permutations
    assert [counts[str(p)] for p in outs[40]] == [801, 801]       # round_half_up(0.4 * 2003)
    assert r50[0] | r50[1] == set(range(n))                       # 2 x 50 % partition the list
    assert sorted(counts[str(p)] for p in outs[50]) == [1001, 1002]


@pytest.mark.parametrize("n", [1, 2, 3, 5, 99, 1003])
def test_realizations_of_quarter_partition_the_list(tmp_path, n):
    src = write_input(tmp_path / "in.petsird", n)
    outs = outputs_for(tmp_path, {25: 4})
    downsample(src, outs, seed=11, block_events=100)
    parts = [all_ids(p) for p in outs[25]]
    union = np.concatenate(parts)
    assert np.array_equal(np.sort(union), np.arange(n))
    assert all(abs(len(p) - n / 4) < 1 for p in parts)


def test_too_short_file_falls_back_to_cumulative_rounding(tmp_path):
    # 3 x 30 % of 5 events: exact round_half_up(1.5) = 2 each would need 6 events
    src = write_input(tmp_path / "in.petsird", 5)
    outs = outputs_for(tmp_path, {30: 3})
    counts = downsample(src, outs, seed=0)
    parts = [all_ids(p) for p in outs[30]]
    assert sorted(counts.values()) == [1, 2, 2]        # cumulative bounds 2, 3, 5 of 5 events
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(5))


# ---- order, blocks, determinism ----------------------------------------------------------------
def test_time_blocks_and_order_are_kept(tmp_path):
    src = write_input(tmp_path / "in.petsird", 1500, block_sizes=[0, 700, 1, 0, 799])
    outs = outputs_for(tmp_path, {10: 1, 20: 1})
    downsample(src, outs, seed=2, block_events=100)
    block_of = {}
    for start, ids in read_ids(src):
        block_of.update(dict.fromkeys(ids.tolist(), start))
    src_intervals = [(b.start_ms, b.stop_ms) for b in pio.iter_event_blocks(src)]
    p_of = {outs[10][0]: 10, outs[20][0]: 20}
    for p in (outs[10][0], outs[20][0]):
        assert [(b.start_ms, b.stop_ms) for b in pio.iter_event_blocks(p)] == src_intervals
        for start, ids in read_ids(p):
            assert np.all(np.diff(ids) > 0)                       # original time order
            assert all(block_of[i] == start for i in ids.tolist())
        header = pio.read_header(p)
        assert petsird_header.kept_fraction(header) == p_of[p] / 100
        assert without_record(header) == HEADER                  # the rest of the header is carried


def test_same_seed_same_files_other_seed_differs(tmp_path):
    src = write_input(tmp_path / "in.petsird", 1200)
    a = outputs_for(tmp_path / "a", {5: 1, 20: 2})
    b = outputs_for(tmp_path / "b", {5: 1, 20: 2})
    c = outputs_for(tmp_path / "c", {5: 1, 20: 2})
    downsample(src, a, seed=42, block_events=100)
    downsample(src, b, seed=42, block_events=100)
    downsample(src, c, seed=43, block_events=100)
    for pa, pb, pc in zip(a[20], b[20], c[20]):
        assert pa.read_bytes() == pb.read_bytes()
        assert pa.read_bytes() != pc.read_bytes()


def test_each_segment_gets_its_exact_share(tmp_path):
    """Within every full segment of B events, a 10 % output holds exactly B/10 of them."""
    n, segment = 1000, 100
    src = write_input(tmp_path / "in.petsird", n)
    outs = outputs_for(tmp_path, {10: 1})
    downsample(src, outs, seed=9, block_events=segment)
    ids = all_ids(outs[10][0])
    per_segment = np.bincount(ids // segment, minlength=n // segment)
    assert per_segment[:-2].tolist() == [10] * (n // segment - 2)   # last two are merged
    assert per_segment[-2:].sum() == 20


# ---- other PETSIRD content -------------------------------------------------------------------
def test_delayeds_and_non_event_blocks_are_carried(tmp_path):
    src = tmp_path / "in.petsird"
    rng = np.random.default_rng(0)
    writer = pio.RawWriter(src, HEADER)
    n_delayed = 0
    for k in range(6):
        prompts = np.zeros((300, 3), np.uint32)
        prompts[:, :2] = ids_to_bins(np.arange(300 * k, 300 * (k + 1)))
        delayeds = np.zeros((200, 3), np.uint32)
        delayeds[:, :2] = ids_to_bins(np.arange(n_delayed, n_delayed + 200))
        n_delayed += 200
        writer.write_event_block(100 * k, 100 * (k + 1), [[prompts]], [[delayeds]])
        if k == 2:
            writer.write_time_block(petsird.TimeBlock.ExternalSignalTimeBlock(
                petsird.ExternalSignalTimeBlock(
                    time_interval=petsird.TimeInterval(start=250, stop=260), signal_id=4,
                    signal_values=[1.5, 2.5])))
    writer.close()
    outs = outputs_for(tmp_path, {25: 2})
    downsample(src, outs, seed=rng.integers(1000), block_events=100)
    delayed_sets = []
    for p in outs[25]:
        with petsird.BinaryPETSIRDReader(str(p)) as reader:
            reader.read_header()
            blocks = list(reader.read_time_blocks())
        kinds = [type(b).__name__ for b in blocks]
        assert kinds.index("TimeBlock.ExternalSignalTimeBlock") == 3
        assert blocks[3].value.signal_values == [1.5, 2.5]
        ids = [bins_to_ids(np.array([e.detection_bins for e in b.value.delayed_events[0][0]],
                                    dtype=np.uint32).reshape(-1, 2))
               for b in blocks if isinstance(b, petsird.TimeBlock.EventTimeBlock)]
        delayed_sets.append(set(np.concatenate(ids).tolist()))
    assert not delayed_sets[0] & delayed_sets[1]
    for s in delayed_sets:     # binomial(1200, 0.25): mean 300, sd 15
        assert abs(len(s) - 300) < 75 and max(s) < n_delayed


def _every_event_kind(path, n_blocks=8):
    """Prompts, delayeds, singles (unique time offsets), triples and quadruples (unique first
    bins) in every event block, and singles-histogram and dead-time blocks between them."""
    rng = np.random.default_rng(5)
    histogram = rng.integers(0, 5000, 50)
    writer = pio.RawWriter(path, HEADER)
    for k in range(n_blocks):
        prompts = np.zeros((400, 3), np.uint32)
        prompts[:, :2] = ids_to_bins(np.arange(400 * k, 400 * (k + 1)))
        singles = np.stack([rng.integers(0, SCANNER.n_detectors, 500),
                            np.arange(500 * k, 500 * (k + 1))], axis=1).astype(np.uint32)
        triples = [petsird.TripleEvent(detection_bins=[100 * k + i, 1, 0], tof_indices=[0, 0])
                   for i in range(60)]
        # petsird 0.12 stores quadruples with its triple serializer
        quadruples = [petsird.TripleEvent(detection_bins=[100 * k + i, 2, 1], tof_indices=[3, 0])
                      for i in range(40)]
        writer.write_event_block(100 * k, 100 * (k + 1), [[prompts]], [[prompts[::3]]],
                                 singles=[singles], triples=[[[triples]]],
                                 quadruples=[[[[quadruples]]]])
        interval = petsird.TimeInterval(start=100 * k, stop=100 * (k + 1))
        writer.write_time_block(petsird.TimeBlock.SinglesHistogramTimeBlock(
            petsird.SinglesHistogramTimeBlock(time_interval=interval,
                                              singles_per_detection_bin_histogram=[histogram.tolist()])))
        writer.write_time_block(petsird.TimeBlock.DeadTimeTimeBlock(petsird.DeadTimeTimeBlock(
            time_interval=interval, alive_time_fractions=petsird.AliveTimeFractions(
                singles_alive_time_fractions=[np.array([0.9, 0.8], np.float32)]))))
    writer.close()
    return histogram, n_blocks


def _kinds(path):
    """Per output: singles ids, triple and quadruple ids, histograms, dead-time blocks."""
    singles, triples, quadruples, histograms, dead = [], [], [], [], []
    with pio.RawReader(path) as reader:
        for b in reader.time_blocks():
            if isinstance(b, pio.RawEventBlock):
                singles += b.singles[0][:, 1].tolist()
                triples += [e.detection_bins[0] for e in b.triples[0][0][0]]
                quadruples += [e.detection_bins[0] for e in b.quadruples[0][0][0][0]]
            elif isinstance(b, petsird.TimeBlock.SinglesHistogramTimeBlock):
                histograms.append(np.asarray(b.value.singles_per_detection_bin_histogram[0]))
            else:
                dead.append(b.value)
    return set(singles), set(triples), set(quadruples), np.stack(histograms), dead


@pytest.mark.parametrize("realizations", [2, 4])
def test_every_event_kind_is_thinned_and_rates_are_carried(tmp_path, realizations):
    """Singles, triples and quadruples are thinned per event and singles histograms per bin,
    disjointly across realizations; 4 x 25 % partition every kind; dead time is carried."""
    src = tmp_path / "in.petsird"
    histogram, n_blocks = _every_event_kind(src)
    outs = outputs_for(tmp_path, {25: realizations})
    downsample(src, outs, seed=3, block_events=100)
    source = _kinds(src)
    parts = [_kinds(p) for p in outs[25]]
    for kind, n in ((0, 500 * n_blocks), (1, 60 * n_blocks), (2, 40 * n_blocks)):
        sets = [part[kind] for part in parts]
        assert all(s <= source[kind] for s in sets)
        assert sum(map(len, sets)) == len(set().union(*sets))           # disjoint
        for s in sets:                                                  # binomial(n, 1/4)
            assert abs(len(s) - n / 4) < 5 * np.sqrt(n * 3 / 16)
        if realizations == 4:
            assert set().union(*sets) == source[kind]
    histograms = np.stack([part[3] for part in parts])                  # (outputs, blocks, bins)
    total = histograms.sum(axis=0)
    assert (total <= source[3]).all()
    if realizations == 4:
        np.testing.assert_array_equal(total, source[3])                 # a partition, bin by bin
    else:
        assert (total < source[3]).any()
    big = histogram > 1000
    mean = histograms[..., big].mean(axis=(0, 1))                       # binomial(c, 1/4)
    sd = np.sqrt(histogram[big] * 3 / 16 / (realizations * n_blocks))
    assert (np.abs(mean - histogram[big] / 4) < 5 * sd).all()
    for part in parts:
        assert [repr(d) for d in part[4]] == [repr(d) for d in source[4]]   # dead time carried


def test_the_kept_fraction_is_recorded_and_compounds(tmp_path):
    src = write_input(tmp_path / "in.petsird", 3000)
    first = outputs_for(tmp_path / "a", {20: 2})
    downsample(src, first, seed=1, block_events=100)
    record = petsird_header.downsampling_record(pio.read_header(first[20][1]))
    assert record["kept_fraction"] == 0.2 and record["realization"] == 1 and record["seed"] == 1
    assert "singles histograms" in record["thinned"] and "dead time" in record["carried"]
    second = outputs_for(tmp_path / "b", {50: 1})
    downsample(first[20][1], second, seed=2, block_events=100)
    header = pio.read_header(second[50][0])
    record = petsird_header.downsampling_record(header)
    assert (record["kept_fraction"], record["of_input"], record["level"]) == (0.1, 0.5, "p050")
    assert header.scanner.detection_efficiencies.method_description.count(
        petsird_header.DOWNSAMPLED_MARK) == 1
    assert petsird_header.scanner_from_header(header) == SCANNER    # the acceptance record still reads
    assert len(all_ids(second[50][0])) == 300


def test_headers_serialised_per_output_when_the_blank_record_is_not_unique(tmp_path, monkeypatch):
    """When the blank record's bytes occur twice in the serialised header (free text holding
    them), each output's header is serialised on its own: same records, events and header."""
    from amdiff.listmode import downsample as module

    src = write_input(tmp_path / "in.petsird", 2000)
    fast = outputs_for(tmp_path / "fast", {5: 1, 20: 2})
    downsample(src, fast, seed=4, block_events=100)
    real_description, real_serialise = module.downsampled_description, module.serialised_header
    calls = []

    def description(original, record):      # the blank twice: once more in the free text
        text = real_description(original, record)
        return text + " " + record if record.startswith("{~") else text

    def serialise(header):
        calls.append(1)
        return real_serialise(header)
    monkeypatch.setattr(module, "downsampled_description", description)
    monkeypatch.setattr(module, "serialised_header", serialise)
    slow = outputs_for(tmp_path / "slow", {5: 1, 20: 2})
    downsample(src, slow, seed=4, block_events=100)
    assert len(calls) == 1 + 3                 # the template, then one per output
    for a, b in zip(fast[5] + fast[20], slow[5] + slow[20]):
        ha, hb = pio.read_header(a), pio.read_header(b)
        assert petsird_header.downsampling_record(hb) == petsird_header.downsampling_record(ha)
        assert without_record(hb) == without_record(ha)
        assert [ids.tolist() for _, ids in read_ids(b)] == [ids.tolist() for _, ids in read_ids(a)]


def test_generator_file_with_two_module_types(tmp_path):
    from tests.test_listmode_io import generator_file
    src = generator_file(tmp_path / "gen.petsird")
    outs = outputs_for(tmp_path, {50: 2})
    counts = downsample(src, outs, seed=4)
    with pio.RawReader(src) as reader:
        header = reader.header
        ref = [b for b in reader.time_blocks() if isinstance(b, pio.RawEventBlock)]
    n = sum(len(ev) for b in ref for row in b.prompts for ev in row)
    assert sum(counts.values()) == n
    parts = []
    for p in outs[50]:
        with pio.RawReader(p) as reader:
            assert without_record(reader.header) == header
            parts.append([b for b in reader.time_blocks() if isinstance(b, pio.RawEventBlock)])
    for k, block in enumerate(ref):
        for i, row in enumerate(block.prompts):
            for j, ev in enumerate(row):
                got = [part[k].prompts[i][j] for part in parts]
                assert all(part[k].start_ms == block.start_ms for part in parts)
                merged = np.concatenate(got)
                # union = input list, each kept event exactly once (rows as tuples)
                assert sorted(map(tuple, merged.tolist())) == sorted(map(tuple, ev.tolist()))


# ---- bad input ---------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["missing", "empty", "truncated", "garbage"])
def test_bad_inputs_leave_no_outputs(tmp_path, kind):
    src = tmp_path / "in.petsird"
    if kind == "empty":
        src.write_bytes(b"")
    elif kind == "garbage":
        src.write_bytes(np.random.default_rng(0).bytes(3000))
    elif kind == "truncated":
        write_input(src, 5000)
        src.write_bytes(src.read_bytes()[:-300])
    outdir = tmp_path / "out"
    outs = outputs_for(outdir, {5: 1, 10: 1})
    existing = outdir / "p10_r0.petsird"
    outdir.mkdir()
    existing.write_bytes(b"old")
    with pytest.raises(InputError, match="in.petsird"):
        downsample(src, outs, seed=0, block_events=100)
    assert sorted(p.name for p in outdir.iterdir()) == ["p10_r0.petsird"]
    assert existing.read_bytes() == b"old"


def test_bad_levels(tmp_path):
    src = write_input(tmp_path / "in.petsird", 10)
    with pytest.raises(InputError, match="3 disjoint realizations of p040"):
        downsample(src, outputs_for(tmp_path, {40: 3}), seed=0)
    with pytest.raises(InputError, match="downsample levels"):
        downsample(src, outputs_for(tmp_path, {0: 1}), seed=0)
    with pytest.raises(ValueError, match="multiple of 20"):
        downsample(src, outputs_for(tmp_path, {5: 1, 10: 1}), seed=0, block_events=110)
    with pytest.raises(InputError, match="equals the input"):
        downsample(src, {5: [src]}, seed=0)
    with pytest.raises(InputError, match="fewer decimals"):
        downsample(src, outputs_for(tmp_path, {1.2345678: 1}), seed=0)
    assert not list(tmp_path.glob("p*.petsird"))
