"""Small JSON records (summaries, counts, fits): written atomically, read with a one-line error."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from amdiff.errors import InputError
from amdiff.io.atomic import write_text
from amdiff.io.files import check_input_file


def _plain(value):
    """numpy scalars and arrays as the Python values JSON holds."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def write_json(path, obj) -> None:
    """``obj`` as indented JSON, written atomically (numpy values as plain numbers and lists)."""
    write_text(path, json.dumps(obj, indent=2, default=_plain) + "\n")


def read_json(path, keys: tuple[str, ...] = ()) -> dict:
    """A JSON object with at least ``keys``; missing, unreadable, malformed, another JSON value
    or a key missing: one-line InputError naming the file."""
    path = Path(path)
    check_input_file(path)
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(path, f"not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except UnicodeDecodeError:   # e.g. a NIfTI or gzip file named in place of the JSON
        raise InputError(path, "not valid JSON (not UTF-8 text)") from None
    if not isinstance(record, dict):
        raise InputError(path, f"expected a JSON object, found a {type(record).__name__}")
    missing = [key for key in keys if key not in record]
    if missing:
        raise InputError(path, f"lacks key(s) {', '.join(missing)}")
    return record
