localrules:
    collect,
    check,


rule collect:
    input:
        manifests("relax"),
        manifests("static"),
    output:
        table=f"{RESULTS}/summary.csv",
        extxyz=f"{RESULTS}/relaxed.extxyz",
    log:
        "logs/collect.log",
    conda:
        "../envs/poscarflow.yaml"
    params:
        ids=list(PLAN.structures),
    script:
        "../../scripts/collect.py"


rule check:
    input:
        f"{RESULTS}/summary.csv",
    output:
        f"{RESULTS}/.complete",
    log:
        "logs/check.log",
    conda:
        "../envs/poscarflow.yaml"
    script:
        "../../scripts/check.py"
