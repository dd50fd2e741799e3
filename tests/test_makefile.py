"""The README's two set-up commands work in a checkout whose path holds a space."""

import os
import shutil
import subprocess

import pytest

STUB = '#!/bin/sh\nprintf "%s\\n" "$(basename "$0") $*" >> "$(dirname "$0")/../calls.txt"\n'


@pytest.mark.skipif(shutil.which("make") is None, reason="GNU make is not installed")
@pytest.mark.parametrize("target,call", [("test", "python -m pytest"), ("run", "snakemake --cores 1")])
def test_make_targets_run_the_venv_tools_from_a_path_with_a_space(repo, tmp_path, target, call):
    """`make test` and `make run` call .venv's tools by absolute path; unquoted, a checkout in
    "My Projects/" would run "/.../My" instead. The venv is a stub that records its calls, and
    `.installed` is newer than pyproject.toml, so make does not reinstall."""
    checkout = tmp_path / "My Projects" / "amdiff"
    bin_dir = checkout / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    shutil.copy(repo / "Makefile", checkout / "Makefile")
    shutil.copy(repo / "pyproject.toml", checkout / "pyproject.toml")
    for tool in ("python", "snakemake"):
        (bin_dir / tool).write_text(STUB)
        (bin_dir / tool).chmod(0o755)
    (checkout / ".venv" / ".installed").touch()
    os.utime(checkout / "pyproject.toml", (0, 0))   # older than .installed: no reinstall
    done = subprocess.run(["make", target, "CORES=1"], cwd=checkout, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert (checkout / ".venv" / "calls.txt").read_text().splitlines() == [call]
