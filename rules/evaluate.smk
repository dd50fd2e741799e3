# Evaluation: per-subject metrics of every model's predictions against the high-count image and
# the true masks, pooled into one table, then the paper's tables (2-4 and beyond), the headline
# numbers, the paper-versus-reproduction comparison and the figures (4-7, training curves).


# About a second each (66 evaluate_subject jobs in the demo): on a cluster they run in the
# Snakemake process itself instead of queueing as batch jobs. A local run is unchanged.


localrules:
    evaluate_subject,
    collect_metrics,


rule evaluate_subject:
    input:
        unpack(evaluation_inputs),
    output:
        f"{RESULTS}/metrics/cases/{{model}}/{{site}}/{{subject}}.tsv",
    log:
        "logs/evaluate/{model}/{site}/{subject}.log",
    benchmark:
        f"{RESULTS}/benchmarks/evaluate/{{model}}/{{site}}/{{subject}}.tsv"
    conda:
        "../envs/evaluate.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        outputs=lambda w: ",".join(outputs_of(w.model)),
        images=evaluation_args,
        # evaluated subjects are test subjects: their split's standard count (mCT Group II: one pass)
        standard=lambda w: standard_count_percent(config["sites"][w.site], "test"),
        # how predicted and true lesions match (evaluation.lesion_match)
        lesion_match=[
            word
            for key, value in config["evaluation"]["lesion_match"].items()
            for word in (f"--lesion-match-{key}", str(value))
        ],
        # the whole-image NRMSE's reading (evaluation.nrmse_whole)
        nrmse_whole=config["evaluation"]["nrmse_whole"],
    shell:
        "amdiff evaluate --model {wildcards.model:q} --site {wildcards.site:q} --subject {wildcards.subject:q}"
        " --hc {input.hc:q} --lesion {input.lesion:q} --organs {input.organs:q} --ct {input.ct:q}"
        " --nrmse-whole {params.nrmse_whole:q} --outputs {params.outputs:q}"
        " {params.images:q} --standard-count-percent {params.standard:q} {params.lesion_match:q}"
        " --out {output:q} > {log:q} 2>&1"


rule collect_metrics:
    input:
        case_metric_files(),
    output:
        report(
            f"{RESULTS}/metrics/metrics.tsv",
            caption="../reports/captions/metrics.rst",
            category="Evaluation",
            subcategory="Per-case metrics",
        ),
    log:
        "logs/evaluate/collect.log",
    conda:
        "../envs/evaluate.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "amdiff collect-metrics --out {output:q} {input:q} > {log:q} 2>&1"


rule study_checks:
    # the floor of a trained study: denoisers below the low-count input (and AMDiff below the
    # Gaussian filter) at every site and level; Dice against fixed targets (amdiff.evaluate.checks)
    input:
        metrics=f"{RESULTS}/metrics/metrics.tsv",
        budget=BUDGET,
    output:
        tsv=report(
            f"{REPORTS}/tables/study_checks.tsv",
            caption="../reports/captions/study_checks.rst",
            category="Tables",
            labels={"table": "study_checks", "format": "tsv"},
        ),
        md=report(
            f"{REPORTS}/tables/study_checks.md",
            caption="../reports/captions/study_checks.rst",
            category="Tables",
            labels={"table": "study_checks", "format": "md"},
        ),
    log:
        "logs/evaluate/study_checks.log",
    conda:
        "../envs/evaluate.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        run_kind=run_kind(config),
    shell:
        "amdiff study-checks --metrics {input.metrics:q} --budget {input.budget:q} --run-kind {params.run_kind:q}"
        " --out-tsv {output.tsv:q} --out-md {output.md:q} > {log:q} 2>&1"


rule seed_variance:
    # the reference model (first of seed_replicates.models) against each other one, with the
    # spread between training seeds (amdiff.evaluate.seeds)
    input:
        config=f"{CONFIG_DIR}/seed_replicates.yaml",
        metrics=[
            f"{RESULTS}/metrics/cases/{name}/{site}/{subject}.tsv"
            for model, names in REPLICATES.items()
            for name in [model, *names]
            for site, subject in sorted({(s, subj) for s, subj, _ in test_cases()})
        ],
    output:
        tsv=report(
            f"{REPORTS}/tables/seed_variance.tsv",
            caption="../reports/captions/seed_variance.rst",
            category="Tables",
            labels={"table": "seed_variance", "format": "tsv"},
        ),
        md=report(
            f"{REPORTS}/tables/seed_variance.md",
            caption="../reports/captions/seed_variance.rst",
            category="Tables",
            labels={"table": "seed_variance", "format": "md"},
        ),
    log:
        "logs/evaluate/seed_variance.log",
    conda:
        "../envs/evaluate.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "amdiff seed-variance --config {input.config:q} --metrics {input.metrics:q}"
        " --out-tsv {output.tsv:q} --out-md {output.md:q} > {log:q} 2>&1"


