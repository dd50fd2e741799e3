# Input functions, wildcard constraints, the subject table and every helper the rules use:
# the rule files hold rules only (one section per rule file below).

import json
import os
import re
import shlex
import sys

from amdiff.config import (
    check_workflow_config,
    count_levels,
    derived_seed,
    phantom_subjects,
    replicate_base,
    run_kind,
    seed_replicates,
    standard_count_percent,
    weight_settings,
)
from amdiff import contracts
from amdiff.errors import InputError
from amdiff.levels import level_name
from amdiff.provenance import config_sha256
from amdiff.resources import job_resources, network_resources

try:
    # Snakemake's own YAML loader keeps the last of two equal keys silently; read_config (called
    # by check_workflow_config) refuses them and names the line of a syntax error. An invalid key
    # set by --config is blamed on --config, not on the config files.
    check_workflow_config(
        config, workflow.configfiles, getattr(getattr(workflow, "config_settings", None), "config", None)
    )
except InputError as _err:
    # One clear line instead of a traceback.
    sys.exit(f"config error: {_err}")

RESULTS = config["results_dir"]


def call_amdiff_through_this_interpreter():
    """Every rule's shell command calls ``amdiff <verb>``; this makes ``amdiff`` the package of the
    interpreter that runs Snakemake (a shell function in front of each command running
    ``<python> -m amdiff``), so a job finds it whether or not the virtual environment is activated:
    PATH plays no part, and the Snakefile itself imports amdiff, so that interpreter has it. With
    ``--sdm conda`` each job runs in its rule's environment, whose ``amdiff`` comes first on PATH.

    A shell prefix rather than a param: the interpreter's path as a param would re-run every job
    when the environment moves, and as a global in the commands it is an undeclared input
    (``snakemake --lint``).
    """
    from snakemake.settings.types import DeploymentMethod

    # what Snakemake puts in front of every command when it runs them with bash
    strict = "set -euo pipefail; " if os.path.basename(shell.get_executable() or "") == "bash" else ""
    methods = getattr(getattr(workflow, "deployment_settings", None), "deployment_method", ()) or ()
    if DeploymentMethod.CONDA in methods:
        return
    # shell.prefix formats its text like a command: braces doubled
    python = shlex.quote(sys.executable).replace("{", "{{").replace("}", "}}")
    shell.prefix(f'{strict}amdiff() {{{{ {python} -m amdiff "$@"; }}}}; ')


call_amdiff_through_this_interpreter()

# The merged config (config files plus --config overrides) that the `amdiff` verbs read, one copy
# per config scope: {CONFIG_DIR}/{scope}.yaml, written by rule job_config (rules/config.smk) when
# the settings of its scope change. A job takes its scope's file as input, so it re-runs exactly
# when the settings it uses change, and the rule graph shows the dependency.
CONFIG_DIR = f"{RESULTS}/config"
CONFIG_SHA256 = config_sha256(config)


def effective_config_text():
    """A scope file's content: the whole merged config as YAML, keys sorted. A job reads only its
    scope's settings from it; the rest is the config as it was when the scope last changed."""
    import yaml

    return yaml.safe_dump(dict(config), sort_keys=True)


