"""NIfTI reading and writing with the checks every stage relies on.

Contract (DESIGN.md): PET in SUV (g/mL), CT in HU, mu-maps in 1/cm, all float32;
label maps uint8. Images of one subject share shape and affine.
"""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from amdiff.errors import InputError
from amdiff.io.atomic import atomic_path

AFFINE_ATOL_MM = 1e-3


@dataclass
class Volume:
    """A 3D array with its voxel-to-world (RAS+, mm) affine."""

    data: np.ndarray
    affine: np.ndarray
    path: str = "<memory>"

    @property
    def voxel_size_mm(self) -> tuple[float, float, float]:
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))

    @property
    def voxel_volume_ml(self) -> float:
        # 1 mL = 1000 mm^3
        return float(abs(np.linalg.det(self.affine[:3, :3]))) / 1000.0


def read_volume(path: str | os.PathLike, kind: str = "image") -> Volume:
    """Read a 3D NIfTI, failing with one line that names the file and the problem.

    ``kind`` selects the value checks: "suv" (finite, not markedly negative),
    "ct" / "mumap" / "image" (finite), "labels" (non-negative integers < 256).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file does not exist")
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
    except (OSError, EOFError, ValueError, zlib.error, nib.filebasedimages.ImageFileError) as exc:
        detail = " ".join(str(exc).split())   # nibabel's messages may span lines
        raise InputError(path, f"not a readable NIfTI file ({type(exc).__name__}: {detail})") from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputError(path, f"expected a 3D image, got shape {tuple(data.shape)}")
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
    return Volume(data=data, affine=affine, path=str(path))


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
