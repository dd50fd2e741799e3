# Quality control: per-subject MIP figure, cohort summary (Table 1 analog), and the manifest
# of the prepared cohort, which is what the training stages read.


# Seconds each, one per subject: on a cluster they run in the Snakemake process itself instead
# of queueing as batch jobs. A local run is unchanged.


localrules:
    qc_subject,
    subject_stats,
    cohort_summary,
    manifest,
    training_manifest,


rule qc_subject:
    input:
        unpack(lc_images),
        hc=f"{RESULTS}/{{site}}/{{subject}}/hc.nii.gz",
        lesion=f"{RESULTS}/{{site}}/{{subject}}/lesion.nii.gz",
        organs=f"{RESULTS}/{{site}}/{{subject}}/organs.nii.gz",
    output:
        report(
            f"{RESULTS}/qc/{{site}}/{{subject}}.png",
            caption="../reports/captions/qc_subject.rst",
            category="Data QC",
            subcategory="{site}",
            labels={"site": "{site}", "subject": "{subject}"},
        ),
    log:
        "logs/qc/{site}/{subject}.log",
    conda:
        "../envs/data.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        # name=path words: `:q` quotes each one
        lc=lambda w, input: [f"{name}={input[name]}" for name in lc_images(w)],
        title=lambda w: f"{w.site} {w.subject}",
    shell:
        "amdiff qc --hc {input.hc:q} --lc {params.lc:q} --lesion {input.lesion:q} --organs {input.organs:q}"
        " --title {params.title:q} --out {output:q} > {log:q} 2>&1"


rule subject_stats:
    input:
        unpack(stats_inputs),
    output:
        f"{RESULTS}/{{site}}/{{subject}}/stats.json",
    log:
        "logs/stats/{site}/{subject}.log",
    conda:
        "../envs/data.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        split=lambda w: subject_of(w)["split"],
        # a word list: `:q` quotes each word, an empty list adds none
        extra=lambda w, input: [
            word for k in ("acquisition", "counts") if k in input.keys() for word in (f"--{k}", input[k])
        ],
    shell:
        "amdiff subject-stats --site {wildcards.site:q} --subject {wildcards.subject:q} --split {params.split:q}"
        " --hc {input.hc:q} --lesion {input.lesion:q} {params.extra:q} --out {output:q} > {log:q} 2>&1"


rule cohort_summary:
    input:
        [f"{subject_dir(s['site'], s['subject'])}/stats.json" for s in SUBJECTS],
    output:
        tsv=report(
            f"{RESULTS}/cohort/summary.tsv",
            caption="../reports/captions/cohort_summary.rst",
            category="Data QC",
        ),
        md=f"{RESULTS}/cohort/summary.md",
    log:
        "logs/cohort_summary.log",
    conda:
        "../envs/data.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    shell:
        "amdiff summary {input:q} --out-tsv {output.tsv:q} --out-md {output.md:q} > {log:q} 2>&1"


rule manifest:
    input:
        manifest_images(SUBJECTS),
        config=f"{CONFIG_DIR}/cohort.yaml",
    output:
        f"{RESULTS}/manifest.tsv",
    log:
        "logs/manifest.log",
    conda:
        "../envs/data.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "amdiff manifest --config {input.config:q} --out {output:q} --validate > {log:q} 2>&1"


# What one site's models train on: its train and validation subjects only, so a broken test
# image (or another site's data) fails its own jobs and not every model's training.


rule training_manifest:
    input:
        lambda w: manifest_images(
            [s for s in SUBJECTS if s["site"] == w.train_site and s["split"] in ("train", "val")]
        ),
        config=f"{CONFIG_DIR}/cohort.yaml",
    output:
        f"{RESULTS}/manifest_{{train_site}}.tsv",
    log:
        "logs/manifest_{train_site}.log",
    wildcard_constraints:
        train_site="|".join(config["sites"]),
    conda:
        "../envs/data.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "amdiff manifest --config {input.config:q} --site {wildcards.train_site:q} --splits train,val"
        " --out {output:q} --validate > {log:q} 2>&1"