def scope_settings(scope):
    """The settings a scope's jobs use, as JSON: rule job_config rewrites the scope's file when
    they change. Scopes: phantom_<site>, acquisition_<site> (list-mode simulation), recon_<site>,
    cohort (manifests), diffusion_<model> (AMDiff's variants, Med-DDPM), baselines (comparison
    models), inference, training (its budget), seed_replicates, all (provenance)."""
    kind, _, name = scope.partition("_")
    site = config["sites"][name] if kind in ("phantom", "acquisition", "recon") else None
    if kind == "phantom":
        settings = {"image": site["image"], "phantom": config["phantom"], "seed": config["seed"]}
    elif kind == "acquisition":
        keys = ("scanner", "acquisition", "acquisition_by_split")
        settings = {**{k: site.get(k) for k in keys}, "seed": config["seed"]}
    elif kind == "recon":
        # the flat randoms+scatter fraction of the acquisition is part of the system model;
        # recon.tof is read by the list-mode engine only
        recon = site["recon"]
        settings = {
            "recon": {k: v for k, v in recon.items() if k != "tof" or recon["engine"] == "listmode"},
            "scanner": site["scanner"],
            "background_fraction": site["acquisition"]["background_fraction"],
        }
    elif scope == "cohort":
        settings = {"cohort": config["cohort"], "results_dir": RESULTS}
    elif kind == "diffusion":
        settings = diffusion_settings(name)
    elif scope == "baselines":
        settings = {k: config.get(k) for k in ("baselines", "inference")}
        settings["training"] = weight_settings(config["training"])
    elif scope == "training":
        settings = weight_settings(config["training"])
    elif scope in ("inference", "seed_replicates"):
        settings = config.get(scope)
    elif scope == "all":
        settings = CONFIG_SHA256
    else:
        raise ValueError(f"unknown config scope {scope!r}")
    return json.dumps(settings, sort_keys=True)


def _load_subjects():
    if config["cohort"]["source"] == "phantom":
        return phantom_subjects(config)
    from amdiff.io.manifest import read_manifest

    try:
        df = read_manifest(
            config["cohort"]["manifest"],
            config["cohort"].get("data_roots"),
            config["cohort"]["allow_outside_data_roots"],
            sites=config["sites"],
        )
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
    return [
        f"{level_name(p)}_r{r}"
        for p in count_levels(config, site, split)
        for r in range(config["sites"][site]["realizations"])
    ]


def own_lowcount(wildcards):
    return own_lowcount_images(subject_of(wildcards))[f"{wildcards.level}_r{wildcards.real}"]


def lc_images(wildcards):
    s = subject_of(wildcards)
    d = subject_dir(s["site"], s["subject"])
    return {name: f"{d}/lc_{name}.nii.gz" for name in lc_names(s["site"], s["split"], s)}


def percent_of(level):
    from amdiff.levels import parse_level_name

    return parse_level_name(level)


def data_targets():
    targets = [f"{RESULTS}/manifest.tsv", f"{RESULTS}/cohort/summary.tsv"]
    for s in SUBJECTS:
        d = subject_dir(s["site"], s["subject"])
        targets += [f"{d}/hc.nii.gz", f"{d}/organs.nii.gz", f"{RESULTS}/qc/{s['site']}/{s['subject']}.png"]
        targets += [f"{d}/lc_{n}.nii.gz" for n in lc_names(s["site"], s["split"], s)]
    return targets


NOTHING = "(?!x)x"  # a wildcard regex no value matches: the rule that carries it never runs


def never(names):
    """Wildcard regex matching exactly ``names``; ``NOTHING`` (the rule is off) when there are none."""
    return "|".join(names) if names else NOTHING


def _ids(predicate):
    """Regex matching the subject ids for which ``predicate`` holds (``NOTHING`` if none)."""
    return never(sorted({s["subject"] for s in SUBJECTS if predicate(s)}))


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


# --- list-mode (rules/listmode.smk) -----------------------------------------------------


def simulate_inputs(wildcards):
    d = subject_dir(wildcards.site, wildcards.subject)
    if PHANTOM:
        return {"suv": f"{d}/truth_suv.nii.gz", "mumap": f"{d}/mumap.nii.gz", "meta": f"{d}/phantom.json"}
    return {"suv": subject_of(wildcards)["hc_pet"], "mumap": f"{d}/mumap.nii.gz"}


def body_size(wildcards, input):
    """The subject's weight (and height) as command-line words."""
    if PHANTOM:
        meta = json.loads(open(input.meta).read())
        return ["--weight-kg", str(meta["weight_kg"]), "--height-m", f"{meta['height_cm'] / 100:.3f}"]
    # Public cohorts (autoPET) often lack the weight; SUV images do not depend on it, only
    # the simulated count level does, so a reference adult is used then.
    weight = subject_of(wildcards).get("weight_kg") or 75.0
    return ["--weight-kg", str(weight)]


# --- reconstruction (rules/recon.smk) ---------------------------------------------------


