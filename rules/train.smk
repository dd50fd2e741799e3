# Training, per training site: train_diffusion trains every diffusion model (AMDiff, its
# ablations, Med-DDPM and their seed replicates: one trainer), train_baseline the other
# comparison models. A job writes last.pt every epoch (not a declared output), so a killed job
# resumes from it when re-run; best.pt is the best-validation checkpoint that inference uses.


rule train_diffusion:
    input:
        config=f"{CONFIG_DIR}/diffusion_{{model}}.yaml",
        manifest=f"{RESULTS}/manifest_{{train_site}}.tsv",
    output:
        best=f"{RESULTS}/models/{{model}}/{{train_site}}/best.pt",
        log=report(
            f"{RESULTS}/models/{{model}}/{{train_site}}/log.csv",
            category="Training",
            caption="../reports/captions/training_log.rst",
            labels={"model": "{model}", "site": "{train_site}"},
        ),
        progress=report(
            f"{RESULTS}/models/{{model}}/{{train_site}}/progress.png",
            category="Training progress",
            caption="../reports/captions/training_progress.rst",
            labels={"model": "{model}", "site": "{train_site}"},
        ),
    log:
        "logs/train/{model}/{train_site}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train/{{model}}/{{train_site}}.tsv"
    wildcard_constraints:
        model=never(DIFFUSION_MODELS),
        train_site="|".join(TRAIN_SITES),
    # before predictions that are ready: a training gates every job after it (Snakemake would
    # otherwise prefer jobs with larger inputs and leave the last trainings to the end)
    priority: 10
    conda:
        "../envs/learning.yaml"
    threads: TRAINING["threads"] * TRAINING["gpus"]
    resources:
        **network_resources("train", training_device(), TRAINING["gpus"]),
    params:
        outdir=lambda w: f"{RESULTS}/models/{w.model}/{w.train_site}",
    shell:
        "amdiff train --config {input.config:q} --manifest {input.manifest:q} --site {wildcards.train_site:q}"
        " --variant {wildcards.model:q} --out-dir {params.outdir:q} --threads {threads} > {log:q} 2>&1"


rule train_baseline:
    input:
        unpack(baseline_inputs),
        config=f"{CONFIG_DIR}/baselines.yaml",
    output:
        best=f"{RESULTS}/models/{{model}}/{{train_site}}/best.pt",
        log=report(
            f"{RESULTS}/models/{{model}}/{{train_site}}/log.csv",
            category="Training",
            caption="../reports/captions/training_log.rst",
            labels={"model": "{model}", "site": "{train_site}"},
        ),
        progress=report(
            f"{RESULTS}/models/{{model}}/{{train_site}}/progress.png",
            category="Training progress",
            caption="../reports/captions/training_progress.rst",
            labels={"model": "{model}", "site": "{train_site}"},
        ),
    log:
        "logs/train/{model}/{train_site}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train/{{model}}/{{train_site}}.tsv"
    wildcard_constraints:
        model=never(OTHER_BASELINES),
        train_site="|".join(TRAIN_SITES),
    # before predictions that are ready: a training gates every job after it (Snakemake would
    # otherwise prefer jobs with larger inputs and leave the last trainings to the end)
    priority: 10
    conda:
        "../envs/learning.yaml"
    threads: TRAINING["threads"] * TRAINING["gpus"]
    resources:
        **network_resources("train", training_device(), TRAINING["gpus"]),
    params:
        outdir=lambda w: f"{RESULTS}/models/{w.model}/{w.train_site}",
        # a word list: `:q` quotes each word, an empty list adds none
        denoiser=lambda w, input: (
            ["--denoiser-checkpoint", input.denoiser] if "denoiser" in input.keys() else []
        ),
    shell:
        "amdiff train --config {input.config:q} --manifest {input.manifest:q} --site {wildcards.train_site:q}"
        " --variant {wildcards.model:q} {params.denoiser:q} --out-dir {params.outdir:q} --threads {threads} > {log:q} 2>&1"


rule fit_gaussian_filter:
    # Table 2's Gaussian-filter row needs no training, only its FWHM: the candidate with the
    # lowest mean whole-image NRMSE on this site's validation images (amdiff.evaluate.gaussian)
    input:
        manifest=f"{RESULTS}/manifest_{{train_site}}.tsv",
    output:
        f"{RESULTS}/models/gaussian_filter/{{train_site}}/fit.json",
    log:
        "logs/train/gaussian_filter/{train_site}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train/gaussian_filter/{{train_site}}.tsv"
    wildcard_constraints:
        train_site="|".join(TRAIN_SITES),
    conda:
        "../envs/evaluate.yaml"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=120,
    params:
        # evaluation.gaussian_filter.fwhm_mm_grid
        grid=",".join(f"{v:g}" for v in GAUSSIAN_GRID),
        # the criterion reads the whole-image NRMSE as the evaluation does
        nrmse_whole=config["evaluation"]["nrmse_whole"],
    shell:
        "amdiff fit-gaussian --manifest {input.manifest:q} --site {wildcards.train_site:q} --fwhm-grid {params.grid:q}"
        " --nrmse-whole {params.nrmse_whole:q} --out {output:q} > {log:q} 2>&1"
