"""NIfTI reading and writing with the checks every stage relies on.

Contract (DESIGN.md): PET in SUV (g/mL), CT in HU, mu-maps in 1/cm, all float32;
label maps uint8. Images of one subject share shape and affine.
"""

from __future__ import annotations

import math
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from amdiff.contracts import N_ORGAN_CLASSES
from amdiff.errors import InputError
from amdiff.io.atomic import atomic_path
from amdiff.io.files import check_input_file

AFFINE_ATOL_MM = 1e-3


def voxel_size_from_affine(affine) -> tuple[float, float, float]:
    """Voxel edge lengths (mm) = column norms of the affine's 3 x 3 part."""
    return tuple(float(v) for v in np.linalg.norm(np.asarray(affine)[:3, :3], axis=0))


@dataclass
class Volume:
    """A 3D array with its voxel-to-world (RAS+, mm) affine."""

    data: np.ndarray
    affine: np.ndarray
    path: str = "<memory>"
    # the file stores integers without a scale factor (slope 1, intercept 0): raw counts,
    # display values or CT numbers whose rescale was lost, never SUV
    stored_integers: bool = False

    @property
    def voxel_size_mm(self) -> tuple[float, float, float]:
        return voxel_size_from_affine(self.affine)

    @property
    def voxel_volume_ml(self) -> float:
        # 1 mL = 1000 mm^3
        return float(abs(np.linalg.det(self.affine[:3, :3]))) / 1000.0


# A float32 image of this many voxels is 8 GB (amdiff.config.MAX_VOXELS, the bound on a site's
# image shape; repeated here so that reading an image never imports the config schema).
MAX_VOXELS = 2_000_000_000
# Deflate cannot compress better than about 1032:1, so a gzip file of n bytes holds at most
# ~1032 n bytes; a header declaring more is corrupt (or the file is cut short).
_DEFLATE_MAX_RATIO = 1032


def open_image(path: str | os.PathLike):
    """Open a NIfTI (or another format nibabel reads) after checking its header; no voxels read.

    Refuses in one line naming the file: a path that is not a regular file, an unreadable
    header, an empty axis, a shape with more than ``MAX_VOXELS`` voxels, and a header that
    declares more voxel data than the file can hold (so that a corrupt 600-byte file declaring
    4000^3 voxels fails at once instead of allocating 256 GB).
    """
    path = check_input_file(path)
    try:
        img = nib.load(str(path))
    except (OSError, EOFError, ValueError, zlib.error, nib.filebasedimages.ImageFileError) as exc:
        detail = " ".join(str(exc).split())   # nibabel's messages may span lines
        raise InputError(path, f"not a readable NIfTI file ({type(exc).__name__}: {detail})") from None
    shape = tuple(int(s) for s in img.shape)
    empty = [axis for axis, n in enumerate(shape) if n == 0]
    if empty:
        axes = ", ".join(map(str, empty))
        raise InputError(path, f"image is empty: axis {axes} of shape {shape} has 0 voxels")
    _check_declared_size(path, img, shape)
    voxels = math.prod(shape)
    if voxels > MAX_VOXELS:
        raise InputError(path, f"header declares shape {shape} = {voxels:.3g} voxels, above the limit "
                               f"of {MAX_VOXELS:.0e}")
    return img


def _check_declared_size(path: Path, img, shape: tuple[int, ...]) -> None:
    """The header's shape and data type against the size of the file holding the voxels."""
    try:
        itemsize = np.dtype(img.get_data_dtype()).itemsize
        offset = int(img.header.get_data_offset())
        data_file = Path(img.file_map["image"].filename)
        have = data_file.stat().st_size
        with open(data_file, "rb") as f:
            gzipped = f.read(2) == b"\x1f\x8b"
    except (AttributeError, KeyError, TypeError, ValueError, OSError):
        return   # a format without these header fields: nibabel's own checks apply
    need = offset + math.prod(shape) * itemsize
    declared = (f"the header declares shape {shape} of {np.dtype(img.get_data_dtype()).name} "
                f"({_size(need)} with the header)")
    if gzipped and need > have * _DEFLATE_MAX_RATIO + 1024:
        raise InputError(path, f"corrupt or truncated: {declared}, more than a gzip file of "
                               f"{_size(have)} can hold")
    if not gzipped and data_file.suffix not in (".bz2", ".zst") and need > have:
        raise InputError(path, f"truncated: {declared}, but the file holds {_size(have)}")


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} bytes"


