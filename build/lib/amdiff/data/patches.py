"""Adaptive patch sampling for training, and the sliding-window grid for inference.

Paper Sec. 3.2: 128^3 patches, adaptive sampling (Xia et al. 2024) balancing lesion-present
and lesion-absent patches. Lesions occupy well under 1 % of a whole-body PET, so uniform
sampling would show the networks almost no lesion voxels. Here a fixed fraction of each
epoch's patches (``lesion_fraction``, default 0.5) is centred on a lesion voxel; the rest are
centred on body voxels whose patch holds no lesion voxel.

- Lesion-present: pick a case with lesions, then one of its lesions (26-connected components)
  uniformly, then a voxel of that lesion uniformly: a 0.1 mL lesion is drawn as often as a
  100 mL one, instead of 1000x less often as with voxel-uniform sampling.
- Lesion-absent: pick any case, then a body voxel (SUV of the high-count image above a small
  threshold, or an organ label > 0) uniformly; retry up to ``max_tries`` times until the
  patch holds no lesion voxel, then accept the last body patch and flag it as a fallback.

Patch geometry: a patch of size p around centre c covers [c - p//2, c - p//2 + p) per axis;
voxels outside the volume read as 0 (SUV and labels). The plan of an epoch (case, centre)
is drawn from numpy's Generator seeded by (seed, epoch), so a resumed training run sees the
same patches.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

from amdiff.errors import InputError

BODY_SUV_THRESHOLD = 0.1  # g/mL; air in a high-count image is ~0, lung tissue ~0.3-0.6
_BLOCK_BYTES = 512        # body-mask bits are counted per block of 4096 voxels


def _size3(size, name: str) -> tuple[int, int, int]:
    size = (int(size),) * 3 if np.isscalar(size) else tuple(int(s) for s in size)
    if len(size) != 3 or min(size) < 1:
        raise ValueError(f"{name} must be a positive int or 3 positive ints, got {size}")
    return size


def cut_patch(array, start, size) -> np.ndarray:
    """``array[start : start + size]`` per axis, zero-padded where the box leaves the volume.

    Works on numpy arrays and on ``LazyVolume`` (only the in-volume box is read).
    """
    size = _size3(size, "patch size")
    start = np.asarray(start, dtype=np.int64)
    shape = np.asarray(array.shape[:3], dtype=np.int64)
    lo = np.clip(start, 0, shape)
    hi = np.clip(start + size, 0, shape)
    box = np.asarray(array[tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))])
    pad = [(int(a - s), int(s + n - b)) for s, a, b, n in zip(start, lo, hi, size)]
    if any(p != (0, 0) for p in pad):
        box = np.pad(box, pad, mode="constant", constant_values=0)
    return box


def grid_patches(shape, patch_size, stride) -> np.ndarray:
    """Start indices (N, 3) of a sliding-window grid covering a volume of ``shape``.

    Per axis: 0, stride, 2*stride, ... and a last window flush with the border (start
    n - p); an axis shorter than the patch gets the single start 0 (the window is padded).
    """
    shape = _size3(shape, "shape")
    patch = _size3(patch_size, "patch_size")
    stride = _size3(stride, "stride")
    if any(s > p for s, p in zip(stride, patch)):
        raise ValueError(f"stride {stride} larger than patch {patch} would leave voxels uncovered")
    axes = []
    for n, p, s in zip(shape, patch, stride):
        starts = list(range(0, max(n - p, 0) + 1, s))
        if starts[-1] + p < n:
            starts.append(n - p)
        axes.append(starts)
    grid = np.meshgrid(*axes, indexing="ij")
    return np.stack([g.ravel() for g in grid], axis=1).astype(np.int64)


class _BodyIndex:
    """Uniform draws of body voxels from a bit-packed mask (1 bit per voxel).

    A flat list of body indices would cost 8 bytes per voxel (~170 MB per paper-size subject);
    packed bits plus per-block counts cost ~1/8 byte per voxel.
    """

    def __init__(self, mask: np.ndarray):
        flat = np.ascontiguousarray(mask, dtype=bool).ravel()
        self.packed = np.packbits(flat)
        block = _BLOCK_BYTES * 8
        padded = np.zeros(-(-flat.size // block) * block, dtype=bool)
        padded[: flat.size] = flat
        counts = padded.reshape(-1, block).sum(axis=1)
        self.cumulative = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

    @property
    def count(self) -> int:
        return int(self.cumulative[-1])

    def flat_index(self, k: int) -> int:
        """Flat index of the k-th body voxel (0 <= k < count), in C order."""
        b = int(np.searchsorted(self.cumulative, k, side="right")) - 1
        bits = np.unpackbits(self.packed[b * _BLOCK_BYTES:(b + 1) * _BLOCK_BYTES])
        return b * _BLOCK_BYTES * 8 + int(np.flatnonzero(bits)[k - self.cumulative[b]])


class SubjectIndex:
    """What sampling needs of one subject: lesion voxels by lesion, and the body mask."""

    def __init__(self, lesion: np.ndarray, hc: np.ndarray, organs: np.ndarray,
                 body_threshold: float = BODY_SUV_THRESHOLD):
        self.shape = tuple(lesion.shape)
        labels, n = ndimage.label(lesion > 0, structure=np.ones((3, 3, 3), bool))
        flat = np.flatnonzero(labels)
        ids = labels.ravel()[flat]
        order = np.argsort(ids, kind="stable")
        # voxel coordinates grouped by lesion; lesion j owns rows offsets[j]:offsets[j+1]
        self.lesion_voxels = np.stack(np.unravel_index(flat[order], self.shape), axis=1).astype(np.int32)
        self.offsets = np.concatenate([[0], np.cumsum(np.bincount(ids, minlength=n + 1)[1:])])
        self.n_lesions = int(n)
        self.body = _BodyIndex((hc > body_threshold) | (organs > 0))

    def lesion_voxel(self, rng: np.random.Generator) -> np.ndarray:
        j = int(rng.integers(self.n_lesions))
        return self.lesion_voxels[int(rng.integers(self.offsets[j], self.offsets[j + 1]))]

    def body_voxel(self, rng: np.random.Generator) -> np.ndarray:
        k = int(rng.integers(self.body.count))
        return np.array(np.unravel_index(self.body.flat_index(k), self.shape), dtype=np.int64)

    def box_has_lesion(self, start, size) -> bool:
        if self.n_lesions == 0:
            return False
        start = np.asarray(start)
        inside = (self.lesion_voxels >= start) & (self.lesion_voxels < start + np.asarray(size))
        return bool(inside.all(axis=1).any())


@dataclass(frozen=True)
class PatchSpec:
    """One planned patch: case index, centre voxel, what was asked for, and whether the
    lesion-absent draw gave up (``fallback``: the patch may hold lesion voxels)."""

    case: int
    centre: tuple[int, int, int]
    lesion_target: bool
    fallback: bool = False


class PatchSampler:
    """Lesion-balanced random patches from a list of ``Case`` (see module docstring).

    Each patch is a dict of tensors: "lc", "hc" float32 SUV (1, X, Y, Z); "lesion" and
    "organs" int64 (X, Y, Z), the class-index layout of ``torch.nn.functional.cross_entropy``;
    "case" (index into ``cases``), "centre" (3,), "has_lesion" (bool: the lesion patch has a
    lesion voxel). Tensors are on the CPU; move batches to the training device.
    """

    def __init__(self, cases, patch_size, lesion_fraction: float = 0.5, seed: int = 0,
                 max_tries: int = 20, body_threshold: float = BODY_SUV_THRESHOLD):
        if not cases:
            raise ValueError("PatchSampler needs at least one case")
        if not 0.0 <= lesion_fraction <= 1.0:
            raise ValueError(f"lesion_fraction must lie in [0, 1], got {lesion_fraction}")
        if max_tries < 1:
            raise ValueError(f"max_tries must be >= 1, got {max_tries}")
        self.cases = list(cases)
        self.patch_size = _size3(patch_size, "patch_size")
        self.lesion_fraction = float(lesion_fraction)
        self.seed = int(seed)
        self.max_tries = int(max_tries)
        # one index per subject: its count levels share hc, lesion and organs
        by_subject: dict[str, SubjectIndex] = {}
        self.indices = []
        for case in self.cases:
            key = (case.site, case.subject)
            if key not in by_subject:
                idx = SubjectIndex(np.asarray(case.lesion), np.asarray(case.hc),
                                   np.asarray(case.organs), body_threshold)
                if idx.body.count == 0:
                    raise InputError(case.paths.get("hc", case.subject),
                                     f"no body voxels (SUV > {body_threshold} or organ label > 0)")
                by_subject[key] = idx
            self.indices.append(by_subject[key])
        self.lesion_cases = [i for i, idx in enumerate(self.indices) if idx.n_lesions > 0]
        if self.lesion_fraction > 0 and not self.lesion_cases:
            warnings.warn("no case has lesion voxels: every patch will be lesion-absent", stacklevel=2)

    def _start(self, centre) -> np.ndarray:
        return np.asarray(centre, dtype=np.int64) - np.asarray(self.patch_size) // 2

    def plan(self, n_patches: int, epoch_index: int) -> list[PatchSpec]:
        """The patches of one epoch, a pure function of (seed, epoch_index, cases)."""
        rng = np.random.default_rng([self.seed, int(epoch_index)])
        n_lesion = int(round(n_patches * self.lesion_fraction)) if self.lesion_cases else 0
        targets = np.zeros(n_patches, dtype=bool)
        targets[:n_lesion] = True
        targets = rng.permutation(targets)  # lesion patches spread through the epoch
        specs = []
        for want_lesion in targets:
            if want_lesion:
                c = self.lesion_cases[int(rng.integers(len(self.lesion_cases)))]
                centre, fallback = self.indices[c].lesion_voxel(rng), False
            else:
                c = int(rng.integers(len(self.cases)))
                centre, fallback = self._absent_centre(self.indices[c], rng)
            specs.append(PatchSpec(c, tuple(int(v) for v in centre), bool(want_lesion), fallback))
        return specs

    def _absent_centre(self, idx: SubjectIndex, rng) -> tuple[np.ndarray, bool]:
        for _ in range(self.max_tries):
            centre = idx.body_voxel(rng)
            if not idx.box_has_lesion(self._start(centre), self.patch_size):
                return centre, False
        return centre, True  # lesions everywhere nearby: keep the last body patch, flagged

    def patch(self, spec: PatchSpec) -> dict[str, torch.Tensor]:
        case = self.cases[spec.case]
        start, size = self._start(spec.centre), self.patch_size
        lesion = cut_patch(case.lesion, start, size)
        return {
            "lc": torch.from_numpy(cut_patch(case.lc, start, size).astype(np.float32))[None],
            "hc": torch.from_numpy(cut_patch(case.hc, start, size).astype(np.float32))[None],
            "lesion": torch.from_numpy(lesion.astype(np.int64)),
            "organs": torch.from_numpy(cut_patch(case.organs, start, size).astype(np.int64)),
            "case": torch.tensor(spec.case, dtype=torch.int64),
            "centre": torch.tensor(spec.centre, dtype=torch.int64),
            "has_lesion": torch.tensor(bool(lesion.any())),
        }

    def epoch(self, n_patches: int, epoch_index: int) -> list[dict[str, torch.Tensor]]:
        """All patches of one epoch (deterministic per (seed, epoch_index))."""
        return [self.patch(s) for s in self.plan(n_patches, epoch_index)]


def plan_summary(specs: list[PatchSpec]) -> dict[str, int]:
    """Counts of a plan: patches, lesion-targeted, lesion-absent fallbacks."""
    return {"patches": len(specs), "lesion_target": sum(s.lesion_target for s in specs),
            "fallback": sum(s.fallback for s in specs)}


class PatchDataset(torch.utils.data.Dataset):
    """One epoch's plan as a map-style Dataset; patches are cut when indexed.

    The plan is drawn in the main process, so DataLoader workers and shuffling cannot change
    which patches an epoch holds. Call ``set_epoch`` before each epoch.
    """

    def __init__(self, sampler: PatchSampler, n_patches: int, epoch_index: int = 0):
        self.sampler, self.n_patches = sampler, int(n_patches)
        self.set_epoch(epoch_index)

    def set_epoch(self, epoch_index: int) -> None:
        self.epoch_index = int(epoch_index)
        self.specs = self.sampler.plan(self.n_patches, self.epoch_index)

    def __len__(self) -> int:
        return len(self.specs)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.sampler.patch(self.specs[i])


def collate(batch: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack patch dicts into a batch: images (B, 1, X, Y, Z), labels (B, X, Y, Z), ..."""
    if not batch:
        raise ValueError("cannot collate an empty batch")
    keys = batch[0].keys()
    if any(b.keys() != keys for b in batch):
        raise ValueError("patch dicts in one batch have different keys")
    return {k: torch.stack([b[k] for b in batch]) for k in keys}
