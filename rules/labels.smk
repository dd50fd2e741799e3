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
        # several words: each path is shell-quoted here, the rule leaves the param unquoted
        source=lambda w, input: (
            f"--source {shlex.quote(str(input.source))}" if "source" in input.keys() else ""
        ),
        ts=("--fast " if LABELS["totalsegmentator"]["fast"] else "")
        + f"--device {LABELS['totalsegmentator']['device']}",
    shell:
        "amdiff labels --method {params.method} --ct {input.ct:q} {params.source} {params.ts}"
        " --out {output:q} > {log:q} 2>&1"
