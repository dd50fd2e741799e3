# AMDiff reproducibility workflow.
#   snakemake --cores all                               # demo: synthetic cohort, CPU, minutes
#   snakemake --configfile config/paper.yaml -n         # plan the paper-size study
#   snakemake --profile profiles/slurm ...              # run on a SLURM cluster
# Stages live in rules/*.smk; every rule calls the `amdiff` command line.

import os
import sys

from snakemake.utils import min_version

from amdiff.config import read_config
from amdiff.errors import InputError

min_version("9.0")

# With --sdm conda, envs/*.post-deploy.sh installs this checkout into each new environment; they
# run from .snakemake/conda/, so they learn where the checkout is from here.
os.environ.update(AMDIFF_SOURCE=workflow.basedir)  # set here, not read: no envvars directive


# The demo config is the default; a --configfile given on the command line replaces it
# entirely (Snakemake would otherwise merge the two, keeping sites the user removed).
if not workflow.overwrite_configfiles:
    try:
        # Read before Snakemake does: its loader names no line for a YAML syntax error.
        read_config(f"{workflow.basedir}/config/config.yaml")
    except InputError as _err:
        sys.exit(f"config error: {_err}")

    configfile: f"{workflow.basedir}/config/config.yaml"


# The HTML report's front page: what this run is (a demo says it is an untrained smoke test).
report: "reports/workflow.rst"


include: "rules/common.smk"
include: "rules/config.smk"
include: "rules/phantom.smk"


if config["cohort"]["source"] == "manifest":

    include: "rules/own_data.smk"


include: "rules/listmode.smk"
include: "rules/recon.smk"
include: "rules/labels.smk"
include: "rules/qc.smk"


# The model stages need the models/training/diffusion/inference sections (a data-only
# config prepares the cohort and stops there).
if MODELS:

    include: "rules/train.smk"
    include: "rules/predict.smk"
    include: "rules/evaluate.smk"


# written last, from every other target: code, config, packages, machine, wall time per stage
include: "rules/provenance.smk"


rule all:
    default_target: True
    input:
        data_targets(),
        prediction_targets() if MODELS else [],
        evaluation_targets() if MODELS else [],
        PROVENANCE,
