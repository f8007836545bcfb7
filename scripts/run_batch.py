"""Snakemake job of rules relax and static: one batch of calculations."""

from poscarflow.worker import dispatch

dispatch(
    step=snakemake.params.step,  # noqa: F821 (injected by Snakemake)
    calcs=snakemake.params.calcs,  # noqa: F821
    manifest=snakemake.output[0],  # noqa: F821
    log=snakemake.log[0],  # noqa: F821
)
