"""Snakemake job of rule collect: the summary table and the relaxed structures."""

from poscarflow.collect import collect

collect(
    ids=snakemake.params.ids,  # noqa: F821 (injected by Snakemake)
    table=snakemake.output.table,  # noqa: F821
    extxyz=snakemake.output.extxyz,  # noqa: F821
    log=snakemake.log[0],  # noqa: F821
)
