# The merged config the `amdiff` verbs read, one file per config scope (scope_settings in
# rules/common.smk), written by a job rather than while the Snakefile is parsed: a dry run (-n),
# --list-rules or --lint writes nothing, and the rule graph shows which rules read which scope.


rule job_config:
    output:
        f"{CONFIG_DIR}/{{scope}}.yaml",
    log:
        "logs/job_config/{scope}.log",
    localrule: True
    params:
        # the scope's settings: when they change, the file is written again and the jobs that
        # read it re-run (its time stamp); a change elsewhere in the config leaves it alone
        settings=lambda w: scope_settings(w.scope),
    run:
        from amdiff.io.atomic import write_text

        write_text(output[0], effective_config_text())
