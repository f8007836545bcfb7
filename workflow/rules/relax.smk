# No input files: a structure reaches its batch as the hash of its content, in the
# parameters (a touched file is no change, a moved atom is). Listing 10,000 structure
# files as inputs made Snakemake stat every one of them at each scheduling round.
rule relax:
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
