"""recon.engine: external: the user's own reconstruction program, run from a command template.

The "engine" here is a small script the test writes: it records the arguments it was given and
writes, on the mu-map's grid, a known activity concentration times the count fraction (what a
real engine returns for a down-sampled list). amdiff must turn that into the SUV of the known
concentration with the list header's weight and dose, and refuse every broken case in one line.
"""

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from amdiff.io.nifti import centered_affine, read_volume, write_volume
from amdiff.listmode.header import acquisition_from_header
from amdiff.listmode.petsird_io import read_header
from amdiff.listmode.simulate import simulate_listmode
from amdiff.physics.suv import concentration_to_suv
from amdiff.physics.scanner import CylindricalScanner

REPO = Path(__file__).resolve().parents[1]
SCANNER = CylindricalScanner(name="external-test", n_crystals=64, n_rings=4, radius_mm=200.0,
                             ring_pitch_mm=8.0, max_ring_difference=1, fov_radius_mm=150.0)
SHAPE, VOX = (16, 16, 4), (8.0, 8.0, 8.0)
AFFINE = centered_affine(SHAPE, VOX)
CONCENTRATION_BQML = 5000.0

ENGINE = """
import json, sys
import nibabel as nib
import numpy as np
args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
json.dump({"argv": sys.argv[1:]}, open(args["--record"], "w"))
if "--fail" in args:
    print("engine: detector map missing", flush=True)
    sys.exit(3)
mu = nib.load(args["--mu"])
body = (np.asarray(mu.dataobj) > 0).astype(np.float32)
if args.get("--grid") == "wrong":
    body = body[:-1]
image = body * CONCENTRATION * float(args["--fraction"])
nib.save(nib.Nifti1Image(image, mu.affine), args["--out"])
"""


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """A list-mode file and mu-map in a folder whose name a shell would run, and the engine."""
    root = tmp_path_factory.mktemp("ext")
    data = root / "my data $(touch INJECTED) ü"
    data.mkdir()
    mu = np.zeros(SHAPE, np.float32)
    mu[4:12, 4:12, :] = 0.096
    write_volume(data / "mu map.nii.gz", mu, AFFINE)
    acq = {"dose_mbq": 300.0, "duration_s": 5.0, "sensitivity_cps_per_kbq": 10.0, "count_scale": 0.01,
           "background_fraction": 0.2, "psf_fwhm_mm": 6.0}
    simulate_listmode(data / "p005 list.petsird", 2.0 * (mu > 0), mu, AFFINE, SCANNER, acq,
                      subject_id="s", weight_kg=70.0, height_m=1.8, seed=1)
    engine = root / "engine.py"
    engine.write_text(ENGINE.replace("CONCENTRATION", repr(CONCENTRATION_BQML)))
    return {"root": root, "data": data, "engine": engine, "listmode": data / "p005 list.petsird",
            "mumap": data / "mu map.nii.gz"}


def write_config(case, command, name="config.yaml", engine="external"):
    config = yaml.safe_load((REPO / ".test/config/config.yaml").read_text())
    site = next(iter(config["sites"]))
    recon = config["sites"][site]["recon"]
    recon["engine"] = engine
    if command is not None:
        recon["command"] = command
    path = case["root"] / name
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path, site, recon


def engine_command(case, *extra):
    return " ".join([shlex.quote(sys.executable), shlex.quote(str(case["engine"])), "--list {listmode}",
                     "--mu {mumap}", "--out {output}", "--fraction {count_fraction}", "--it {iterations}",
                     "--sub {subsets}", "--fwhm {postfilter_fwhm_mm}", "--shape {shape}",
                     "--record", shlex.quote(str(case["root"] / "record.json")), *extra])


