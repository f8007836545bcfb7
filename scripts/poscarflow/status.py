"""`poscarflow status`: every structure's state, from any shell, during or after a run.

It reads only files (task histories, summaries), never Snakemake's state, so it works
while a run is in progress and needs no running Snakemake. Each structure's history and
summaries are read once, and the jobs' code fingerprint is computed once per call.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import TYPE_CHECKING

from poscarflow.files import read_json
from poscarflow.layout import STEPS, Layout
from poscarflow.progress import Calc, calc_states
from poscarflow.why import Staleness

if TYPE_CHECKING:
    from collections.abc import Mapping

    from poscarflow.plan import Plan
    from poscarflow.records import Step, Summary

ORDER = ("failed", "running", "interrupted", "stale", "pending", "unconverged", "done")


def step_state(calc: Calc, summary: Summary | None, stale: list[str] | None = None) -> dict:
    """The state of one calculation, with what a user wants to see next to it.

    Parameters
    ----------
    calc
        What its task history says (`progress.calc_states`).
    summary
        Its `summary.json`, or None if it has none.
    stale
        Why it would be recomputed (`why.Staleness`); a done calculation with reasons
        is `stale`.
    """
    info = {"state": "pending", "attempts": calc.attempts, "reason": "", "failure": None}
    if calc.state in ("running", "interrupted"):
        info["state"] = calc.state
        info["slurm_job_id"] = (calc.record or {}).get("slurm_job_id")
        return info
    if summary is None:
        return info
    info |= {
        "state": summary["status"],
        "reason": summary.get("reason", ""),
        "failure": summary.get("failure"),
        "energy_per_atom": summary.get("energy_per_atom"),
        "slurm_job_id": summary.get("slurm_job_id"),
    }
    if stale and summary["status"] == "done":
        info |= {"state": "stale", "reason": "; ".join(stale)}
    return info


def status(
    plan: Plan, results: str = "results", ids: list[str] | None = None, *,
    states: Mapping[str, Mapping[Step, Calc]] | None = None,
) -> list[dict]:  # fmt: skip
    """One row per structure: overall state and each step's state.

    Parameters
    ----------
    plan
        The plan of the current config.
    results
        The results folder.
    ids
        Structure ids (default: all).
    states
        What `progress.calc_states` says of these ids, if the caller has it already (to
        count progress from the same reading).

    Raises
    ------
    ValueError
        If an id is not one of the plan's structures.
    """
    ids = plan.select(ids)
    layout, staleness, host = Layout(Path(results)), Staleness(plan, results), socket.gethostname()
    rows = []
    for sid in ids:
        calcs = states[sid] if states is not None else calc_states(layout, sid, host=host)
        steps = {}
        for step in STEPS:
            summary = read_json(layout.summary(sid, step))
            stale = staleness.compare(sid, step, summary) if summary is not None else None
            steps[step] = step_state(calcs[step], summary, stale)
        state = min((s["state"] for s in steps.values()), key=ORDER.index)
        worst = next(s for s in steps.values() if s["state"] == state)
        rows.append({
            "id": sid, "state": state, "failure": worst["failure"], "reason": worst["reason"],
            "steps": {step: s["state"] for step, s in steps.items()},
            "attempts": {step: s["attempts"] for step, s in steps.items()},
            "energy_per_atom": steps["static"].get("energy_per_atom"),
            "slurm_job_id": steps["relax"].get("slurm_job_id"),
        })  # fmt: skip
    return rows


def table_cells(row: dict) -> list[str]:
    """One row's cells, in the order of HEADER."""
    energy = "" if row["energy_per_atom"] is None else f"{row['energy_per_atom']:.6f}"
    tries = "/".join(str(n) for n in row["attempts"].values())
    return [row["id"], row["state"], tries, energy, row["slurm_job_id"] or "", row["reason"]]


HEADER = ("id", "state", "attempts", "E/atom (eV)", "slurm", "reason")
RIGHT = {"E/atom (eV)"}


def format_table(rows: list[dict]) -> str:
    """The rows as an aligned text table (columns as wide as their longest cell), then
    totals per state."""
    cells = [list(HEADER), *(table_cells(r) for r in rows)]
    widths = [max(len(line[i]) for line in cells) for i in range(len(HEADER) - 1)]
    lines = []
    for line in cells:
        padded = [cell.rjust(w) if HEADER[i] in RIGHT else cell.ljust(w)
                  for i, (cell, w) in enumerate(zip(line, widths, strict=False))]  # fmt: skip
        lines.append("  ".join([*padded, line[-1]]).rstrip())
    lines.append(totals(rows))
    return "\n".join(lines)


def totals(rows: list[dict]) -> str:
    """`1 failed, 2 done (3 total)`."""
    counts = {s: sum(r["state"] == s for r in rows) for s in ORDER}
    return ", ".join(f"{n} {s}" for s, n in counts.items() if n) + f" ({len(rows)} total)"
