"""Memory and time that the workflow's heavy rules ask of a scheduler, growing with each retry.

With ``retries: 1`` (the SLURM profile) a job killed for running out of memory or time is
submitted again; asking for the same ``mem_mb`` and ``runtime`` again would fail the same way.
Each attempt therefore asks for ``factor`` times the previous one (our choice: 2, the usual
doubling), up to a cap so that a job never asks for more than one node holds.
"""

from __future__ import annotations

import math
from typing import Callable

ResourceFunction = Callable[..., int]

GROWTH = 2.0
MAX_MEM_MB = 512_000      # one large node
MAX_RUNTIME_MIN = 10_080  # one week, a common partition limit


def by_attempt(base: int, cap: int, factor: float = GROWTH,
               per_job: Callable[..., int] | None = None) -> ResourceFunction:
    """A Snakemake resource callable: ``base`` on the first attempt, ``base * factor**(n-1)`` on
    attempt n, never above ``cap``; times ``per_job(wildcards)`` when given (e.g. the number of
    images one job predicts)."""
    if base <= 0 or cap < base or factor < 1.0:
        raise ValueError(f"need 0 < base <= cap and factor >= 1, got base={base}, cap={cap}, factor={factor}")

    def resource(wildcards=None, attempt: int = 1) -> int:
        scale = 1 if per_job is None else max(1, int(per_job(wildcards)))
        return int(min(cap, math.ceil(base * scale * factor ** (max(1, int(attempt)) - 1))))

    resource.__name__ = f"by_attempt_{base}"
    return resource


def job_resources(mem_mb: int, runtime_min: int, gpu: int | None = None) -> dict:
    """``resources:`` of one rule: memory (MB) and runtime (minutes) growing with the attempt,
    and the number of GPUs when given (a rule may set ``gpu`` itself)."""
    resources = {"mem_mb": by_attempt(mem_mb, MAX_MEM_MB), "runtime": by_attempt(runtime_min, MAX_RUNTIME_MIN)}
    if gpu is not None:
        resources["gpu"] = int(gpu)
    return resources


# (mem_mb, runtime in minutes) of a network job on each device: a CPU job of the demo or study
# sizes; a CUDA job at paper size (800 epochs of 128^3 patches, whole-body inference of one image).
NETWORK_JOB = {"train": {"cpu": (8000, 120), "cuda": (32000, 2880)},
               "predict": {"cpu": (4000, 60), "cuda": (32000, 240)}}


def network_resources(stage: str, device: str, processes: int = 1,
                      images: Callable[..., int] | None = None) -> dict:
    """``resources:`` of a training (``stage="train"``) or inference job on ``device``; a
    data-parallel training of ``processes`` processes needs their memory and one GPU each. An
    inference job predicting ``images(wildcards)`` images one after another needs their time
    and one image's memory."""
    sizes = NETWORK_JOB[stage]
    mem_mb, runtime = sizes["cpu" if device == "cpu" else "cuda"]
    resources = job_resources(mem_mb * processes, runtime, gpu=processes if device == "cuda" else 0)
    if images is not None:
        resources["runtime"] = by_attempt(runtime, MAX_RUNTIME_MIN, per_job=images)
    return resources
