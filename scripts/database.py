"""Snakemake job of rule database: results/results.db for `ase db`, from summary.json."""

from poscarflow.database import write_database

write_database(table=snakemake.input[0], database=snakemake.output[0], log=snakemake.log[0])  # noqa: F821
