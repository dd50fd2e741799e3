"""Bad input catalogue (issue 7): broken images, list-mode files, manifests and configs.

Every case runs a real CLI verb on one broken input and checks the contract of amdiff/cli.py:
exit status 2, exactly one stderr line ``amdiff: error: <file or key>: <problem>`` naming the
offending file and the problem, no output (not even a temporary file) in the output folder,
and the inputs byte for byte unchanged.

The table below reads: case id, input maker, command, words the error line must contain.
A maker writes its files into a fresh input folder and returns them as a dict; ``bad`` is the
file the message must name. A command turns those files and an (empty) output folder into
argv. Most cases run ``amdiff.cli.main`` in-process; ``test_console_script_*`` runs three
through the installed ``amdiff`` script to prove the real exit status and stderr.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import shutil
import subprocess
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml

from amdiff.cli import main
from amdiff.io.nifti import centered_affine, write_volume
from amdiff.listmode import petsird_io as pio
from tests.test_listmode_io import SCANNER, header, random_blocks
from tests.test_manifest import make_subject, write_tsv

REPO = Path(__file__).resolve().parents[1]
SHAPE = (8, 8, 8)
AFFINE = centered_affine(SHAPE, (4.0, 4.0, 4.0))


# ---- input makers: images ---------------------------------------------------------------
def _suv(seed=0):
    return np.random.default_rng(seed).uniform(0.5, 3.0, SHAPE).astype(np.float32)


def _lesion():
    m = np.zeros(SHAPE, np.uint8)
    m[3:5, 3:5, 3:5] = 1
    return m


def _raw_nifti(path: Path, data, affine=AFFINE) -> Path:
    """Any array (2D, 4D, int16...) as NIfTI; write_volume insists on 3D."""
    nib.save(nib.Nifti1Image(np.asarray(data), affine), str(path))
    return path


def nifti_truncated(d):
    good = write_volume(d / "good.nii.gz", _suv(), AFFINE)
    raw = good.read_bytes()
    bad = d / "ct.nii.gz"
    bad.write_bytes(raw[: len(raw) * 2 // 3])   # gzip stream cut inside the voxel data
    good.unlink()
    return {"bad": bad}


def nifti_truncated_uncompressed(d):
    good = write_volume(d / "good.nii", _suv(), AFFINE)
    bad = d / "ct.nii"
    bad.write_bytes(good.read_bytes()[:352 + 100])   # header intact, voxels cut short
    good.unlink()
    return {"bad": bad}


def nifti_garbage(d):
    bad = d / "ct.nii.gz"
    bad.write_bytes(gzip.compress(b"this is not a NIfTI header at all" * 20))
    return {"bad": bad}


def nifti_2d(d):
    return {"bad": _raw_nifti(d / "suv.nii.gz", np.ones((8, 8), np.float32))}


def nifti_4d(d):
    return {"bad": _raw_nifti(d / "suv.nii.gz", np.ones(SHAPE + (2,), np.float32))}


def _with(value, kind="suv", dtype=np.float32):
    def make(d):
        data = _suv().astype(np.float64)
        data[2, 3, 4] = value
        return {"bad": write_volume(d / f"{kind}.nii.gz", data, AFFINE, dtype)}
    return make


def suv_negative(d):
    return {"bad": write_volume(d / "suv.nii.gz", _suv() - 5.0, AFFINE)}


def shape_mismatch(d):
    ref = write_volume(d / "hc.nii.gz", _suv(), AFFINE)
    other = np.ones((8, 8, 9), np.float32)
    bad = write_volume(d / "ct.nii.gz", other, centered_affine(other.shape, (4.0, 4.0, 4.0)))
    return {"bad": bad, "ref": ref}


def _qc_set(d, lesion=None, lesion_affine=AFFINE, organs=None):
    files = {"hc": write_volume(d / "hc.nii.gz", _suv(), AFFINE),
             "lc": write_volume(d / "lc_p005.nii.gz", _suv(1), AFFINE)}
    files["lesion"] = write_volume(d / "lesion.nii.gz", _lesion() if lesion is None else lesion,
                                   lesion_affine, np.uint8)
    files["organs"] = write_volume(d / "organs.nii.gz",
                                   np.zeros(SHAPE) if organs is None else organs, AFFINE, np.uint8)
    return files


def affine_mismatch(d):
    files = _qc_set(d, lesion_affine=centered_affine(SHAPE, (4.0, 4.0, 5.0)))
    return files | {"bad": files["lesion"]}


def organs_out_of_range(d):
    organs = np.zeros(SHAPE)
    organs[1, 1, 1] = 9
    files = _qc_set(d, organs=organs)
    return files | {"bad": files["organs"]}


def qc_lc_without_level(d):
    return _qc_set(d) | {"bad": "command line"}   # the offender is an argument, not a file


def labels_non_integer(d):
    data = _lesion().astype(np.float32)
    data[0, 0, 0] = 0.5
    return {"bad": write_volume(d / "lesion.nii.gz", data, AFFINE)}


def labels_out_of_range(d):
    ct = write_volume(d / "ct.nii.gz", np.zeros(SHAPE), AFFINE)
    data = np.zeros(SHAPE, np.int16)
    data[1, 2, 3] = 300
    return {"ct": ct, "bad": _raw_nifti(d / "organs_truth.nii.gz", data)}


def lesion_not_binary(d):
    return {"bad": write_volume(d / "lesion.nii.gz", _lesion() * 2, AFFINE, np.uint8)}


def simulate_grid_mismatch(d):
    suv = write_volume(d / "suv.nii.gz", _suv(), AFFINE)
    mu = np.full((8, 8, 6), 0.096)
    bad = write_volume(d / "mumap.nii.gz", mu, centered_affine(mu.shape, (4.0, 4.0, 4.0)))
    return {"config": _config(d), "suv": suv, "bad": bad}


# ---- input makers: list-mode --------------------------------------------------------------
def _valid_list(d, sizes=(200, 200, 200)) -> Path:
    """A small valid PETSIRD list of the tiny scanner of test_listmode_io (milliseconds)."""
    path = d / "list.petsird"
    pio.write_listmode(path, header(), random_blocks(SCANNER, list(sizes)))
    return path


def _listmode_inputs(d, content: bytes | None = None, sizes=(200, 200, 200)):
    """The list (``bad``) plus a mu-map and a config for recon."""
    lm = _valid_list(d, sizes)
    if content is not None:
        lm.write_bytes(content)
    mu = write_volume(d / "mumap.nii.gz", np.full(SHAPE, 0.096), AFFINE)
    return {"bad": lm, "list": lm, "mumap": mu, "config": _config(d)}


def lm_truncated_events(d):
    files = _listmode_inputs(d)
    raw = files["bad"].read_bytes()
    files["bad"].write_bytes(raw[: len(raw) - 700])          # cut inside the last time block
    return files


def lm_no_end_marker(d):
    files = _listmode_inputs(d)
    raw = files["bad"].read_bytes()
    files["bad"].write_bytes(raw[:-1])     # every time block whole, the end-of-stream 0 missing
    return files


def lm_truncated_header(d):
    files = _listmode_inputs(d)
    with pio.RawReader(files["bad"]) as r:
        head = r.header_bytes()
    files["bad"].write_bytes(head[: len(head) // 2])
    return files


def lm_empty(d):
    return _listmode_inputs(d, b"")


def lm_header_only(d):
    return _listmode_inputs(d, sizes=())


def lm_not_petsird(d):
    return _listmode_inputs(d, (REPO / "config" / "manifest.example.tsv").read_bytes())


def lm_nifti_renamed(d):
    return _listmode_inputs(d, write_volume(d / "x.nii", _suv(), AFFINE).read_bytes())


# ---- input makers: configs ----------------------------------------------------------------
def _config(d, edit=None) -> Path:
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    cfg["results_dir"] = str(d / "results")       # never the repository's results/
    if edit:
        edit(cfg)
    path = d / "config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def config_with(edit):
    return lambda d: {"bad": _config(d, edit)}


def config_yaml_syntax(d):
    bad = d / "config.yaml"
    bad.write_text((REPO / "config" / "config.yaml").read_text().replace(
        "seed: 20250317", "seed: [20250317", 1))
    return {"bad": bad}


def config_not_mapping(d):
    bad = d / "config.yaml"
    bad.write_text("- seed\n- sites\n")
    return {"bad": bad}


def config_for_recon(d):
    files = _listmode_inputs(d)
    return files | {"bad": files["config"]}


# ---- input makers: manifests --------------------------------------------------------------
def _manifest(d, edit=None, columns=None):
    """Config (cohort.source manifest) + manifest of two tiny subjects under d/data."""
    root = d / "data"
    rows = [{"subject": f"sub-{i}", "site": "mct", "split": split, "weight_kg": "70",
             **make_subject(root / f"sub-{i}")} for i, split in enumerate(["train", "val"])]
    if edit:
        edit(rows, root)
    manifest = write_tsv(root / "manifest.tsv", rows, columns)

    def own(cfg):
        cfg["cohort"] = {"source": "manifest", "manifest": str(manifest)}
    return {"bad": manifest, "config": _config(d, own)}


def manifest_with(edit=None, columns=None):
    return lambda d: _manifest(d, edit, columns)


def _set(row, column, value):
    def edit(rows, root):
        rows[row][column] = value(root) if callable(value) else value
    return edit


def _escape_to_etc_passwd(root):
    return os.path.relpath("/etc/passwd", root)       # ../../../..(etc.)/etc/passwd


def manifest_missing_file(d):
    files = _manifest(d)
    files["bad"].unlink()
    return files


def manifest_not_text(d):
    files = _manifest(d)
    files["bad"].write_bytes(b"\xff\xfe\x00\x81" + bytes(range(256)))
    return files


def prepared_cohort_shape_mismatch(d):
    """`amdiff manifest --validate` on a prepared cohort (phantom source, one subject)."""
    def one_subject(cfg):
        cfg["sites"] = {"mct": cfg["sites"]["mct"]}
        cfg["sites"]["mct"]["split"] = {"train": 1, "val": 0, "test": 0}
        cfg["sites"]["mct"]["count_levels"] = {"train": [5]}
        cfg["training"]["train_sites"] = {"mct": ["mct"]}
    config = _config(d, one_subject)
    subject = d / "results" / "mct" / "mct001"
    subject.mkdir(parents=True)
    write_volume(subject / "hc.nii.gz", _suv(), AFFINE)
    write_volume(subject / "lc_p005_r0.nii.gz", _suv(1), AFFINE)
    write_volume(subject / "lesion.nii.gz", _lesion(), AFFINE, np.uint8)
    write_volume(subject / "organs.nii.gz", np.zeros(SHAPE), AFFINE, np.uint8)
    ct = np.zeros((8, 8, 7))
    bad = write_volume(subject / "ct.nii.gz", ct, centered_affine(ct.shape, (4.0, 4.0, 4.0)))
    return {"config": config, "bad": bad}


# ---- input makers: autoPET folders --------------------------------------------------------
def _autopet_study(folder: Path):
    folder.mkdir(parents=True)
    write_volume(folder / "SUV.nii.gz", _suv(), AFFINE)
    write_volume(folder / "CTres.nii.gz", np.zeros(SHAPE), AFFINE)
    write_volume(folder / "SEG.nii.gz", _lesion(), AFFINE, np.uint8)


def autopet_missing_root(d):
    root = d / "FDG-PET-CT-Lesions"
    return {"bad": root, "root": root}


def autopet_no_studies(d):
    root = d / "FDG-PET-CT-Lesions"
    (root / "PETCT_0a" / "study").mkdir(parents=True)
    (root / "PETCT_0a" / "study" / "notes.txt").write_text("no images here\n")
    return {"bad": root, "root": root}


def autopet_colliding_ids(d):
    root = d / "FDG-PET-CT-Lesions"
    _autopet_study(root / "PETCT 0a" / "study")     # both become subject PETCT_0a_study
    _autopet_study(root / "PETCT_0a" / "study")
    return {"bad": root / "PETCT_0a" / "study", "root": root}


# ---- commands -----------------------------------------------------------------------------
def mumap(f, out):
    return ["mumap", "--ct", f["bad"], "--out", out / "mumap.nii.gz"]


def import_suv(f, out):
    return ["import-image", "--kind", "suv", "--input", f["bad"], "--out", out / "hc.nii.gz"]


def import_labels(f, out):
    return ["import-image", "--kind", "labels", "--input", f["bad"], "--out", out / "lesion.nii.gz"]


def import_with_reference(f, out):
    return ["import-image", "--kind", "ct", "--input", f["bad"], "--reference", f["ref"],
            "--out", out / "ct.nii.gz"]


def labels_phantom(f, out):
    return ["labels", "--method", "phantom", "--ct", f["ct"], "--source", f["bad"],
            "--out", out / "organs.nii.gz"]


def qc(f, out):
    return ["qc", "--hc", f["hc"], "--lc", f"p005={f['lc']}", "--lesion", f["lesion"],
            "--organs", f["organs"], "--out", out / "qc.png"]


def qc_pair_without_level(f, out):
    return ["qc", "--hc", f["hc"], "--lc", str(f["lc"]), "--lesion", f["lesion"],
            "--organs", f["organs"], "--out", out / "qc.png"]


def simulate(f, out):
    return ["simulate", "--config", f["config"], "--site", "mct", "--subject", "mct001",
            "--suv", f["suv"], "--mumap", f["bad"], "--weight-kg", "70",
            "--out", out / "full.petsird", "--summary", out / "acquisition.json"]


def downsample(f, out):
    return ["downsample", "--input", f["bad"], "--levels", "5,10", "--realizations", "2",
            "--seed", "1", "--outdir", out / "lists", "--counts", out / "counts.json"]


def recon(f, out, site="mct"):
    return ["recon", "--config", f["config"], "--site", site, "--listmode", f["list"],
            "--mumap", f["mumap"], "--count-percent", "100", "--out", out / "recon.nii.gz"]


def recon_unknown_site(f, out):
    return recon(f, out, site="petct")


def check_config(f, out):
    return ["check-config", f["bad"]]


def manifest(f, out):
    return ["manifest", "--config", f["config"], "--out", out / "manifest.tsv"]


def manifest_validate(f, out):
    return ["manifest", "--config", f["config"], "--out", out / "manifest.tsv", "--validate"]


def import_autopet(f, out):
    return ["import-autopet", f["root"], "--out", out / "autopet.tsv"]


# ---- the catalogue ------------------------------------------------------------------------
def _edit_site(path, value):
    def edit(c):
        node = c
        for k in path[:-1]:
            node = node[k]
        node[path[-1]] = value
    return edit


# (case id, input maker, command, words the error line must hold besides the offending file)
CATALOGUE = [
    # -- NIfTI images
    ("nifti-truncated-gz", nifti_truncated, mumap, ["not a readable NIfTI"]),
    ("nifti-truncated-nii", nifti_truncated_uncompressed, mumap, ["not a readable NIfTI"]),
    ("nifti-garbage-gz", nifti_garbage, mumap, ["not a readable NIfTI"]),
    ("nifti-2d", nifti_2d, import_suv, ["expected a 3D image", r"\(8, 8\)"]),
    ("nifti-4d-two-frames", nifti_4d, import_suv, ["expected a 3D image", r"\(8, 8, 8, 2\)"]),
    ("suv-nan", _with(np.nan), import_suv, ["1 voxels are NaN"]),
    ("ct-inf", _with(np.inf, "ct"), mumap, ["1 voxels are NaN or Inf"]),
    ("suv-negative", suv_negative, import_suv, ["negative SUV", "in SUV"]),
    ("grid-shape-mismatch", shape_mismatch, import_with_reference,
     [r"shape \(8, 8, 9\) differs", "hc.nii.gz"]),
    ("grid-affine-mismatch", affine_mismatch, qc, ["affine differs", "hc.nii.gz"]),
    ("grid-mumap-vs-suv", simulate_grid_mismatch, simulate, [r"shape \(8, 8, 6\) differs"]),
    ("prepared-cohort-shape", prepared_cohort_shape_mismatch, manifest_validate,
     [r"shape \(8, 8, 7\) differs", "hc.nii.gz"]),
    ("labels-non-integer", labels_non_integer, import_labels, ["non-integer"]),
    ("labels-nan", _with(np.nan, "lesion"), import_labels, ["non-integer"]),
    ("labels-out-of-range", labels_out_of_range, labels_phantom, [r"0\.\.255", "300"]),
    ("organs-out-of-range", organs_out_of_range, qc, [r"organ labels must lie in 0\.\.7", "9"]),
    ("lesion-not-binary", lesion_not_binary, import_labels, ["binary"]),
    ("qc-lc-without-level", qc_lc_without_level, qc_pair_without_level,
     ["expected NAME=PATH", "lc_p005.nii.gz"]),
    # -- PETSIRD list-mode
    ("lm-truncated-events-downsample", lm_truncated_events, downsample, ["truncated or corrupt"]),
    ("lm-truncated-events-recon", lm_truncated_events, recon, ["truncated or corrupt"]),
    ("lm-no-end-marker", lm_no_end_marker, recon, ["truncated or corrupt", "file ends early"]),
    ("lm-truncated-header", lm_truncated_header, downsample, ["truncated or corrupt"]),
    ("lm-empty-downsample", lm_empty, downsample, ["empty file", "0 bytes"]),
    ("lm-empty-recon", lm_empty, recon, ["empty file", "0 bytes"]),
    ("lm-header-no-events", lm_header_only, recon, ["no events"]),
    ("lm-not-petsird-text", lm_not_petsird, downsample, ["not a PETSIRD", "magic"]),
    ("lm-not-petsird-nifti", lm_nifti_renamed, recon, ["not a PETSIRD"]),
    # -- manifests (`amdiff manifest` with cohort.source: manifest)
    ("manifest-missing-columns", manifest_with(columns=["subject", "site", "split", "hc_pet", "lc_pet"]),
     manifest, [r"missing required column\(s\): ct, lesion"]),
    ("manifest-duplicate-subject", manifest_with(_set(1, "subject", "sub-0")), manifest,
     ["line 4", "duplicate subject", "first on line 3"]),
    ("manifest-path-missing", manifest_with(_set(0, "ct", "sub-0/nothere.nii.gz")), manifest,
     ["line 3", "column 'ct'", "nothere.nii.gz does not exist"]),
    ("manifest-path-escapes-root", manifest_with(_set(1, "lesion", _escape_to_etc_passwd)), manifest,
     ["line 4", "column 'lesion'", "etc/passwd lies outside the data roots"]),
    ("manifest-subject-slash", manifest_with(_set(0, "subject", "sub/0")), manifest,
     ["line 3", "column 'subject'", "'sub/0' must match"]),
    ("manifest-subject-dotdot", manifest_with(_set(0, "subject", "../sub-0")), manifest,
     ["column 'subject'", r"'\.\./sub-0' must match"]),
    ("manifest-subject-unicode", manifest_with(_set(1, "subject", "süb-1")), manifest,
     ["line 4", "column 'subject'", "must match"]),
    ("manifest-site-not-configured", manifest_with(_set(1, "site", "petct")), manifest,
     ["line 4", "column 'site'", "invalid site 'petct'"]),
    ("manifest-path-control-char", manifest_with(_set(1, "ct", "sub-1/ct\x1b[31m.nii.gz")), manifest,
     ["line 4", "column 'ct'", r"path .*ct\\x1b\[31m\.nii\.gz.* contains the control character U\+001B"]),
    ("manifest-file-missing", manifest_missing_file, manifest, ["manifest does not exist"]),
    ("manifest-not-text", manifest_not_text, manifest, ["cannot read manifest"]),
    # -- configs
    ("config-unknown-key", config_with(_edit_site(["sites", "mct", "recon", "iteratons"], 2)),
     check_config, ["sites.mct.recon: unknown key 'iteratons'"]),
    ("config-wrong-type", config_with(_edit_site(["seed"], "twelve")), check_config,
     ["seed: 'twelve' is not of type 'integer'"]),
    ("config-missing-required", config_with(lambda c: c.pop("labels")), check_config,
     ["'labels' is a required property"]),
    ("config-missing-site-key", config_with(lambda c: c["sites"]["mct"].pop("recon")), check_config,
     ["sites.mct", "'recon' is a required property"]),
    ("config-yaml-syntax", config_yaml_syntax, check_config, ["not valid YAML"]),
    ("config-not-mapping", config_not_mapping, check_config, ["must be a YAML mapping"]),
    ("config-train-site-unknown", config_with(_edit_site(["training", "train_sites", "petct"], ["mct"])),
     check_config, ["training.train_sites", "'petct' is not a configured site"]),
    ("config-predict-site-unknown",
     config_with(_edit_site(["training", "train_sites", "mct"], ["mct", "visoin"])),
     check_config, ["training.train_sites.mct", "'visoin' is not a configured site"]),
    ("config-site-not-configured", config_for_recon, recon_unknown_site,
     ["site 'petct' is not configured"]),
    # -- autoPET import
    ("autopet-root-missing", autopet_missing_root, import_autopet, ["does not exist"]),
    ("autopet-no-studies", autopet_no_studies, import_autopet, ["no study folder"]),
    ("autopet-colliding-ids", autopet_colliding_ids, import_autopet,
     ["subject id 'PETCT_0a_study' also derived from"]),
]


# ---- checks -------------------------------------------------------------------------------
def _snapshot(folder: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file below ``folder``."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _files(folder: Path) -> list[str]:
    """Every file below ``folder`` (empty folders that a writer created are harmless)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if not p.is_dir())


