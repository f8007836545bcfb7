"""Snakemake job of rule check: fail the run, listing failed structures, if any failed
(reads summary.json)."""

from poscarflow.collect import check

check(table=snakemake.input[0], flag=snakemake.output[0], log=snakemake.log[0])  # noqa: F821
