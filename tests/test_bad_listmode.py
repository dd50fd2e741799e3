"""Wrong list-mode data or arguments must not give plausible output (recon, downsample).

Every case runs the real CLI and expects exit status 2, one stderr line naming the file or
argument, no output (not even a temporary) and the inputs unchanged: a list from another
scanner geometry than the site's config, detector ids beyond the header's scanner, and
count percents, levels or seeds outside their range.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from amdiff.cli import main
from amdiff.io.nifti import read_volume
from amdiff.listmode import petsird_io as pio
from tests.test_bad_inputs import _check_clean_failure, _config, _listmode_inputs, _snapshot
from tests.test_listmode_io import SCANNER, header, random_blocks

REPO = Path(__file__).resolve().parents[1]
SIZES = (2000, 2000, 2000)       # events per time block of the test lists


def _site_of_tiny_scanner(cfg):
    """sites.mct with the scanner of the test lists, an image that fits it, a quick recon."""
    site = cfg["sites"]["mct"]
    site["scanner"] = SCANNER.to_dict()
    site["image"] = {"shape": [8, 8, 8], "voxel_size_mm": [4.0, 4.0, 2.0]}   # 16 mm axial
    site["recon"] = {"iterations": 1, "subsets": 2, "postfilter_fwhm_mm": 0.0}


def _inputs(d, scanner=SCANNER):
    """List of ``scanner`` (``bad``), mu-map, and a config whose site has the tiny SCANNER."""
    files = _listmode_inputs(d, sizes=SIZES)
    if scanner != SCANNER:
        files["list"].unlink()
        pio.write_listmode(files["list"], header(scanner), random_blocks(scanner, list(SIZES)))
    return files | {"config": _config(d, _site_of_tiny_scanner)}


def _recon(files, out, *extra):
    return ["recon", "--config", files["config"], "--site", "mct", "--listmode", files["list"],
            "--mumap", files["mumap"], "--out", out / "recon.nii.gz", *extra]


def _downsample(files, out, *extra):
    return ["downsample", "--input", files["list"], "--levels", "5,10", "--realizations", "2",
            "--outdir", out / "ds", "--counts", out / "counts.json", *(extra or ("--seed", "1"))]


def _run(tmp_path, capsys, files_of, command, bad=None):
    """Run the CLI on fresh inputs; return (status, stderr lines, d, out, files, outputs)."""
    d, out = tmp_path / "in", tmp_path / "out"
    d.mkdir()
    out.mkdir()
    files = files_of(d)
    if bad is not None:
        files["bad"] = bad
    argv = [str(a) for a in command(files, out)]
    outputs = [Path(a) for a in argv if a.startswith(str(out))]
    before = _snapshot(d)
    capsys.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            status = main(argv)
        except SystemExit as exc:           # argparse's usage errors exit here
            status = exc.code
    captured = capsys.readouterr()
    assert captured.out == ""
    # a warning would print more lines on stderr in a real run
    assert [str(w.message) for w in caught if issubclass(w.category, (UserWarning, RuntimeWarning))
            and not issubclass(w.category, DeprecationWarning)] == []
    return status, captured.err.splitlines(), d, out, files, outputs, before


def _assert_refused(tmp_path, capsys, files_of, command, words, bad=None):
    status, err, d, out, files, outputs, before = _run(tmp_path, capsys, files_of, command, bad)
    assert status == 2, err
    _check_clean_failure(err, d, out, files, outputs, before, words)
    return err[0]


# ---- the check does not refuse good data ---------------------------------------------------
def test_list_of_the_configured_scanner_still_reconstructs(tmp_path, capsys):
    status, err, _, out, *_ = _run(tmp_path, capsys, _inputs, _recon)
    assert status == 0, err
    assert not [line for line in err if "error" in line or "LOR" in line], err   # tqdm's bar only
    suv = read_volume(out / "recon.nii.gz", kind="suv").data
    assert np.isfinite(suv).all() and suv.max() > 0
    assert [p.name for p in out.iterdir()] == ["recon.nii.gz"]


def _downsampled_inputs(d):
    """The inputs, with ``list`` a 10 % list that amdiff downsample made (its header records it)."""
    files = _inputs(d)
    assert main(["downsample", "--input", str(files["list"]), "--levels", "10", "--seed", "3",
                 "--outdir", str(d / "ds")]) == 0
    return files | {"list": d / "ds" / "p010_r0.petsird", "bad": d / "ds" / "p010_r0.petsird"}


def test_recon_takes_the_count_share_from_a_downsampled_header(tmp_path, capsys):
    """Without --count-percent a down-sampled list gets the SUV scale of the share its header
    records: the same image as --count-percent 10; a percent the header contradicts is refused."""
    d = tmp_path / "in"
    d.mkdir()
    files = _downsampled_inputs(d)
    images = {}
    for name, extra in (("recorded", []), ("ten", ["--count-percent", "10"])):
        out = tmp_path / name
        out.mkdir()
        assert main([str(a) for a in _recon(files, out, *extra)]) == 0
        images[name] = read_volume(out / "recon.nii.gz", kind="suv").data
    np.testing.assert_array_equal(images["recorded"], images["ten"])
    (tmp_path / "wrong").mkdir()
    err = _assert_refused(tmp_path / "wrong", capsys, _downsampled_inputs,
                          lambda f, out: _recon(f, out, "--count-percent", "100"),
                          ["contradicts", "records 10 %"])
    assert "--count-percent 100" in err


# ---- list of another scanner geometry ------------------------------------------------------
FOREIGN = [("n_crystals", 32, "32", "24"),
           ("n_rings", 6, "6", "5"),
           ("radius_mm", 160.0, "160.0", "150.0"),
           ("ring_pitch_mm", 4.5, "4.5", "4.07"),
           ("crystal_size_mm", (15.0, 3.5, 4.2), r"\(15.0, 3.5, 4.2\)", r"\(15.0, 3.5, 3.9\)"),
           ("max_ring_difference", 1, "1", "2"),
           ("fov_radius_mm", 90.0, "90.0", "100.0")]


@pytest.mark.parametrize("field,value,in_list,in_config", FOREIGN, ids=[f[0] for f in FOREIGN])
def test_recon_refuses_a_list_of_another_scanner_geometry(tmp_path, capsys, field, value,
                                                         in_list, in_config):
    foreign = dataclasses.replace(SCANNER, **{field: value})
    line = _assert_refused(tmp_path, capsys, lambda d: _inputs(d, foreign), _recon,
                           ["scanner geometry differs from sites.mct.scanner of .*config.yaml",
                            f"{field} is {in_list} in the list, {in_config} in the config"])
    assert line.count(" in the list, ") == 1, "only the changed field is named"


# ---- detector ids beyond the header's scanner ----------------------------------------------
def _list_with_bad_ids(path: Path, kind: str) -> None:
    """The tiny list with two detector ids beyond the scanner's 120 in time block 1.

    RawWriter is used directly: write_listmode refuses such bins.
    """
    blocks = random_blocks(SCANNER, list(SIZES))
    writer = pio.RawWriter(path, header())
    for k, block in enumerate(blocks):
        events = np.zeros((len(block.bins), 3), np.uint32)
        events[:, :2] = block.bins
        delayeds = events[:10].copy()
        singles = np.stack([events[:4, 0], np.arange(4)], axis=1).astype(np.uint32)
        if k == 1 and kind == "single":
            singles[2, 0] = 125
        elif k == 1:
            bad = events if kind == "prompt" else delayeds
            bad[5, :2] = (130, 4)
            bad[7, :2] = (119, 4000)
        writer.write_event_block(block.start_ms, block.stop_ms, [[events]], [[delayeds]],
                                 singles=[singles])
    writer.close()


def _inputs_with_bad_ids(kind):
    def make(d):
        files = _inputs(d)
        _list_with_bad_ids(files["list"], kind)
        return files
    return make


BAD_ID_WORDS = {
    "prompt": [r"2 of 6042 events have detector ids out of range",
               r"the header's scanner has 120 detection bins",
               r"first: prompt event 2005 \(time block 1\) with detector ids 130, 4$"],
    "delayed": [r"2 of 6042 events have detector ids out of range",
                r"first: delayed event 15 \(time block 1\) with detector ids 130, 4$"],
    "single": [r"1 of 6042 events have detector ids out of range",
               r"first: single event 6 \(time block 1\) with detector id 125$"],
}


@pytest.mark.parametrize("kind", ["prompt", "delayed", "single"])
@pytest.mark.parametrize("verb", ["recon", "downsample"])
def test_detector_ids_out_of_range_are_refused(tmp_path, capsys, verb, kind):
    command = _recon if verb == "recon" else _downsample
    _assert_refused(tmp_path, capsys, _inputs_with_bad_ids(kind), command, BAD_ID_WORDS[kind])


# ---- arguments out of range ------------------------------------------------------------------
ARGUMENTS = [
    ("recon", ["--count-percent", "0"], "--count-percent", "'0'"),
    ("recon", ["--count-percent", "150"], "--count-percent", "'150'"),
    ("recon", ["--count-percent", "nan"], "--count-percent", "'nan'"),
    ("downsample", ["--seed", "-1"], "--seed", "'-1'"),
    ("downsample", ["--seed", "1", "--levels", "5,150"], "--levels", "'5,150'"),
    ("downsample", ["--seed", "1", "--levels", "0"], "--levels", "'0'"),
    ("downsample", ["--seed", "1", "--realizations", "0"], "--realizations", "'0'"),
]


@pytest.mark.parametrize("verb,extra,argument,value", ARGUMENTS,
                         ids=[f"{a[0]}{''.join(a[1][-2:])}" for a in ARGUMENTS])
def test_argument_out_of_range_is_one_line(tmp_path, capsys, verb, extra, argument, value):
    command = _recon if verb == "recon" else _downsample
    _assert_refused(tmp_path, capsys, _inputs, lambda f, out: command(f, out, *extra),
                    [rf"{value}$"], bad=f"argument {argument}")


def test_console_exit_status_and_single_line(tmp_path):
    """A real process: status 2 and one stderr line, for a list error and an argument error."""
    d, out = tmp_path / "in", tmp_path / "out"
    d.mkdir()
    files = _inputs_with_bad_ids("prompt")(d)
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    for argv, bad in [(_downsample(files, out), files["list"]),
                      (_downsample(files, out, "--seed", "-1"), "argument --seed")]:
        result = subprocess.run([sys.executable, "-m", "amdiff.cli", *map(str, argv)], env=env,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 2, result.stderr
        assert result.stdout == ""
        assert len(result.stderr.splitlines()) == 1, result.stderr
        assert result.stderr.startswith(f"amdiff: error: {bad}: ")
    assert not [p for p in out.rglob("*") if not p.is_dir()], "no output or temporary file"


def test_detector_ids_are_checked_per_module_type(tmp_path, capsys):
    """petsird's two-module-type example file: an id valid for type 0 but not for type 1."""
    from tests.test_listmode_io import generator_file

    def make(d):
        src = generator_file(tmp_path / "gen.petsird")
        bad = d / "gen.petsird"
        with pio.RawReader(src) as reader:
            n_bins = [pio.get_num_detection_bins(reader.header.scanner, t) for t in (0, 1)]
            assert n_bins == [288, 48]
            writer = pio.RawWriter(bad, header_bytes=reader.header_bytes())
            for k, block in enumerate(reader.time_blocks()):
                if not isinstance(block, pio.RawEventBlock):
                    writer.write_time_block(block)
                    continue
                if k == 0:
                    block.prompts[1][0][0, 0] = 48     # list [1][0]: first id is of type 1
                writer.write_event_block(block.start_ms, block.stop_ms, block.prompts,
                                         block.delayeds)
            writer.close()
        return {"list": bad}

    _assert_refused(tmp_path, capsys, lambda d: make(d) | {"bad": d / "gen.petsird"},
                    _downsample,
                    [r"1 of \d+ events have detector ids out of range",
                     "detection bins per module type 288, 48",
                     r"first: prompt event \d+ \(time block 0\) with detector ids 48, \d+$"])
