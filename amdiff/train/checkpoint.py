"""Checkpoints: atomic writes, ``weights_only=True`` loading, the config recorded inside.

A checkpoint is a dict of tensors and plain Python values (state dicts, epoch, scores, the
config and history), so ``torch.load(..., weights_only=True)`` can read it; a file that needs
arbitrary unpickling (tampered or foreign) is refused with one line. Training checkpoints also
carry a fingerprint (``canonical_sha256`` of the settings that determine the weights; see
amdiff.train.base) so a resumed run can tell whether they were trained with today's settings.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import zipfile
from pathlib import Path

import torch

from amdiff.errors import InputError
from amdiff.io.files import check_input_file
from amdiff.io.atomic import atomic_path


def save_checkpoint(path, payload: dict) -> Path:
    """Write ``payload`` atomically; a failing write (disk full...) raises one-line InputError."""
    path = Path(path)
    with atomic_path(path) as tmp:
        # through a Python file object: a full disk then raises OSError (which atomic_path
        # reports), where torch's own file writer raises a RuntimeError without the reason
        with open(tmp, "wb") as f:
            torch.save(payload, f)
    return path


def load_checkpoint(path, map_location="cpu") -> dict:
    path = Path(path)
    check_input_file(path, "checkpoint")
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


def canonical_sha256(obj) -> str:
    """sha256 (hex) of ``obj`` as canonical JSON: sorted keys, no spaces, so equal settings give
    equal hashes on every run and machine."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def file_sha256(path) -> str:
    """sha256 (hex) of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def few(items, n: int = 3, width: int = 80) -> str:
    """At most ``n`` items (each cut to ``width`` characters) and a count of the rest, for a
    one-line message: ``"a, b, c and 297 more"``."""
    items = [str(i) if len(str(i)) <= width else str(i)[:width - 3] + "..." for i in items]
    more = f" and {len(items) - n} more" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def load_weights(model: torch.nn.Module, state_dict: dict, source,
                 network: str = "the network rebuilt from its stored config") -> None:
    """Load ``state_dict`` into ``model`` (strict), or raise one-line InputError naming ``source``.

    Keys and shapes are compared before anything is copied, so on a mismatch ``model`` is
    unchanged (``load_state_dict`` would have copied the fitting tensors, then raised a
    multi-line error). The message counts the missing, unexpected and resized entries and
    names at most three of each, so a checkpoint of another network gives a short line.
    """
    if not isinstance(state_dict, dict):
        raise InputError(source, f"its 'model' entry is a {type(state_dict).__name__}, not a state dict")
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    resized = [f"{k} {list(state_dict[k].shape)} vs {list(own[k].shape)}" for k in own
               if k in state_dict and getattr(state_dict[k], "shape", None) != getattr(own[k], "shape", None)]
    problems = [f"{len(keys)} {what} ({few(keys)})"
                for what, keys in (("missing", missing), ("unexpected", unexpected), ("of another shape", resized))
                if keys]
    if problems:
        raise InputError(source, f"its weights do not fit {network}: {'; '.join(problems)}")
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1].strip() if str(exc).strip() else type(exc).__name__
        raise InputError(source, f"its weights do not fit {network}: {few([first], width=200)}") from None


def model_of_checkpoint(state: dict, path):
    """(network, variant name) that a checkpoint's weights belong to, built from what it records:
    its ``kind``, ``variant`` and the ``config`` (AMDiff variants, Med-DDPM) or ``baseline_kwargs``
    (comparison models) it was trained with. A record that is missing or names no known model
    raises one-line InputError naming the checkpoint."""
    import copy

    from amdiff.config import fill_defaults
    from amdiff.contracts import VARIANTS
    from amdiff.models.amdiff import build_model
    from amdiff.models.baselines import NAMES, get

    kind, variant = state.get("kind", "amdiff"), state.get("variant")
    if kind not in ("amdiff", "baseline"):
        raise InputError(path, f"records the unknown kind {kind!r} (amdiff or baseline); not a checkpoint "
                               "of amdiff train")
    if not isinstance(variant, str) or not variant:
        raise InputError(path, "does not record its model ('variant'); not a checkpoint of amdiff train")
    known = NAMES if kind == "baseline" else tuple(VARIANTS)
    if variant not in known:
        raise InputError(path, f"records the unknown model {variant!r} (known {kind} models: {few(known, 8)})")
    if kind == "baseline":
        kwargs = state.get("baseline_kwargs")
        if not isinstance(kwargs, dict):
            raise InputError(path, f"does not record the settings of its {variant} network "
                                   "('baseline_kwargs')")
        build = lambda: get(variant).build(**kwargs)   # noqa: E731
    else:
        cfg = state.get("config")
        lacking = [k for k in ("models", "diffusion") if not isinstance((cfg or {}).get(k), dict)]
        if not isinstance(cfg, dict) or lacking:
            raise InputError(path, f"does not record the config its {variant} network was trained with "
                                   f"(lacks {', '.join(lacking) if isinstance(cfg, dict) else 'config'})")
        # a checkpoint written before a key had its schema default may lack it: fill it in, as
        # validation fills the config of a run
        cfg = fill_defaults(copy.deepcopy(cfg))
        build = lambda: build_model(variant, cfg)   # noqa: E731
    try:
        return build(), variant
    except (KeyError, TypeError, ValueError) as exc:
        detail = few([" ".join(str(exc).split())], width=160)
        raise InputError(path, f"its recorded settings do not build a {variant} network "
                               f"({type(exc).__name__}: {detail})") from None
