"""Figures people would rather look at than read: energies, convergence, volume change.

They read the rows of the full-precision table (`summary.json`) and, for the convergence
curves, the optimizer trajectories of the few slowest relaxes only, so that 10,000 structures plot
in seconds and every picture stays a picture (bars for a few structures, histograms for
many).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from poscarflow.files import atomic_path, read_json
from poscarflow.layout import Layout

MOST_CURVES = 10  # force curves: the slowest relaxes, one colour and legend entry each
MOST_BARS = 60  # one bar per structure up to this many, a histogram beyond
MOST_STEP_BARS = 30  # convergence's left panel: one bar per structure up to this many
FORCE_FLOOR = 1e-5  # eV/Å; smaller forces (1e-15 in symmetric cells) are drawn here
CONVERGED, UNCONVERGED = "tab:blue", "tab:orange"
EXPANDED, CONTRACTED = "tab:red", "tab:blue"
if TYPE_CHECKING:
    from matplotlib.figure import Figure

logger = logging.getLogger("poscarflow.plots")


def _save(fig, path: str) -> None:
    """Save a figure atomically (PNG)."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")


def pyplot():
    """matplotlib's pyplot on the Agg backend (PNG files, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _calculators(rows: list[dict]) -> str:
    names = sorted({r["calculator"] for r in rows if r.get("calculator")})
    return ", ".join(names) or "unknown calculator"


def _left_out(n: int, why: str) -> str:
    return f"; {n} {why}, left out" if n else ""


def plot_energies(plt, rows: list[dict], path: str) -> Figure:
    """Static energy per atom of every structure that did not fail."""
    shown = [r for r in rows if r["status"] != "failed" and r["energy_per_atom_eV"] is not None]
    title = (f"Static energy per atom (calculator: {_calculators(rows)})\n({len(shown)} structures"
             f"{_left_out(len(rows) - len(shown), 'failed')})")  # fmt: skip
    shown.sort(key=lambda r: r["energy_per_atom_eV"])
    values = [r["energy_per_atom_eV"] for r in shown]
    fig, _ = _per_structure(plt, [r["id"] for r in shown], values,
                            "static energy per atom (eV/atom)", title)  # fmt: skip
    _save(fig, path)
    return fig


def plot_volumes(plt, rows: list[dict], path: str) -> Figure:
    """Volume change on relaxation in percent, coloured by its sign (legend)."""
    from matplotlib.patches import Patch

    shown = [r for r in rows if r["status"] != "failed"
             and r["volume_final_A3"] and r["volume_initial_A3"]]  # fmt: skip
    failed = sum(r["status"] == "failed" for r in rows)
    no_cell = len(rows) - failed - len(shown)
    change = {r["id"]: 100 * (r["volume_final_A3"] / r["volume_initial_A3"] - 1) for r in shown}
    shown.sort(key=lambda r: change[r["id"]])
    values = [change[r["id"]] for r in shown]
    title = (f"Volume change on relaxation\n({len(shown)} structures"
             f"{_left_out(failed, 'failed')}{_left_out(no_cell, 'without a cell')})")  # fmt: skip
    xlabel = "volume change on relaxation (% of the input volume)"
    colors = [EXPANDED if v > 0 else CONTRACTED for v in values]
    fig, ax = _per_structure(plt, [r["id"] for r in shown], values, xlabel, title,
                             colors=colors)  # fmt: skip
    if len(shown) > MOST_BARS:  # histogram: expanded and contracted stacked, same bins
        ax.cla()
        bins = min(100, max(10, len(values) // 10))
        ax.hist([[v for v in values if v <= 0], [v for v in values if v > 0]], bins=bins,
                stacked=True, color=[CONTRACTED, EXPANDED])  # fmt: skip
        ax.set(xlabel=xlabel, ylabel="structures", title=title)
    ax.axvline(0, color="black", lw=0.8)
    ax.legend(handles=[Patch(color=EXPANDED, label="expanded (volume grew)"),
                       Patch(color=CONTRACTED, label="contracted (volume shrank)")],
              fontsize="small", loc="best")  # fmt: skip
    _save(fig, path)
    return fig


def plot_convergence(plt, layout: Layout, rows: list[dict], path: str) -> Figure:
    """Left: optimizer steps of every relax, unconverged ones marked (bars sorted from
    the slowest for a few structures, a histogram for many). Right: the largest force
    at each step of the slowest relaxes, from their `opt.traj`."""
    from matplotlib.patches import Patch

    relaxed = [r for r in rows if r.get("opt_steps") is not None]
    unconverged = [r for r in relaxed if r["converged"] is False]
    bars = len(relaxed) <= MOST_STEP_BARS
    fig, (steps_ax, force_ax) = plt.subplots(
        1, 2, figsize=(12, max(4.5, 0.22 * len(relaxed)) if bars else 4.5),
        gridspec_kw={"width_ratios": (1, 1.3)},
    )  # fmt: skip
    slowest = sorted(relaxed, key=lambda r: (r["converged"] is not False, -r["opt_steps"]))
    if bars:
        by_steps = sorted(relaxed, key=lambda r: -r["opt_steps"])
        steps_ax.barh([r["id"] for r in by_steps], [r["opt_steps"] for r in by_steps],
                      color=[UNCONVERGED if r["converged"] is False else CONVERGED
                             for r in by_steps])  # fmt: skip
        steps_ax.invert_yaxis()
        steps_ax.set(xlabel="optimizer steps", ylabel="")
    else:
        ok = [r["opt_steps"] for r in relaxed if r["converged"] is not False]
        most = max(r["opt_steps"] for r in relaxed)
        bins = [n - 0.5 for n in range(most + 2)] if most < 100 else 50  # whole steps
        steps_ax.hist([ok, [r["opt_steps"] for r in unconverged]], bins=bins, stacked=True,
                      color=[CONVERGED, UNCONVERGED])  # fmt: skip
        steps_ax.set(xlabel="optimizer steps", ylabel="structures", yscale="log")
    steps_ax.set_title(f"Optimizer steps per relax ({len(relaxed)} relaxes, "
                       f"{len(unconverged)} not converged)")  # fmt: skip
    steps_ax.legend(handles=[Patch(color=CONVERGED, label="converged"),
                             Patch(color=UNCONVERGED, label="not converged")],
                    fontsize="small", loc="lower right" if bars else "upper right")  # fmt: skip
    _force_curves(layout, slowest[:MOST_CURVES], len(relaxed), force_ax)
    fig.tight_layout()
    _save(fig, path)
    return fig


def _force_curves(layout: Layout, rows: list[dict], total: int, ax) -> None:
    """Max force against optimizer step, one coloured line per relax (dashed: not
    converged), clipped at FORCE_FLOOR, with the relaxes' fmax."""
    import numpy as np

    colors = [f"C{i}" for i in range(10)]
    fmaxes, drawn = set(), 0
    for i, row in enumerate(rows):
        summary = read_json(layout.summary(row["id"], "relax")) or {}
        settings = summary.get("parameters", {}).get("relax", {})
        forces = _trajectory_forces(layout.trajectory(row["id"]), settings.get("relax_cell"))
        if not forces:
            continue
        if settings.get("fmax"):
            fmaxes.add(settings["fmax"])
        label = row["id"] + ("" if row["converged"] is not False else " (not converged)")
        ax.semilogy(np.maximum(forces, FORCE_FLOOR), color=colors[i % 10], label=label,
                    ls="--" if row["converged"] is False else "-", lw=1.5)  # fmt: skip
        drawn += 1
    for fmax in sorted(fmaxes):
        ax.axhline(fmax, color="black", lw=0.8, ls=":")
        ax.annotate(f"fmax {fmax:g}", (1, fmax), xycoords=("axes fraction", "data"),
                    ha="right", va="bottom", fontsize="small")  # fmt: skip
    ax.set(xlabel="optimizer step", ylabel="max force incl. cell (eV/Å)",
           ylim=(FORCE_FLOOR / 1.5, None))  # fmt: skip
    ax.set_title(f"Max force per step, the {drawn} slowest of {total} relaxes"
                 if drawn else "Max force per step: no optimizer trajectories")  # fmt: skip
    ax.text(0.01, 0.01, f"forces below {FORCE_FLOOR:g} eV/Å drawn at {FORCE_FLOOR:g}",
            transform=ax.transAxes, fontsize="x-small", color="gray")  # fmt: skip
    if drawn:
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)


