"""Cohort manifest validation and the autoPET import."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from amdiff.errors import InputError
from amdiff.io.autopet import autopet_to_manifest, find_studies, split_counts
from amdiff.io.manifest import (
    COLUMNS,
    lc_pet_images,
    level_percent,
    read_manifest,
    validate_subject_images,
    write_manifest,
)
from amdiff.io.nifti import centered_affine, write_volume

REPO = Path(__file__).resolve().parents[1]
SHAPE = (4, 4, 4)
AFFINE = centered_affine(SHAPE, (2.0, 2.0, 3.0))


def make_subject(folder: Path, shape=SHAPE, affine=AFFINE) -> dict[str, str]:
    """Tiny consistent image set of one subject; returns column -> path relative to folder.parent."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    hc = rng.uniform(0.5, 3.0, shape).astype(np.float32)
    lesion = np.zeros(shape, np.uint8)
    lesion[1:3, 1:3, 1] = 1
    organs = np.zeros(shape, np.uint8)
    organs[0] = [[1, 2, 3, 4], [5, 6, 7, 0], [0, 0, 0, 0], [1, 1, 1, 1]]
    write_volume(folder / "hc.nii.gz", hc, affine)
    write_volume(folder / "lc_p005.nii.gz", hc * 1.1, affine)
    write_volume(folder / "ct.nii.gz", np.full(shape, 40.0), affine)
    write_volume(folder / "lesion.nii.gz", lesion, affine, np.uint8)
    write_volume(folder / "organs.nii.gz", organs, affine, np.uint8)
    rel = folder.name
    return {"hc_pet": f"{rel}/hc.nii.gz", "lc_pet": f"p005={rel}/lc_p005.nii.gz", "ct": f"{rel}/ct.nii.gz",
            "lesion": f"{rel}/lesion.nii.gz", "organs": f"{rel}/organs.nii.gz"}


