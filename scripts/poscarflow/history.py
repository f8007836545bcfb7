"""The task history: every attempt of every calculation, and the restart budget it counts.

Alchemiscale's restart patterns with a task history: each structure has a
`history.jsonl` beside its results (see layout.py), appended to and never deleted by a
rerun, so restart budgets survive a restart of Snakemake. Readers (status, reset,
resource escalation) and the attempt loop share these functions.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from poscarflow import slurm
from poscarflow.records import HistoryRecord, now

if TYPE_CHECKING:
    from poscarflow.records import Step


def read_history(path: Path, step: Step | None = None) -> list[HistoryRecord]:
    """The records of one structure's history file (optionally one step), oldest first."""
    try:
        lines = Path(path).read_text().splitlines()
    except FileNotFoundError:
        return []
    records: list[HistoryRecord] = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:  # a line cut by a full disk or a kill: not a record
            continue
    return [r for r in records if step is None or r.get("step") == step]


def append_history(path: Path, record: HistoryRecord) -> None:
    """Append one record; a single short write, so concurrent readers see whole lines."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with Path(path).open("a") as handle:
        handle.write(json.dumps(record, sort_keys=True) + "\n")


def since_reset(history: list[HistoryRecord], key: str | None = None) -> list[HistoryRecord]:
    """Records that count for a budget: after the last reset, for this key if given."""
    last = max((i for i, r in enumerate(history) if r.get("event") == "reset"), default=-1)
    return [r for r in history[last + 1 :] if key is None or r.get("key") == key]


def restarts_used(history: list[HistoryRecord], rule: str, key: str | None = None) -> int:
    """Restarts already spent on a policy entry since the last reset."""
    return sum(r.get("rule") == rule and bool(r.get("restarted"))
               for r in since_reset(history, key))  # fmt: skip


def budget_left(history: list[HistoryRecord], rule: str | None, policy: dict[str, int],
                key: str | None = None) -> bool:  # fmt: skip
    """Whether the policy entry `rule` allows one more restart."""
    return rule is not None and restarts_used(history, rule, key) < policy.get(rule, 0)


def failures(history: list[HistoryRecord], failure: str) -> int:
    """Attempts that ended with `failure` since the last reset (an unrecorded dead
    attempt that SLURM reports included)."""
    dead = interrupted(history)
    ends = [*since_reset(history), *([dead] if dead else [])]
    return sum(r.get("event") == "end" and r.get("failure") == failure for r in ends)


def interrupted(history: list[HistoryRecord]) -> HistoryRecord | None:
    """The end record for an attempt that started and never ended, or None.

    A plain interruption (Ctrl-C, a killed Snakemake or pool process) is `interrupted`;
    what SLURM reports (out of memory or time, node failure) gets its class. When SLURM
    cannot tell (slurmctld down and no accounting), the reason says so.
    """
    if not history or history[-1].get("event") != "start":
        return None
    start = history[-1]
    job_id = start.get("slurm_job_id")
    state = slurm.job_state(job_id)
    if state == slurm.NO_ANSWER:
        cause = f"SLURM did not answer about its job {job_id}"
    else:
        cause = f"SLURM: {state}" if state else "its process ended"
    return HistoryRecord(
        event="end", step=start["step"], attempt=start["attempt"], time=now(),
        key=start.get("key", ""), status="failed",
        failure=slurm.SLURM_CLASSES.get(state or "", "interrupted"),  # type: ignore[typeddict-item]
        reason=f"attempt {start['attempt']} was stopped ({cause})",
    )  # fmt: skip


def attempts_ended(history: list[HistoryRecord]) -> int:
    """How many attempts have ended (the next attempt's number is one more)."""
    return sum(r.get("event") == "end" for r in history)
