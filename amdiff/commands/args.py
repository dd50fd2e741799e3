"""What the verbs' command lines share: argument types, NAME=PATH pairs, the run-kind options.

Import-light on purpose (argparse and amdiff.levels only): every verb module registers its
arguments from here when the parser is built, also in the torch-free evaluation environment.
"""

from __future__ import annotations

import argparse
import sys

from amdiff.errors import InputError


def percent(text: str) -> float:
    """A percent of the full list in (0, 100] (the rule of a count level's name)."""
    from amdiff.levels import percent_decimal

    try:
        value = float(text)
        percent_decimal(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a percent in (0, 100], got {text!r}") from None
    return value


def count_levels(text: str) -> list[float]:
    """Comma-separated percents, each level once."""
    try:
        levels = [percent(v) for v in text.split(",") if v.strip()]
    except argparse.ArgumentTypeError:
        levels = []
    if not levels:
        raise argparse.ArgumentTypeError("count levels must be comma-separated percents in "
                                         f"(0, 100], got {text!r}")
    from amdiff.levels import level_name

    names = [level_name(v) for v in levels]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:   # one list per level: a repeated level would silently become one output
        raise argparse.ArgumentTypeError(f"count level {twice[0]} is given twice in {text!r}")
    return levels


def natural(text: str) -> int:
    """A non-negative integer (a seed)."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {text!r}")
    return value


def positive(text: str) -> int:
    """A positive integer (a number of realizations)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def fwhm_grid(text: str) -> list[float]:
    """Comma-separated FWHMs in mm, none negative."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError(f"FWHM grid must be comma-separated mm, none negative, got {text!r}")
    return values


def pairs(items) -> dict:
    """NAME=PATH arguments; a malformed one, an empty side or a NAME given twice (which would
    silently drop one of its paths) is bad input (one line), not a traceback."""
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise InputError("command line", f"expected NAME=PATH, got {item!r}")
        if key in out:
            raise InputError("command line", f"{key} is given twice ({out[key]!r} and {value!r})")
        out[key] = value
    return out


def per_image(lc: list, **lists) -> list[tuple]:
    """Zip ``--lc`` with the verb's other per-image lists (``out_dir=[...]``, ``level=[...]``;
    None when not given) by position, after checking that each has one value per image and
    that no two images share a level or an output folder. Several images of a subject in one
    call load torch, MONAI and a checkpoint once (6-9 s on a CPU) instead of once each."""
    from pathlib import Path

    n = len(lc)
    flags = {f"--{name.replace('_', '-')}": values for name, values in lists.items()}
    for flag, values in flags.items():
        if values is not None and len(values) != n:
            raise InputError(flag, f"{len(values)} given for {n} --lc image{'s' * (n > 1)}; "
                                   "give one per image, in the same order")
        if flag in ("--level", "--out-dir") and values is not None:
            seen = set()
            for value in values:
                key = str(Path(value).resolve()) if flag == "--out-dir" else value
                if key in seen:
                    raise InputError(flag, f"{value} is given twice; each image needs its own")
                seen.add(key)
    return list(zip(lc, *[values if values is not None else [None] * n for values in flags.values()]))


def add_run_kind(p: argparse.ArgumentParser) -> None:
    """--budget and --run-kind: a demo run's outputs say they come from an untrained smoke test."""
    p.add_argument("--budget", default=None, help="training budget TSV (amdiff training-budget)")
    # the config's run_kind values (amdiff/schemas/config.schema.yaml; not imported: keeps --help fast)
    p.add_argument("--run-kind", choices=("demo", "study", "paper"), default="study",
                   help="demo: mark every output as an untrained smoke test (needs --budget)")


def without_torchvision() -> None:
    """Mark torchvision absent in this process, unless something imported it already.

    Our choice, for the verbs that build networks: ``import monai`` imports every MONAI
    submodule, among them detection backbones that import torchvision, which imports
    torch._dynamo: about 1.4 s per process (of ~4 s), paid by every training and prediction
    job, and none of our networks uses them. A ``None`` entry in ``sys.modules`` makes
    ``import torchvision`` raise ImportError, which MONAI's optional imports expect. Not done
    for ``amdiff labels``: TotalSegmentator's networks need torchvision.
    """
    sys.modules.setdefault("torchvision", None)


def set_torch_threads(n) -> None:
    """torch's intra-op threads (None or 0: torch's default)."""
    if n:
        import torch

        torch.set_num_threads(int(n))
