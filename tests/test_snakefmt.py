"""The Snakefile and the rule files stay in snakefmt's form (the Snakemake workflow catalog's
formatter; line length in pyproject.toml [tool.snakefmt]): `snakefmt .` rewrites them."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO


def test_workflow_files_are_snakefmt_formatted():
    run = subprocess.run([sys.executable, "-m", "snakefmt", "--check", "--diff", "Snakefile", "rules"],
                         cwd=REPO, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