def recon_resources(wildcards):
    return 1 if config["sites"][wildcards.site]["recon"]["device"] == "cuda" else 0


# --- organ labels (rules/labels.smk) ----------------------------------------------------

LABELS = config["labels"]


def label_source(wildcards):
    if LABELS["method"] == "phantom":
        return {"source": f"{subject_dir(wildcards.site, wildcards.subject)}/organs_truth.nii.gz"}
    if LABELS["method"] == "provided":
        return {"source": subject_of(wildcards)["organs"]}
    return {}


# --- QC and manifests (rules/qc.smk) ----------------------------------------------------


def stats_inputs(wildcards):
    d = subject_dir(wildcards.site, wildcards.subject)
    inputs = {"hc": f"{d}/hc.nii.gz", "lesion": f"{d}/lesion.nii.gz"}
    if re.fullmatch(SIMULATED, wildcards.subject):
        inputs["acquisition"] = f"{d}/listmode/acquisition.json"
    if re.fullmatch(f"(?:{SIMULATED})|(?:{OWN_LISTMODE})", wildcards.subject):
        inputs["counts"] = f"{d}/listmode/counts.json"
    return inputs


def manifest_images(subjects):
    return [
        f"{subject_dir(s['site'], s['subject'])}/{name}.nii.gz"
        for s in subjects
        for name in ["hc", "ct", "lesion", "organs"] + [f"lc_{n}" for n in lc_names(s["site"], s["split"], s)]
    ]


# --- models: training, prediction, evaluation (rules/train.smk, predict.smk, evaluate.smk) ---


# the model stages run only when the config describes models
MODELS = all(k in config for k in ("models", "training", "diffusion", "inference"))


def training_device():
    return TRAINING["device"]


def diffusion_settings(model):
    """The settings that determine a diffusion model's weights (its config scope).

    Med-DDPM's own SUV cutoff (baselines.med_ddpm.suv_cutoff) counts for med_ddpm only, so
    lifting it does not re-train AMDiff and its ablations.
    """
    sections = {k: config[k] for k in ("models", "diffusion")}
    # where and how fast a model trains is not part of it (amdiff.config.NOT_WEIGHTS)
    sections["training"] = weight_settings(config["training"])
    own = ((config.get("baselines") or {}).get("med_ddpm") or {}).get("suv_cutoff")
    if replicate_base(model) == "med_ddpm" and own is not None:
        sections["med_ddpm"] = {"suv_cutoff": own}
    return sections


def baseline_inputs(wildcards):
    inputs = {"manifest": f"{RESULTS}/manifest_{wildcards.train_site}.tsv"}
    if wildcards.model in COMPARISON_SEGMENTERS:  # fed by the trained Med-DDPM's outputs
        inputs["denoiser"] = f"{RESULTS}/models/med_ddpm/{wildcards.train_site}/best.pt"
    # a configured starting checkpoint is an input: a missing file stops the plan, not the job
    pretrained = ((config.get("baselines") or {}).get("pretrained") or {}).get(wildcards.model)
    if pretrained:
        inputs["pretrained"] = pretrained
    return inputs


def test_cases():
    """(site, subject, image name pXXX_rN) of every test image a model predicts."""
    return [
        (s["site"], s["subject"], name)
        for s in SUBJECTS
        if s["split"] == "test" and s["site"] in TRAINED_ON
        for name in lc_names(s["site"], s["split"], s)
    ]


def outputs_of(model):
    """What a model predicts: AMDiff all three; denoisers the image; segmenters the masks."""
    model = replicate_base(model)  # a seed replicate predicts what its model does
    if model in VARIANTS:
        return ("denoised", "lesion", "organs")
    return ("denoised",) if model in DENOISER_BASELINES + TRAINING_FREE else ("lesion", "organs")


def prediction_targets():
    return sorted(
        {
            subject_predictions(model, site, subject)
            for model in VARIANTS + BASELINES + TRAINING_FREE
            for site, subject, _ in test_cases()
        }
    )


def test_images(site, subject):
    return [name for s, subj, name in test_cases() if (s, subj) == (site, subject)]


