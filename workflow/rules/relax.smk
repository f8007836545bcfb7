rule relax:
    input:
        batch_structures,
    output:
        f"{RESULTS}/batches/relax/{{batch}}.json",
    log:
        "logs/relax/{batch}.log",
    benchmark:
        "benchmarks/relax/{batch}.tsv"
    conda:
        "../envs/poscarflow.yaml"
    threads: 1
    resources:
        runtime=120,
        mem_mb=4000,
    params:
        calcs=relax_params,
    shell:
        JOB_COMMAND.format(step="relax")
