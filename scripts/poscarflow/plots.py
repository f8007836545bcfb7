"""Figures people would rather look at than read: energies, convergence, volume change."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

from poscarflow import log_to
from poscarflow.files import atomic_path
from poscarflow.layout import Layout

MOST_CURVES = 30  # convergence curves per figure: the structures that took most steps
MOST_BARS = 60  # one bar per structure up to this many, a histogram beyond
logger = logging.getLogger("poscarflow.plots")


def _rows(table: str) -> list[dict]:
    with open(table, newline="") as handle:
        return list(csv.DictReader(handle))


def _save(fig, path: str) -> None:
    """Save a figure atomically (PNG)."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")


def plot_all(table: str, energies: str, convergence: str, volumes: str, log: str) -> None:
    """Energy per atom, relaxation convergence and volume change, one PNG each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    log_to(log)
    rows = [r for r in _rows(table) if r["status"] != "failed"]
    layout = Layout(Path(table).parent)
    ids = [r["id"] for r in rows]

    fig, ax = _per_structure(plt, ids, [float(r["energy_per_atom"]) for r in rows],
                             "static energy per atom (eV/atom)", "Energy per atom")  # fmt: skip
    _save(fig, energies)

    fig, (forces, energy) = plt.subplots(1, 2, figsize=(11, 4))
    slowest = sorted(rows, key=lambda r: -int(r["opt_steps"] or 0))[:MOST_CURVES]
    for row in slowest:
        steps = _trajectory(layout.trajectory(row["id"]))
        if steps:
            fmax, e = zip(*steps, strict=True)
            forces.semilogy(fmax, label=row["id"])
            natoms = int(row["natoms"])
            energy.plot([1000 * (x - e[-1]) / natoms for x in e], label=row["id"])
    forces.set(xlabel="optimizer step", ylabel="max atomic force (eV/Å)", ylim=(1e-4, None),
               title="Relax convergence")  # fmt: skip
    energy.set(xlabel="optimizer step", ylabel="E - E_final (meV/atom)",
               title=f"Energy ({len(slowest)} slowest of {len(rows)} structures)")  # fmt: skip
    if len(slowest) <= 12:
        energy.legend(fontsize="small")
    _save(fig, convergence)

    change = [100 * (float(r["volume_final"]) / float(r["volume_initial"]) - 1)
              if r["volume_final"] and r["volume_initial"] else 0.0 for r in rows]  # fmt: skip
    fig, ax = _per_structure(plt, ids, change, "volume change on relaxation (%)",
                             "Volume change", colors=["tab:red" if c > 0 else "tab:green"
                                                      for c in change])  # fmt: skip
    ax.axvline(0, color="black", lw=0.8)
    _save(fig, volumes)
    plt.close("all")
    logger.info("plotted %d structures", len(rows))


def _per_structure(plt, ids: list[str], values: list[float], xlabel: str, title: str, *,
                   colors: list[str] | None = None):  # fmt: skip
    """A bar per structure for a few; a histogram for many, where bars would make a
    picture too tall to open (10,000 structures: 300,000 pixels)."""
    if len(ids) <= MOST_BARS:
        fig, ax = plt.subplots(figsize=(7, max(3.0, 0.25 * len(ids))))
        ax.barh(ids, values, color=colors or "tab:blue")
        ax.invert_yaxis()
        ax.set(xlabel=xlabel, title=title)
    else:
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.hist(values, bins=min(100, len(values) // 10), color="tab:blue")
        ax.set(xlabel=xlabel, ylabel="structures", title=f"{title} ({len(ids)} structures)")
    return fig, ax


def _trajectory(path: Path) -> list[tuple[float, float]]:
    """(max force, energy) per optimizer step of a relax, from quacc's opt.traj."""
    import numpy as np
    from ase.io.trajectory import Trajectory

    if not path.exists():
        return []
    with Trajectory(str(path)) as traj:
        return [(float(np.linalg.norm(a.get_forces(), axis=1).max()),
                 float(a.get_potential_energy())) for a in traj]  # fmt: skip
