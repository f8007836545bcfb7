"""The ASE database of results: `ase db results/results.db` reads it.

One row per relaxed structure: the structure, energy, forces and stress of the relax's
last step (ASE's `energy`, `fmax`, ... columns), the calculator the ASE way (`calculator`
and `calculator_parameters` columns), and key-value pairs for the rest, described in the
database's metadata (`ase db -w` shows the descriptions).
"""

from __future__ import annotations

import logging
from pathlib import Path

from poscarflow import log_to
from poscarflow.files import atomic_path, read_json
from poscarflow.fingerprint import digest
from poscarflow.layout import Layout

logger = logging.getLogger("poscarflow.database")

# key: (short name, description, unit), as ase.db's metadata `key_descriptions` wants it
KEY_DESCRIPTIONS = {
    "energy": ("Energy", "Relaxed structure's energy, from the relax's last step (ASE's "
               "energy; for VASP the sigma->0 extrapolated energy)", "eV"),
    "structure_id": ("Id", "Structure id (from the input file's name)", ""),
    "status": ("Status", "done, or unconverged (the relax hit max_steps)", ""),
    "converged": ("Converged", "The relax reached fmax (in the cell filter's frame)", ""),
    "static_energy": ("Static energy", "Energy of the static calculation on the relaxed "
                      "structure", "eV"),
    "static_free_energy": ("Static free energy", "Free energy of the static calculation "
                           "(where the calculator gives one, e.g. VASP)", "eV"),
    "max_stress": ("Max stress", "Largest absolute stress component after the relax", "GPa"),
    "opt_steps": ("Steps", "Optimizer steps of the relax", ""),
    "parameters_hash": ("Parameters", "sha256 of the relax's parameters as used", ""),
}  # fmt: skip
DEFAULT_COLUMNS = ["id", "structure_id", "formula", "calculator", "energy", "static_energy",
                   "fmax", "max_stress", "volume", "status"]  # fmt: skip


def write_database(table: str, database: str, log: str) -> None:
    """An ASE database of every relaxed structure from the results table `summary.json`
    (the calculations' folders are beside it), written in one transaction."""
    import ase.db

    log_to(log)
    layout = Layout(Path(table).parent)
    rows = [row for row in read_json(table) if row["status"] != "failed"]
    relaxed = _relaxed_structures(layout)
    with atomic_path(database) as tmp:
        db = ase.db.connect(str(tmp), type="db", append=False)
        with db:  # one connection, one transaction: a commit per row costs a disk sync
            for row in rows:
                relax = read_json(layout.summary(row["id"], "relax"))
                atoms = _relaxed_atoms(layout, row, relax, relaxed.get(row["id"]))
                db.write(atoms, **_key_value_pairs(row, relax))
        db.metadata = {"title": "poscarflow results", "key_descriptions": KEY_DESCRIPTIONS,
                       "default_columns": DEFAULT_COLUMNS}  # fmt: skip
    logger.info("database written: %s (%d structures)", database, len(rows))


def _relaxed_structures(layout: Layout) -> dict:
    """Id → relaxed structure, from `relaxed.extxyz` in one read (10,000 files opened one
    by one cost seconds); empty if it is not there."""
    import ase.io

    if not layout.relaxed.exists():
        return {}
    return {atoms.info.get("id"): atoms for atoms in ase.io.iread(layout.relaxed, format="extxyz")}


def _relaxed_atoms(layout: Layout, row: dict, relax: dict, atoms=None):
    """The relaxed structure with the relax's energy, forces and stress, on a single-point
    calculator named like the calculator, with the relax's calculator keyword arguments
    as its parameters (ase.db's `calculator` and `calculator_parameters`)."""
    import ase.io
    from ase.calculators.singlepoint import SinglePointCalculator

    class Recorded(SinglePointCalculator):
        name = row["calculator"] or "unknown"

        def todict(self) -> dict:
            return relax.get("parameters", {}).get("relax", {}).get("calc_kwargs", {})

    if atoms is None:
        atoms = ase.io.read(layout.final_structure(row["id"]), format="extxyz")
    results = dict(atoms.calc.results) if atoms.calc else {}
    atoms.info = {}
    atoms.calc = Recorded(atoms, **results)
    return atoms


def _key_value_pairs(row: dict, relax: dict) -> dict:
    """The key-value pairs of a row (None values left out: ase.db refuses them)."""
    pairs = {
        "structure_id": row["id"],
        "status": row["status"],
        "converged": bool(row["converged"]),
        "opt_steps": row["opt_steps"],
        "static_energy": row["static_energy_eV"],
        "static_free_energy": row["static_free_energy_eV"],
        "max_stress": row["max_stress_GPa"],
        "parameters_hash": "sha256:" + digest(relax["parameters"]),
    }
    return {key: value for key, value in pairs.items() if value is not None}
