"""The ASE database of results: `ase db results/results.db` reads it."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

from poscarflow import log_to
from poscarflow.files import atomic_path, read_json
from poscarflow.fingerprint import digest
from poscarflow.layout import Layout

logger = logging.getLogger("poscarflow.database")


def write_database(table: str, database: str, log: str) -> None:
    """An ASE database of every relaxed structure: `ase db results/results.db` reads it."""
    import ase.db
    import ase.io

    log_to(log)
    layout = Layout(Path(table).parent)
    with atomic_path(database) as tmp, ase.db.connect(str(tmp), type="db") as db:
        with open(table, newline="") as handle:
            rows = list(csv.DictReader(handle))
        for row in rows:
            if row["status"] == "failed":
                continue
            relax = read_json(layout.summary(row["id"], "relax"))
            atoms = ase.io.read(layout.final_structure(row["id"]))
            atoms.info = {}
            db.write(atoms, structure_id=row["id"], status=row["status"],
                     converged=row["converged"] == "True", calculator_name=relax["calculator"],
                     static_energy=float(row["static_energy"]),
                     parameters_hash="sha256:" + digest(relax["parameters"]))  # fmt: skip
    logger.info("database written: %s", database)
