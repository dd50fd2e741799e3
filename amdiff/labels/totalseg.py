"""Organ labels from CT with TotalSegmentator, mapped to the 7 organ classes of the paper.

Classes (DESIGN.md): 0 background, 1 liver, 2 lung, 3 bone, 4 muscle, 5 kidney, 6 spleen, 7 aorta.

The mapping is built from the installed TotalSegmentator's own ``class_map["total"]`` by name
patterns, and each pattern must match exactly the number of structures we expect, so a version
that renamed or dropped a structure fails loudly instead of silently losing an organ.

Decisions (documented, tested):
- bone = all vertebrae (C1..S1), the 24 ribs, sacrum, sternum, skull and the paired humerus,
  scapula, clavicula, femur and hip bones. ``costal_cartilages`` are NOT bone: hyaline cartilage
  has soft-tissue attenuation and no marrow, so its FDG uptake is not bone-like.
- kidney = ``kidney_left``/``kidney_right`` only. TotalSegmentator v2 labels renal cysts as
  separate classes (``kidney_cyst_*``); cysts are photopenic on FDG PET and stay background.
- muscle = autochthon, iliopsoas and gluteus maximus/medius/minimus (left and right): the
  skeletal muscles the "total" task segments.
- Every other TotalSegmentator class, and any label id without a name, maps to background.
"""

from __future__ import annotations

import contextlib
import re
import xml.etree.ElementTree as ET
from functools import lru_cache
from pathlib import Path

import nibabel as nib
import numpy as np

from amdiff.contracts import ORGAN_CLASSES
from amdiff.errors import InputError
from amdiff.io.nifti import Volume, check_same_grid, read_volume, write_volume

TS_TASK = "total"

# (organ id, full-match pattern on TotalSegmentator names, number of structures it must match)
_RULES: tuple[tuple[int, str, int], ...] = (
    (1, r"liver", 1),
    (2, r"lung_(upper|middle|lower)_lobe_(left|right)", 5),
    (3, r"vertebrae_(C[1-7]|T([1-9]|1[0-2])|L[1-5]|S1)", 25),
    (3, r"rib_(left|right)_([1-9]|1[0-2])", 24),
    (3, r"sacrum|sternum|skull", 3),
    (3, r"(humerus|scapula|clavicula|femur|hip)_(left|right)", 10),
    (4, r"(autochthon|iliopsoas|gluteus_(maximus|medius|minimus))_(left|right)", 10),
    (5, r"kidney_(left|right)", 2),
    (6, r"spleen", 1),
    (7, r"aorta", 1),
)


def _installed_version() -> str:
    try:
        from importlib.metadata import version
        return version("TotalSegmentator")
    except Exception:  # pragma: no cover - metadata missing only in broken installs
        return "unknown"


def _ts_class_map() -> dict[int, str]:
    from totalsegmentator.map_to_binary import class_map
    return dict(class_map[TS_TASK])


def build_mapping(ts_names) -> dict[str, int]:
    """Map TotalSegmentator structure names to organ ids using ``_RULES``.

    Raises InputError when a rule does not match exactly its expected number of names.
    """
    ts_names = list(ts_names)
    mapping: dict[str, int] = {}
    for organ, pattern, expected in _RULES:
        matched = [n for n in ts_names if re.fullmatch(pattern, n)]
        if len(matched) != expected:
            raise InputError(
                f"TotalSegmentator {_installed_version()} class_map['{TS_TASK}']",
                f"pattern '{pattern}' for {ORGAN_CLASSES[organ]} matched {len(matched)} structures "
                f"({', '.join(matched) or 'none'}), expected {expected}; this version is not supported")
        for name in matched:
            if name in mapping:  # rules are disjoint by construction; guard against edits
                raise InputError("amdiff.labels.totalseg", f"structure {name} matched by two rules")
            mapping[name] = organ
    return mapping


@lru_cache(maxsize=1)
def _cached_mapping() -> tuple[tuple[str, int], ...]:
    return tuple(build_mapping(_ts_class_map().values()).items())


def organ_mapping() -> dict[str, int]:
    """TotalSegmentator "total" structure name -> organ id (1..7), for the installed version."""
    return dict(_cached_mapping())


def roi_subset() -> list[str]:
    """The TotalSegmentator structures we need, in the installed class-map order."""
    mapping = organ_mapping()
    return [name for name in _ts_class_map().values() if name in mapping]


def map_multilabel(ts_labels: np.ndarray, id_to_name: dict[int, str]) -> np.ndarray:
    """Convert a TotalSegmentator multilabel array to organ ids (uint8, 0 = background).

    Ids absent from ``id_to_name`` and names outside the organ mapping become background.
    """
    labels = np.asarray(ts_labels)
    if not np.issubdtype(labels.dtype, np.integer):
        if not np.all(np.isfinite(labels)) or np.any(labels != np.round(labels)):
            raise ValueError("TotalSegmentator labels must be integers")
    labels = labels.astype(np.int64)
    if labels.size and labels.min() < 0:
        raise ValueError("TotalSegmentator labels must be non-negative")
    mapping = organ_mapping()
    top = max([int(labels.max()) if labels.size else 0, *(int(k) for k in id_to_name)], default=0)
    lut = np.zeros(top + 1, dtype=np.uint8)  # lookup table: TotalSegmentator id -> organ id
    for ts_id, name in id_to_name.items():
        if int(ts_id) > 0:
            lut[int(ts_id)] = mapping.get(name, 0)
    return lut[labels]


