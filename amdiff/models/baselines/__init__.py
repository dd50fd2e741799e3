"""Comparison models of the paper (Sec. 4.1-4.2, Tables 2-3), one module each.

Every module ``amdiff.models.baselines.<name>`` exposes the same small interface:

* ``PAPER`` / ``DEMO``: constructor kwargs at the publication's size / a tiny CPU size;
* ``build(**kwargs) -> nn.Module``;
* ``publication``: authors, venue, year, repository;
* ``loss(model, batch) -> {"total": ..., <terms>}`` (GANs: ``generator_loss`` and
  ``discriminator_loss``).

Denoisers map I_LC in SUV (B, 1, X, Y, Z) to a high-count estimate in SUV of the same shape;
segmenters map [I_LC, denoised] (B, 2, X, Y, Z) to {"lesion": (B, 2, ...), "organs": (B, 8, ...)}
logits, like AMDiff's segmenter.

``BASELINES`` maps each name to its module and imports a module only when it is looked up, so
importing this package never fails because one model (or its optional dependency) is missing.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from types import ModuleType

from amdiff.contracts import COMPARISON_DENOISERS as DENOISERS
from amdiff.contracts import COMPARISON_MODELS as NAMES
from amdiff.contracts import COMPARISON_SEGMENTERS as SEGMENTERS


def get(name: str) -> ModuleType:
    """The module ``amdiff.models.baselines.<name>``; ValueError for a name not in ``NAMES``."""
    if name not in NAMES:
        raise ValueError(f"unknown baseline model {name!r}; known: {', '.join(NAMES)}")
    return importlib.import_module(f"{__name__}.{name}")


class _LazyModules(Mapping):
    """Read-only {name: module} whose values are imported on first access (then cached by Python)."""

    def __getitem__(self, name: str) -> ModuleType:
        if name not in NAMES:
            raise KeyError(name)
        return get(name)

    def __contains__(self, name: object) -> bool:
        # Mapping's default would call __getitem__, i.e. import the module.
        return name in NAMES

    def __iter__(self) -> Iterator[str]:
        return iter(NAMES)

    def __len__(self) -> int:
        return len(NAMES)

    def __repr__(self) -> str:
        return f"BASELINES({', '.join(NAMES)})"


BASELINES: Mapping[str, ModuleType] = _LazyModules()

__all__ = ["BASELINES", "DENOISERS", "NAMES", "SEGMENTERS", "get"]
