"""The command line: bad input ends with one line naming the file, exit status 2, no output."""

import subprocess

import numpy as np
import pytest

from amdiff.cli import main
from amdiff.io.nifti import centered_affine, write_volume


def test_missing_list_mode_file_is_one_line(tmp_path, capsys):
    assert main(["downsample", "--input", str(tmp_path / "none.petsird"), "--levels", "5",
                 "--seed", "1", "--outdir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"amdiff: error: {tmp_path / 'none.petsird'}: file not found"]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())



@pytest.mark.parametrize("levels", ["5,5", "5,5.0", "10,5,10.00"])
def test_a_level_given_twice_is_refused_not_merged(tmp_path, capsys, levels):
    with pytest.raises(SystemExit) as stop:
        main(["downsample", "--input", str(tmp_path / "in.petsird"), "--levels", levels,
              "--seed", "1", "--outdir", str(tmp_path / "out")])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "count level p0" in err[0] and "given twice" in err[0]

def test_corrupt_ct_leaves_no_output(tmp_path, capsys):
    bad = tmp_path / "ct.nii.gz"
    bad.write_bytes(b"\x1f\x8b not really gzip")
    out = tmp_path / "mu.nii.gz"
    assert main(["mumap", "--ct", str(bad), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(bad) in err[0] and "not a readable NIfTI" in err[0]
    assert not out.exists() and list(tmp_path.iterdir()) == [bad]


def test_mumap_from_ct_in_units_of_inverse_cm(tmp_path):
    ct = np.full((8, 8, 8), 0.0, dtype=np.float32)      # water
    ct[:4] = -1000.0                                      # air
    write_volume(tmp_path / "ct.nii.gz", ct, centered_affine(ct.shape, (4, 4, 4)))
    assert main(["mumap", "--ct", str(tmp_path / "ct.nii.gz"), "--out", str(tmp_path / "mu.nii.gz")]) == 0
    from amdiff.io.nifti import read_volume

    mu = read_volume(tmp_path / "mu.nii.gz", "mumap").data
    assert mu[:4].max() == pytest.approx(0.0, abs=1e-6)
    assert mu[4:].mean() == pytest.approx(0.096, rel=0.02)


def test_import_image_refuses_a_grid_mismatch_without_touching_inputs(tmp_path, capsys):
    a = np.ones((8, 8, 8), dtype=np.float32)
    write_volume(tmp_path / "hc.nii.gz", a, centered_affine(a.shape, (4, 4, 4)))
    write_volume(tmp_path / "ct.nii.gz", a, centered_affine(a.shape, (5, 4, 4)))
    before = (tmp_path / "hc.nii.gz").read_bytes()
    assert main(["import-image", "--kind", "suv", "--input", str(tmp_path / "hc.nii.gz"),
                 "--reference", str(tmp_path / "ct.nii.gz"), "--out", str(tmp_path / "out.nii.gz")]) == 2
    assert "affine differs" in capsys.readouterr().err
    assert not (tmp_path / "out.nii.gz").exists()
    assert (tmp_path / "hc.nii.gz").read_bytes() == before


def test_console_script_is_installed(venv_env):
    result = subprocess.run(["amdiff", "--help"], env=venv_env, capture_output=True, text=True)
    assert result.returncode == 0
    for verb in ("phantom", "simulate", "downsample", "recon", "labels", "manifest", "qc", "import-autopet"):
        assert verb in result.stdout
