"""Model names and order in the evaluation figures (shared by all of them)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from amdiff.evaluate import columns


def model_label(model: str) -> str:
    return columns.model_label(model, standalone=True)


def with_banner(title: str, banner: str | None) -> str:
    """``title`` under ``banner`` (a demo run's smoke-test line, `amdiff.evaluate.budget`)."""
    return f"{banner}\n{title}" if banner else title


def model_family(model: str) -> str:
    """AMDiff and its ablations form one family; every comparison model is its own."""
    return "amdiff" if model.startswith("amdiff") else model


# The paper's Fig. 7 compares AMDiff with "w/o regularizer" (all of L_lor removed) and
# "w/o revision"; their rows lead the figure, in this order.
FIG7_MODELS = ("amdiff", "amdiff_no_lor", "amdiff_no_revision")


def order_models(models: Sequence[str]) -> list[str]:
    """AMDiff family first, led by the paper's Fig. 7 models; otherwise the given order."""
    def key(model: str) -> tuple[bool, int]:
        rank = FIG7_MODELS.index(model) if model in FIG7_MODELS else len(FIG7_MODELS)
        return model_family(model) != "amdiff", rank
    return sorted(dict.fromkeys(models), key=key)


def format_value(value: float, spec: str = ".3f") -> str:
    """A metric for a caption: formatted, or "n/a" when it is not finite."""
    return format(value, spec) if np.isfinite(value) else "n/a"
