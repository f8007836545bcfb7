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
            str(LAYOUT.table),
            caption="../report/summary.rst",
            category="Results",
        ),
        table_json=str(LAYOUT.table_json),
        table_html=report(
            f"{RESULTS}/summary.html",
            caption="../report/summary_html.rst",
            category="Results",
        ),
        overview=f"{RESULTS}/overview.rst",
        extxyz=str(LAYOUT.relaxed),
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
        str(LAYOUT.table_json),
    output:
        str(LAYOUT.complete),
    log:
        "logs/check.log",
    retries: 0
    conda:
        "../envs/poscarflow.yaml"
    script:
        "../../scripts/check.py"


rule plots:
    input:
        str(LAYOUT.table_json),
    output:
        energies=report(
            str(LAYOUT.plot("energy_per_atom")),
            caption="../report/energy_per_atom.rst",
            category="Plots",
        ),
        convergence=report(
            str(LAYOUT.plot("convergence")),
            caption="../report/convergence.rst",
            category="Plots",
        ),
        volumes=report(
            str(LAYOUT.plot("volume_change")),
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
        str(LAYOUT.table_json),
    output:
        str(LAYOUT.database),
    log:
        "logs/database.log",
    retries: 0
    conda:
        "../envs/poscarflow.yaml"
    script:
        "../../scripts/database.py"
