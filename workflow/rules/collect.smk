localrules:
    collect,
    check,
    plots,
    database,


rule collect:
    input:
        manifests("relax"),
        manifests("static"),
    output:
        table=report(
            f"{RESULTS}/summary.csv",
            caption="../report/summary.rst",
            category="Results",
        ),
        extxyz=f"{RESULTS}/relaxed.extxyz",
    log:
        "logs/collect.log",
    retries: 0
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
    retries: 0
    conda:
        "../envs/poscarflow.yaml"
    script:
        "../../scripts/check.py"


rule plots:
    input:
        f"{RESULTS}/summary.csv",
    output:
        energies=report(
            f"{RESULTS}/plots/energy_per_atom.png",
            caption="../report/energy_per_atom.rst",
            category="Plots",
        ),
        convergence=report(
            f"{RESULTS}/plots/convergence.png",
            caption="../report/convergence.rst",
            category="Plots",
        ),
        volumes=report(
            f"{RESULTS}/plots/volume_change.png",
            caption="../report/volume_change.rst",
            category="Plots",
        ),
    log:
        "logs/plots.log",
    retries: 0
    conda:
        "../envs/poscarflow.yaml"
    script:
        "../../scripts/plots.py"


rule database:
    input:
        f"{RESULTS}/summary.csv",
    output:
        f"{RESULTS}/results.db",
    log:
        "logs/database.log",
    retries: 0
    conda:
        "../envs/poscarflow.yaml"
    script:
        "../../scripts/database.py"
