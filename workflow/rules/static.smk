rule static:
    input:
        f"{RESULTS}/batches/relax/{{batch}}.json",
    output:
        f"{RESULTS}/batches/static/{{batch}}.json",
    log:
        "logs/static/{batch}.log",
    benchmark:
        "benchmarks/static/{batch}.tsv"
    conda:
        "../envs/poscarflow.yaml"
    threads: 1
    resources:
        runtime=60,
        mem_mb=4000,
    params:
        calcs=static_params,
    shell:
        JOB_COMMAND.format(step="static")