def write_tsv(path: Path, rows: list[dict], columns=None) -> Path:
    columns = columns or ["subject", "site", "split", "hc_pet", "lc_pet", "ct", "lesion", "organs",
                          "weight_kg", "injected_mbq"]
    lines = ["# a comment line", "\t".join(columns)]
    lines += ["\t".join(str(r.get(c, "")) for c in columns) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def cohort(tmp_path):
    root = tmp_path / "data"
    rows = []
    for i, split in enumerate(["train", "val"]):
        files = make_subject(root / f"sub-{i}")
        rows.append({"subject": f"sub-{i}", "site": "mct", "split": split, "weight_kg": "70", **files})
    return root, rows


def expect_error(manifest, match, **kwargs) -> InputError:
    with pytest.raises(InputError, match=match) as err:
        read_manifest(manifest, **kwargs)
    assert err.value.source == str(manifest)
    return err.value


def test_level_percent_follows_naming_convention():
    assert [level_percent(x) for x in ["p005", "p00625", "p0125", "p040", "p0167", "p100", "p010_r2"]] == \
        [5.0, 6.25, 12.5, 40.0, 16.7, 100.0, 10.0]
    with pytest.raises(ValueError):
        level_percent("p5")


def test_valid_manifest_reads_and_round_trips(cohort, tmp_path, monkeypatch):
    root, rows = cohort
    manifest = write_tsv(root / "m.tsv", rows)
    monkeypatch.chdir(tmp_path)  # relative paths resolve against the manifest, not the cwd
    df = read_manifest(manifest)
    assert list(df.columns) == list(COLUMNS) and len(df) == 2
    r0 = df.iloc[0]
    assert r0["hc_pet"] == str(root / "sub-0" / "hc.nii.gz")
    assert r0["lc_pet"] == f"p005={root / 'sub-0' / 'lc_p005.nii.gz'}"
    assert lc_pet_images(r0["lc_pet"]) == {"p005": str(root / "sub-0" / "lc_p005.nii.gz")}
    assert r0["listmode"] is None and r0["weight_kg"] == 70.0 and np.isnan(r0["injected_mbq"])
    assert not r0["simulate_from_images"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        validate_subject_images(r0)

    again = read_manifest(write_manifest(df, tmp_path / "copy.tsv"), data_roots=[str(root)])
    pd.testing.assert_frame_equal(again, df)


def test_lc_pet_realizations(cohort):
    root, rows = cohort
    rows[0]["lc_pet"] = "p005_r0=sub-0/lc_p005.nii.gz; p005_r1=sub-0/hc.nii.gz"
    df = read_manifest(write_tsv(root / "m.tsv", rows))
    assert lc_pet_images(df.iloc[0]["lc_pet"]) == {"p005_r0": str(root / "sub-0/lc_p005.nii.gz"),
                                                   "p005_r1": str(root / "sub-0/hc.nii.gz")}
    rows[0]["lc_pet"] = "p005=sub-0/lc_p005.nii.gz;p005_r0=sub-0/hc.nii.gz"
    expect_error(write_tsv(root / "m.tsv", rows), "line 3.*level p005_r0 given twice")
    rows[0]["lc_pet"] = "p150=sub-0/lc_p005.nii.gz"
    expect_error(write_tsv(root / "m.tsv", rows), r"'p150': count level 150.0 % must lie in \(0, 100\]")


def test_missing_columns_are_listed(cohort):
    root, rows = cohort
    manifest = write_tsv(root / "m.tsv", rows, columns=["subject", "site", "split", "hc_pet", "lc_pet"])
    expect_error(manifest, r"missing required column\(s\): ct, lesion$")


def test_duplicate_subject(cohort):
    root, rows = cohort
    rows[1]["subject"] = rows[0]["subject"]
    expect_error(write_tsv(root / "m.tsv", rows),
                 r"line 4 \(subject 'sub-0'\).*duplicate subject, first on line 3")


@pytest.mark.parametrize("column,value,match", [
    ("subject", "sub 1", "column 'subject'.*must match"),
    ("split", "training", "column 'split': invalid split 'training'"),
    ("site", "Bad.Site", "column 'site': invalid site"),
    ("hc_pet", "sub-0/nothere.nii.gz", "column 'hc_pet': file .*nothere.nii.gz does not exist"),
    ("lc_pet", "5pct=sub-0/lc_p005.nii.gz", "column 'lc_pet'.*'5pct' is not a count-level name"),
    ("lc_pet", "", "exactly one low-count source.*found none"),
    ("weight_kg", "-3", "column 'weight_kg': must be a positive number"),
    ("lesion", "", "column 'lesion': empty, but a file is required"),
])
def test_bad_cells_name_line_and_column(cohort, column, value, match):
    root, rows = cohort
    rows[1][column] = value
    expect_error(write_tsv(root / "m.tsv", rows), "line 4.*" + match)


def test_site_restricted_to_config_sites(cohort):
    root, rows = cohort
    expect_error(write_tsv(root / "m.tsv", rows), r"invalid site 'mct' \(expected uexplorer, vision\)",
                 sites=["vision", "uexplorer"])


def test_path_escaping_data_root(cohort, tmp_path):
    root, rows = cohort
    make_subject(tmp_path / "outside")
    rows[0]["ct"] = "../outside/ct.nii.gz"
    manifest = write_tsv(root / "m.tsv", rows)
    expect_error(manifest, "line 3.*column 'ct'.*outside the data roots")
    assert read_manifest(manifest, allow_outside_roots=True).iloc[0]["ct"].endswith("ct.nii.gz")
    assert len(read_manifest(manifest, data_roots=[str(tmp_path)])) == 2
    # a symbolic link inside the root does not make an outside file legal
    (root / "link.nii.gz").symlink_to(tmp_path / "outside" / "ct.nii.gz")
    rows[0]["ct"] = "link.nii.gz"
    expect_error(write_tsv(root / "m.tsv", rows), "column 'ct'.*outside the data roots")


@pytest.mark.parametrize("char", ["\x1b", "\x01", "\x7f"])
def test_control_characters_in_paths_are_rejected(cohort, char):
    # even when the file exists: such a name is unsafe in a log line or a shell command
    root, rows = cohort
    shutil.copy(root / "sub-1" / "ct.nii.gz", root / "sub-1" / f"ct{char}.nii.gz")
    rows[1]["ct"] = f"sub-1/ct{char}.nii.gz"
    err = expect_error(write_tsv(root / "m.tsv", rows),
                       rf"line 4 \(subject 'sub-1'\), column 'ct': path .* contains the control character "
                       rf"U\+{ord(char):04X}$")
    assert len(str(err).splitlines()) == 1 and char not in str(err)   # one printable line
    rows[1]["ct"], rows[0]["lc_pet"] = "sub-1/ct.nii.gz", f"p005=sub-0/lc{char}.nii.gz"
    expect_error(write_tsv(root / "m.tsv", rows), "line 3.*column 'lc_pet': path .* control character")


def test_control_characters_in_the_manifest_folder_are_rejected(tmp_path):
    # a newline or tab cannot stand in a cell (they separate rows and columns), but the
    # manifest's own folder, against which relative paths resolve, can hold one
    root = tmp_path / "da\nta"
    rows = [{"subject": "sub-0", "site": "mct", "split": "train", **make_subject(root / "sub-0")}]
    expect_error(write_tsv(root / "m.tsv", rows), r"line 3.*column 'hc_pet': path .*da\\nta.* U\+000A$")


def test_structural_errors(cohort):
    root, rows = cohort
    manifest = write_tsv(root / "m.tsv", rows)
    manifest.write_text(manifest.read_text() + "sub-9\tmct\n")
    expect_error(manifest, "line 5: 2 tab-separated fields, header has 10")
    cols = ["subject", "site", "split", "hc_pet", "lc_pet", "ct", "lesion", "lesoin"]
    expect_error(write_tsv(root / "m.tsv", rows, cols), "unknown column.*lesoin")
    rows[0]["listmode"] = rows[0]["hc_pet"]  # any existing file; two sources is ambiguous
    cols = ["subject", "site", "split", "hc_pet", "lc_pet", "listmode", "ct", "lesion"]
    expect_error(write_tsv(root / "m.tsv", rows, cols), "exactly one low-count source.*lc_pet, listmode")
    rows[0]["lc_pet"] = ""
    expect_error(write_tsv(root / "m.tsv", rows, cols), "line 3.*'weight_kg': required when listmode")


def _row_with(cohort, column, data, affine=AFFINE, dtype=np.float32):
    root, rows = cohort
    path = root / "sub-0" / f"bad_{column}.nii.gz"
    write_volume(path, data, affine, dtype)
    rows[0][column] = str(path.relative_to(root))
    return read_manifest(write_tsv(root / "m.tsv", rows)).iloc[0], str(path)


@pytest.mark.parametrize("column,make,match", [
    ("ct", lambda: (np.zeros((4, 4, 5)), AFFINE, np.float32), r"shape \(4, 4, 5\) differs"),
    ("lesion", lambda: (np.zeros(SHAPE), centered_affine(SHAPE, (2.0, 2.0, 3.5)), np.uint8), "affine differs"),
    ("hc_pet", lambda: (np.where(np.arange(64).reshape(SHAPE) == 5, np.nan, 1.0), AFFINE, np.float32),
     "1 voxels are NaN"),
    ("organs", lambda: (np.full(SHAPE, 9), AFFINE, np.uint8), r"0\.\.7, found \[9\]"),
    ("lesion", lambda: (np.full(SHAPE, 2), AFFINE, np.uint8), "binary 0/1"),
])
def test_image_errors_name_the_image(cohort, column, make, match):
    data, affine, dtype = make()
    row, path = _row_with(cohort, column, data, affine, dtype)
    with pytest.raises(InputError, match=match) as err:
        validate_subject_images(row)
    assert err.value.source == path


def test_empty_lesion_mask_warns_only(cohort):
    row, path = _row_with(cohort, "lesion", np.zeros(SHAPE), dtype=np.uint8)
    with pytest.warns(UserWarning, match="lesion mask is empty"):
        validate_subject_images(row)


def test_example_manifest_is_valid(tmp_path):
    manifest = tmp_path / "manifest.tsv"
    shutil.copy(REPO / "config" / "manifest.example.tsv", manifest)
    for line in manifest.read_text().splitlines():
        for cell in line.split("\t"):
            for part in cell.split(";"):
                part = part.split("=")[-1]
                if part.startswith("data/"):
                    (tmp_path / part).parent.mkdir(parents=True, exist_ok=True)
                    (tmp_path / part).touch()
    df = read_manifest(manifest)
    assert df["subject"].tolist() == ["mct-001", "mct-002", "vision-001", "autopet-0001"]
    assert list(lc_pet_images(df.iloc[0]["lc_pet"])) == ["p005", "p010"]
    assert df.iloc[1]["listmode"].endswith("listmode.bin") and df.iloc[1]["injected_mbq"] == 238.2
    assert level_percent(next(iter(lc_pet_images(df.iloc[2]["lc_pet"])))) == 16.7
    assert df["simulate_from_images"].tolist() == [False, False, False, True]


# --- autoPET -------------------------------------------------------------------------------

def test_split_counts_by_largest_remainder():
    assert split_counts(5, (0.6, 0.2, 0.2)) == [3, 1, 1]
    assert split_counts(4, (0.6, 0.2, 0.2)) == [2, 1, 1]
    assert split_counts(2, (0.6, 0.2, 0.2)) == [1, 1, 0]
    assert split_counts(10, (0.7, 0.15, 0.15)) == [7, 2, 1]
    assert split_counts(3, (0.0, 0.0, 1.0)) == [0, 0, 3]


def _autopet_study(folder: Path, files=("SUV.nii.gz", "CTres.nii.gz", "SEG.nii.gz")):
    folder.mkdir(parents=True)
    data = {"SUV.nii.gz": (np.ones(SHAPE), np.float32), "CTres.nii.gz": (np.zeros(SHAPE), np.float32),
            "SEG.nii.gz": (np.zeros(SHAPE), np.uint8)}
    for name in files:
        write_volume(folder / name, data[name][0], AFFINE, data[name][1])


def test_autopet_import(tmp_path):
    root = tmp_path / "FDG-PET-CT-Lesions"
    _autopet_study(root / "PETCT_0a" / "03-23-2003-NA-PET-CT Ganzkoerper  primaer mit KM-10445")
    _autopet_study(root / "PETCT_0a" / "11-02-2004-NA-PET-CT Ganzkoerper-20511")
    for p in ["PETCT_1b", "PETCT_2c", "PETCT_3d", "PETCT_4e"]:
        _autopet_study(root / p / "study")
    _autopet_study(root / "PETCT_5f" / "study", files=("SUV.nii.gz", "CTres.nii.gz"))
    out = tmp_path / "manifests" / "autopet.tsv"

    with pytest.warns(UserWarning, match=r"1 incomplete.*PETCT_5f/study \(missing SEG.nii.gz\)"):
        df = autopet_to_manifest(root, out, seed=3)
    assert len(df) == 6 and out.is_file()
    assert "PETCT_0a_03-23-2003-NA-PET-CT_Ganzkoerper_primaer_mit_KM-10445" in df["subject"].tolist()
    assert (df["site"] == "autopet").all() and df["simulate_from_images"].all()
    assert df["listmode"].isna().all() and df["lc_pet"].isna().all()
    assert df.iloc[0]["hc_pet"].endswith("SUV.nii.gz") and df.iloc[0]["lesion"].endswith("SEG.nii.gz")
    patient = df["subject"].str.extract(r"^(PETCT_\w\w)")[0]
    per_patient = df.groupby(patient)["split"].nunique()
    assert (per_patient == 1).all()  # a patient's studies share one split
    assert df.groupby(patient)["split"].first().value_counts().to_dict() == {"train": 3, "val": 1, "test": 1}
    with pytest.warns(UserWarning, match="lesion mask is empty"):
        validate_subject_images(df.iloc[0])

    # seeded: same seed, same split; the seed matters
    with pytest.warns(UserWarning):
        again = autopet_to_manifest(root, tmp_path / "again.tsv", seed=3)
    assert again["split"].tolist() == df["split"].tolist()
    splits = set()
    for seed in range(8):
        with pytest.warns(UserWarning):
            splits.add(tuple(autopet_to_manifest(root, tmp_path / "s.tsv", seed=seed)["split"]))
    assert len(splits) > 1


def test_autopet_flat_layout_and_errors(tmp_path):
    root = tmp_path / "flat"
    _autopet_study(root / "case_001")
    _autopet_study(root / "case_002")
    complete, incomplete = find_studies(root)
    assert [p.name for p in complete] == ["case_001", "case_002"] and incomplete == []
    df = autopet_to_manifest(root, root / "m.tsv", split_fractions=(0.5, 0.5, 0.0))
    assert sorted(df["subject"]) == ["case_001", "case_002"] and sorted(df["split"]) == ["train", "val"]
    assert "case_001/SUV.nii.gz" in (root / "m.tsv").read_text()  # relative below the manifest

    empty = tmp_path / "empty"
    _autopet_study(empty / "p" / "s", files=("SUV.nii.gz",))
    with pytest.warns(UserWarning), pytest.raises(InputError, match="no study folder"):
        autopet_to_manifest(empty, tmp_path / "x.tsv")
    with pytest.raises(InputError, match="split_fractions"):
        autopet_to_manifest(root, tmp_path / "x.tsv", split_fractions=(0.5, 0.5, 0.5))