rule tables:
    input:
        metrics=f"{RESULTS}/metrics/metrics.tsv",
        fits=list(gaussian_fits().values()),
        budget=BUDGET,
    output:
        # TSV (every number) and Markdown (the paper's layout) go into the HTML report.
        **{
            f"{name}_{ext}": table_output(name, ext, "Tables")
            for name in TABLES
            for ext in ("tsv", "md", "tex")
        },
        **{
            f"{name}_{ext}": table_output(name, ext, "Paper versus reproduction")
            for name, exts in PAPER_TABLES.items()
            for ext in exts
        },
    log:
        "logs/evaluate/tables.log",
    conda:
        "../envs/evaluate.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        out_dir=lambda w, output: os.path.dirname(output[0]),
        seed=config["seed"],
        # site=path words; the shell command quotes each one ({params.fits:q})
        fits=[f"{site}={path}" for site, path in gaussian_fits().items()],
        run_kind=run_kind(config),
    shell:
        "amdiff tables --metrics {input.metrics:q} --gaussian-fit {params.fits:q} --out-dir {params.out_dir:q}"
        " --seed {params.seed:q} --budget {input.budget:q} --run-kind {params.run_kind:q} > {log:q} 2>&1"


rule figure_regression:
    input:
        metrics=f"{RESULTS}/metrics/metrics.tsv",
        budget=BUDGET,
    output:
        png=report(
            f"{REPORTS}/figures/fig7_regression.png",
            caption="../reports/captions/fig7_regression.rst",
            category="Figures",
            labels={"figure": "Fig. 7 analog"},
        ),
        pdf=f"{REPORTS}/figures/fig7_regression.pdf",
        stats=report(
            f"{REPORTS}/tables/fig7_regression.tsv",
            caption="../reports/captions/fig7_regression.rst",
            category="Figures",
            labels={"figure": "Fig. 7 regression statistics"},
        ),
    log:
        "logs/evaluate/fig7_regression.log",
    conda:
        "../envs/evaluate.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        models=VARIANTS,
        run_kind=run_kind(config),
    shell:
        "amdiff figure-regression --metrics {input.metrics:q} --models {params.models:q}"
        " --png {output.png:q} --pdf {output.pdf:q} --stats {output.stats:q}"
        " --budget {input.budget:q} --run-kind {params.run_kind:q} > {log:q} 2>&1"


rule figure_slices:
    input:
        unpack(slice_inputs),
    output:
        **{
            f"{kind}_{ext}": (
                report(
                    f"{REPORTS}/figures/fig{n}_{kind}_{{site}}.{ext}",
                    caption=f"../reports/captions/fig{n}_{kind}.rst",
                    category="Figures",
                    subcategory="{site}",
                    labels={"figure": f"Fig. {n} analog", "site": "{site}"},
                )
                if ext == "png"
                else f"{REPORTS}/figures/fig{n}_{kind}_{{site}}.{ext}"
            )
            for n, kind in SLICE_FIGURES
            for ext in ("png", "pdf")
        },
    log:
        "logs/evaluate/figure_slices_{site}.log",
    conda:
        "../envs/evaluate.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=10,
    params:
        models=VARIANTS + BASELINES,
        # the results folder its images are read from (path contract), that of the pooled metrics
        results=lambda w, input: os.path.dirname(os.path.dirname(input.metrics)),
        prefix=lambda w, output: os.path.dirname(output[0]),
        run_kind=run_kind(config),
    shell:
        "amdiff figure-slices --metrics {input.metrics:q} --results {params.results:q} --site {wildcards.site:q}"
        " --models {params.models:q} --out-dir {params.prefix:q}"
        " --budget {input.budget:q} --run-kind {params.run_kind:q} > {log:q} 2>&1"


rule figure_training:
    input:
        **training_logs(),
        budget=BUDGET,
    output:
        png=report(
            f"{REPORTS}/figures/training_curves.png",
            caption="../reports/captions/training_curves.rst",
            category="Figures",
            labels={"figure": "Training curves"},
        ),
        pdf=f"{REPORTS}/figures/training_curves.pdf",
    log:
        "logs/evaluate/training_curves.log",
    conda:
        "../envs/evaluate.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        logs=lambda w, input: [f"{name}={input[name]}" for name in training_logs()],
        run_kind=run_kind(config),
    shell:
        "amdiff figure-training --log {params.logs:q} --png {output.png:q} --pdf {output.pdf:q}"
        " --budget {input.budget:q} --run-kind {params.run_kind:q} > {log:q} 2>&1"


rule training_budget:
    input:
        **training_logs(),
        config=f"{CONFIG_DIR}/training.yaml",
    output:
        report(
            BUDGET,
            caption="../reports/captions/training_budget.rst",
            category="Tables",
            labels={"table": "training_budget", "format": "tsv"},
        ),
    log:
        "logs/evaluate/training_budget.log",
    conda:
        "../envs/evaluate.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        logs=lambda w, input: [f"{name}={input[name]}" for name in training_logs()],
    shell:
        # patches per epoch and batch size: the config the models trained with (a change re-trains them)
        "amdiff training-budget --config {input.config:q} --log {params.logs:q} --out {output:q} > {log:q} 2>&1"
