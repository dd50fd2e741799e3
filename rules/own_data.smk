# Bring your own data (cohort.source: manifest): validated copies of the user's images.
# Inputs are never modified; each copy is checked (geometry, units, NaN) before it lands.


rule import_ct:
    input:
        lambda w: subject_of(w)["ct"],
    output:
        f"{RESULTS}/{{site}}/{{subject}}/ct.nii.gz",
    log:
        "logs/import/{site}/{subject}/ct.log",
    localrule: True
    conda:
        "../envs/data.yaml"
    shell:
        "amdiff import-image --kind ct --input {input:q} --out {output:q} > {log:q} 2>&1"


rule import_lesion:
    input:
        mask=lambda w: subject_of(w)["lesion"],
        reference=lambda w: subject_of(w)["hc_pet"],
    output:
        f"{RESULTS}/{{site}}/{{subject}}/lesion.nii.gz",
    log:
        "logs/import/{site}/{subject}/lesion.log",
    localrule: True
    conda:
        "../envs/data.yaml"
    shell:
        "amdiff import-image --kind labels --input {input.mask:q} --reference {input.reference:q}"
        " --out {output:q} > {log:q} 2>&1"


rule mumap_from_ct:
    input:
        f"{RESULTS}/{{site}}/{{subject}}/ct.nii.gz",
    output:
        f"{RESULTS}/{{site}}/{{subject}}/mumap.nii.gz",
    log:
        "logs/import/{site}/{subject}/mumap.log",
    conda:
        "../envs/data.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=5,
    shell:
        "amdiff mumap --ct {input:q} --out {output:q} > {log:q} 2>&1"


rule import_highcount:
    input:
        image=lambda w: subject_of(w)["hc_pet"],
        reference=lambda w: subject_of(w)["ct"],
    output:
        f"{RESULTS}/{{site}}/{{subject}}/hc.nii.gz",
    log:
        "logs/import/{site}/{subject}/hc.log",
    wildcard_constraints:
        subject=OWN_IMAGES,
    localrule: True
    conda:
        "../envs/data.yaml"
    shell:
        "amdiff import-image --kind suv --input {input.image:q} --reference {input.reference:q}"
        " --out {output:q} > {log:q} 2>&1"


rule import_lowcount:
    input:
        image=lambda w: own_lowcount(w),
        reference=lambda w: subject_of(w)["hc_pet"],
    output:
        f"{RESULTS}/{{site}}/{{subject}}/lc_{{level}}_r{{real}}.nii.gz",
    log:
        "logs/import/{site}/{subject}/lc_{level}_r{real}.log",
    wildcard_constraints:
        subject=OWN_IMAGES,
    localrule: True
    conda:
        "../envs/data.yaml"
    shell:
        "amdiff import-image --kind suv --input {input.image:q} --reference {input.reference:q}"
        " --out {output:q} > {log:q} 2>&1"
