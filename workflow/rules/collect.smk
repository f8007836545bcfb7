localrules:
    collect,
    check,


# Table, relaxed structures, database and plots in one process (see poscarflow.finish).
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
            str(LAYOUT.table_html),
            caption="../report/summary_html.rst",
            category="Results",
        ),
        overview=str(LAYOUT.overview),
        extxyz=str(LAYOUT.relaxed),
        database=str(LAYOUT.database),
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
        "logs/collect.log",
    retries: 0
    conda:
        "../envs/poscarflow.yaml"
    params:
        ids=structure_ids_digest,
        run=run_file,
    shell:
        "python -m poscarflow.finish {params.run:q} {log:q}"


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
    shell:
        "python -m poscarflow.finish --check {input:q} {output:q} {log:q}"
