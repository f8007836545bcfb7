"""poscarflow: POSCAR folders → quacc relax → quacc static, driven by Snakemake."""

from __future__ import annotations

import logging


def log_to(path: str) -> None:
    """Send this job's log records (ours and quacc's) to the rule's log file."""
    logging.basicConfig(
        filename=path,
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )
