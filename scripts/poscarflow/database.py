"""The ASE database of results: `ase db results/results.db` reads it.

One row per relaxed structure, in the table's order: the structure, energy, forces and
stress of the relax's last step (ASE's `energy`, `fmax`, ... columns), the calculator the
ASE way (`calculator` and `calculator_parameters` columns), and key-value pairs for the
rest, described in the database's metadata (`ase db -w` shows the descriptions). Each
batch's rows are written where its static job ran (poscarflow.parts); `merge` joins them.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from poscarflow.files import atomic_path
from poscarflow.fingerprint import digest

if TYPE_CHECKING:
    from pathlib import Path

    from ase import Atoms

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


METADATA = {"title": "poscarflow results", "key_descriptions": KEY_DESCRIPTIONS,
            "default_columns": DEFAULT_COLUMNS}  # fmt: skip


def write_rows(path: Path, rows: list[tuple[dict, dict, Atoms]]) -> None:
    """An ASE database of (table row, relax summary, relaxed structure) rows, with ids
    1, 2, ... in their order, written in one transaction (a commit per row costs a disk
    sync)."""
    import ase.db

    with atomic_path(path) as tmp:
        db = ase.db.connect(str(tmp), type="db", append=False)
        with db:
            for row, relax, atoms in rows:
                db.write(_recorded(atoms, row, relax), **_key_value_pairs(row, relax))


def merge(parts: list[tuple[Path, list[int]]], database: Path) -> int:
    """The run's database from the parts' databases (path, the new id of each of its
    rows), copied table by table in SQL: a write per row through ase.db costs about
    1 ms (10 s for 10,000 structures), this a few milliseconds per part. The new ids are
    the structures' places in the run, so `ase db` lists rows in the table's order.
    Parts come from the same ASE version (poscarflow.parts checks it), so the tables
    agree. Returns the number of rows."""
    import sqlite3

    import ase.db

    with atomic_path(database) as tmp:
        db = ase.db.connect(str(tmp), type="db", append=False)
        db.metadata = METADATA  # also creates ase.db's tables
        con = sqlite3.connect(tmp, isolation_level=None)
        con.execute("PRAGMA synchronous = OFF")  # the file is moved into place when whole
        names = [n for (n,) in con.execute("SELECT name FROM sqlite_master WHERE type='table'")
                 if n not in ("information", "sqlite_sequence")]  # fmt: skip
        tables = {n: [c[1] for c in con.execute(f"PRAGMA table_info({n})")] for n in names}
        count = 0
        for path, ids in parts:
            if not ids:
                continue
            con.execute("ATTACH DATABASE ? AS part", (str(path),))
            con.execute("BEGIN")
            con.execute("CREATE TEMP TABLE idmap (old INTEGER PRIMARY KEY, new INTEGER)")
            con.executemany("INSERT INTO idmap VALUES (?, ?)", enumerate(ids, 1))
            for table, columns in tables.items():
                chosen = ", ".join("m.new" if c == "id" else f"t.{c}" for c in columns)
                con.execute(f"INSERT INTO main.{table} ({', '.join(columns)}) SELECT {chosen} "
                            f"FROM part.{table} t JOIN idmap m ON t.id = m.old")  # fmt: skip
            con.execute("DROP TABLE temp.idmap")
            con.execute("COMMIT")
            con.execute("DETACH DATABASE part")
            count += len(ids)
        con.close()
    logger.info("database written: %s (%d structures)", database, count)
    return count


def _recorded(atoms: Atoms, row: dict, relax: dict) -> Atoms:
    """The relaxed structure with the relax's energy, forces and stress, on a single-point
    calculator named like the calculator, with the relax's calculator keyword arguments
    as its parameters (ase.db's `calculator` and `calculator_parameters`)."""
    from ase.calculators.singlepoint import SinglePointCalculator

    class Recorded(SinglePointCalculator):
        name = row["calculator"] or "unknown"

        def todict(self) -> dict:
            return relax.get("parameters", {}).get("relax", {}).get("calc_kwargs", {})

        def check_state(self, atoms: Atoms, tol: float = 1e-15) -> list[str]:
            return []  # made for these atoms here: ase.db's comparisons cost half a write

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
