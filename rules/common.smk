# Input functions, wildcard constraints and the subject table shared by all rules.

import json
import re
import shlex
import sys

from amdiff.config import (check_workflow_config, count_levels, derived_seed, phantom_subjects,
                           replicate_base, seed_replicates)
from amdiff import contracts
from amdiff.errors import InputError
from amdiff.listmode.levels import level_name
from amdiff.provenance import config_sha256
from amdiff.resources import job_resources, network_resources

try:
    # Snakemake's own YAML loader keeps the last of two equal keys silently; read_config (called
    # by check_workflow_config) refuses them and names the line of a syntax error. An invalid key
    # set by --config is blamed on --config, not on the config files.
    check_workflow_config(config, workflow.configfiles,
                          getattr(getattr(workflow, "config_settings", None), "config", None))
except InputError as _err:
    # One clear line instead of a traceback.
    sys.exit(f"config error: {_err}")

RESULTS = config["results_dir"]


def amdiff_command():
    """How every rule's shell command calls the package.

    The interpreter that runs Snakemake, as ``<python> -m amdiff``: a job then finds the package
    whether or not the virtual environment is activated (PATH plays no part). With
    ``--sdm conda`` each job runs in its rule's environment, whose ``amdiff`` comes first on PATH.
    """
    from snakemake.settings.types import DeploymentMethod

    methods = getattr(getattr(workflow, "deployment_settings", None), "deployment_method", ()) or ()
    if DeploymentMethod.CONDA in methods:
        return "amdiff"
    return f"{shlex.quote(sys.executable)} -m amdiff"


AMDIFF = amdiff_command()

# The merged config (config files plus --config overrides) that the `amdiff` verbs read, written
# by onstart below; its hash is a param of the provenance rule, so a changed config re-runs it.
CONFIG_FILE = f"{RESULTS}/.effective_config.yaml"
CONFIG_SHA256 = config_sha256(config)


def write_effective_config():
    """Write CONFIG_FILE (atomically) unless it already holds this config.

    Rewritten only when its content changes, so file times stay stable between runs; rules
    also carry their site's settings as params, so a changed setting re-runs its jobs.
    """
    import os

    import yaml

    text = yaml.safe_dump(dict(config), sort_keys=True)
    if not os.path.exists(CONFIG_FILE) or open(CONFIG_FILE).read() != text:
        os.makedirs(RESULTS, exist_ok=True)
        tmp = f"{CONFIG_FILE}.tmp{os.getpid()}"
        with open(tmp, "w") as fh:
            fh.write(text)
        os.replace(tmp, CONFIG_FILE)


# Written when jobs are about to run, not while the Snakefile is parsed: a dry run (-n),
# --list-rules or --lint must write nothing, and Snakemake runs onstart in none of them.
# Jobs only name CONFIG_FILE in their shell commands, so the DAG never needs the file.
onstart:
    write_effective_config()


def _load_subjects():
    if config["cohort"]["source"] == "phantom":
        return phantom_subjects(config)
    from amdiff.io.manifest import read_manifest

    try:
        df = read_manifest(config["cohort"]["manifest"], config["cohort"].get("data_roots"),
                           config["cohort"]["allow_outside_data_roots"], sites=config["sites"])
    except InputError as err:
        sys.exit(f"manifest error: {err}")
    return df.fillna("").to_dict("records")


SUBJECTS = _load_subjects()
BY_ID = {(s["site"], s["subject"]): s for s in SUBJECTS}


wildcard_constraints:
    site="|".join(config["sites"]),
    subject="[A-Za-z0-9_-]+",
    level="p[0-9][0-9][0-9][0-9]*",
    real=r"\d+",


def subject_of(wildcards):
    return BY_ID[(wildcards.site, wildcards.subject)]


def subject_dir(site, subject):
    return f"{RESULTS}/{site}/{subject}"


def own_lowcount_images(subject):
    """{pXXX_rN: path} from a manifest's lc_pet column ("p005=a.nii.gz;p010_r1=b.nii.gz")."""
    images = {}
    for item in filter(None, str(subject.get("lc_pet") or "").split(";")):
        name, path = item.split("=", 1)
        images[name if "_r" in name else f"{name}_r0"] = path
    return images


def lc_names(site, split, subject=None):
    """Names pXXX_rN of the low-count images of one subject."""
    if subject is not None and not PHANTOM and subject.get("lc_pet"):
        return sorted(own_lowcount_images(subject))
    return [f"{level_name(p)}_r{r}" for p in count_levels(config, site, split)
            for r in range(config["sites"][site]["realizations"])]


def own_lowcount(wildcards):
    return own_lowcount_images(subject_of(wildcards))[f"{wildcards.level}_r{wildcards.real}"]


def lc_images(wildcards):
    s = subject_of(wildcards)
    d = subject_dir(s["site"], s["subject"])
    return {name: f"{d}/lc_{name}.nii.gz" for name in lc_names(s["site"], s["split"], s)}


def percent_of(level):
    from amdiff.listmode.levels import parse_level_name

    return parse_level_name(level)


def site_json(wildcards):
    return json.dumps(config["sites"][wildcards.site])


def data_targets():
    targets = [f"{RESULTS}/manifest.tsv", f"{RESULTS}/cohort/summary.tsv"]
    for s in SUBJECTS:
        d = subject_dir(s["site"], s["subject"])
        targets += [f"{d}/hc.nii.gz", f"{d}/organs.nii.gz", f"{RESULTS}/qc/{s['site']}/{s['subject']}.png"]
        targets += [f"{d}/lc_{n}.nii.gz" for n in lc_names(s["site"], s["split"], s)]
    return targets


def _ids(predicate):
    """Regex matching the subject ids for which ``predicate`` holds (never matches if none)."""
    ids = sorted({s["subject"] for s in SUBJECTS if predicate(s)})
    return "|".join(ids) if ids else "(?!x)x"


PHANTOM = config["cohort"]["source"] == "phantom"
# Subjects whose list-mode data we simulate (phantom, or own images flagged simulate_from_images),
# whose list-mode file the user gave, and whose low-count images the user gave.
SIMULATED = _ids(lambda s: PHANTOM or str(s.get("simulate_from_images", "")).lower() == "true")
OWN_LISTMODE = _ids(lambda s: not PHANTOM and bool(s.get("listmode")))
OWN_IMAGES = _ids(lambda s: not PHANTOM and bool(s.get("lc_pet")))


def full_listmode(wildcards):
    s = subject_of(wildcards)
    if not PHANTOM and s.get("listmode"):
        return s["listmode"]
    return f"{subject_dir(wildcards.site, wildcards.subject)}/listmode/full.petsird"
