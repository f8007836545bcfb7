"""`poscarflow status` and `poscarflow reset`: read and mend the results from any shell.

Both read only files (summaries, task histories, batch manifests), never Snakemake's
state, so they work while a run is in progress and need no running Snakemake.
"""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

from poscarflow.jobs import calc_dir, read_summary
from poscarflow.plan import STEPS, Plan
from poscarflow.policy import append_history, read_history
from poscarflow.why import reasons

ORDER = ("failed", "running", "interrupted", "stale", "pending", "unconverged", "done")


def _alive(record: dict, folder: Path, step: str) -> bool:
    """Whether the attempt that `record` started is still running on this host."""
    if record.get("host") != socket.gethostname():
        return bool(record.get("slurm_job_id"))  # elsewhere: trust it until it ends
    for tmp in folder.glob(f".{step}.tmp-*"):
        try:
            os.kill(int(tmp.name.rsplit("-", 1)[1]), 0)
            return True
        except (ValueError, ProcessLookupError, PermissionError):
            continue
    return False


def step_state(plan: Plan, results: str, sid: str, step: str) -> dict:
    """The state of one calculation, with what a user wants to see next to it."""
    folder = calc_dir(results, sid, step).parent
    history = read_history(folder, step)
    summary = read_summary(results, sid, step)
    attempts = sum(r.get("event") == "end" for r in history)
    info = {"state": "pending", "attempts": attempts, "reason": "", "failure": None}
    if history and history[-1].get("event") == "start":
        alive = _alive(history[-1], folder, step)
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


def reset(
    plan: Plan,
    results: str = "results",
    ids: list[str] | None = None,
    failure: str | None = None,
    dry_run: bool = False,
) -> list[str]:
    """Clear failed calculations (and their restart budgets) so the next run retries them.

    Only failed (or unconverged) calculations are removed, with the batch manifests that
    list them so that Snakemake reruns those batches; their finished calculations are
    reused, not touched.
    """
    actions = []
    for sid in ids or list(plan.structures):
        summaries = {step: read_summary(results, sid, step) for step in STEPS}
        failed = [s for s in STEPS if (summaries[s] or {}).get("failure")]
        if not failed or (failure and summaries[failed[0]].get("failure") != failure):
            continue
        for step in failed:
            actions.append(f"reset {sid} {step}: {summaries[step].get('reason', '')}")
            if not dry_run:
                _clear(plan, Path(results), sid, step)
    return actions or ["nothing to reset"]


def _clear(plan: Plan, results: Path, sid: str, step: str) -> None:
    """Remove one failed calculation and its batch's manifests; zero its budgets."""
    batch = next(b for b, members in plan.batches.items() if sid in members)
    for later in STEPS[STEPS.index(step) :]:
        (results / "batches" / later / f"{batch}.json").unlink(missing_ok=True)
    folder = calc_dir(results, sid, step)
    trash = folder.with_name(f".{step}.reset-{os.getpid()}")
    folder.rename(trash)
    shutil.rmtree(trash)
    append_history(folder.parent, {"event": "reset", "step": step})