def subject_predictions(model, site, subject):
    """Folder of ``model``'s predictions of one subject, one pXXX_rN folder per test image
    inside: the output of one job (rules/predict.smk)."""
    return f"{RESULTS}/predictions/{model}/{site}/{subject}"


def prediction_dir(model, site, subject, image):
    return f"{subject_predictions(model, site, subject)}/{image}"


def images_to_predict(wildcards):
    return len(test_images(wildcards.site, wildcards.subject))


def lowcount_inputs(wildcards):
    """The low-count test images of one subject, in test_images' order: what its prediction jobs read."""
    d = subject_dir(wildcards.site, wildcards.subject)
    return [f"{d}/lc_{image}.nii.gz" for image in test_images(wildcards.site, wildcards.subject)]


def prediction_args(wildcards, model, levels=True, denoised_by=None):
    """Command-line words for all test images of one subject: each image's --lc, its --level
    (the sampler's seed) and --out-dir, and --denoised (``denoised_by``'s prediction of it);
    the shell quotes each word."""
    images = test_images(wildcards.site, wildcards.subject)
    words = ["--lc", *lowcount_inputs(wildcards)]
    if levels:
        words += ["--level", *images]
    words += ["--out-dir"] + [prediction_dir(model, wildcards.site, wildcards.subject, i) for i in images]
    if denoised_by:
        words += ["--denoised"] + [
            f"{prediction_dir(denoised_by, wildcards.site, wildcards.subject, i)}/denoised.nii.gz"
            for i in images
        ]
    return words


def evaluation_inputs(wildcards):
    d = subject_dir(wildcards.site, wildcards.subject)
    inputs = {
        "hc": f"{d}/hc.nii.gz",
        "lesion": f"{d}/lesion.nii.gz",
        "organs": f"{d}/organs.nii.gz",
        "ct": f"{d}/ct.nii.gz",
    }  # its body mask: the whole-image NRMSE's region
    inputs["predictions"] = subject_predictions(wildcards.model, wildcards.site, wildcards.subject)
    if wildcards.model in COMPARISON_SEGMENTERS:  # they quantify on the Med-DDPM image they were fed
        inputs["quant"] = subject_predictions("med_ddpm", wildcards.site, wildcards.subject)
    return inputs


def evaluation_args(wildcards):
    """Command-line words of the predictions (name=folder) and, for comparison segmenters, the
    Med-DDPM images they quantify on; the shell command quotes each word."""
    images = test_images(wildcards.site, wildcards.subject)
    words = ["--prediction"] + [
        f"{i}={prediction_dir(wildcards.model, wildcards.site, wildcards.subject, i)}" for i in images
    ]
    if wildcards.model in COMPARISON_SEGMENTERS:
        words += ["--quant-image"] + [
            f"{i}={prediction_dir('med_ddpm', wildcards.site, wildcards.subject, i)}/denoised.nii.gz"
            for i in images
        ]
    return words


def case_metric_files():
    subjects = sorted({(site, subject) for site, subject, _ in test_cases()})
    return [
        f"{RESULTS}/metrics/cases/{model}/{site}/{subject}.tsv"
        for model in VARIANTS + BASELINES + TRAINING_FREE
        for site, subject in subjects
    ]


def evaluation_targets():
    return (
        [f"{RESULTS}/metrics/metrics.tsv"]
        + [f"{REPORTS}/tables/{name}.{ext}" for name in TABLES for ext in ("tsv", "md", "tex")]
        + [f"{REPORTS}/tables/{name}.{ext}" for name, exts in PAPER_TABLES.items() for ext in exts]
        + [
            f"{REPORTS}/figures/{name}.{ext}"
            for name in ("fig7_regression", "training_curves")
            for ext in ("png", "pdf")
        ]
        + [
            f"{REPORTS}/figures/fig{n}_{kind}_{site}.{ext}"
            for n, kind in SLICE_FIGURES
            for site in TEST_SITES
            for ext in ("png", "pdf")
        ]
        + [f"{REPORTS}/tables/study_checks.{ext}" for ext in ("tsv", "md")]
        + ([f"{REPORTS}/tables/seed_variance.{ext}" for ext in ("tsv", "md")] if REPLICATES else [])
    )


