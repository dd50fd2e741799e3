# Organ labels (0 background, 1 liver, 2 lung, 3 bone, 4 muscle, 5 kidney, 6 spleen, 7 aorta):
# phantom truth, TotalSegmentator on the CT, or a label map the user provides.


rule organ_labels:
    input:
        unpack(label_source),
        ct=f"{RESULTS}/{{site}}/{{subject}}/ct.nii.gz",
    output:
        f"{RESULTS}/{{site}}/{{subject}}/organs.nii.gz",
    log:
        "logs/labels/{site}/{subject}.log",
    benchmark:
        f"{RESULTS}/benchmarks/labels/{{site}}/{{subject}}.tsv"
    conda:
        "../envs/totalseg.yaml"
    threads: 2 if LABELS["method"] == "totalsegmentator" else 1
    resources:
        **job_resources(8000 if LABELS["method"] == "totalsegmentator" else 1000, 30),
        gpu=(
            1
            if LABELS["method"] == "totalsegmentator" and LABELS["totalsegmentator"]["device"] == "gpu"
            else 0
        ),
    params:
        method=LABELS["method"],
        # word lists: `:q` quotes each word, an empty list adds none
        source=lambda w, input: ["--source", input.source] if "source" in input.keys() else [],
        ts=(["--fast"] if LABELS["totalsegmentator"]["fast"] else [])
        + ["--device", LABELS["totalsegmentator"]["device"]],
    shell:
        "amdiff labels --method {params.method:q} --ct {input.ct:q} {params.source:q} {params.ts:q}"
        " --out {output:q} > {log:q} 2>&1"