def _prepare(tmp_path, maker, command):
    d, out = tmp_path / "in", tmp_path / "out"
    d.mkdir()
    files = maker(d)
    argv = [str(a) for a in command(files, out)]
    outputs = [Path(a) for a in argv if a.startswith(str(out))]
    return d, out, files, argv, outputs


def _check_clean_failure(err_lines, d, out, files, outputs, before, words):
    assert len(err_lines) == 1, err_lines
    line = err_lines[0]
    assert line.startswith(f"amdiff: error: {files['bad']}: "), line
    for word in words:
        assert re.search(word, line), (word, line)
    for path in outputs:   # output files, or the output folder of downsample
        assert not path.exists() or (path.is_dir() and not any(path.iterdir())), path
    assert _files(out) == [], "output folder must stay empty (no partial or temporary files)"
    assert _snapshot(d) == before, "inputs were modified (or files added next to them)"


@pytest.mark.parametrize("maker,command,words", [c[1:] for c in CATALOGUE],
                         ids=[c[0] for c in CATALOGUE])
def test_bad_input_fails_with_one_line(tmp_path, capsys, maker, command, words):
    d, out, files, argv, outputs = _prepare(tmp_path, maker, command)
    before = _snapshot(d)
    capsys.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        status = main(argv)
    captured = capsys.readouterr()
    assert status == 2, captured
    assert captured.out == ""
    # a warning would print more lines on stderr in a real run
    assert [str(w.message) for w in caught if issubclass(w.category, (UserWarning, RuntimeWarning))
            and not issubclass(w.category, DeprecationWarning)] == []
    _check_clean_failure(captured.err.splitlines(), d, out, files, outputs, before, words)


