#!/usr/bin/env bash
# Installs this checkout's amdiff package into a conda environment Snakemake has just built
# (each envs/<family>.post-deploy.sh links here). Snakemake runs a copy of this script from
# .snakemake/conda/, so the checkout cannot be found relative to it: the Snakefile exports its
# folder as AMDIFF_SOURCE. Extra arguments go to pip (the install test passes --target).
set -euo pipefail
: "${AMDIFF_SOURCE:?is not set: the Snakefile of this workflow sets it}"
python -m pip install --no-deps "$@" "$AMDIFF_SOURCE"
