"""Bad input catalogue (issue 7): broken images, list-mode files, manifests and configs.

Every case runs a real CLI verb on one broken input and checks the contract of amdiff/cli.py:
exit status 2, exactly one stderr line ``amdiff: error: <file or key>: <problem>`` naming the
offending file and the problem, no output (not even a temporary file) in the output folder,
and the inputs byte for byte unchanged.

The table below reads: case id, input maker, command, words the error line must contain. It
is kept by families (``FAMILIES``: NIfTI images, PETSIRD list-mode, manifests, configs,
checkpoints, the command line, operational faults, autoPET folders). A maker writes its files
into a fresh input folder and returns them as a dict; ``bad`` is the file (or key) the message
must name, and an optional ``inject`` is called with pytest's monkeypatch just before the
command runs, to make the operating system fail (a full disk, a read-only folder). A command
turns those files and an (empty) output folder into argv. Most cases run ``amdiff.cli.main``
in-process; ``test_console_script_*`` runs some through the installed ``amdiff`` script to prove
the real exit status and stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import functools
import gzip
import hashlib
import os
import re
import shutil
import signal
import struct
import subprocess
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml

from amdiff.cli import main
from amdiff.config import fill_defaults
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


def _header_declaring(d, shape, keep=600) -> bytes:
    """The first ``keep`` bytes of a small .nii whose header is edited to declare ``shape``."""
    small = _raw_nifti(d / "small.nii", np.ones(SHAPE, np.float32))
    raw = bytearray(small.read_bytes()[:keep])
    small.unlink()
    struct.pack_into("<8h", raw, 40, len(shape), *shape, *([1] * (7 - len(shape))))   # dim[0..7]
    return bytes(raw)


def nifti_declares_huge(d):
    """600 bytes whose header declares 4000^3 float32 voxels (256 GB): refused before loading."""
    bad = d / "suv.nii"
    bad.write_bytes(_header_declaring(d, (4000, 4000, 4000)))
    return {"bad": bad}


def nifti_declares_huge_gz(d):
    bad = d / "ct.nii.gz"
    bad.write_bytes(gzip.compress(_header_declaring(d, (4000, 4000, 4000))))
    return {"bad": bad}


def nifti_header_only(d):
    bad = d / "ct.nii"
    bad.write_bytes(_header_declaring(d, SHAPE, keep=352))
    return {"bad": bad}


def nifti_zero_bytes(d):
    bad = d / "ct.nii.gz"
    bad.write_bytes(b"")
    return {"bad": bad}


def nifti_empty_axis(name="suv.nii.gz"):
    def make(d):
        return {"bad": write_volume(d / name, np.ones((8, 0, 8), np.float32), AFFINE)}
    return make


def nifti_5d(d):
    return {"bad": _raw_nifti(d / "ct.nii.gz", np.zeros(SHAPE + (1, 2), np.float32))}


def nifti_singular_affine(d):
    """A header whose sform maps every voxel to one plane (srow_y zero; nibabel cannot write it)."""
    bad = _raw_nifti(d / "ct.nii", np.zeros(SHAPE, np.float32))
    raw = bytearray(bad.read_bytes())
    struct.pack_into("<2h", raw, 252, 0, 1)              # qform_code 0, sform_code 1
    struct.pack_into("<4f", raw, 296, 0.0, 0.0, 0.0, 0.0)   # srow_y
    bad.write_bytes(bytes(raw))
    return {"bad": bad}


def _not_a_file(kind, name):
    """An input path that is a directory, a FIFO, a broken symbolic link or absent."""
    def make(d):
        bad = d / name
        if kind == "directory":
            bad.mkdir()
        elif kind == "fifo":
            os.mkfifo(bad)     # a reader that opened it would wait for a writer forever
        elif kind == "broken-link":
            bad.symlink_to(d / "gone" / name)
        return {"bad": bad}
    return make


def suv_bq_per_ml(d):
    """Activity concentration in Bq/mL (max ~16000) given as SUV."""
    data = np.random.default_rng(0).uniform(1000.0, 16000.0, SHAPE)
    return {"bad": write_volume(d / "suv.nii.gz", data, AFFINE)}


def suv_uint8(d):
    """An 8-bit display image (0..255 integers, no scale factor) given as SUV."""
    data = np.random.default_rng(0).integers(0, 256, SHAPE).astype(np.uint8)
    return {"bad": _raw_nifti(d / "suv.nii.gz", data)}


def suv_all_zero(d):
    return {"bad": write_volume(d / "suv.nii.gz", np.zeros(SHAPE), AFFINE)}


def _body_ct():
    """HU: air around a water body, bone inside."""
    ct = np.full(SHAPE, -1000.0)
    ct[2:6, 2:6, :] = 40.0
    ct[3:5, 3:5, :] = 1200.0
    return ct


def ct_hu_plus_1024_integers(d):
    """CT numbers stored as HU + 1024 in uint16 without the rescale intercept: air reads 24 HU."""
    return {"bad": _raw_nifti(d / "ct.nii.gz", (_body_ct() + 1024).astype(np.uint16))}


def ct_hu_plus_1024_float(d):
    return {"bad": write_volume(d / "ct.nii.gz", _body_ct() + 1024, AFFINE)}


def ct_given_as_mumap(d):
    """An attenuation map in 1/cm (0..0.1) given as CT: no air at -1000 HU either."""
    return {"bad": write_volume(d / "ct.nii.gz", np.where(_body_ct() > -500, 0.096, 0.0), AFFINE)}


def ct_above_scale(d):
    ct = _body_ct()
    ct[4, 4, 4] = 60000.0
    return {"bad": write_volume(d / "ct.nii.gz", ct, AFFINE)}


def labels_negative(d):
    data = _lesion().astype(np.int16)
    data[0, 0, 0] = -1
    return {"bad": _raw_nifti(d / "lesion.nii.gz", data)}


def qc_lc_shape_mismatch(d):
    files = _qc_set(d)
    lc = np.ones((8, 8, 6), np.float32)
    files["lc"] = write_volume(d / "lc_p005.nii.gz", lc, centered_affine(lc.shape, (4.0, 4.0, 4.0)))
    return files | {"bad": files["lc"]}


def labels_truth_grid_mismatch(d):
    ct = write_volume(d / "ct.nii.gz", _body_ct(), AFFINE)
    other = np.zeros((8, 9, 8), np.uint8)
    affine = centered_affine(other.shape, (4.0, 4.0, 4.0))
    bad = write_volume(d / "organs_truth.nii.gz", other, affine, np.uint8)
    return {"ct": ct, "bad": bad}


def simulate_suv_negative(d):
    suv = write_volume(d / "suv.nii.gz", _suv() - 5.0, AFFINE)
    mu = write_volume(d / "mumap.nii.gz", np.full(SHAPE, 0.096), AFFINE)
    return {"config": _config(d), "suv": suv, "mumap": mu, "bad": suv}


def _simulate_set(bad):
    """A valid simulate set (``bad``: what the error names)."""
    def make(d):
        return {"config": _config(d), "suv": write_volume(d / "suv.nii.gz", _suv(), AFFINE),
                "mumap": write_volume(d / "mumap.nii.gz", np.full(SHAPE, 0.096), AFFINE), "bad": bad}
    return make


def _text(d, name, text):
    (d / name).write_text(text)
    return d / name


def _not_text(name):
    """``name`` holding gzip bytes (a NIfTI, say) where a text file belongs."""
    def make(d):
        (d / name).write_bytes(gzip.compress(b"\x00" * 64))
        return {"bad": d / name}
    return make


def recon_mumap_nan(d):
    files = _listmode_inputs(d)
    mu = np.full(SHAPE, 0.096)
    mu[1, 1, 1] = np.nan
    files["mumap"] = write_volume(d / "mumap.nii.gz", mu, AFFINE)
    return files | {"bad": files["mumap"]}


# ---- input makers: list-mode --------------------------------------------------------------
def _valid_list(d, sizes=(200, 200, 200)) -> Path:
    """A small valid PETSIRD list of the tiny scanner of test_listmode_io (milliseconds)."""
    path = d / "list.petsird"
    pio.write_listmode(path, header(), random_blocks(SCANNER, list(sizes)))
    return path


def _tiny_scanner_site(cfg):
    """sites.mct with the scanner of the test lists (recon refuses a list of another geometry
    before it reads any event) and an image that fits its 20 mm axial length."""
    site = cfg["sites"]["mct"]
    site["scanner"] = {"name": SCANNER.name, "n_crystals": SCANNER.n_crystals, "n_rings": SCANNER.n_rings,
                       "radius_mm": SCANNER.radius_mm, "ring_pitch_mm": SCANNER.ring_pitch_mm,
                       "max_ring_difference": SCANNER.max_ring_difference,
                       "fov_radius_mm": SCANNER.fov_radius_mm,
                       "crystal_size_mm": list(SCANNER.crystal_size_mm)}
    site["image"] = {"shape": list(SHAPE), "voxel_size_mm": [4.0, 4.0, 2.0]}
    site["recon"] = {"iterations": 1, "subsets": 2, "postfilter_fwhm_mm": 0.0}


def _listmode_inputs(d, content: bytes | None = None, sizes=(200, 200, 200)):
    """The list (``bad``) plus a mu-map and a config (site mct of the list's scanner) for recon."""
    lm = _valid_list(d, sizes)
    if content is not None:
        lm.write_bytes(content)
    mu = write_volume(d / "mumap.nii.gz", np.full(SHAPE, 0.096), AFFINE)
    return {"bad": lm, "list": lm, "mumap": mu, "config": _config(d, _tiny_scanner_site)}


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


def lm_gzipped(d):
    """A whole valid list, gzip-compressed: the reader sees no PETSIRD magic bytes."""
    files = _listmode_inputs(d)
    files["bad"].write_bytes(gzip.compress(files["bad"].read_bytes()))
    return files


def lm_not_a_file(kind):
    """The list given to downsample is a directory, a FIFO, a broken link or absent."""
    def make(d):
        return _not_a_file(kind, "list.petsird")(d) | {"list": d / "list.petsird"}
    return make


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


def config_not_a_file(kind):
    def make(d):
        files = _not_a_file(kind, "config.yaml")(d)
        return files | {"config": files["bad"], "lc": write_volume(d / "lc.nii.gz", _suv(), AFFINE)}
    return make


def config_typo(d):
    """--config names a file that is not there (config.yml for config.yaml): that path is named."""
    real = _config(d)
    return {"bad": d / "confg.yaml", "config": d / "confg.yaml", "real": real,
            "lc": write_volume(d / "lc.nii.gz", _suv(), AFFINE), "checkpoint": d / "best.pt"}


def config_text(text: bytes):
    def make(d):
        bad = d / "config.yaml"
        bad.write_bytes(text)
        return {"bad": bad}
    return make


def config_duplicate_key(d):
    bad = _config(d)
    bad.write_text(bad.read_text() + "seed: 7\n")
    return {"bad": bad}


def config_without(*sections):
    def make(d):
        bad = _config(d, lambda c: [c.pop(s) for s in sections])
        return {"bad": bad, "config": bad, "lc": write_volume(d / "lc.nii.gz", _suv(), AFFINE),
                "checkpoint": d / "best.pt", "manifest": d / "manifest.tsv"}
    return make


def _edits(*pairs):
    """Several _edit_site edits in one config."""
    def edit(c):
        for path, value in pairs:
            _edit_site(path, value)(c)
    return edit


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


def _manifest_text(text: str):
    """Config (cohort.source manifest) + a manifest file of exactly ``text``."""
    def make(d):
        files = _manifest(d)
        files["bad"].write_text(text)
        return files
    return make


def _manifest_not_a_file(kind):
    """cohort.manifest names a directory, a FIFO (reading it would hang) or a broken link."""
    def make(d):
        files = _manifest(d)
        files["bad"].unlink()
        return files | _not_a_file(kind, "data/manifest.tsv")(d)
    return make


def _image_not_a_file(kind):
    """A manifest row whose CT is a directory, a FIFO or a broken symbolic link."""
    def edit(rows, root):
        (root / "sub-1" / "ct.nii.gz").unlink()
        _not_a_file(kind, "ct.nii.gz")(root / "sub-1")
    return manifest_with(edit)


def _fields_short(rows, root):
    rows[1]["weight_kg"] = "70\t"          # one field too many on line 4


def manifest_field_count(d):
    files = _manifest(d)
    lines = files["bad"].read_text().splitlines()
    lines[3] = "\t".join(lines[3].split("\t")[:4])   # line 4 (sub-1) cut to 4 fields
    files["bad"].write_text("\n".join(lines) + "\n")
    return files


def manifest_listmode_without_dose(d):
    def edit(rows, root):
        shutil.copy(_valid_list(root), root / "sub-0" / "full.petsird")
        (root / "list.petsird").unlink()
        rows[0]["lc_pet"] = ""
        rows[0]["listmode"] = "sub-0/full.petsird"
    return _manifest(d, edit, columns=["subject", "site", "split", "hc_pet", "lc_pet", "listmode", "ct",
                                       "lesion", "organs", "weight_kg", "injected_mbq"])


def train_manifest(kind):
    """`amdiff train` whose --manifest is a directory or a FIFO."""
    def make(d):
        return _not_a_file(kind, "manifest.tsv")(d) | {"config": _config(d)}
    return make


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


def autopet_root_is_file(d):
    root = d / "FDG-PET-CT-Lesions.zip"
    root.write_bytes(b"PK\x03\x04 an archive, not yet unpacked")
    return {"bad": root, "root": root}


# ---- input makers: checkpoints ----------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _demo_weights(variant: str) -> dict:
    """State dict of ``variant`` at the demo config's size (built once per test session)."""
    from amdiff.models.amdiff import build_model

    return build_model(variant, _demo_config()).state_dict()


def _demo_config() -> dict:
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    cfg["results_dir"] = "results"
    return fill_defaults(cfg)


def checkpoint_with(edit=None, raw: bytes | None = None):
    """A predict set: config, low-count image and a checkpoint (``bad``) of amdiff, edited by
    ``edit(payload)`` (which may return a replacement), or the bytes ``raw``."""
    def make(d):
        import torch

        bad = d / "best.pt"
        if raw is not None:
            bad.write_bytes(raw)
        else:
            payload = {"model": dict(_demo_weights("amdiff")), "kind": "amdiff", "variant": "amdiff",
                       "config": _demo_config(), "epoch": 3}
            if edit is not None:
                payload = edit(payload) or payload
            torch.save(payload, bad)
        return {"bad": bad, "checkpoint": bad, "config": _config(d),
                "lc": write_volume(d / "lc.nii.gz", _suv(), AFFINE)}
    return make


def _drop(key):
    return lambda p: {k: v for k, v in p.items() if k != key}


def _set_key(key, value):
    def edit(p):
        p[key] = value(p) if callable(value) else value
    return edit


def _weights_of(variant):
    return _set_key("model", lambda p: dict(_demo_weights(variant)))


def _extra_weights(p):
    import torch

    p["model"].update({f"head{i}.weight": torch.zeros(1) for i in range(300)})


def _resized_weight(p):
    import torch

    key = next(k for k, v in p["model"].items() if v.ndim == 5)   # a conv kernel
    p["model"][key] = torch.zeros(*[n + 1 for n in p["model"][key].shape])


def _trained_on_other_patches(p):
    p["config"]["training"]["patch_size"] = [16, 16, 16]


def _config_without_models(p):
    p["config"].pop("models")


def _baseline(variant, kwargs):
    return lambda p: {"model": {}, "kind": "baseline", "variant": variant, "baseline_kwargs": kwargs}


def _foreign_object(p):
    p["extra"] = argparse.Namespace(note="not a tensor or plain value")


def _denoised_for_amdiff(d):
    """An amdiff predict set with a (valid) Med-DDPM image it would not read. The checkpoint
    trained on 2 mm voxels, so reading the 4 mm image first would also log a voxel warning:
    the refusal must come before any image is read."""
    files = checkpoint_with(_set_key("voxel_size_mm", [[2.0, 2.0, 2.0]]))(d)
    return files | {"bad": write_volume(d / "denoised.nii.gz", _suv(), AFFINE)}


def checkpoint_not_a_file(kind):
    def make(d):
        files = checkpoint_with()(d)
        files["bad"].unlink()
        return files | _not_a_file(kind, "best.pt")(d)
    return make


def checkpoint_truncated(d):
    files = checkpoint_with()(d)
    raw = files["bad"].read_bytes()
    files["bad"].write_bytes(raw[: len(raw) // 2])
    return files


# ---- input makers: command line ---------------------------------------------------------
def argument(name, files_of=None):
    """The offender is an argument (``bad`` = argparse's "argument --x"); ``files_of`` makes the
    inputs the command names."""
    def make(d):
        return (files_of(d) if files_of else {}) | {"bad": name}
    return make


def _ct_input(d):
    return {"ct": write_volume(d / "ct.nii.gz", _body_ct(), AFFINE)}


def _suv_input(d):
    return {"suv": write_volume(d / "suv.nii.gz", _suv(), AFFINE)}


def _no_gpu(files_of):
    """A --device cuda case; skipped where a CUDA device exists (then cuda is valid)."""
    def make(d):
        import torch

        if torch.cuda.is_available():
            pytest.skip("a CUDA device is present, so --device cuda is valid here")
        return files_of(d)
    return make


def _train_set(key="--device"):
    """Config and training manifest (``bad`` is the argument ``key``)."""
    def make(d):
        files = _manifest(d)
        return {"config": files["config"], "manifest": files["bad"], "bad": key}
    return make


def _inference_device_cuda(d):
    files = checkpoint_with()(d)
    files["config"] = _config(d, _edit_site(["inference", "device"], "cuda"))
    return files | {"bad": "inference.device"}


def _output_is_input(d):
    ct = write_volume(d / "ct.nii.gz", _body_ct(), AFFINE)
    return {"ct": ct, "bad": ct}


def _output_is_directory(d):
    (d / "mumap.nii.gz").mkdir()
    return _ct_input(d) | {"bad": d / "mumap.nii.gz"}


# ---- input makers: operational faults ---------------------------------------------------
def _fail_like_the_disk(err: int):
    """A writer that leaves some bytes in its temporary, then fails with OSError ``err``."""
    def fail(target):
        Path(target).write_bytes(b"\0" * 64)   # the half-written temporary must be removed
        raise OSError(err, os.strerror(err))
    return fail


def write_fault(files_of, where: str, err: int = errno.ENOSPC):
    """Inputs of ``files_of``; the write ``where`` (nibabel, text, copy, figure) fails with ``err``."""
    def make(d):
        files = files_of(d)
        fail = _fail_like_the_disk(err)

        def inject(mp):
            import matplotlib.figure

            if where == "nibabel":
                mp.setattr(nib, "save", lambda img, filename, **kw: fail(filename))
            elif where == "text":
                mp.setattr(Path, "write_text", lambda self, *a, **kw: fail(self))
            elif where == "copy":
                mp.setattr(shutil, "copyfile", lambda src, dst, **kw: fail(dst))
            elif where == "figure":
                mp.setattr(matplotlib.figure.Figure, "savefig", lambda self, fname, **kw: fail(fname))
        return files | {"inject": inject}
    return make


def temporary_refused(files_of, err: int):
    """Creating the output's temporary fails with ``err`` (a read-only file system; a folder whose
    permissions the access check cannot see, as on root-squashed NFS)."""
    def make(d):
        files = files_of(d)
        real_open = os.open

        def refuse(path, flags, *args, **kwargs):
            if ".tmp" in os.fspath(path) and flags & os.O_CREAT:
                raise OSError(err, os.strerror(err), os.fspath(path))
            return real_open(path, flags, *args, **kwargs)
        return files | {"inject": lambda mp: mp.setattr(os, "open", refuse)}
    return make


def unwritable(files_of, folder_name: str):
    """The folder ``d/folder_name`` exists but may not be written (os.access says so, as it
    would for a user without write permission; the tests may run as root, whom chmod does not stop)."""
    def make(d):
        files = files_of(d)
        folder = d / folder_name
        folder.mkdir(parents=True, exist_ok=True)
        real_access = os.access

        def access(path, mode, *args, **kwargs):
            if mode & os.W_OK and Path(path).absolute() == folder.absolute():
                return False
            return real_access(path, mode, *args, **kwargs)
        return files | {"inject": lambda mp: mp.setattr(os, "access", access)}
    return make


def unreadable(files_of, key="bad"):
    """The input ``files[key]`` exists but may not be read (os.access says so)."""
    def make(d):
        files = files_of(d)
        target = Path(files[key]).absolute()
        real_access = os.access

        def access(path, mode, *args, **kwargs):
            if mode & os.R_OK and Path(path).absolute() == target:
                return False
            return real_access(path, mode, *args, **kwargs)
        return files | {"inject": lambda mp: mp.setattr(os, "access", access)}
    return make


def file_in_the_way(files_of, blocker: str, output: str):
    """``d/blocker`` is a file where an output folder should be; ``bad`` is ``d/output``."""
    def make(d):
        files = files_of(d)
        (d / blocker).write_text("a file, not a folder\n")
        return files | {"bad": d / output, "target": d / output}
    return make


def _mumap_in(folder):
    return lambda d: _ct_input(d) | {"bad": d / folder / "mumap.nii.gz", "target": d / folder / "mumap.nii.gz"}


def _subject_stats_set(d):
    return {"hc": write_volume(d / "hc.nii.gz", _suv(), AFFINE),
            "lesion": write_volume(d / "lesion.nii.gz", _lesion(), AFFINE, np.uint8)}


def _results_unwritable(d):
    return {"config": _config(d), "bad": d / "results" / "mct" / "mct001" / "truth_suv.nii.gz",
            "outdir": d / "results" / "mct" / "mct001"}


def chmod_unwritable(d):
    """A real read-only output folder (mode 0555); root ignores modes, so root skips it."""
    if os.geteuid() == 0:
        pytest.skip("root may write into a folder of mode 0555")
    files = _ct_input(d)
    folder = d / "readonly"
    folder.mkdir()
    folder.chmod(0o555)
    return files | {"bad": folder / "mumap.nii.gz", "target": folder / "mumap.nii.gz"}


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


def _evaluate_set(bad):
    """An evaluate set: references and one prediction folder (``bad``: the argument blamed)."""
    def make(d):
        files = _qc_set(d)
        (d / "pred").mkdir()
        write_volume(d / "pred" / "denoised.nii.gz", _suv(2), AFFINE)
        write_volume(d / "pred" / "lesion.nii.gz", _lesion(), AFFINE, np.uint8)
        return files | {"pred": d / "pred", "bad": bad}
    return make


def _metrics_table(rows: bool):
    """A metrics TSV of model amdiff on the evaluate set (``bad``), or its header alone."""
    def make(d):
        from amdiff.evaluate.subject import evaluate_subject, read_references

        f = _evaluate_set(None)(d)
        df = evaluate_subject("amdiff", "mct", "mct005", read_references(f["hc"], f["lesion"], f["organs"]),
                              {"p005_r0": f["pred"]}, ("denoised", "lesion"), nrmse_whole="image_range")
        path = d / "metrics.tsv"
        path.write_text((df if rows else df.iloc[:0]).to_csv(sep="\t", index=False))
        return {"bad": path}
    return make


def evaluate_with(*extra, outputs="denoised,lesion", predictions=("p005_r0",)):
    """`amdiff evaluate` of the set with ``extra`` arguments; every named image reads pred/."""
    def command(f, out):
        return ["evaluate", "--model", "amdiff", "--site", "mct", "--subject", "mct005",
                "--hc", f["hc"], "--lesion", f["lesion"], "--organs", f["organs"],
                "--nrmse-whole", "image_range", "--outputs", outputs,
                "--prediction", *[f"{name}={f['pred']}" for name in predictions], *extra,
                "--out", out / "metrics.tsv"]
    return command


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


def source_dir_typo(d):
    """--source-dir naming a folder that is not there (amdif for amdiff)."""
    return {"config": _config(d), "benchmarks": d, "bad": d / "amdif"}


def provenance(f, out):
    return ["provenance", "--config", f["config"], "--benchmarks", f["benchmarks"], "--source-dir",
            f["bad"], "--out", out / "provenance.json"]


def manifest_validate(f, out):
    return ["manifest", "--config", f["config"], "--out", out / "manifest.tsv", "--validate"]


def import_autopet(f, out):
    return ["import-autopet", f["root"], "--out", out / "autopet.tsv"]


def import_ct(f, out):
    return ["import-image", "--kind", "ct", "--input", f["bad"], "--out", out / "ct.nii.gz"]


def gaussian_filter(f, out):
    return ["gaussian-filter", "--lc", f["bad"], "--fwhm-mm", "4", "--out-dir", out / "gaussian"]


def simulate_from(f, out):
    return ["simulate", "--config", f["config"], "--site", "mct", "--subject", "mct001",
            "--suv", f["suv"], "--mumap", f["mumap"], "--weight-kg", "70",
            "--out", out / "full.petsird", "--summary", out / "acquisition.json"]


def train(f, out, *extra):
    return ["train", "--config", f["config"], "--manifest", f.get("manifest", f["bad"]), "--site", "mct",
            "--out-dir", out / "model", *extra]


def train_on_bad_manifest(f, out):
    return ["train", "--config", f["config"], "--manifest", f["bad"], "--site", "mct",
            "--out-dir", out / "model"]


def fit_gaussian(f, out):
    return ["fit-gaussian", "--manifest", f["bad"], "--site", "mct", "--out", out / "fit.json"]


def predict(f, out, *extra):
    return ["predict", "--config", f["config"], "--checkpoint", f["checkpoint"], "--lc", f["lc"],
            "--subject", "mct003", "--level", "p005_r0", "--out-dir", out / "prediction", *extra]


def with_args(command, *extra):
    """``command`` with extra arguments appended."""
    return lambda f, out: [*command(f, out), *extra]


def phantom_into(f, out):
    return ["phantom", "--config", f["config"], "--site", "mct", "--subject", "mct001",
            "--outdir", f["outdir"]]


def subject_stats(f, out):
    return ["subject-stats", "--site", "mct", "--subject", "mct003", "--split", "test", "--hc", f["hc"],
            "--lesion", f["lesion"], "--out", out / "stats.json"]


def mumap_to_target(f, out):
    return ["mumap", "--ct", f["ct"], "--out", f["target"]]


def mumap_of_ct(f, out):
    return ["mumap", "--ct", f["ct"], "--out", out / "mumap.nii.gz"]


def import_suv_of(f, out):
    return ["import-image", "--kind", "suv", "--input", f["suv"], "--out", out / "hc.nii.gz"]


def predict_two(f, out, second_lc, *levels):
    """Two images of one subject in one call: ``f["lc"]`` and ``second_lc``, with ``levels``."""
    return ["predict", "--config", f["config"], "--checkpoint", f["checkpoint"], "--lc", f["lc"], second_lc,
            "--subject", "mct003", "--level", *levels, "--out-dir", out / "p005_r0", out / "p040_r0"]


def predict_into(f, out):
    return ["predict", "--config", f["config"], "--checkpoint", f["checkpoint"], "--lc", f["lc"],
            "--subject", "mct003", "--level", "p005_r0", "--out-dir", f["target"]]


def train_into(f, out):
    return ["train", "--config", f["config"], "--manifest", f["manifest"], "--site", "mct",
            "--out-dir", f["target"]]


# ---- the catalogue ------------------------------------------------------------------------
def _edit_site(path, value):
    def edit(c):
        node = c
        for k in path[:-1]:
            node = node[k]
        node[path[-1]] = value
    return edit


def _out(d: Path, *parts) -> Path:
    """A path in the output folder of a case (next to the input folder ``d``)."""
    return d.parent.joinpath("out", *parts)


def output(files_of, *parts):
    """``files_of``'s inputs; ``bad`` is the output ``parts`` (a write fault names the output)."""
    return lambda d: files_of(d) | {"bad": _out(d, *parts)}


# (case id, input maker, command, words the error line must hold besides the offending file)
NIFTI = [
    ("nifti-truncated-gz", nifti_truncated, mumap, ["not a readable NIfTI"]),
    ("nifti-truncated-nii", nifti_truncated_uncompressed, mumap,
     ["truncated", r"declares shape \(8, 8, 8\) of float32", "the file holds 452 bytes"]),
    ("nifti-header-only", nifti_header_only, mumap, ["truncated", "holds 352 bytes"]),
    ("nifti-declares-4000-cubed", nifti_declares_huge, import_suv,
     [r"declares shape \(4000, 4000, 4000\)", "256 GB", "the file holds 600 bytes"]),
    ("nifti-declares-4000-cubed-gz", nifti_declares_huge_gz, mumap,
     ["corrupt or truncated", r"\(4000, 4000, 4000\)", "more than a gzip file of \\d+ bytes can hold"]),
    ("nifti-zero-bytes", nifti_zero_bytes, mumap, ["not a readable NIfTI"]),
    ("nifti-garbage-gz", nifti_garbage, mumap, ["not a readable NIfTI"]),
    ("nifti-missing", _not_a_file("missing", "ct.nii.gz"), mumap, ["file does not exist"]),
    ("nifti-directory", _not_a_file("directory", "ct.nii.gz"), mumap, ["is a directory, not a file"]),
    ("nifti-fifo", _not_a_file("fifo", "ct.nii.gz"), mumap, [r"is not a regular file \(a FIFO\)"]),
    ("nifti-broken-symlink", _not_a_file("broken-link", "ct.nii.gz"), mumap, ["broken symbolic link"]),
    ("nifti-2d", nifti_2d, import_suv, ["expected a 3D image", r"\(8, 8\)"]),
    ("nifti-4d-two-frames", nifti_4d, import_suv, ["expected a 3D image", r"\(8, 8, 8, 2\)"]),
    ("nifti-5d", nifti_5d, mumap, ["expected a 3D image", r"\(8, 8, 8, 1, 2\)"]),
    ("nifti-empty-axis", nifti_empty_axis(), import_suv,
     ["image is empty", r"axis 1 of shape \(8, 0, 8\) has 0 voxels"]),
    ("nifti-empty-axis-nii", nifti_empty_axis("ct.nii"), mumap, ["image is empty", "axis 1"]),
    ("nifti-singular-affine", nifti_singular_affine, mumap, ["affine is singular"]),
    ("suv-nan", _with(np.nan), import_suv, ["1 voxels are NaN"]),
    ("ct-inf", _with(np.inf, "ct"), mumap, ["1 voxels are NaN or Inf"]),
    ("suv-negative", suv_negative, import_suv, ["negative SUV", "in SUV"]),
    ("suv-in-bq-per-ml", suv_bq_per_ml, import_suv, ["not a plausible SUV", "Bq/mL"]),
    ("suv-uint8", suv_uint8, import_suv, ["stored as integers", "without a scale factor", "float"]),
    ("suv-all-zero", suv_all_zero, import_suv, ["no positive SUV"]),
    ("ct-hu-plus-1024-uint16", ct_hu_plus_1024_integers, import_ct,
     ["minimum 24 HU", "no air", r"stored as HU \+ 1024 \(integers\) without the rescale intercept"]),
    ("ct-hu-plus-1024-mumap", ct_hu_plus_1024_float, mumap, ["minimum 24 HU", "no air", r"HU \+ 1024"]),
    ("ct-given-a-mumap", ct_given_as_mumap, mumap, ["minimum 0 HU", "no air", "1/cm"]),
    ("ct-above-any-scale", ct_above_scale, import_ct, ["maximum 6e\\+04 HU", "above any CT scale"]),
    ("gaussian-filter-lc-nan", _with(np.nan, "lc"), gaussian_filter, ["1 voxels are NaN"]),
    ("simulate-suv-negative", simulate_suv_negative, simulate_from, ["negative SUV"]),
    ("recon-mumap-nan", recon_mumap_nan, recon, ["1 voxels are NaN"]),
    ("grid-shape-mismatch", shape_mismatch, import_with_reference,
     [r"shape \(8, 8, 9\) differs", "hc.nii.gz"]),
    ("grid-affine-mismatch", affine_mismatch, qc, ["affine differs", "hc.nii.gz"]),
    ("grid-qc-lc-shape", qc_lc_shape_mismatch, qc, [r"shape \(8, 8, 6\) differs", "hc.nii.gz"]),
    ("grid-mumap-vs-suv", simulate_grid_mismatch, simulate, [r"shape \(8, 8, 6\) differs"]),
    ("grid-labels-truth-vs-ct", labels_truth_grid_mismatch, labels_phantom,
     [r"shape \(8, 9, 8\) differs", "ct.nii.gz"]),
    ("prepared-cohort-shape", prepared_cohort_shape_mismatch, manifest_validate,
     [r"shape \(8, 8, 7\) differs", "hc.nii.gz"]),
    ("labels-non-integer", labels_non_integer, import_labels, ["non-integer"]),
    ("labels-nan", _with(np.nan, "lesion"), import_labels, ["non-integer"]),
    ("labels-out-of-range", labels_out_of_range, labels_phantom, [r"0\.\.255", "300"]),
    ("labels-negative", labels_negative, import_labels, [r"0\.\.255", "found -1"]),
    ("organs-out-of-range", organs_out_of_range, qc, [r"organ labels must lie in 0\.\.7", "9"]),
    ("lesion-not-binary", lesion_not_binary, import_labels, ["binary"]),
]

PETSIRD = [
    ("lm-truncated-events-downsample", lm_truncated_events, downsample, ["truncated or corrupt"]),
    ("lm-truncated-events-recon", lm_truncated_events, recon, ["truncated or corrupt"]),
    ("lm-no-end-marker", lm_no_end_marker, recon, ["truncated or corrupt", "file ends early"]),
    ("lm-no-end-marker-downsample", lm_no_end_marker, downsample, ["truncated or corrupt"]),
    ("lm-truncated-header", lm_truncated_header, downsample, ["truncated or corrupt"]),
    ("lm-truncated-header-recon", lm_truncated_header, recon, ["truncated or corrupt"]),
    ("lm-empty-downsample", lm_empty, downsample, ["empty file", "0 bytes"]),
    ("lm-empty-recon", lm_empty, recon, ["empty file", "0 bytes"]),
    ("lm-header-no-events", lm_header_only, recon, ["no events"]),
    ("lm-not-petsird-text", lm_not_petsird, downsample, ["not a PETSIRD", "magic"]),
    ("lm-not-petsird-nifti", lm_nifti_renamed, recon, ["not a PETSIRD"]),
    ("lm-not-petsird-nifti-downsample", lm_nifti_renamed, downsample, ["not a PETSIRD"]),
    ("lm-gzip-compressed", lm_gzipped, downsample, ["not a PETSIRD", "magic"]),
    ("lm-missing", lm_not_a_file("missing"), downsample, ["not found|does not exist"]),
    ("lm-directory", lm_not_a_file("directory"), downsample, ["is a directory"]),
    ("lm-fifo", lm_not_a_file("fifo"), downsample, [r"is not a regular file \(a FIFO\)"]),
    ("lm-broken-symlink", lm_not_a_file("broken-link"), downsample, ["not found|does not exist|broken"]),
]

MANIFEST = [
    ("manifest-missing-columns", manifest_with(columns=["subject", "site", "split", "hc_pet", "lc_pet"]),
     manifest, [r"missing required column\(s\): ct, lesion"]),
    ("manifest-unknown-column", manifest_with(columns=["subject", "site", "split", "hc_pet", "lc_pet", "ct",
                                                       "lesion", "weight"]),
     manifest, [r"unknown column\(s\) weight", "allowed:"]),
    ("manifest-duplicate-column", manifest_with(columns=["subject", "site", "split", "hc_pet", "lc_pet", "ct",
                                                         "lesion", "ct"]),
     manifest, [r"duplicate column\(s\): ct"]),
    ("manifest-field-count", manifest_field_count, manifest,
     ["line 4: 4 tab-separated fields, header has 10"]),
    ("manifest-empty", _manifest_text(""), manifest, [r"manifest is empty \(no header line\)"]),
    ("manifest-only-comments", _manifest_text("# nothing yet\n\n"), manifest, ["manifest is empty"]),
    ("manifest-header-only", _manifest_text("subject\tsite\tsplit\thc_pet\tlc_pet\tct\tlesion\n"), manifest,
     ["manifest has no subject rows"]),
    ("manifest-duplicate-subject", manifest_with(_set(1, "subject", "sub-0")), manifest,
     ["line 4", "duplicate subject", "first on line 3"]),
    ("manifest-path-missing", manifest_with(_set(0, "ct", "sub-0/nothere.nii.gz")), manifest,
     ["line 3", "column 'ct'", "nothere.nii.gz does not exist"]),
    ("manifest-path-empty", manifest_with(_set(0, "lesion", "")), manifest,
     ["line 3", "column 'lesion'", "empty, but a file is required"]),
    ("manifest-path-directory", _image_not_a_file("directory"), manifest,
     ["line 4", "column 'ct'", "is a directory"]),
    ("manifest-path-fifo", _image_not_a_file("fifo"), manifest,
     ["line 4", "column 'ct'", r"is not a regular file \(a FIFO\)"]),
    ("manifest-path-broken-symlink", _image_not_a_file("broken-link"), manifest,
     ["line 4", "column 'ct'", "broken symbolic link"]),
    ("manifest-path-escapes-root", manifest_with(_set(1, "lesion", _escape_to_etc_passwd)), manifest,
     ["line 4", "column 'lesion'", "etc/passwd lies outside the data roots"]),
    ("manifest-path-control-char", manifest_with(_set(1, "ct", "sub-1/ct\x1b[31m.nii.gz")), manifest,
     ["line 4", "column 'ct'", r"path .*ct\\x1b\[31m\.nii\.gz.* contains the control character U\+001B"]),
    ("manifest-subject-slash", manifest_with(_set(0, "subject", "sub/0")), manifest,
     ["line 3", "column 'subject'", "'sub/0' must match"]),
    ("manifest-subject-dotdot", manifest_with(_set(0, "subject", "../sub-0")), manifest,
     ["column 'subject'", r"'\.\./sub-0' must match"]),
    ("manifest-subject-unicode", manifest_with(_set(1, "subject", "süb-1")), manifest,
     ["line 4", "column 'subject'", "must match"]),
    ("manifest-site-not-configured", manifest_with(_set(1, "site", "petct")), manifest,
     ["line 4", "column 'site'", "invalid site 'petct'"]),
    ("manifest-split-invalid", manifest_with(_set(0, "split", "training")), manifest,
     ["line 3", "column 'split'", "invalid split 'training'"]),
    ("manifest-weight-not-number", manifest_with(_set(0, "weight_kg", "seventy")), manifest,
     ["line 3", "column 'weight_kg'", "'seventy' is not a number"]),
    ("manifest-weight-negative", manifest_with(_set(1, "weight_kg", "-70")), manifest,
     ["line 4", "column 'weight_kg'", "must be a positive number, got -70"]),
    ("manifest-lc-not-pair", manifest_with(_set(0, "lc_pet", "sub-0/lc_p005.nii.gz")), manifest,
     ["line 3", "column 'lc_pet'", "is not level=path"]),
    ("manifest-lc-bad-level", manifest_with(_set(0, "lc_pet", "low=sub-0/lc_p005.nii.gz")), manifest,
     ["line 3", "column 'lc_pet'", "low"]),
    ("manifest-lc-level-twice", manifest_with(_set(0, "lc_pet", "p005=sub-0/lc_p005.nii.gz;"
                                                             "p005_r0=sub-0/hc.nii.gz")), manifest,
     ["line 3", "column 'lc_pet'", "level p005_r0 given twice"]),
    ("manifest-no-lc-source", manifest_with(_set(1, "lc_pet", "")), manifest,
     ["line 4", "give exactly one low-count source", "found none"]),
    ("manifest-listmode-without-dose", manifest_listmode_without_dose, manifest,
     ["line 3", "column 'injected_mbq'", "required when listmode is given"]),
    ("manifest-file-missing", manifest_missing_file, manifest, ["manifest does not exist"]),
    ("manifest-not-text", manifest_not_text, manifest, ["cannot read manifest"]),
    ("manifest-directory", _manifest_not_a_file("directory"), manifest, ["is a directory, not a manifest"]),
    ("manifest-fifo", _manifest_not_a_file("fifo"), manifest, [r"is not a regular file \(a FIFO\)"]),
    ("manifest-fifo-train", train_manifest("fifo"), train_on_bad_manifest,
     [r"is not a regular file \(a FIFO\)"]),
    ("manifest-directory-fit-gaussian", train_manifest("directory"), fit_gaussian, ["is a directory"]),
]

CONFIG = [
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
    ("config-empty-file", config_text(b""), check_config, ["must be a YAML mapping"]),
    ("config-not-utf8", config_text(b"seed: 1\nname: \xff\xfe\n"), check_config, [r"not UTF-8 text \(byte"]),
    ("config-duplicate-key", config_duplicate_key, check_config, [r"line \d+: duplicate key 'seed'"]),
    ("config-typo-check-config", config_typo, check_config, ["config file does not exist"]),
    # named, not recorded as "commit: null" (an install without git)
    ("provenance-source-dir-missing", source_dir_typo, provenance, ["is not a folder"]),
    ("config-typo-train", config_typo, train, ["config file does not exist"]),
    ("config-typo-predict", config_typo, predict, ["config file does not exist"]),
    ("config-directory", config_not_a_file("directory"), check_config, ["is a directory, not a config file"]),
    ("config-fifo", config_not_a_file("fifo"), check_config, [r"is not a regular file \(a FIFO\)"]),
    ("config-train-site-unknown", config_with(_edit_site(["training", "train_sites", "petct"], ["mct"])),
     check_config, ["training.train_sites", "'petct' is not a configured site"]),
    ("config-predict-site-unknown",
     config_with(_edit_site(["training", "train_sites", "mct"], ["mct", "visoin"])),
     check_config, ["training.train_sites.mct", "'visoin' is not a configured site"]),
    ("config-site-not-configured", config_for_recon, recon_unknown_site,
     ["site 'petct' is not configured"]),
    ("config-fov-beyond-ring", config_with(_edit_site(["sites", "mct", "scanner", "fov_radius_mm"], 400.0)),
     check_config, ["sites.mct.scanner: fov_radius_mm must be below radius_mm"]),
    ("config-ring-difference",
     config_with(_edit_site(["sites", "mct", "scanner", "max_ring_difference"], 112)),
     check_config, ["sites.mct.scanner: max_ring_difference must be below n_rings"]),
    ("config-image-too-large", config_with(_edit_site(["sites", "mct", "image", "shape"], [4000, 4000, 200])),
     check_config, ["sites.mct.image.shape", "above the limit"]),
    ("config-image-longer-than-scanner",
     config_with(_edit_site(["sites", "mct", "image", "shape"], [72, 72, 200])),
     check_config, ["sites.mct: image axial length 1600 mm exceeds the scanner's 896 mm"]),
    ("config-count-levels-missing", config_with(lambda c: c["sites"]["mct"]["count_levels"].pop("test")),
     check_config, ["sites.mct.count_levels.test: required, the split has subjects"]),
    ("config-realizations-overlap", config_with(_edits((["sites", "mct", "realizations"], 3),
                                                       (["sites", "mct", "count_levels", "train"], [40]))),
     check_config, ["sites.mct.count_levels.train", "exceed 100 %"]),
    ("config-window-not-patch", config_with(_edit_site(["inference", "patch_size"], [16, 16, 16])),
     check_config, [r"inference.patch_size \[16, 16, 16\] must equal training.patch_size"]),
    ("config-patch-not-multiple", config_with(_edits((["training", "patch_size"], [36, 36, 36]),
                                                     (["inference", "patch_size"], [36, 36, 36]))),
     check_config, ["training.patch_size", "must be multiples of"]),
    ("config-manifest-source-without-path",
     config_with(_edit_site(["cohort"], {"source": "manifest", "manifest": None})),
     check_config, ["cohort.manifest: required when cohort.source is 'manifest'"]),
    ("config-seed-replicate-untrained",
     config_with(_edits((["models", "variants"], ["amdiff"]),
                        (["seed_replicates"], {"models": ["amdiff", "amdiff_no_lor"], "count": 2}))),
     check_config, ["seed_replicates.models: 'amdiff_no_lor' is not trained by this config"]),
    ("config-predict-lacks-inference", config_without("inference"), predict,
     [r"config lacks the section\(s\) inference"]),
    ("config-train-lacks-models", config_without("models", "training", "diffusion", "inference"), train,
     [r"config lacks the section\(s\) models, training, diffusion"]),
]

CHECKPOINT = [
    ("ckpt-missing", checkpoint_not_a_file("missing"), predict, ["checkpoint does not exist"]),
    ("ckpt-directory", checkpoint_not_a_file("directory"), predict, ["is a directory, not a checkpoint"]),
    ("ckpt-fifo", checkpoint_not_a_file("fifo"), predict, [r"is not a regular file \(a FIFO\)"]),
    ("ckpt-not-zip", checkpoint_with(raw=b"epoch 3, trust me\n" * 10), predict,
     [r"not a readable checkpoint \(not a torch zip archive\)"]),
    ("ckpt-truncated", checkpoint_truncated, predict, ["not a readable checkpoint"]),
    ("ckpt-foreign-object", checkpoint_with(_foreign_object), predict,
     ["refused", "objects other than tensors and plain values"]),
    ("ckpt-not-a-dict", checkpoint_with(lambda p: [1, 2, 3]), predict, ["not an amdiff checkpoint"]),
    ("ckpt-no-model", checkpoint_with(_drop("model")), predict, [r"not an amdiff checkpoint \(no 'model'"]),
    ("ckpt-model-not-state-dict", checkpoint_with(_set_key("model", 5)), predict,
     ["its 'model' entry is a int, not a state dict"]),
    ("ckpt-without-variant", checkpoint_with(_drop("variant")), predict,
     [r"does not record its model \('variant'\)"]),
    ("ckpt-unknown-variant", checkpoint_with(_set_key("variant", "amdiff_v2")), predict,
     ["records the unknown model 'amdiff_v2'", "known amdiff models: amdiff,"]),
    ("ckpt-unknown-kind", checkpoint_with(_set_key("kind", "gan")), predict,
     ["records the unknown kind 'gan'"]),
    ("ckpt-other-variant", checkpoint_with(_weights_of("amdiff_no_revision")), predict,
     ["do not fit the amdiff network", r"9 missing \(revision\.", "and 6 more"]),
    ("ckpt-other-variant-ablation", checkpoint_with(_weights_of("amdiff_no_resmamba")), predict,
     ["do not fit the amdiff network", r"\d+ missing \(segmenter\.", r"and \d+ more\)$", "^.{0,600}$"]),
    ("ckpt-unexpected-keys", checkpoint_with(_extra_weights), predict,
     [r"300 unexpected \(head0\.weight, head1\.weight, head2\.weight and 297 more\)", "^.{0,300}$"]),
    ("ckpt-resized-weight", checkpoint_with(_resized_weight), predict, ["1 of another shape", " vs "]),
    ("ckpt-without-config", checkpoint_with(_drop("config")), predict,
     [r"does not record the config .* \(lacks config\)"]),
    ("ckpt-config-without-models", checkpoint_with(_config_without_models), predict,
     [r"does not record the config .* \(lacks models\)"]),
    ("ckpt-trained-on-other-patches", checkpoint_with(_trained_on_other_patches), predict,
     [r"trained on \[16, 16, 16\] patches", r"inference.patch_size is \[32, 32, 32\]"]),
    ("ckpt-baseline-unknown", checkpoint_with(_baseline("unet9000", {})), predict,
     ["records the unknown model 'unet9000'", "known baseline models"]),
    ("ckpt-baseline-without-settings", checkpoint_with(_baseline("leqmod_gan", None)), predict,
     [r"does not record the settings of its leqmod_gan network \('baseline_kwargs'\)"]),
    ("ckpt-baseline-bad-settings", checkpoint_with(_baseline("leqmod_gan", {"bogus": 1})), predict,
     ["its recorded settings do not build a leqmod_gan network", "bogus"]),
]

COMMAND_LINE = [
    ("cli-unknown-verb", argument("argument verb"), lambda f, out: ["mumapp", "--ct", "x"],
     ["invalid choice: 'mumapp'"]),
    ("cli-missing-required", argument("the following arguments are required", _ct_input),
     lambda f, out: ["mumap", "--ct", f["ct"]], ["--out"]),
    ("cli-invalid-kind", argument("argument --kind", _suv_input),
     lambda f, out: ["import-image", "--kind", "pet", "--input", f["suv"], "--out", out / "x.nii.gz"],
     ["invalid choice: 'pet'"]),
    ("cli-weight-not-number", argument("argument --weight-kg", _suv_input),
     lambda f, out: ["simulate", "--config", "c.yaml", "--site", "mct", "--subject", "s", "--suv", f["suv"],
                     "--mumap", f["suv"], "--weight-kg", "seventy", "--out", out / "l",
                     "--summary", out / "s"],
     ["invalid float value: 'seventy'"]),
    ("cli-threads-not-integer", argument("argument --threads", _train_set()),
     lambda f, out: [*train(f, out), "--threads", "many"], ["invalid int value: 'many'"]),
    ("cli-fwhm-grid-negative", argument("argument --fwhm-grid"),
     lambda f, out: ["fit-gaussian", "--manifest", "m.tsv", "--site", "mct", "--fwhm-grid", "0,-4",
                     "--out", out / "fit.json"], ["none negative", "'0,-4'"]),
    ("cli-fit-and-fwhm", argument("argument --fit", _suv_input),
     lambda f, out: ["gaussian-filter", "--lc", f["suv"], "--fwhm-mm", "4", "--fit", "fit.json",
                     "--out-dir", out / "g"], ["not allowed with argument --fwhm-mm"]),
    ("cli-fwhm-negative", argument("--fwhm-mm", _suv_input),
     lambda f, out: ["gaussian-filter", "--lc", f["suv"], "--fwhm-mm", "-2", "--out-dir", out / "g"],
     ["must be a finite number, not negative, got -2"]),
    ("cli-fwhm-nan", argument("--fwhm-mm", _suv_input),
     lambda f, out: ["gaussian-filter", "--lc", f["suv"], "--fwhm-mm", "nan", "--out-dir", out / "g"],
     ["must be a finite number, not negative, got nan"]),
    ("cli-fwhm-inf", argument("--fwhm-mm", _suv_input),
     lambda f, out: ["gaussian-filter", "--lc", f["suv"], "--fwhm-mm", "inf", "--out-dir", out / "g"],
     ["must be a finite number, not negative, got inf"]),
    ("simulate-height-negative", _simulate_set("subject"),
     lambda f, out: [*simulate_from(f, out), "--height-m", "-1.7"], ["height_m must be a positive number"]),
    ("simulate-weight-inf", _simulate_set("subject"),
     lambda f, out: [*simulate_from(f, out), "--weight-kg", "inf"], ["weight_kg must be a positive number"]),
    ("summary-stats-not-text", _not_text("stats.json"),
     lambda f, out: ["summary", "--out-tsv", out / "summary.tsv", f["bad"]], ["not valid JSON", "UTF-8"]),
    ("cli-evaluate-unknown-output", _evaluate_set("--outputs"), evaluate_with(outputs="denoised,mask"),
     ["expected some of denoised,lesion,organs", "'denoised,mask'"]),
    ("cli-evaluate-match-threshold", _evaluate_set("--lesion-match-threshold"),
     evaluate_with("--lesion-match-threshold", "1.5"), [r"must be in \[0, 1\), got 1.5"]),
    ("cli-evaluate-image-name", _evaluate_set("--prediction"), evaluate_with(predictions=("lowdose",)),
     ["'lowdose' is not a count-level name"]),
    ("cli-evaluate-same-image-twice", _evaluate_set("--prediction"),
     evaluate_with(predictions=("p005", "p005_r0")), ["'p005' and 'p005_r0' name the same image"]),
    ("cli-evaluate-stray-quant-image", _evaluate_set("--quant-image"),
     lambda f, out: evaluate_with("--quant-image", f"p010_r0={f['hc']}")(f, out),
     ["p010_r0: no --prediction of that image"]),
    ("metrics-no-rows", _metrics_table(rows=False),
     lambda f, out: ["tables", "--metrics", f["bad"], "--out-dir", out / "tables"], ["holds no rows"]),
    ("metrics-model-absent", _metrics_table(rows=True),
     lambda f, out: ["figure-regression", "--metrics", f["bad"], "--models", "amdiff", "amdiff_no_lro",
                     "--png", out / "f.png", "--pdf", out / "f.pdf", "--stats", out / "f.tsv"],
     ["no rows of model", "amdiff_no_lro"]),
    ("cli-pair-given-twice", _evaluate_set("command line"), evaluate_with(predictions=("p005_r0", "p005_r0")),
     ["p005_r0 is given twice"]),
    ("cli-manifest-site-typo", lambda d: {"config": _config(d), "bad": "--site"},
     lambda f, out: [*manifest(f, out), "--site", "mtc"], ["'mtc' is not a site of", "mct, vision"]),
    ("cli-manifest-splits-typo", lambda d: {"config": _config(d), "bad": "--splits"},
     lambda f, out: [*manifest(f, out), "--site", "mct", "--splits", "train,valid"],
     ["expected some of train,val,test, got 'train,valid'"]),
    ("manifest-site-without-subjects", lambda d: {"config": (c := _config(d)), "bad": c},
     lambda f, out: [*manifest(f, out), "--site", "vision", "--splits", "train"],
     ["no subject of site vision in split"]),
    ("stats-acquisition-not-object", lambda d: _subject_stats_set(d) | {"bad": _text(d, "acq.json", "[1, 2]")},
     lambda f, out: [*subject_stats(f, out)[:-2], "--acquisition", f["bad"], "--out", out / "stats.json"],
     ["expected a JSON object, found a list"]),
    ("stats-counts-without-events", lambda d: _subject_stats_set(d) | {"bad": _text(d, "counts.json", '{"n": 1}')},
     lambda f, out: [*subject_stats(f, out)[:-2], "--counts", f["bad"], "--out", out / "stats.json"],
     ["lacks key", "events"]),
    ("qc-lc-without-level", qc_lc_without_level, qc_pair_without_level,
     ["expected NAME=PATH", "lc_p005.nii.gz"]),
    ("cli-log-without-model", argument("command line", lambda d: {"config": _config(d)}),
     lambda f, out: ["training-budget", "--config", f["config"], "--log", "log.csv", "--out", out / "b.tsv"],
     ["expected NAME=PATH, got 'log.csv'"]),
    ("cli-labels-without-source", argument("--source", _ct_input),
     lambda f, out: ["labels", "--method", "provided", "--ct", f["ct"], "--out", out / "organs.nii.gz"],
     ["labels --method provided needs it"]),
    ("cli-train-unknown-variant", _train_set("--variant"), lambda f, out: train(f, out, "--variant", "amdif"),
     ["unknown model 'amdif'", "known: amdiff,"]),
    ("cli-train-device-cuda", _no_gpu(_train_set()), lambda f, out: train(f, out, "--device", "cuda"),
     ["'cuda' requested, but no CUDA device is available"]),
    ("cli-train-device-unknown", _train_set(), lambda f, out: train(f, out, "--device", "gpu"),
     ["'gpu' is not a device name"]),
    ("cli-predict-device-cuda", _no_gpu(lambda d: checkpoint_with()(d) | {"bad": "--device"}),
     lambda f, out: predict(f, out, "--device", "cuda"),
     ["'cuda' requested, but no CUDA device is available"]),
    ("cli-predict-device-cuda-index", _no_gpu(lambda d: checkpoint_with()(d) | {"bad": "--device"}),
     lambda f, out: predict(f, out, "--device", "cuda:3"), ["'cuda:3' requested"]),
    ("cli-predict-config-device-cuda", _no_gpu(_inference_device_cuda), predict,
     ["'cuda' requested, but no CUDA device is available"]),
    ("cli-predict-levels-unpaired", lambda d: checkpoint_with()(d) | {"bad": "--level"},
     lambda f, out: predict_two(f, out, f["lc"], "p005_r0"),
     ["1 given for 2 --lc images; give one per image"]),
    ("cli-predict-level-twice", lambda d: checkpoint_with()(d) | {"bad": "--level"},
     lambda f, out: predict_two(f, out, f["lc"], "p005_r0", "p005_r0"),
     ["p005_r0 is given twice"]),
    # the second image is missing: refused before the first is predicted, so nothing is written
    ("cli-predict-second-image-missing", lambda d: checkpoint_with()(d) | {"bad": d / "lc_p040.nii.gz"},
     lambda f, out: predict_two(f, out, f["bad"], "p005_r0", "p040_r0"),
     ["low-count image does not exist"]),
    ("cli-gaussian-filter-out-dirs-unpaired", argument("--out-dir", _suv_input),
     lambda f, out: ["gaussian-filter", "--lc", f["suv"], f["suv"], "--fwhm-mm", "4", "--out-dir", out / "g"],
     ["1 given for 2 --lc images"]),
    ("cli-predict-denoised-to-amdiff", _denoised_for_amdiff,
     lambda f, out: predict(f, out, "--denoised", f["bad"]),
     ["--denoised is read only by the comparison segmenters", "amdiff does not take it"]),
    ("cli-output-is-input", _output_is_input, lambda f, out: ["mumap", "--ct", f["ct"], "--out", f["ct"]],
     ["is both an input and an output"]),
    ("cli-output-is-directory", _output_is_directory,
     lambda f, out: ["mumap", "--ct", f["ct"], "--out", f["bad"]],
     ["is a directory; expected the path of an output file"]),
]

FAULTS = [
    ("fault-disk-full-nifti", write_fault(output(_ct_input, "mumap.nii.gz"), "nibabel"), mumap_of_ct,
     [r"cannot write it \(No space left on device\)"]),
    ("fault-disk-full-copy", write_fault(output(_suv_input, "hc.nii.gz"), "copy"), import_suv_of,
     [r"cannot write it \(No space left on device\)"]),
    ("fault-disk-full-manifest", write_fault(output(_manifest, "manifest.tsv"), "text"), manifest,
     [r"cannot write it \(No space left on device\)"]),
    ("fault-disk-full-figure", write_fault(output(_qc_set, "qc.png"), "figure"), qc,
     [r"cannot write it \(No space left on device\)"]),
    ("fault-quota-json", write_fault(output(_subject_stats_set, "stats.json"), "text", errno.EDQUOT),
     subject_stats, [r"cannot write it \(Disk quota exceeded\)"]),
    ("fault-io-error", write_fault(output(_ct_input, "mumap.nii.gz"), "nibabel", errno.EIO), mumap_of_ct,
     [r"cannot write it \(Input/output error\)"]),
    ("fault-file-too-large", write_fault(output(_suv_input, "hc.nii.gz"), "copy", errno.EFBIG), import_suv_of,
     [r"cannot write it \(File too large\)"]),
    ("fault-read-only-file-system", temporary_refused(output(_ct_input, "mumap.nii.gz"), errno.EROFS),
     mumap_of_ct, [r"is not writable \(Read-only file system\)"]),
    ("fault-permission-denied-on-write", temporary_refused(output(_ct_input, "mumap.nii.gz"), errno.EACCES),
     mumap_of_ct, [r"is not writable \(Permission denied\)"]),
    ("fault-output-folder-is-a-file", file_in_the_way(_ct_input, "masks", "masks/mumap.nii.gz"),
     mumap_to_target,
     ["cannot write it: .*masks is a file, not a folder"]),
    ("fault-output-grandparent-is-a-file", file_in_the_way(_ct_input, "masks", "masks/sub/mumap.nii.gz"),
     mumap_to_target, ["cannot write it: .*masks is a file, not a folder"]),
    ("fault-predict-out-dir-is-a-file",
     file_in_the_way(checkpoint_with(), "prediction", "prediction/denoised.nii.gz"),
     lambda f, out: predict_into(f | {"target": f["bad"].parent}, out),
     ["prediction is a file, not a folder"]),
    ("fault-train-out-dir-is-a-file", file_in_the_way(_train_set(), "model", "model/last.pt"),
     lambda f, out: train_into(f | {"target": f["bad"].parent}, out), ["model is a file, not a folder"]),
    ("fault-results-folder-unwritable", unwritable(_results_unwritable, "results"), phantom_into,
     ["cannot write it: folder .*results is not writable"]),
    ("fault-output-folder-unwritable", unwritable(_mumap_in("masks"), "masks"), mumap_to_target,
     [r"cannot write it: folder .*masks is not writable \(Permission denied\)"]),
    ("fault-output-folder-read-only-mode", chmod_unwritable, mumap_to_target, ["is not writable"]),
    ("fault-input-unreadable", unreadable(lambda d: _ct_input(d) | {"bad": d / "ct.nii.gz"}), mumap_of_ct,
     [r"cannot read it \(Permission denied\)"]),
    ("fault-config-unreadable", unreadable(lambda d: {"bad": _config(d)}), check_config,
     [r"cannot read it \(Permission denied\)"]),
]

AUTOPET = [
    ("autopet-root-missing", autopet_missing_root, import_autopet, ["does not exist"]),
    ("autopet-root-is-a-file", autopet_root_is_file, import_autopet, [r"is not a folder \(a file\)"]),
    ("autopet-no-studies", autopet_no_studies, import_autopet, ["no study folder"]),
    ("autopet-colliding-ids", autopet_colliding_ids, import_autopet,
     ["subject id 'PETCT_0a_study' also derived from"]),
]

FAMILIES = {"NIfTI": NIFTI, "PETSIRD": PETSIRD, "manifest": MANIFEST, "config": CONFIG,
            "checkpoint": CHECKPOINT, "command line": COMMAND_LINE, "operational faults": FAULTS,
            "autoPET": AUTOPET}
CATALOGUE = [case for family in FAMILIES.values() for case in family]


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


@contextlib.contextmanager
def _deadline(seconds: int):
    """Fail (instead of hanging) when the block runs longer than ``seconds``: a reader that
    opened a FIFO would wait for a writer forever."""
    def expire(signum, frame):
        pytest.fail(f"no answer within {seconds} s (blocked on a FIFO?)")
    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _run(argv) -> int:
    """``main``'s status; a usage error leaves argparse by SystemExit (status 2)."""
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code


# Cases whose fix lies in code another change owns; they run, and pass once it is fixed.
KNOWN_GAPS: dict[str, str] = {}


def _params(cases):
    def marks(case_id):
        return [pytest.mark.xfail(reason=KNOWN_GAPS[case_id])] if case_id in KNOWN_GAPS else []
    return [pytest.param(*case[1:], id=case[0], marks=marks(case[0])) for case in cases]


@pytest.mark.parametrize("maker,command,words", _params(CATALOGUE))
def test_bad_input_fails_with_one_line(tmp_path, capsys, monkeypatch, maker, command, words):
    d, out, files, argv, outputs = _prepare(tmp_path, maker, command)
    before = _snapshot(d)
    capsys.readouterr()
    # generous: the first case that imports torch takes minutes on a loaded 2-core machine
    with warnings.catch_warnings(record=True) as caught, _deadline(600):
        warnings.simplefilter("always")
        if "inject" in files:
            files["inject"](monkeypatch)   # the fault: the operating system fails this write
        try:
            status = _run(argv)
        finally:
            monkeypatch.undo()
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


def test_catalogue_covers_every_family():
    assert {name: len(cases) > 0 for name, cases in FAMILIES.items()} == {name: True for name in FAMILIES}
    assert len(CATALOGUE) >= 110


# ---- a --config override on Snakemake's command line is blamed on --config ----------------
@pytest.mark.parametrize("override,blamed,problem", [
    ({"seeed": 7}, "--config seeed", "<top level>: unknown key 'seeed'"),
    ({"seed": "twelve"}, "--config seed", "seed: 'twelve' is not of type 'integer'"),
    ({"sites": {"mct": {"recon": {"iteratons": 2}}}}, "--config sites.mct.recon.iteratons",
     "sites.mct.recon: unknown key 'iteratons'"),
    ({"results_dir": "elsewhere"}, None, "labels: unknown key 'bogus'"),   # the file's own typo
])
def test_workflow_config_error_names_its_source(tmp_path, override, blamed, problem):
    """rules/common.smk validates Snakemake's merged config with check_workflow_config: a typo
    given with --config must not be reported as a fault of the config file."""
    from amdiff.config import check_workflow_config
    from amdiff.errors import InputError

    path = _config(tmp_path, None if blamed else _edit_site(["labels", "bogus"], 1))
    merged = yaml.safe_load(path.read_text())

    def merge(node, extra):
        for key, value in extra.items():
            if isinstance(value, dict) and isinstance(node.get(key), dict):
                merge(node[key], value)
            else:
                node[key] = value
    merge(merged, override)
    with pytest.raises(InputError) as err:
        check_workflow_config(merged, [path], override)
    assert err.value.source == (blamed or str(path)) and err.value.problem == problem


def test_workflow_config_typo_in_a_config_file_path_is_named(tmp_path):
    from amdiff.config import check_workflow_config
    from amdiff.errors import InputError

    with pytest.raises(InputError) as err:
        check_workflow_config({}, [tmp_path / "confg.yaml"], {})
    assert err.value.source == str(tmp_path / "confg.yaml") and "does not exist" in err.value.problem


# ---- the installed console script, for the real exit status and stderr ------------------
@pytest.mark.parametrize("case", ["lm-truncated-events-downsample", "config-yaml-syntax",
                                  "manifest-path-escapes-root", "nifti-declares-4000-cubed",
                                  "manifest-fifo", "cli-missing-required",
                                  "cli-predict-denoised-to-amdiff"])
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
# words (flags and paths) are word lists, so `:q` quotes them too; only `{threads}` (an int
# Snakemake sets) reaches the shell unquoted.
PATH_PLACEHOLDER = re.compile(r"\{((?:input|output|log)(?:\.\w+)?|RESULTS)(:[^}]*)?\}")
PLACEHOLDER = re.compile(r"\{([A-Za-z_][\w.]*)(:[^}]*)?\}")
UNQUOTED_ALLOWED = {"threads"}


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
    offenders = [f"{rule}: {m.group(0)}" for rule, block in blocks for m in PLACEHOLDER.finditer(block)
                 if m.group(2) != ":q" and m.group(1) not in UNQUOTED_ALLOWED]
    assert offenders == [], "unquoted placeholders (use {name:q}):\n" + "\n".join(offenders)
