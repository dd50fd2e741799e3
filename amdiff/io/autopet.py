"""Turn an autoPET-style folder tree into a cohort manifest.

Layout (the FDG-PET-CT-Lesions NIfTI release): one folder per study holding ``SUV.nii.gz``
(PET in SUV), ``CTres.nii.gz`` (CT resampled to the PET grid) and ``SEG.nii.gz`` (lesion mask),
either directly under the root or nested as ``patient/study``. autoPET has no list-mode and no
low-count images, so every row is marked ``simulate_from_images=true``: the workflow simulates
list-mode from SUV + CT. Weight and dose are not in the NIfTI release and stay empty.

The split is drawn per patient (the first folder level under the root), so studies of one
patient never straddle train and test.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from amdiff.contracts import SPLITS
from amdiff.errors import InputError
from amdiff.io.files import file_kind
from amdiff.io.manifest import COLUMNS, read_manifest, write_manifest

STUDY_FILES = {"hc_pet": "SUV.nii.gz", "ct": "CTres.nii.gz", "lesion": "SEG.nii.gz"}


def find_studies(root) -> tuple[list[Path], list[tuple[Path, list[str]]]]:
    """Complete study folders, and incomplete ones with the files they lack (both sorted)."""
    root = Path(root)
    complete, incomplete = [], []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        present = [f for f in STUDY_FILES.values() if f in filenames]
        if not present:
            continue
        dirnames.clear()  # a study folder's subfolders are not studies
        missing = [f for f in STUDY_FILES.values() if f not in filenames]
        (incomplete.append((Path(dirpath), missing)) if missing else complete.append(Path(dirpath)))
    return sorted(complete), sorted(incomplete)


def split_counts(n: int, fractions) -> list[int]:
    """Integer train/val/test sizes summing to n, by largest remainder (ties: earlier split)."""
    f = np.asarray(fractions, dtype=float)
    raw = f * n
    counts = np.floor(raw).astype(int)
    order = sorted(range(len(f)), key=lambda i: (-(raw[i] - counts[i]), i))
    for i in order[: n - counts.sum()]:
        counts[i] += 1
    return counts.tolist()


def _subject_id(parts: tuple[str, ...]) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", "_".join(parts)).strip("_")


def _cell_path(p: Path, manifest_dir: Path) -> str:
    """Relative to the manifest when the data lie below it (portable), else absolute."""
    p = p.absolute()
    return str(p.relative_to(manifest_dir)) if p.is_relative_to(manifest_dir) else str(p)


def autopet_to_manifest(root, out_tsv, site: str = "autopet", split_fractions=(0.6, 0.2, 0.2),
                        seed: int = 0) -> pd.DataFrame:
    """Write a manifest for every complete study under ``root``; returns it as read back."""
    root = Path(root)
    if not root.exists():
        raise InputError(root, "autoPET root folder does not exist")
    if not root.is_dir():
        what = "a file" if root.is_file() else file_kind(root.stat().st_mode)
        raise InputError(root, f"is not a folder ({what}); expected the autoPET root folder")
    fr = np.asarray(split_fractions, dtype=float)
    if fr.shape != (3,) or np.any(fr < 0) or not np.isclose(fr.sum(), 1.0):
        raise InputError("split_fractions",
                         f"need three non-negative fractions summing to 1, got {split_fractions}")

    complete, incomplete = find_studies(root)
    if incomplete:
        listing = "; ".join(f"{p} (missing {', '.join(m)})" for p, m in incomplete)
        warnings.warn(f"{root}: skipping {len(incomplete)} incomplete study folder(s): {listing}", stacklevel=2)
    if not complete:
        raise InputError(root, f"no study folder with {', '.join(STUDY_FILES.values())} found")

    studies = []
    for study in complete:
        parts = study.relative_to(root).parts or (root.name,)
        studies.append((parts[0], _subject_id(parts), study))
    by_id: dict[str, Path] = {}
    for _, subject, study in studies:
        if subject in by_id:
            raise InputError(study, f"subject id '{subject}' also derived from {by_id[subject]}")
        by_id[subject] = study

    patients = sorted({patient for patient, _, _ in studies})
    shuffled = np.random.default_rng(seed).permutation(len(patients))
    bounds = np.cumsum(split_counts(len(patients), fr))
    split_of = {patients[j]: SPLITS[int(np.searchsorted(bounds, rank, side="right"))]
                for rank, j in enumerate(shuffled)}

    out_tsv = Path(out_tsv)
    manifest_dir = out_tsv.absolute().parent
    records = []
    for patient, subject, study in studies:
        rec = {c: None for c in COLUMNS}
        rec.update(subject=subject, site=site, split=split_of[patient], lc_pet=None,
                   simulate_from_images=True, weight_kg=float("nan"), injected_mbq=float("nan"))
        for col, name in STUDY_FILES.items():
            rec[col] = _cell_path(study / name, manifest_dir)
        records.append(rec)
    write_manifest(pd.DataFrame(records, columns=list(COLUMNS), dtype=object), out_tsv)
    return read_manifest(out_tsv, data_roots=[str(root)])
