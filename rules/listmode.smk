# List-mode: simulated PETSIRD acquisitions and non-overlapping down-sampling.


rule simulate_listmode:
    input:
        unpack(simulate_inputs),
        config=f"{CONFIG_DIR}/acquisition_{{site}}.yaml",
    output:
        listmode=f"{RESULTS}/{{site}}/{{subject}}/listmode/full.petsird",
        summary=f"{RESULTS}/{{site}}/{{subject}}/listmode/acquisition.json",
    log:
        "logs/simulate/{site}/{subject}.log",
    benchmark:
        f"{RESULTS}/benchmarks/simulate/{{site}}/{{subject}}.tsv"
    wildcard_constraints:
        subject=SIMULATED,
    conda:
        "../envs/data.yaml"
    threads: 1
    resources:
        **job_resources(4000, 60),
    params:
        body=body_size,
        # the split picks sites.<site>.acquisition_by_split (e.g. mCT Group II test scans)
        split=lambda w: subject_of(w)["split"],
    shell:
        "amdiff simulate --config {input.config:q} --site {wildcards.site:q} --subject {wildcards.subject:q}"
        " --split {params.split:q} --suv {input.suv:q} --mumap {input.mumap:q} {params.body:q}"
        " --out {output.listmode:q} --summary {output.summary:q} > {log:q} 2>&1"


# The number of low-count lists depends on the subject's split, so the rule declares the folder
# that holds them (one list per level and realization) and counts.json (the events of each).


rule downsample:
    input:
        full_listmode,
    output:
        counts=f"{RESULTS}/{{site}}/{{subject}}/listmode/counts.json",
        lists=directory(f"{RESULTS}/{{site}}/{{subject}}/listmode/lowcount"),
    log:
        "logs/downsample/{site}/{subject}.log",
    benchmark:
        f"{RESULTS}/benchmarks/downsample/{{site}}/{{subject}}.tsv"
    conda:
        "../envs/data.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=60,
    params:
        levels=lambda w: ",".join(f"{p:g}" for p in count_levels(config, w.site, subject_of(w)["split"])),
        realizations=lambda w: config["sites"][w.site]["realizations"],
        seed=lambda w: derived_seed(config["seed"], "downsample", w.site, w.subject),
    shell:
        "amdiff downsample --input {input:q} --levels {params.levels:q} --realizations {params.realizations:q}"
        " --seed {params.seed:q} --outdir {output.lists:q} --counts {output.counts:q} > {log:q} 2>&1"
