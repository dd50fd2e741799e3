"""The cohort manifest: one TSV row per subject of a real (non-phantom) cohort.

Format: tab-separated, UTF-8, one header line; blank lines and lines starting with ``#`` are
ignored. Relative paths are resolved against the manifest's folder. Columns:

=====================  ========  ===========================================================
column                 needed    meaning
=====================  ========  ===========================================================
subject                yes       unique id, letters/digits/``_``/``-`` (used in file paths)
site                   yes       site name (``mct``, ``vision``, ``uexplorer``, ``autopet``...)
split                  yes       ``train`` | ``val`` | ``test``
hc_pet                 yes       high-count (full-dose) PET in SUV (g/mL), NIfTI
ct                     yes       CT in HU on the PET grid
lesion                 yes       binary lesion mask (uint8); all-zero is legal for a
                                 lesion-free subject (a warning, not an error)
lc_pet                 one of    low-count PET images in SUV: ``level=path`` pairs joined by
                       three     ``;``, levels named like ``p005`` (5 %) or ``p00625`` (6.25 %),
                                 optionally with a realization, ``p005_r1`` (no suffix = r0)
listmode               one of    PETSIRD list-mode file of the full acquisition, to be
                       three     down-sampled into the count levels
simulate_from_images   one of    ``true``: the workflow simulates list-mode from hc_pet + ct
                       three     (e.g. autoPET); ``false`` or empty otherwise
organs                 no        organ map 0..7 (uint8); empty -> labels from the config's method
weight_kg              listmode  patient weight in kg (SUV = C[Bq/mL] * weight[g] / dose[Bq])
injected_mbq           listmode  injected activity in MBq, decay-corrected to scan start
=====================  ========  ===========================================================

Exactly one low-count source per row (lc_pet, listmode or simulate_from_images=true).
Paths must lie inside the declared data roots (default: the manifest's folder) unless
``allow_outside_roots``; symbolic links are followed before the check. Paths may not contain
tabs or other control characters (codes below 32, and 127); lc_pet paths may not contain ``;``.
"""

from __future__ import annotations

import csv
import math
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from amdiff.contracts import SPLITS
from amdiff.errors import InputError
from amdiff.io.files import check_input_file
from amdiff.levels import parse_image_name
from amdiff.io.atomic import write_text
from amdiff.io.nifti import check_same_grid, read_volume
from amdiff.io.nifti import load_provided_labels

REQUIRED_COLUMNS = ("subject", "site", "split", "hc_pet", "ct", "lesion")
OPTIONAL_COLUMNS = ("lc_pet", "listmode", "simulate_from_images", "organs", "weight_kg", "injected_mbq")
COLUMNS = REQUIRED_COLUMNS + OPTIONAL_COLUMNS
PATH_COLUMNS = ("hc_pet", "ct", "lesion", "listmode", "organs")

_SUBJECT_RE = re.compile(r"^[A-Za-z0-9_-]+$")
_SITE_RE = re.compile(r"^[a-z][a-z0-9_]*$")
_TRUE, _FALSE = ("true",), ("false", "")
# newline, tab, ESC, DEL...: never legitimate in a file name, and unsafe in a log line or a command
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


def level_percent(level: str) -> float:
    """Percent of the full count a level name stands for: p005 -> 5, p00625 -> 6.25, p010_r1 -> 10."""
    return parse_image_name(level)[0]


class _Row:
    """Error context for one manifest line."""

    def __init__(self, manifest: Path, line: int, subject: str):
        self.manifest, self.line, self.subject = manifest, line, subject

    def error(self, column: str, problem: str) -> InputError:
        who = f" (subject '{self.subject}')" if self.subject else ""
        return InputError(self.manifest, f"line {self.line}{who}, column '{column}': {problem}")