def _trajectory_forces(path: Path, relax_cell: bool | None) -> list[float]:
    """The largest force at each optimizer step of a relax (quacc's opt.traj), as the
    optimizer compares it with fmax: with a relaxed cell also the cell's row forces
    |σ·V|/N, as ASE's cell filters scale the stress (FrechetCellFilter: within a few
    per cent of its fmax, which is measured in the filter's frame)."""
    import numpy as np
    from ase.io.trajectory import Trajectory
    from ase.stress import voigt_6_to_full_3x3_stress

    if not path.exists():
        return []
    forces = []
    with Trajectory(str(path)) as traj:
        for atoms in traj:
            largest = float(np.linalg.norm(atoms.get_forces(), axis=1).max())
            if relax_cell is not False and "stress" in atoms.calc.results and atoms.pbc.all():
                virial = atoms.get_volume() * voigt_6_to_full_3x3_stress(atoms.get_stress())
                largest = max(largest, float(np.linalg.norm(virial, axis=1).max()) / len(atoms))
            forces.append(largest)
    return forces


def _per_structure(plt, ids: list[str], values: list[float], xlabel: str, title: str, *,
                   colors: list[str] | None = None):  # fmt: skip
    """A bar per structure for a few; a histogram for many, where bars would make a
    picture too tall to open (10,000 structures: 300,000 pixels)."""
    if len(ids) <= MOST_BARS:
        fig, ax = plt.subplots(figsize=(7, max(3.0, 0.25 * len(ids) + 1)))
        ax.barh(ids, values, color=colors or "tab:blue")
        ax.invert_yaxis()
        ax.set(xlabel=xlabel, title=title)
    else:
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.hist(values, bins=min(100, max(10, len(values) // 10)), color="tab:blue")
        ax.set(xlabel=xlabel, ylabel="structures", title=title)
    return fig, ax
