"""Training cases from a cohort manifest: one ``Case`` per (subject, low-count image).

The paper trains on every count level of a subject, so a subject with levels p005_r0, p010_r0
and p020_r0 gives three cases that share its high-count image, lesion mask and organ map.

Memory: the demo volumes are tiny (72 x 72 x 112 float32 = 2.3 MB) and are read eagerly into
numpy arrays; the subject's hc/lesion/organs arrays are read once and shared by all its cases.
Paper-size volumes are ~300 MB each as float32 (e.g. 440 x 440 x 400 voxels), so a cohort
of 195 subjects x 3 levels cannot sit in memory. For those, ``lazy=True`` keeps the file paths:
each image becomes a ``LazyVolume`` that slices nibabel's ``dataobj`` (ArrayProxy), so reading a
patch reads only the bytes of that patch and never the whole volume. On uncompressed ``.nii``
this is a cheap seek per row; on ``.nii.gz`` nibabel must decompress the stream up to the patch
(O(file) time, O(patch) memory) unless the ``indexed_gzip`` package is installed, so store
paper-size training data uncompressed or install indexed_gzip. Header-only checks (3D, shape,
affine) happen at load time; value checks (finite SUV, label range) happen on every slice read.
"""

from __future__ import annotations

import hashlib
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from amdiff.contracts import SPLITS
from amdiff.errors import InputError
from amdiff.io.manifest import lc_pet_images, read_manifest
from amdiff.io.nifti import Volume, check_same_grid, open_image, read_volume
from amdiff.levels import parse_image_name

N_ORGAN_LABELS = 7  # organ labels 1..7 (liver, lung, bone, muscle, kidney, spleen, aorta)
_MAX_LABEL = {"lesion": 1, "organs": N_ORGAN_LABELS}


def check_values(data: np.ndarray, path, kind: str) -> np.ndarray:
    """Value checks of one image (or a slice of it); returns the data in its contract dtype.

    kind: "suv" (float32, finite, not below -1 as in read_volume), "lesion" (uint8 0/1),
    "organs" (uint8 0..7).
    """
    if kind == "suv":
        data = np.asarray(data, dtype=np.float32)
        bad = ~np.isfinite(data)
        if bad.any():
            raise InputError(path, f"{int(bad.sum())} voxels are NaN or Inf")
        if data.size and data.min() < -1.0:
            raise InputError(path, f"negative SUV down to {data.min():.3g}; is this image in SUV?")
        return data
    if kind not in _MAX_LABEL:
        raise ValueError(f"unknown image kind {kind!r}")
    if not np.issubdtype(np.asarray(data).dtype, np.integer):
        data = np.asarray(data)
        if not np.all(np.isfinite(data)) or np.any(data != np.round(data)):
            raise InputError(path, f"{kind} map holds non-integer values")
    top = _MAX_LABEL[kind]
    if data.size and (data.min() < 0 or data.max() > top):
        raise InputError(path, f"{kind} values must lie in 0..{top}, found {data.min()}..{data.max()}")
    return np.asarray(data).astype(np.uint8)


class LazyVolume:
    """A NIfTI image read on demand: ``vol[slices]`` reads and checks only that box.

    Array-like enough for the patch cutter (``shape``, ``ndim``, ``__getitem__``) and for
    ``np.asarray`` (reads everything; used once per subject to build sampling indices).
    Pickles as its path, so DataLoader workers open their own file handles.
    """

    def __init__(self, path, kind: str):
        self.path, self.kind = str(path), kind
        self._proxy = None
        img = self._image()
        shape = tuple(int(s) for s in img.shape)
        if len(shape) == 4 and shape[3] == 1:
            shape = shape[:3]
        if len(shape) != 3:
            raise InputError(self.path, f"expected a 3D image, got shape {shape}")
        self.shape = shape
        self.affine = np.asarray(img.affine, dtype=np.float64)
        if not np.all(np.isfinite(self.affine)) or abs(np.linalg.det(self.affine[:3, :3])) < 1e-9:
            raise InputError(self.path, "affine is singular or not finite")

    ndim = 3

    def _image(self):
        img = open_image(self.path)   # header checks: file type, empty axes, declared size
        self._proxy = img.dataobj
        self._four_d = len(img.shape) == 4
        return img

    def __getitem__(self, index) -> np.ndarray:
        if self._proxy is None:
            self._image()
        if not isinstance(index, tuple):
            index = (index,)
        if self._four_d:
            index = tuple(index) + (slice(None),) * (3 - len(index)) + (0,)
        try:
            data = self._proxy[index]
        except (OSError, EOFError, ValueError, zlib.error) as exc:
            raise InputError(self.path, f"cannot read image data ({type(exc).__name__}: {exc})") from None
        return check_values(data, self.path, self.kind)

    def __array__(self, dtype=None, copy=None):
        data = self[...]
        return data if dtype is None else data.astype(dtype)

    def __getstate__(self):
        return {"path": self.path, "kind": self.kind, "shape": self.shape, "affine": self.affine,
                "_proxy": None, "_four_d": getattr(self, "_four_d", False)}

    def __repr__(self) -> str:
        return f"LazyVolume({self.path!r}, kind={self.kind!r}, shape={self.shape})"