def label_table_from_header(img: nib.Nifti1Image) -> dict[int, str] | None:
    """Read the id -> name table TotalSegmentator stores in a NIfTI header extension."""
    for ext in img.header.extensions:
        try:
            root = ET.fromstring(ext.get_content().decode("utf-8").strip())
        except (ET.ParseError, UnicodeDecodeError, AttributeError):
            continue
        table = {int(el.get("Key")): (el.text or "").strip() for el in root.iter("Label")}
        if table:
            return table
    return None


# --- weights -------------------------------------------------------------------------------

def required_weight_tasks(fast: bool) -> list[int]:
    """TotalSegmentator model ids that a roi_subset run of the "total" task loads.

    Taken from TotalSegmentator's own download table: the 3 mm (fast) or the five 1.5 mm part
    models, plus the 6 mm model that python_api uses to crop around the roi_subset.
    """
    from totalsegmentator.bin.totalseg_download_weights import TASK_TO_ID
    return list(TASK_TO_ID["total_fast" if fast else "total"])


def missing_weights(fast: bool) -> tuple[Path, list[str]]:
    """Weights folder TotalSegmentator would use and the model folders missing from it."""
    from totalsegmentator.config import get_weights_dir
    from totalsegmentator.map_tasks_config import TASK_ID_WEIGHTS_CONFIGS

    weights_dir = Path(get_weights_dir())
    missing = []
    for task_id in required_weight_tasks(fast):
        info = TASK_ID_WEIGHTS_CONFIGS[task_id]
        folder = weights_dir / Path(info.get("rel_path") or "") / info["foldername"]
        # A folder without a trained checkpoint is an interrupted download.
        if not folder.is_dir() or not any(folder.rglob("checkpoint_final.pth")):
            missing.append(info["foldername"])
    return weights_dir, missing


def check_weights(fast: bool) -> None:
    """Fail before TotalSegmentator tries to download (these machines are offline)."""
    weights_dir, missing = missing_weights(fast)
    if missing:
        task = "total_fast" if fast else "total"
        raise InputError(
            weights_dir,
            f"TotalSegmentator weights missing ({', '.join(missing)}); on a machine with internet run "
            f"`totalseg_download_weights -t {task}` and copy its ~/.totalsegmentator folder here, or set "
            f"TOTALSEG_HOME_DIR (or TOTALSEG_WEIGHTS_PATH) to a folder holding them. The '{TS_TASK}' "
            f"weights are open (no licence key needed; cite TotalSegmentator, Radiol AI 2023)")


# --- running -------------------------------------------------------------------------------

@contextlib.contextmanager
def _no_usage_stats():
    """TotalSegmentator posts usage statistics after each run; patient data pipelines and
    offline machines should not, so the call is replaced by a no-op for the duration."""
    import totalsegmentator.python_api as api
    original = api.send_usage_stats
    api.send_usage_stats = lambda *args, **kwargs: None
    try:
        yield
    finally:
        api.send_usage_stats = original


@contextlib.contextmanager
def _workers_from_a_fork_server():
    """nnU-Net (2.8) starts a worker pool with the platform's default start method, fork on Linux.
    A child forked from a process whose torch thread pool is running can deadlock on a lock it
    inherited held (seen: a labels job hanging in futex_wait). For the duration of the call,
    workers start from a fresh fork server instead, which preloads nnU-Net's worker module so
    each worker starts at the cost of a fork. The start method is restored afterwards; the
    fork server's preload list stays set (it only matters to a later fork server)."""
    import multiprocessing

    before = multiprocessing.get_start_method(allow_none=True)
    multiprocessing.set_forkserver_preload(["nnunetv2.utilities.utils"])
    multiprocessing.set_start_method("forkserver", force=True)
    try:
        yield
    finally:
        multiprocessing.set_start_method(before, force=True)


def _run_totalsegmentator(ct: Volume, fast: bool, device: str) -> nib.Nifti1Image:
    import totalsegmentator.python_api as api

    try:
        api.validate_device_type_api(device)
    except ValueError as exc:
        raise InputError("labels.totalsegmentator.device", str(exc)) from None
    ct_img = nib.Nifti1Image(ct.data.astype(np.float32), ct.affine)
    with _no_usage_stats(), _workers_from_a_fork_server():
        return api.totalsegmentator(ct_img, None, ml=True, fast=fast, roi_subset=roi_subset(),
                                    device=device, task=TS_TASK, quiet=True, skip_saving=True)


def label_ct(ct_path, out_path, fast: bool = True, device: str = "cpu") -> Path:
    """Segment a CT (HU) with TotalSegmentator and write the 7-class organ map (uint8).

    The output has the CT's shape and affine and is written atomically.
    """
    ct = read_volume(ct_path, kind="ct")
    check_weights(fast)
    seg = _run_totalsegmentator(ct, fast=fast, device=device)
    id_to_name = label_table_from_header(seg) or _ts_class_map()
    organs = map_multilabel(np.asanyarray(seg.dataobj), id_to_name)
    seg_volume = Volume(organs, np.asarray(seg.affine, dtype=np.float64), path=f"TotalSegmentator({ct.path})")
    check_same_grid(ct, seg_volume)
    return write_volume(out_path, organs, ct.affine, dtype=np.uint8)
