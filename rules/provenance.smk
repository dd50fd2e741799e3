# Provenance: the last job of every run records which code (git commit, dirty or not), config
# (its sha256), packages and machine made the results, and the wall time of each stage summed
# from the benchmark files (amdiff/provenance.py).


rule provenance:
    input:
        # the whole config: its scope file is written again whenever any setting changes
        config=f"{CONFIG_DIR}/all.yaml",
        targets=run_targets(),
    output:
        report(PROVENANCE, caption="../reports/captions/provenance.rst", category="Provenance"),
    log:
        "logs/provenance.log",
    conda:
        "../envs/learning.yaml"
    # no benchmark: its own file would be written after it and counted by the next run
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        benchmarks=f"{RESULTS}/benchmarks",
        source=workflow.basedir,
    shell:
        "amdiff provenance --config {input.config:q} --benchmarks {params.benchmarks:q}"
        " --source-dir {params.source:q} --out {output:q} > {log:q} 2>&1"
