# OSEM reconstruction: the high-count reference from the full list, each low-count image
# from one down-sampled list, with identical settings.


rule recon_highcount:
    input:
        config=f"{CONFIG_DIR}/recon_{{site}}.yaml",
        listmode=full_listmode,
        mumap=f"{RESULTS}/{{site}}/{{subject}}/mumap.nii.gz",
    output:
        f"{RESULTS}/{{site}}/{{subject}}/hc.nii.gz",
    log:
        "logs/recon/{site}/{subject}/hc.log",
    benchmark:
        f"{RESULTS}/benchmarks/recon/{{site}}/{{subject}}/hc.tsv"
    wildcard_constraints:
        subject=f"(?:{SIMULATED})|(?:{OWN_LISTMODE})",
    conda:
        "../envs/data.yaml"
    threads: 1
    resources:
        **job_resources(4000, 60),
        gpu=recon_resources,
    shell:
        "amdiff recon --config {input.config:q} --site {wildcards.site:q} --listmode {input.listmode:q}"
        " --mumap {input.mumap:q} --count-percent 100 --out {output:q} > {log:q} 2>&1"


rule recon_lowcount:
    input:
        config=f"{CONFIG_DIR}/recon_{{site}}.yaml",
        lists=f"{RESULTS}/{{site}}/{{subject}}/listmode/lowcount",
        mumap=f"{RESULTS}/{{site}}/{{subject}}/mumap.nii.gz",
    output:
        f"{RESULTS}/{{site}}/{{subject}}/lc_{{level}}_r{{real}}.nii.gz",
    log:
        "logs/recon/{site}/{subject}/lc_{level}_r{real}.log",
    benchmark:
        f"{RESULTS}/benchmarks/recon/{{site}}/{{subject}}/lc_{{level}}_r{{real}}.tsv"
    wildcard_constraints:
        subject=f"(?:{SIMULATED})|(?:{OWN_LISTMODE})",
    conda:
        "../envs/data.yaml"
    threads: 1
    resources:
        **job_resources(4000, 60),
        gpu=recon_resources,
    params:
        listmode=lambda w, input: f"{input.lists}/{w.level}_r{w.real}.petsird",
        percent=lambda w: percent_of(w.level),
    shell:
        "amdiff recon --config {input.config:q} --site {wildcards.site:q} --listmode {params.listmode:q}"
        " --mumap {input.mumap:q} --count-percent {params.percent:q} --out {output:q} > {log:q} 2>&1"
