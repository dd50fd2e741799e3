"""The verbs of the ``amdiff`` command line, one module per workflow stage.

Each module registers its verbs (``register(subparsers)``) with their handlers
(``set_defaults(handler=...)``). The modules import only argparse-level code at import time,
and the handlers import their stage's code when they run, so building the whole parser stays
fast and torch-free (the evaluation environment has no torch). They live here rather than in
each stage's package because several packages' ``__init__`` import torch or matplotlib.
"""

from __future__ import annotations

from amdiff.commands import (cohort, evaluate, infer, labels, listmode, models, phantom, qc, recon, train,
                             workflow)

# in the order of the workflow; ``amdiff --help`` lists the verbs in this order
STAGES = (workflow, phantom, listmode, recon, labels, qc, cohort, train, infer, models, evaluate)


def register_all(sub) -> None:
    for stage in STAGES:
        stage.register(sub)