def test_catalogue_ids_are_unique():
    ids = [c[0] for c in CATALOGUE]
    assert len(ids) == len(set(ids))


# ---- the installed console script, for the real exit status and stderr ------------------
@pytest.mark.parametrize("case", ["lm-truncated-events-downsample", "config-yaml-syntax",
                                  "manifest-path-escapes-root"])
def test_console_script_exit_status_and_single_line(tmp_path, venv_env, case):
    _, maker, command, words = next(c for c in CATALOGUE if c[0] == case)
    d, out, files, argv, outputs = _prepare(tmp_path, maker, command)
    before = _snapshot(d)
    amdiff = shutil.which("amdiff", path=venv_env["PATH"])
    result = subprocess.run([amdiff, *argv], env=venv_env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    _check_clean_failure(result.stderr.splitlines(), d, out, files, outputs, before, words)


# ---- the workflow's shell commands quote every path -----------------------------------------
# A manifest path such as `a$(id>x).nii.gz` or one with a space reaches the rules' shell
# commands; Snakemake's `:q` quotes a placeholder (each item of a list). Params holding several
# words (flags and paths) are quoted inside their functions with shlex.quote instead.
PATH_PLACEHOLDER = re.compile(r"\{((?:input|output|log)(?:\.\w+)?|CONFIG_FILE|RESULTS)(:[^}]*)?\}")


def _shell_blocks():
    """(rule name, text of its shell: directive) of every rule in rules/*.smk."""
    for smk in sorted((REPO / "rules").glob("*.smk")):
        text = smk.read_text()
        for m in re.finditer(r"(?m)^    shell:\n((?:        .*\n?)+)", text):
            rule = re.findall(r"(?m)^rule (\w+):", text[:m.start()])[-1]
            yield f"{smk.name}:{rule}", m.group(1)


def test_rule_shell_commands_quote_their_paths():
    blocks = list(_shell_blocks())
    texts = [p.read_text() for p in (REPO / "rules").glob("*.smk")]
    assert len(blocks) == sum(t.count("shell:") for t in texts) > 20   # every shell: directive seen
    assert all(PATH_PLACEHOLDER.search(block) for _, block in blocks)
    offenders = [f"{rule}: {m.group(0)}" for rule, block in blocks for m in PATH_PLACEHOLDER.finditer(block)
                 if m.group(2) != ":q"]
    assert offenders == [], "unquoted path placeholders (use {name:q}):\n" + "\n".join(offenders)
