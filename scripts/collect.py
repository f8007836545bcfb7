"""Snakemake job of rule collect: the results table (CSV, JSON, HTML), the report's
overview and the relaxed structures."""

from poscarflow.collect import collect

collect(
    ids=snakemake.params.ids,  # noqa: F821 (injected by Snakemake)
    table=snakemake.output.table,  # noqa: F821
    table_json=snakemake.output.table_json,  # noqa: F821
    table_html=snakemake.output.table_html,  # noqa: F821
    overview=snakemake.output.overview,  # noqa: F821
    extxyz=snakemake.output.extxyz,  # noqa: F821
    log=snakemake.log[0],  # noqa: F821
)