def read_volume(path: str | os.PathLike, kind: str = "image") -> Volume:
    """Read a 3D NIfTI, failing with one line that names the file and the problem.

    The header is checked first (``open_image``). ``kind`` selects the value checks: "suv"
    (finite, not markedly negative), "ct" / "mumap" / "image" (finite), "labels" (non-negative
    integers < 256).
    """
    path = Path(path)
    img = open_image(path)
    shape = tuple(int(s) for s in img.shape)
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise InputError(path, f"expected a 3D image, got shape {shape}")
    slope, inter = getattr(img.dataobj, "slope", 1.0), getattr(img.dataobj, "inter", 0.0)
    stored_integers = bool(np.issubdtype(img.get_data_dtype(), np.integer) and slope == 1 and inter == 0)
    try:
        data = np.asanyarray(img.dataobj)
    except (OSError, EOFError, ValueError, zlib.error) as exc:
        detail = " ".join(str(exc).split())
        raise InputError(path, f"not a readable NIfTI file ({type(exc).__name__}: {detail})") from None
    except MemoryError:
        raise InputError(path, f"too large to load: shape {shape} does not fit in memory") from None
    data = data.reshape(shape) if data.size == math.prod(shape) else data
    if data.shape != shape:   # nibabel read fewer voxels than the header declares
        raise InputError(path, f"truncated: the header declares shape {shape}, the file holds "
                               f"{data.size} voxels")
    affine = np.asarray(img.affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise InputError(path, "affine is singular or not finite")
    if kind == "labels":
        if not np.issubdtype(data.dtype, np.integer):
            if not np.all(np.isfinite(data)) or np.any(data != np.round(data)):
                raise InputError(path, "label map holds non-integer values")
        if data.size and (data.min() < 0 or data.max() > 255):
            raise InputError(path, f"label values must lie in 0..255, found {data.min()}..{data.max()}")
        data = data.astype(np.uint8)
    else:
        data = data.astype(np.float32)
        bad = ~np.isfinite(data)
        if bad.any():
            raise InputError(path, f"{int(bad.sum())} voxels are NaN or Inf")
        if kind == "suv" and data.size and data.min() < -1.0:
            # OSEM images are non-negative; FBP-like noise may dip slightly below 0.
            raise InputError(path, f"negative SUV down to {data.min():.3g}; is this image in SUV?")
    return Volume(data=data, affine=affine, path=str(path), stored_integers=stored_integers)


# Plausible values of each kind of image, to catch a wrong unit or a lost rescale before it
# reaches the workflow (import-image, mumap). SUV is g/mL: tumours, bladder and kidneys rarely
# exceed ~100, whereas activity concentrations in Bq/mL reach thousands.
SUV_MAX = 500.0
# A body CT holds air (-1000 HU) around and inside the body, so its minimum lies far below
# water (0 HU); CT numbers stored as HU + 1024 without their rescale intercept start near 0.
CT_MIN_AT_MOST_HU = -100.0
# The extended CT scale ends near 30710 HU (metal); bone is about 1000-3000 HU.
CT_MAX_HU = 31000.0


def check_units(vol: Volume, kind: str) -> None:
    """Refuse values that are implausible for ``kind`` ("suv" or "ct"), saying what looks wrong.

    SUV: stored as float (or scaled integers), maximum positive and below ``SUV_MAX``. CT in
    HU: air present (minimum at most ``CT_MIN_AT_MOST_HU``), maximum below ``CT_MAX_HU``.
    Other kinds are not checked. Raises one-line InputError naming ``vol.path``.
    """
    data = vol.data
    if kind == "suv":
        if vol.stored_integers:
            raise InputError(vol.path, f"stored as integers ({data.min():.4g}..{data.max():.4g}) without a "
                                       "scale factor, but SUV (g/mL) is a float image; is this raw counts, "
                                       "a display image, or an image saved without its scale factor?")
        top = float(data.max())
        if top > SUV_MAX:
            raise InputError(vol.path, f"maximum {top:.4g} is not a plausible SUV (g/mL; SUV rarely exceeds "
                                       f"100, the limit is {SUV_MAX:g}): this looks like activity in Bq/mL; "
                                       "convert it to SUV = activity x weight / injected dose")
        if top <= 0:
            raise InputError(vol.path, f"holds no positive SUV (maximum {top:.4g}): an empty PET image")
    elif kind == "ct":
        low, top = float(data.min()), float(data.max())
        if low > CT_MIN_AT_MOST_HU:
            why = ("these look like CT numbers stored as HU + 1024 (integers) without the rescale "
                   "intercept -1024" if vol.stored_integers else
                   "is it in other units than HU (HU + 1024, or attenuation in 1/cm)?")
            raise InputError(vol.path, f"minimum {low:.4g} HU: no air (about -1000 HU), which a body CT "
                                       f"holds around the body; {why}")
        if top > CT_MAX_HU:
            raise InputError(vol.path, f"maximum {top:.4g} HU is above any CT scale (bone reaches about "
                                       f"3000 HU, metal on the extended scale {CT_MAX_HU:g}); is this "
                                       "image in HU?")


def check_same_grid(a: Volume, b: Volume) -> None:
    """Images of one subject must share shape and affine; name both files if not."""
    if a.data.shape != b.data.shape:
        raise InputError(b.path, f"shape {b.data.shape} differs from {a.path} shape {a.data.shape}")
    if not np.allclose(a.affine, b.affine, atol=AFFINE_ATOL_MM):
        raise InputError(b.path, f"affine differs from {a.path}")


def write_volume(path: str | os.PathLike, data: np.ndarray, affine: np.ndarray,
                 dtype=np.float32) -> Path:
    """Write atomically; float images as float32, label maps as uint8."""
    data = np.asarray(data)
    if data.ndim != 3:
        raise ValueError(f"write_volume expects 3D data, got {data.shape}")
    img = nib.Nifti1Image(data.astype(dtype), np.asarray(affine, dtype=np.float64))
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    path = Path(path)
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
    return path


def centered_affine(shape, voxel_size_mm) -> np.ndarray:
    """RAS+ affine of a grid whose centre is the world origin (the scanner centre)."""
    shape = np.asarray(shape, dtype=float)
    vs = np.asarray(voxel_size_mm, dtype=float)
    affine = np.diag([*vs, 1.0])
    affine[:3, 3] = -(shape - 1) / 2.0 * vs
    return affine


def load_provided_labels(path, reference_volume: Volume) -> Volume:
    """Read a user-supplied organ map: uint8 values 0..7 on the reference image's grid."""
    labels = read_volume(path, kind="labels")
    check_same_grid(reference_volume, labels)
    bad = np.unique(labels.data[labels.data > N_ORGAN_CLASSES])
    if bad.size:
        raise InputError(path, f"organ label values must lie in 0..{N_ORGAN_CLASSES}, found {bad.tolist()}")
    return labels
