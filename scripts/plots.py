"""Snakemake job of rule plots: energy per atom, convergence and volume change PNGs
from the full-precision table summary.json."""

from poscarflow.plots import plot_all

plot_all(
    table=snakemake.input[0],  # noqa: F821 (injected by Snakemake)
    energies=snakemake.output.energies,  # noqa: F821
    convergence=snakemake.output.convergence,  # noqa: F821
    volumes=snakemake.output.volumes,  # noqa: F821
    log=snakemake.log[0],  # noqa: F821
)
