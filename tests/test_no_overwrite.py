"""A verb refuses an output that is one of its inputs, before it writes anything.

Each case runs a real CLI verb whose output is (or resolves to, through a symlink or ``..``)
one of its inputs, and checks the contract of amdiff/cli.py: exit status 2, exactly one
stderr line ``amdiff: error: <output>: is both an input and an output ...`` and every input
byte for byte unchanged, with no temporary file next to it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from amdiff.cli import main
from amdiff.errors import InputError
from amdiff.io.atomic import refuse_overwriting_inputs
from amdiff.io.nifti import centered_affine, write_volume
from tests.test_bad_inputs import _listmode_inputs

SHAPE = (8, 8, 8)
AFFINE = centered_affine(SHAPE, (4.0, 4.0, 4.0))


def _ct(path: Path) -> Path:
    ct = np.zeros(SHAPE, np.float32)
    ct[:3] = -1000.0
    return write_volume(path, ct, AFFINE)


def _suv(path: Path) -> Path:
    return write_volume(path, np.random.default_rng(0).uniform(0.5, 3.0, SHAPE).astype(np.float32), AFFINE)


# ---- cases: (id, argv from the input folder, the output path the error line names) ------------
def mumap_same_path(d):
    ct = _ct(d / "ct.nii.gz")
    return ["mumap", "--ct", ct, "--out", ct], ct


def mumap_input_through_symlink(d):
    ct = _ct(d / "ct.nii.gz")
    (d / "link.nii.gz").symlink_to(ct)
    return ["mumap", "--ct", d / "link.nii.gz", "--out", ct], ct


def mumap_output_is_symlink_to_input(d):
    ct = _ct(d / "ct.nii.gz")
    (d / "link.nii.gz").symlink_to(ct)
    return ["mumap", "--ct", ct, "--out", d / "link.nii.gz"], d / "link.nii.gz"


def mumap_output_through_dotdot(d):
    ct = _ct(d / "ct.nii.gz")
    (d / "sub").mkdir()
    out = d / "sub" / ".." / "ct.nii.gz"
    return ["mumap", "--ct", ct, "--out", out], out


def mumap_through_symlinked_folder(d):
    ct = _ct(d / "ct.nii.gz")
    (d / "alias").symlink_to(d, target_is_directory=True)
    return ["mumap", "--ct", ct, "--out", d / "alias" / "ct.nii.gz"], d / "alias" / "ct.nii.gz"


def _recon(f, out):
    return ["recon", "--config", f["config"], "--site", "mct", "--listmode", f["list"],
            "--mumap", f["mumap"], "--count-percent", "100", "--out", out]


def recon_onto_mumap(d):
    f = _listmode_inputs(d)
    return _recon(f, f["mumap"]), f["mumap"]


def recon_onto_mumap_through_symlink(d):
    f = _listmode_inputs(d)
    (d / "mu_link.nii.gz").symlink_to(f["mumap"])
    return _recon(f, d / "mu_link.nii.gz"), d / "mu_link.nii.gz"


def recon_onto_listmode(d):
    f = _listmode_inputs(d)
    return _recon(f, f["list"]), f["list"]


def downsample_outdir_holds_the_input(d):
    """The input is named like an output of its --outdir (p005_r0.petsird)."""
    f = _listmode_inputs(d)
    src = f["list"].rename(d / "p005_r0.petsird")
    return ["downsample", "--input", src, "--levels", "5,10", "--seed", "1", "--outdir", d], src


def import_image_onto_input(d):
    hc = _suv(d / "hc.nii.gz")
    (d / "link.nii.gz").symlink_to(hc)
    return ["import-image", "--kind", "suv", "--input", d / "link.nii.gz", "--out", hc], hc


def gaussian_filter_outdir_holds_the_input(d):
    lc = _suv(d / "denoised.nii.gz")
    return ["gaussian-filter", "--lc", lc, "--fwhm-mm", "4", "--out-dir", d], lc


def collect_metrics_glob_holds_the_output(d):
    """``amdiff collect-metrics metrics/*.tsv --out metrics/all.tsv`` run a second time."""
    tables = [d / name for name in ("a.tsv", "all.tsv")]
    for t in tables:
        t.write_text("model\tsite\n")
    return ["collect-metrics", *tables, "--out", d / "all.tsv"], d / "all.tsv"


def tables_outdir_holds_the_metrics(d):
    """The metrics table is named like one of the tables written into --out-dir."""
    metrics = d / "headline.tsv"
    metrics.write_text("model\tsite\n")
    return ["tables", "--metrics", metrics, "--out-dir", d], metrics


CASES = [mumap_same_path, mumap_input_through_symlink, mumap_output_is_symlink_to_input,
         mumap_output_through_dotdot, mumap_through_symlinked_folder, recon_onto_mumap,
         recon_onto_mumap_through_symlink, recon_onto_listmode, downsample_outdir_holds_the_input,
         import_image_onto_input, gaussian_filter_outdir_holds_the_input,
         collect_metrics_glob_holds_the_output, tables_outdir_holds_the_metrics]


def _snapshot(folder: Path) -> dict[str, str]:
    """Name -> sha256 of every file in ``folder`` (symlinks as their target's bytes)."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())
            if p.is_file()}


@pytest.mark.parametrize("case", CASES, ids=[c.__name__ for c in CASES])
def test_output_that_is_an_input_is_refused(tmp_path, capsys, case):
    d = tmp_path / "in"
    d.mkdir()
    argv, output = case(d)
    before = _snapshot(d)
    capsys.readouterr()
    assert main([str(a) for a in argv]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    err = captured.err.splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"amdiff: error: {output}: is both an input and an output"), err[0]
    assert _snapshot(d) == before, "an input was modified (or a file added next to it)"
    assert not [p for p in tmp_path.rglob("*") if ".tmp" in p.name]


def test_console_script_refuses_with_status_2(tmp_path, venv_env):
    argv, output = mumap_input_through_symlink(tmp_path)
    before = _snapshot(tmp_path)
    result = subprocess.run([shutil.which("amdiff", path=venv_env["PATH"]), *map(str, argv)],
                            env=venv_env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"amdiff: error: {output}: is both an input and an output (the input {argv[2]}); "
        "writing it would overwrite the input, choose another output path"]
    assert _snapshot(tmp_path) == before


def test_distinct_outputs_pass_and_absent_arguments_are_skipped(tmp_path):
    a, b = tmp_path / "a.nii.gz", tmp_path / "b.nii.gz"
    a.write_bytes(b"a")
    refuse_overwriting_inputs([a, None], [b, None])           # b does not exist yet
    b.write_bytes(b"b")
    refuse_overwriting_inputs([a], [b])


def test_hard_link_of_an_input_is_the_same_file(tmp_path):
    a = tmp_path / "a.nii.gz"
    a.write_bytes(b"a")
    try:
        os.link(a, tmp_path / "b.nii.gz")
    except OSError:
        pytest.skip("hard links not supported here")
    with pytest.raises(InputError, match="is both an input and an output"):
        refuse_overwriting_inputs([a], [tmp_path / "b.nii.gz"])