@dataclass(eq=False)
class Case:
    """One training pair: a low-count image with its subject's references and labels.

    Arrays are numpy (eager) or ``LazyVolume`` (lazy); both slice to numpy:
    hc, lc in SUV (g/mL, float32), lesion binary uint8, organs uint8 0..7; affine RAS+ mm.
    """

    subject: str
    site: str
    split: str
    level: str          # low-count image name with realization, e.g. "p005_r0"
    percent: float      # percent of the full count, e.g. 5.0
    realization: int
    hc: object
    lc: object
    lesion: object
    organs: object
    affine: np.ndarray
    paths: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.hc.shape)

    @property
    def name(self) -> str:
        return f"{self.subject}/{self.level}"


def _select_levels(images: dict[str, str], levels) -> dict[str, str]:
    """Low-count images of a subject that the ``levels`` filter keeps (canonical _rN names).

    A bare name ("p005") or a number (5) keeps every realization of that percent; a name with
    a realization ("p005_r1") keeps exactly that image.
    """
    named = {(k if "_r" in k else f"{k}_r0"): v for k, v in images.items()}
    if levels is None:
        return named
    exact = {str(lv) for lv in levels if isinstance(lv, str) and "_r" in lv}
    percents = set()
    for lv in levels:
        if isinstance(lv, str) and "_r" not in lv:
            percents.add(parse_image_name(lv)[0])
        elif not isinstance(lv, str):
            percents.add(float(lv))
    return {k: v for k, v in named.items()
            if k in exact or any(np.isclose(parse_image_name(k)[0], p) for p in percents)}


def _subject_images(row, lazy: bool) -> dict[str, object]:
    """hc, lesion and organs of one subject, grid-checked against hc (read once per subject)."""
    if lazy:
        hc = LazyVolume(row["hc_pet"], "suv")
        vols = {"hc": Volume(hc, hc.affine, hc.path)}
        for key, col in (("lesion", "lesion"), ("organs", "organs")):
            lv = LazyVolume(row[col], key)
            vols[key] = Volume(lv, lv.affine, lv.path)
    else:
        vols = {"hc": read_volume(row["hc_pet"], kind="suv")}
        for key, col in (("lesion", "lesion"), ("organs", "organs")):
            v = read_volume(row[col], kind="labels")
            vols[key] = Volume(check_values(v.data, v.path, key), v.affine, v.path)
    check_same_grid(vols["hc"], vols["lesion"])
    check_same_grid(vols["hc"], vols["organs"])
    return vols


def content_sha256(cases: list[Case]) -> str:
    """sha256 (hex) of what training reads: each case's subject, split, level and the bytes of its
    hc, lc, lesion and organs arrays. Regenerated images under the same manifest paths change it;
    a copied or moved cohort does not. A lazy volume (paper-size data, not read up front) enters
    by its path, size and modification time instead of its voxels."""
    digest = hashlib.sha256()
    for case in cases:
        digest.update(f"{case.subject}|{case.split}|{case.level}".encode())
        for array in (case.hc, case.lc, case.lesion, case.organs):
            if isinstance(array, LazyVolume):
                stat = Path(array.path).stat()
                digest.update(f"{array.path}|{stat.st_size}|{stat.st_mtime_ns}".encode())
            else:
                array = np.ascontiguousarray(array)
                digest.update(f"{array.dtype}{array.shape}".encode())
                digest.update(array.data)
    return digest.hexdigest()


def load_cases(manifest_path, split: str, sites=None, levels=None, lazy: bool = False) -> list[Case]:
    """Cases of one split: one per (subject, low-count image), in manifest then level order.

    ``sites``: site names to keep (None = all). ``levels``: level names or percents to keep
    (None = all). Every kept subject needs ``lc_pet`` and ``organs``; images must share the
    high-count image's grid. Raises InputError when nothing matches.
    """
    manifest_path = Path(manifest_path)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    df = read_manifest(manifest_path, data_roots=[str(manifest_path.absolute().parent)])
    site_set = None if sites is None else {str(s) for s in sites}
    cases: list[Case] = []
    for row in df.to_dict("records"):
        if row["split"] != split or (site_set is not None and row["site"] not in site_set):
            continue
        where = f"subject '{row['subject']}'"
        if not lc_pet_images(row["lc_pet"]):
            raise InputError(manifest_path, f"{where}: no lc_pet images (use the workflow's "
                                            "results/manifest.tsv, which lists them)")
        if row["organs"] is None:
            raise InputError(manifest_path, f"{where}: no organs map; training needs organ labels")
        try:
            chosen = _select_levels(lc_pet_images(row["lc_pet"]), levels)
        except ValueError as exc:
            raise ValueError(f"levels filter: {exc}") from None
        if not chosen:
            continue
        vols = _subject_images(row, lazy)  # once per subject, shared by its cases
        for name in sorted(chosen, key=lambda n: parse_image_name(n)):
            path = chosen[name]
            if lazy:
                lv = LazyVolume(path, "suv")
                lc = Volume(lv, lv.affine, lv.path)
            else:
                lc = read_volume(path, kind="suv")
            check_same_grid(vols["hc"], lc)
            percent, realization = parse_image_name(name)
            cases.append(Case(subject=row["subject"], site=row["site"], split=split, level=name,
                              percent=percent, realization=realization, hc=vols["hc"].data,
                              lc=lc.data, lesion=vols["lesion"].data, organs=vols["organs"].data,
                              affine=vols["hc"].affine,
                              paths={"hc": row["hc_pet"], "lc": path, "lesion": row["lesion"],
                                     "organs": row["organs"]}))
    if not cases:
        raise InputError(manifest_path, f"no low-count images for split '{split}'"
                                        f" (sites={sorted(site_set) if site_set else 'all'},"
                                        f" levels={list(levels) if levels is not None else 'all'})")
    return cases
