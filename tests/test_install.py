"""The package works when installed as a wheel, not only from this checkout (editable)."""

import os
import shutil
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_a_non_editable_install_validates_configs_from_another_folder(repo, tmp_path):
    """The conda environments' install script (envs/install-amdiff.sh, what `--sdm conda` runs
    after building each env) installs a built wheel, here into a target folder: it carries the
    config schema as package data, `amdiff check-config` run from another folder finds it, and
    the package it imports is the installed copy, not this checkout."""
    # build from a copy: setuptools writes build/ into the source folder it builds
    source = tmp_path / "source"
    shutil.copytree(repo / "amdiff", source / "amdiff", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (repo / name).exists():
            shutil.copy(repo / name, source / name)
    target = tmp_path / "site"
    interpreter = tmp_path / "bin"          # the script calls `python`: this one
    interpreter.mkdir()
    (interpreter / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (interpreter / "python").chmod(0o755)
    script_env = {**os.environ, "AMDIFF_SOURCE": str(source),
                  "PATH": f"{interpreter}{os.pathsep}{os.environ.get('PATH', '')}"}
    build = subprocess.run(["bash", str(repo / "envs" / "install-amdiff.sh"), "--quiet", "--no-build-isolation",
                            "--target", str(target)], env=script_env, capture_output=True, text=True, timeout=900)
    assert build.returncode == 0, build.stderr[-3000:]
    assert (target / "amdiff" / "schemas" / "config.schema.yaml").is_file()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target)}

    def run(*args):
        return subprocess.run([sys.executable, *args], cwd=elsewhere, env=env, capture_output=True, text=True,
                              timeout=300)

    where = run("-c", "import amdiff; print(amdiff.__file__)")
    assert where.stdout.strip().startswith(str(target)), where
    ok = run("-m", "amdiff", "check-config", str(repo / "config" / "paper.yaml"))
    assert ok.returncode == 0, ok.stderr
    bad = elsewhere / "bad.yaml"
    bad.write_text((repo / "config" / "config.yaml").read_text().replace("iterations:", "iteratons:", 1))
    refused = run("-m", "amdiff", "check-config", str(bad))
    assert refused.returncode == 2 and "unknown key 'iteratons'" in refused.stderr, refused.stderr
