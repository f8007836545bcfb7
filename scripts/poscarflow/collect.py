"""Collect per-calculation summaries into the results table and the relaxed structures."""

from __future__ import annotations

import csv
import logging
import sys
from pathlib import Path

from poscarflow import log_to
from poscarflow.files import atomic_path, read_json
from poscarflow.layout import Layout

COLUMNS = (
    "id", "formula", "natoms", "status", "relaxed_energy", "static_energy",
    "energy_per_atom", "volume_initial", "volume_final", "max_force", "converged",
    "opt_steps", "wall_time", "reason", "input",
)  # fmt: skip


def structure_row(layout: Layout, sid: str) -> dict:
    """One structure's row of the summary table from its relax and static summaries."""
    relax = read_json(layout.summary(sid, "relax")) or {
        "status": "failed",
        "reason": "no relax result",
    }
    static = read_json(layout.summary(sid, "static")) or {
        "status": "failed",
        "reason": "no static result",
    }
    failed = next((s for s in (relax, static) if s["status"] == "failed"), None)
    row = {
        "id": sid,
        "formula": relax.get("formula"),
        "natoms": relax.get("natoms"),
        "status": "failed" if failed else relax["status"],
        "relaxed_energy": relax.get("energy"),
        "static_energy": static.get("energy"),
        "energy_per_atom": static.get("energy_per_atom"),
        "volume_initial": relax.get("volume_initial"),
        "volume_final": relax.get("volume"),
        "max_force": relax.get("max_force"),
        "converged": relax.get("converged"),
        "opt_steps": relax.get("opt_steps"),
        "wall_time": round(relax.get("wall_time", 0) + static.get("wall_time", 0), 3),
        "reason": (failed or relax).get("reason", ""),
        "input": relax.get("input", {}).get("path"),
    }
    return row


def collect(ids: list[str], table: str, extxyz: str, log: str) -> None:
    """Write the summary CSV and the relaxed structures (with energies and forces).

    The results folder is the table's folder.
    """
    log_to(log)
    layout = Layout(Path(table).parent)
    rows = [structure_row(layout, sid) for sid in ids]
    with atomic_path(table) as tmp, tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    with atomic_path(extxyz) as tmp, tmp.open("w") as out:
        for row in rows:
            if row["status"] != "failed":
                out.write(layout.final_structure(row["id"]).read_text())


def check(table: str, flag: str, log: str) -> None:
    """Exit non-zero with a short list of failed structures; else write `flag`."""
    log_to(log)
    with open(table, newline="") as handle:
        rows = list(csv.DictReader(handle))
    failed = [r for r in rows if r["status"] == "failed"]
    unconverged = [r["id"] for r in rows if r["status"] == "unconverged"]
    if unconverged:
        print(
            f"poscarflow: not converged (see max_steps): {', '.join(unconverged)}", file=sys.stderr
        )
    if failed:
        lines = [f"  {r['id']}: {r['reason']}" for r in failed]
        logging.error("failed: %s", lines)
        print(
            f"poscarflow: {len(failed)} of {len(rows)} structures failed:",
            *lines,
            sep="\n",
            file=sys.stderr,
        )
        sys.exit(1)
    Path(flag).write_text(f"{len(rows)} structures done\n")