def amdiff(*args, cwd):
    return subprocess.run([sys.executable, "-m", "amdiff", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=600)


def recon(case, config, site, out, percent=5):
    return amdiff("recon", "--config", config, "--site", site, "--listmode", case["listmode"], "--mumap",
                  case["mumap"], "--count-percent", percent, "--out", out, cwd=case["root"])


def leftovers(folder):
    return sorted(p.name for p in Path(folder).iterdir() if ".tmp" in p.name)


def test_the_engines_image_is_scaled_to_suv_like_the_internal_one(case):
    config, site, settings = write_config(case, engine_command(case))
    out = case["data"] / "lc out.nii.gz"
    done = recon(case, config, site, out)
    assert done.returncode == 0, done.stderr
    acquisition = acquisition_from_header(read_header(case["listmode"]))
    mu = read_volume(case["mumap"], "mumap")
    image = read_volume(out, "suv")
    np.testing.assert_allclose(image.affine, AFFINE)
    # the count fraction (5 %) is taken out again, the concentration becomes SUV with the header's
    # weight and injected dose
    want = concentration_to_suv(CONCENTRATION_BQML * (mu.data > 0), acquisition["weight_kg"],
                                acquisition["injected_mbq"])
    np.testing.assert_allclose(image.data, want, rtol=1e-5)
    assert image.data.max() == pytest.approx(CONCENTRATION_BQML * 70_000 / 300e6, rel=1e-4)
    argv = json.loads((case["root"] / "record.json").read_text())["argv"]
    given = dict(zip(argv[::2], argv[1::2]))
    assert given["--list"] == str(case["listmode"]) and given["--mu"] == str(case["mumap"])
    assert given["--it"] == str(settings["iterations"]) and given["--sub"] == str(settings["subsets"])
    assert float(given["--fraction"]) == 0.05 and given["--shape"] == "16,16,4"
    assert Path(given["--out"]).parent == out.parent and Path(given["--out"]) != out
    assert leftovers(case["data"]) == []
    assert not list(case["root"].rglob("INJECTED")) and not (Path.cwd() / "INJECTED").exists()


@pytest.mark.parametrize("extra, problem", [
    (("--fail", "1"), "exited with status 3 on .*: engine: detector map missing"),
    (("--grid", "wrong"), "shape \\(15, 16, 4\\) differs from the mu-map's \\(16, 16, 4\\)"),
])
def test_a_failing_or_wrong_engine_stops_with_one_line_and_leaves_nothing(case, extra, problem):
    config, site, _ = write_config(case, engine_command(case, *extra), name=f"bad{extra[0]}.yaml")
    out = case["data"] / f"bad{extra[0]}.nii.gz"
    done = recon(case, config, site, out)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("amdiff: error:"), done.stderr
    assert re.search(problem, lines[0]), lines[0]
    assert not out.exists() and leftovers(case["data"]) == []


@pytest.mark.parametrize("command, engine, problem", [
    ("castor-recon -df {listmode} -fout {output} -it {iteration}", "external", "unknown placeholder {iteration}"),
    ("castor-recon -df {listmode}", "external", "must contain {output}"),
    (None, "external", "recon.command .* is required"),
    ("castor-recon -df {listmode} -fout {output}", "internal", "recon.engine is not external"),
    ("castor-recon -df '{listmode} -fout {output}", "external", "not a valid command line"),
])
def test_the_template_is_checked_with_the_config(case, command, engine, problem):
    config, _, _ = write_config(case, command, name="template.yaml", engine=engine)
    done = amdiff("check-config", config, cwd=case["root"])
    assert done.returncode == 2, done.stderr
    assert re.search(problem, done.stderr), done.stderr
    assert "sites." in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_a_missing_program_is_named(case):
    config, site, _ = write_config(case, "no-such-recon-engine {listmode} {output}", name="missing.yaml")
    done = recon(case, config, site, case["data"] / "missing.nii.gz")
    assert done.returncode == 2 and "program 'no-such-recon-engine' is not found" in done.stderr, done.stderr
    assert leftovers(case["data"]) == []