def _read_rows(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Header and (line number, fields) of every data line; comments and blanks skipped."""
    check_input_file(path, "manifest")   # a FIFO would block read_text forever
    try:
        text = path.read_text(encoding="utf-8-sig")  # tolerate a spreadsheet BOM
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(path, f"cannot read manifest ({type(exc).__name__}: {exc})") from None
    header, rows = None, []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = [f.strip() for f in next(csv.reader([line], delimiter="\t", quoting=csv.QUOTE_NONE))]
        if header is None:
            header = fields
            continue
        if len(fields) != len(header):
            raise InputError(path, f"line {lineno}: {len(fields)} tab-separated fields, header has {len(header)}")
        rows.append((lineno, fields))
    if header is None:
        raise InputError(path, "manifest is empty (no header line)")
    return header, rows


def _check_header(path: Path, header: list[str]) -> None:
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise InputError(path, f"missing required column(s): {', '.join(missing)}")
    unknown = [c for c in header if c not in COLUMNS]
    if unknown:
        raise InputError(path, f"unknown column(s) {', '.join(unknown)}; allowed: {', '.join(COLUMNS)}")
    dup = sorted({c for c in header if header.count(c) > 1})
    if dup:
        raise InputError(path, f"duplicate column(s): {', '.join(dup)}")


def _check_no_control(row: _Row, column: str, path: str) -> None:
    bad = _CONTROL_RE.search(path)
    if bad:
        raise row.error(column, f"path {path!r} contains the control character U+{ord(bad.group()):04X}")


def _resolve(row: _Row, column: str, value: str, base: Path, roots: list[Path] | None) -> str:
    _check_no_control(row, column, value)
    p = Path(value).expanduser()
    p = p if p.is_absolute() else base / p
    _check_no_control(row, column, str(p))  # the manifest's folder or the home folder
    try:
        check_input_file(p)
    except InputError as err:   # the problem with the path in it: "file X does not exist" ...
        problem = err.problem
        if problem.startswith("file "):
            problem = f"file {p} {problem.removeprefix('file ')}"
        elif problem.startswith("cannot read it"):
            problem = f"cannot read {p}{problem.removeprefix('cannot read it')}"
        else:
            problem = f"{p} {problem}"
        raise row.error(column, problem) from None
    real = p.resolve()
    if roots is not None and not any(real.is_relative_to(r) for r in roots):
        raise row.error(column, f"{p} lies outside the data roots ({', '.join(map(str, roots))})")
    return str(p.absolute())


def _number(row: _Row, column: str, value: str) -> float:
    if value == "":
        return math.nan
    try:
        x = float(value)
    except ValueError:
        raise row.error(column, f"'{value}' is not a number") from None
    if not math.isfinite(x) or x <= 0:
        raise row.error(column, f"must be a positive number, got {value}")
    return x


def _parse_lc_pet(row: _Row, value: str, base: Path, roots) -> dict[str, str]:
    levels: dict[str, str] = {}
    for item in filter(None, (s.strip() for s in value.split(";"))):
        level, sep, p = (s.strip() for s in item.partition("="))
        if not sep or not p:
            raise row.error("lc_pet", f"'{item}' is not level=path")
        try:
            level_percent(level)  # validates the name and its range
        except ValueError as exc:
            raise row.error("lc_pet", str(exc)) from None
        canonical = level if "_r" in level else f"{level}_r0"  # p005 is realization r0
        if canonical in {k if "_r" in k else f"{k}_r0" for k in levels}:
            raise row.error("lc_pet", f"level {level} given twice")
        levels[level] = _resolve(row, "lc_pet", p, base, roots)
    return levels


def read_manifest(path, data_roots: list[str] | None = None, allow_outside_roots: bool = False,
                  sites=None) -> pd.DataFrame:
    """Read and validate a manifest; returns one row per subject with absolute paths.

    Columns of the result: all of ``COLUMNS``. Empty path cells are None, ``lc_pet`` is the
    normalised ``level=abspath;...`` text (parse it with ``lc_pet_images``), numbers are float
    (NaN when empty), ``simulate_from_images`` is bool.
    ``sites`` optionally restricts the allowed site names (e.g. the config's sites).
    Images themselves are checked by ``validate_subject_images``.
    """
    path = Path(path)
    base = path.absolute().parent
    header, rows = _read_rows(path)
    _check_header(path, header)
    if not rows:
        raise InputError(path, "manifest has no subject rows")
    roots = None
    if not allow_outside_roots:
        roots = [Path(r).expanduser().resolve() for r in (data_roots if data_roots is not None else [base])]
    allowed_sites = None if sites is None else set(sites)

    records, seen = [], {}
    for lineno, fields in rows:
        raw = {c: "" for c in COLUMNS} | dict(zip(header, fields))
        row = _Row(path, lineno, raw["subject"])
        subject = raw["subject"]
        if not _SUBJECT_RE.match(subject):
            raise row.error("subject", f"'{subject}' must match {_SUBJECT_RE.pattern}")
        if subject in seen:
            raise row.error("subject", f"duplicate subject, first on line {seen[subject]}")
        seen[subject] = lineno
        site = raw["site"]
        if not _SITE_RE.match(site) or (allowed_sites is not None and site not in allowed_sites):
            want = ", ".join(sorted(allowed_sites)) if allowed_sites is not None else _SITE_RE.pattern
            raise row.error("site", f"invalid site '{site}' (expected {want})")
        if raw["split"] not in SPLITS:
            raise row.error("split", f"invalid split '{raw['split']}' (expected train, val or test)")
        flag = raw["simulate_from_images"].lower()
        if flag not in _TRUE + _FALSE:
            raise row.error("simulate_from_images", f"'{raw['simulate_from_images']}' is not true/false")

        rec = {"subject": subject, "site": site, "split": raw["split"],
               "simulate_from_images": flag in _TRUE}
        for col in PATH_COLUMNS:
            value = raw[col]
            if value == "" and col in REQUIRED_COLUMNS:
                raise row.error(col, "empty, but a file is required")
            rec[col] = _resolve(row, col, value, base, roots) if value else None
        rec["lc_pet"] = format_lc_pet(_parse_lc_pet(row, raw["lc_pet"], base, roots)) or None
        rec["weight_kg"] = _number(row, "weight_kg", raw["weight_kg"])
        rec["injected_mbq"] = _number(row, "injected_mbq", raw["injected_mbq"])

        given = {"lc_pet": rec["lc_pet"] is not None, "listmode": rec["listmode"] is not None,
                 "simulate_from_images": rec["simulate_from_images"]}
        sources = [name for name, yes in given.items() if yes]
        if len(sources) != 1:
            raise row.error("lc_pet", "give exactly one low-count source: lc_pet, listmode or "
                                      f"simulate_from_images=true (found {', '.join(sources) or 'none'})")
        if rec["listmode"] is not None:
            for col in ("weight_kg", "injected_mbq"):
                if math.isnan(rec[col]):
                    raise row.error(col, "required when listmode is given (needed for SUV)")
        records.append(rec)
    # object columns keep None for empty paths (pandas would otherwise infer str with NaN)
    df = pd.DataFrame(records, columns=list(COLUMNS), dtype=object)
    return df.astype({"weight_kg": float, "injected_mbq": float, "simulate_from_images": bool})


def format_lc_pet(levels: dict[str, str]) -> str:
    return ";".join(f"{k}={v}" for k, v in levels.items())


def lc_pet_images(value) -> dict[str, str]:
    """Level -> path from a normalised lc_pet cell (None, NaN or "" give {})."""
    if not _given(value):
        return {}
    return dict(item.split("=", 1) for item in str(value).split(";") if item)


def write_manifest(df: pd.DataFrame, path) -> Path:
    """Write a manifest in the format ``read_manifest`` reads (atomically)."""
    lines = ["\t".join(COLUMNS)]
    for rec in df.to_dict("records"):
        cells = []
        for col in COLUMNS:
            v = rec.get(col)
            if col == "simulate_from_images":
                v = "true" if bool(v) else "false"
            elif not _given(v):
                v = ""
            v = str(v)
            if "\t" in v or "\n" in v:
                raise InputError(path, f"subject {rec.get('subject')}: column {col} holds a tab or newline")
            cells.append(v)
        lines.append("\t".join(cells))
    path = Path(path)
    write_text(path, "\n".join(lines) + "\n")
    return path


def validate_subject_images(row) -> None:
    """Read every image of a manifest row and check values and grids against hc_pet.

    Raises InputError naming the image; warns (does not fail) for an all-zero lesion mask,
    which is legal for lesion-free subjects (e.g. autoPET negative controls).
    """
    hc = read_volume(row["hc_pet"], kind="suv")
    for p in lc_pet_images(row.get("lc_pet")).values():
        check_same_grid(hc, read_volume(p, kind="suv"))
    check_same_grid(hc, read_volume(row["ct"], kind="ct"))

    lesion = read_volume(row["lesion"], kind="labels")
    check_same_grid(hc, lesion)
    values = np.unique(lesion.data)
    if not set(values.tolist()) <= {0, 1}:
        raise InputError(lesion.path, f"lesion mask must be binary 0/1, found values {values.tolist()[:10]}")
    if values.max(initial=0) == 0:
        warnings.warn(f"{lesion.path}: lesion mask is empty (lesion-free subject)", stacklevel=2)

    if _given(row.get("organs")):
        load_provided_labels(row["organs"], hc)


def _given(value) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value)) and value != ""
