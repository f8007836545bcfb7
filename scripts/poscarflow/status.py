"""`poscarflow status`: every structure's state, from any shell, during or after a run.

It reads only files (summaries, task histories), never Snakemake's state, so it works
while a run is in progress and needs no running Snakemake.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from poscarflow.files import read_json
from poscarflow.history import attempts_ended, read_history
from poscarflow.layout import STEPS, Layout
from poscarflow.plan import Plan
from poscarflow.why import reasons

ORDER = ("failed", "running", "interrupted", "stale", "pending", "unconverged", "done")


def _alive(record: dict, layout: Layout, sid: str, step: str) -> bool:
    """Whether the attempt that `record` started is still running on this host."""
    if record.get("host") != socket.gethostname():
        return bool(record.get("slurm_job_id"))  # elsewhere: trust it until it ends
    for tmp in layout.attempt_dirs(sid, step):
        try:
            os.kill(int(tmp.name.rsplit("-", 1)[1]), 0)
            return True
        except (ValueError, ProcessLookupError, PermissionError):
            continue
    return False


def step_state(plan: Plan, results: str, sid: str, step: str) -> dict:
    """The state of one calculation, with what a user wants to see next to it."""
    layout = Layout(Path(results))
    history = read_history(layout.history(sid), step)
    summary = read_json(layout.summary(sid, step))
    attempts = attempts_ended(history)
    info = {"state": "pending", "attempts": attempts, "reason": "", "failure": None}
    if history and history[-1].get("event") == "start":
        alive = _alive(history[-1], layout, sid, step)
        info["state"] = "running" if alive else "interrupted"
        info["slurm_job_id"] = history[-1].get("slurm_job_id")
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
    stale = reasons(plan, results, sid, step)
    if stale and summary["status"] == "done":
        info |= {"state": "stale", "reason": "; ".join(stale)}
    return info


def status(plan: Plan, results: str = "results", ids: list[str] | None = None) -> list[dict]:
    """One row per structure: overall state and each step's state."""
    rows = []
    for sid in ids or list(plan.structures):
        steps = {step: step_state(plan, results, sid, step) for step in STEPS}
        state = min((s["state"] for s in steps.values()), key=ORDER.index)
        worst = next(s for s in steps.values() if s["state"] == state)
        rows.append({
            "id": sid, "state": state, "failure": worst["failure"], "reason": worst["reason"],
            "attempts": {step: s["attempts"] for step, s in steps.items()},
            "energy_per_atom": steps["static"].get("energy_per_atom"),
            "slurm_job_id": steps["relax"].get("slurm_job_id"),
        })  # fmt: skip
    return rows


def format_table(rows: list[dict]) -> str:
    """The rows as an aligned text table followed by totals per state."""
    lines = [f"{'id':<24} {'state':<12} {'attempts':<9} {'E/atom (eV)':>12}  {'slurm':<8} reason"]
    for r in rows:
        energy = "" if r["energy_per_atom"] is None else f"{r['energy_per_atom']:.6f}"
        tries = "/".join(str(n) for n in r["attempts"].values())
        lines.append(f"{r['id']:<24} {r['state']:<12} {tries:<9} {energy:>12}  "
                     f"{r['slurm_job_id'] or '':<8} {r['reason']}")  # fmt: skip
    totals = {s: sum(r["state"] == s for r in rows) for s in ORDER}
    lines.append(", ".join(f"{n} {s}" for s, n in totals.items() if n) + f" ({len(rows)} total)")
    return "\n".join(lines)
