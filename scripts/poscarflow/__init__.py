"""poscarflow: POSCAR folders → quacc relax → quacc static, driven by Snakemake."""

from __future__ import annotations

import logging
from pathlib import Path


def log_to(path: str) -> None:
    """Send this job's log records (ours and quacc's) to the rule's log file."""
    target = str(Path(path).resolve())
    if any(getattr(h, "baseFilename", None) == target for h in logging.root.handlers):
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(
        filename=path,
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )
