# Synthetic cohort: one whole-body 18F-FDG PET/CT phantom per subject, with truth labels.


rule phantom:
    input:
        config=f"{CONFIG_DIR}/phantom_{{site}}.yaml",
    output:
        suv=f"{RESULTS}/{{site}}/{{subject}}/truth_suv.nii.gz",
        ct=f"{RESULTS}/{{site}}/{{subject}}/ct.nii.gz",
        mumap=f"{RESULTS}/{{site}}/{{subject}}/mumap.nii.gz",
        organs=f"{RESULTS}/{{site}}/{{subject}}/organs_truth.nii.gz",
        lesion=f"{RESULTS}/{{site}}/{{subject}}/lesion.nii.gz",
        meta=f"{RESULTS}/{{site}}/{{subject}}/phantom.json",
    log:
        "logs/phantom/{site}/{subject}.log",
    benchmark:
        f"{RESULTS}/benchmarks/phantom/{{site}}/{{subject}}.tsv"
    wildcard_constraints:
        subject=SIMULATED if PHANTOM else NOTHING,
    conda:
        "../envs/data.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        outdir=lambda w, output: os.path.dirname(output.meta),
    shell:
        "amdiff phantom --config {input.config:q} --site {wildcards.site:q} --subject {wildcards.subject:q}"
        " --outdir {params.outdir:q} > {log:q} 2>&1"
