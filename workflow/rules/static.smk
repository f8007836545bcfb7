rule static:
    input:
        f"{RESULTS}/batches/relax/{{batch}}.json",
    output:
        f"{RESULTS}/batches/static/{{batch}}.json",
    log:
        "logs/static/{batch}.log",
    benchmark:
        "benchmarks/static/{batch}.tsv"
    group:
        "calculation"
    conda:
        "../envs/poscarflow.yaml"
    threads: 1
    resources:
        runtime=escalating(60, "timeout"),
        mem_mb=escalating(MEM_MB, "oom"),
    params:
        parameters=parameters("static"),
        request=request("static"),
    shell:
        JOB_COMMAND