def table_output(name, ext, category):
    path = f"{REPORTS}/tables/{name}.{ext}"
    if ext == "tex":
        return path
    return report(
        path,
        caption=f"../reports/captions/{name}.rst",
        category=category,
        labels={"table": name, "format": ext},
    )


def gaussian_fits():
    """Each test site's Gaussian-filter fit (its training site's): Table 2 labels the row with its FWHM."""
    return {site: f"{RESULTS}/models/gaussian_filter/{TRAINED_ON[site]}/fit.json" for site in TEST_SITES}


def slice_inputs(wildcards):
    inputs = {"metrics": f"{RESULTS}/metrics/metrics.tsv", "budget": BUDGET}
    for site, subject, image in test_cases():
        if site != wildcards.site:
            continue
        d = subject_dir(site, subject)
        inputs[f"{subject}_{image}_lc"] = f"{d}/lc_{image}.nii.gz"
        for ref in ("hc", "lesion", "organs"):
            inputs[f"{subject}_{ref}"] = f"{d}/{ref}.nii.gz"
        for model in VARIANTS + BASELINES:
            inputs[f"{model}_{subject}"] = subject_predictions(model, site, subject)
    return inputs


def training_logs():
    return {
        f"{model}/{site}": f"{RESULTS}/models/{model}/{site}/log.csv"
        for model in VARIANTS + BASELINES
        for site in TRAINING["train_sites"]
    }


if MODELS:
    TRAINING = config["training"]
    VARIANTS = config["models"]["variants"]
    TRAIN_SITES = list(TRAINING["train_sites"])
    BASELINES = config.get("baselines", {}).get("names", [])
    # seed replicates (config seed_replicates): "amdiff_seed1" is amdiff trained from another seed
    REPLICATES = seed_replicates(config)
    REPLICATE_NAMES = [name for names in REPLICATES.values() for name in names]
    # Med-DDPM is AMDiff's diffusion module alone: it trains with the AMDiff trainer
    DIFFUSION_MODELS = VARIANTS + [b for b in BASELINES if b == "med_ddpm"] + REPLICATE_NAMES
    OTHER_BASELINES = [b for b in BASELINES if b != "med_ddpm"]
    COMPARISON_SEGMENTERS = [b for b in OTHER_BASELINES if b in contracts.COMPARISON_SEGMENTERS]
    GAUSSIAN_GRID = config["evaluation"]["gaussian_filter"]["fwhm_mm_grid"]
    INFERENCE = config["inference"]
    TRAINED_ON = {test: train for train, tests in TRAINING["train_sites"].items() for test in tests}
    DENOISER_BASELINES = [b for b in BASELINES if b in contracts.COMPARISON_DENOISERS]
    # Table 2's first rows, which need no training: the low-count input itself and the low-count
    # input Gaussian-filtered at the FWHM fit_gaussian_filter chose on the validation images.
    TRAINING_FREE = ["lowcount_input", "gaussian_filter"]
    REPORTS = config["reports_dir"]
    # every trained model's gradient steps: the tables state them, and a demo run's (run_kind)
    # tables and figures say they come from an untrained smoke test of that many steps
    BUDGET = f"{RESULTS}/metrics/training_budget.tsv"
    TABLES = ["table2_denoising", "table3_segmentation", "table4_ablation", "table5_quantification"]
    PAPER_TABLES = {"headline": ("tsv", "md"), "paper_vs_reproduction": ("tsv", "md"), "claims": ("tsv",)}
    TEST_SITES = sorted({site for site, _, _ in test_cases()})
    TEST_SUBJECT_IDS = never(sorted({subject for _, subject, _ in test_cases()}))  # wildcard regex
    SLICE_FIGURES = [(4, "denoising"), (5, "lesions"), (6, "organs")]


# --- provenance (rules/provenance.smk) --------------------------------------------------

PROVENANCE = f"{config['reports_dir']}/provenance.json"


def run_targets():
    """Every file `rule all` asks for besides the provenance, which is written after them."""
    return data_targets() + (prediction_targets() + evaluation_targets() if MODELS else [])
