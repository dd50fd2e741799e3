"""Checkpoints: atomic writes, ``weights_only=True`` loading, the config recorded inside.

A checkpoint is a dict of tensors and plain Python values (state dicts, epoch, scores, the
config and history), so ``torch.load(..., weights_only=True)`` can read it; a file that needs
arbitrary unpickling (tampered or foreign) is refused with one line.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch

from amdiff.errors import InputError
from amdiff.io.atomic import atomic_path


def save_checkpoint(path, payload: dict) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def load_checkpoint(path, map_location="cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "checkpoint does not exist")
    if not zipfile.is_zipfile(path):
        raise InputError(path, "not a readable checkpoint (not a torch zip archive)")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise InputError(path, "refused: it holds objects other than tensors and plain values "
                               "(weights_only loading; tampered or foreign file)") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as exc:
        raise InputError(path, f"not a readable checkpoint ({type(exc).__name__})") from None
    if not isinstance(payload, dict) or "model" not in payload:
        raise InputError(path, "not an amdiff checkpoint (no 'model' state dict)")
    return payload
