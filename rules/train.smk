# Training: every AMDiff variant per training site. The job writes last.pt every epoch (not a
# declared output), so a killed job resumes from it when re-run; best.pt is the best-validation
# checkpoint that inference uses.

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


def never(names):
    return "|".join(names) if names else "(?!x)x"


def training_device():
    return TRAINING["device"]


def amdiff_params(wildcards):
    """The settings that determine a diffusion model's weights, as JSON (a change re-runs it).

    Med-DDPM's own SUV cutoff (baselines.med_ddpm.suv_cutoff) counts for med_ddpm only, so
    lifting it does not re-train AMDiff and its ablations; left unset, the params are those of
    before the key existed, so existing results are not re-run.
    """
    sections = {k: config[k] for k in ("models", "training", "diffusion")}
    own = ((config.get("baselines") or {}).get("med_ddpm") or {}).get("suv_cutoff")
    if replicate_base(wildcards.model) == "med_ddpm" and own is not None:
        sections["med_ddpm"] = {"suv_cutoff": own}
    return json.dumps(sections)


rule train_amdiff:
    input:
        manifest=f"{RESULTS}/manifest_{{train_site}}.tsv",
    output:
        best=f"{RESULTS}/models/{{model}}/{{train_site}}/best.pt",
        log=report(f"{RESULTS}/models/{{model}}/{{train_site}}/log.csv", category="Training",
                   caption="../reports/captions/training_log.rst",
                   labels={"model": "{model}", "site": "{train_site}"}),
        progress=report(f"{RESULTS}/models/{{model}}/{{train_site}}/progress.png", category="Training progress",
                        caption="../reports/captions/training_progress.rst",
                        labels={"model": "{model}", "site": "{train_site}"}),
    params:
        training=amdiff_params,
        outdir=lambda w: f"{RESULTS}/models/{w.model}/{w.train_site}",
    wildcard_constraints:
        model=never(DIFFUSION_MODELS),
        train_site="|".join(TRAIN_SITES),
    log:
        "logs/train/{model}/{train_site}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train/{{model}}/{{train_site}}.tsv"
    threads: TRAINING["threads"]
    resources:
        **network_resources("train", training_device()),
    conda:
        "../envs/learning.yaml"
    shell:
        "{AMDIFF} train --config {CONFIG_FILE:q} --manifest {input.manifest:q} --site {wildcards.train_site}"
        " --variant {wildcards.model} --out-dir {params.outdir:q} --threads {threads} > {log:q} 2>&1"


def baseline_inputs(wildcards):
    inputs = {"manifest": f"{RESULTS}/manifest_{wildcards.train_site}.tsv"}
    if wildcards.model in COMPARISON_SEGMENTERS:   # fed by the trained Med-DDPM's outputs
        inputs["denoiser"] = f"{RESULTS}/models/med_ddpm/{wildcards.train_site}/best.pt"
    # a configured starting checkpoint is an input: a missing file stops the plan, not the job
    pretrained = ((config.get("baselines") or {}).get("pretrained") or {}).get(wildcards.model)
    if pretrained:
        inputs["pretrained"] = pretrained
    return inputs


rule train_baseline:
    input:
        unpack(baseline_inputs),
    output:
        best=f"{RESULTS}/models/{{model}}/{{train_site}}/best.pt",
        log=report(f"{RESULTS}/models/{{model}}/{{train_site}}/log.csv", category="Training",
                   caption="../reports/captions/training_log.rst",
                   labels={"model": "{model}", "site": "{train_site}"}),
        progress=report(f"{RESULTS}/models/{{model}}/{{train_site}}/progress.png", category="Training progress",
                        caption="../reports/captions/training_progress.rst",
                        labels={"model": "{model}", "site": "{train_site}"}),
    params:
        training=json.dumps({k: config.get(k) for k in ("training", "baselines", "inference")}),
        outdir=lambda w: f"{RESULTS}/models/{w.model}/{w.train_site}",
        # flag and shell-quoted path, or nothing (the rule leaves the param unquoted)
        denoiser=lambda w, input: (f"--denoiser-checkpoint {shlex.quote(str(input.denoiser))}"
                                   if "denoiser" in input.keys() else ""),
    wildcard_constraints:
        model=never(OTHER_BASELINES),
        train_site="|".join(TRAIN_SITES),
    log:
        "logs/train/{model}/{train_site}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train/{{model}}/{{train_site}}.tsv"
    threads: TRAINING["threads"]
    resources:
        **network_resources("train", training_device()),
    conda:
        "../envs/learning.yaml"
    shell:
        "{AMDIFF} train --config {CONFIG_FILE:q} --manifest {input.manifest:q} --site {wildcards.train_site}"
        " --variant {wildcards.model} {params.denoiser} --out-dir {params.outdir:q} --threads {threads} > {log:q} 2>&1"


rule fit_gaussian_filter:
    # Table 2's Gaussian-filter row needs no training, only its FWHM: the candidate with the
    # lowest mean whole-image NRMSE on this site's validation images (amdiff.evaluate.gaussian)
    input:
        manifest=f"{RESULTS}/manifest_{{train_site}}.tsv",
    output:
        f"{RESULTS}/models/gaussian_filter/{{train_site}}/fit.json",
    params:
        # evaluation.gaussian_filter.fwhm_mm_grid
        grid=",".join(f"{v:g}" for v in GAUSSIAN_GRID),
        # the criterion reads the whole-image NRMSE as the evaluation does
        nrmse_whole=config["evaluation"]["nrmse_whole"],
    wildcard_constraints:
        train_site="|".join(TRAIN_SITES),
    log:
        "logs/train/gaussian_filter/{train_site}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train/gaussian_filter/{{train_site}}.tsv"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=120,
    conda:
        "../envs/evaluate.yaml"
    shell:
        "{AMDIFF} fit-gaussian --manifest {input.manifest:q} --site {wildcards.train_site} --fwhm-grid {params.grid}"
        " --nrmse-whole {params.nrmse_whole} --out {output:q} > {log:q} 2>&1"
