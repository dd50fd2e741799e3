"""``python -m amdiff``: the same command line as the ``amdiff`` script.

The workflow's rules call the package this way, through the interpreter that runs Snakemake
(rules/common.smk, ``AMDIFF``), so a job never depends on PATH finding an ``amdiff`` script.
"""

import sys

from amdiff.cli import main

sys.exit(main())
