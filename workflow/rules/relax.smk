rule relax:
    input:
        batch_structures,
    output:
        f"{RESULTS}/batches/relax/{{batch}}.json",
    log:
        "logs/relax/{batch}.log",
    benchmark:
        "benchmarks/relax/{batch}.tsv"
    group:
        "calculation"
    conda:
        "../envs/poscarflow.yaml"
    threads: 1
    resources:
        runtime=escalating(120, "timeout"),
        mem_mb=escalating(MEM_MB, "oom"),
    params:
        parameters=parameters("relax"),
        request=request("relax"),
    shell:
        JOB_COMMAND
