"""The Snakefile and the rule files stay in snakefmt's form (the Snakemake workflow catalog's
formatter; line length in pyproject.toml [tool.snakefmt]): `snakefmt .` rewrites them. And
`snakemake --lint` has nothing to report."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO


def test_workflow_files_are_snakefmt_formatted():
    run = subprocess.run([sys.executable, "-m", "snakefmt", "--check", "--diff", "Snakefile", "rules"],
                         cwd=REPO, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]


def test_snakemake_lint_reports_nothing(tmp_path):
    """`snakemake --lint` (rule form, declared inputs, no globals in commands) finds nothing to say;
    it writes nothing either (run from another folder, which stays empty)."""
    run = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory",
                          str(tmp_path), "--lint"], cwd=REPO, capture_output=True, text=True, timeout=600)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-4000:]
    assert "Congratulations, your workflow is in a good condition!" in out, out[-4000:]
    assert "Lints for" not in out
    assert [p.name for p in tmp_path.iterdir() if p.name != ".snakemake"] == []
