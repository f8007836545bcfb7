"""The typed shapes that cross module boundaries, each with one builder.

Like quacc's typed results (`quacc.types`): plain dicts on disk (JSON), typed in code, so
that a reader uses the keys the type declares and a writer cannot forget one.
"""

from __future__ import annotations

import socket
from datetime import UTC, datetime
from typing import Any, Literal, NotRequired, TypedDict

from poscarflow.settings import slurm_job_id

Step = Literal["relax", "static"]
Status = Literal["done", "unconverged", "failed"]
# Why a calculation failed. `bad_input` is never restarted; `infrastructure` (a full
# disk, a lost file system, a dead pool process) is not the calculation's fault;
# `custodian`: custodian gave up on VASP.
Failure = Literal[
    "bad_input", "unconverged", "oom", "timeout", "node_failure", "interrupted",
    "infrastructure", "custodian", "error",
]  # fmt: skip


class CalcSpec(TypedDict, total=False):
    """Everything a calculation's result depends on (its reuse key hashes it)."""

    id: str
    calculator: str
    path: str  # relax: the input file
    structure_hash: str  # relax: the input's content hash
    format: str | None  # relax: the ASE format to read it with
    problem: str | None  # relax: why discovery already knows the file is unusable
    checks: dict[str, Any]  # relax: input checks
    relax: dict[str, Any]  # relax: optimizer settings and calc_kwargs
    static: dict[str, Any]  # static: calc_kwargs


class Request(TypedDict):
    """What one batch job is asked to do; written by the planner, read by the job."""

    step: Step
    batch: str
    results: str
    manifest: str
    log: NotRequired[str]  # the rule's log file, from the job's command line
    rerun_on_code: bool  # Snakemake's `code` trigger is on: older code is recomputed
    policy: dict[str, int]  # restart policy: pattern or class:<failure> → restarts
    calcs: dict[str, CalcSpec]


class ManifestEntry(TypedDict):
    """One calculation's line in a batch manifest (`deferred` never reaches the file: the
    machine failed it, and the next run retries it)."""

    key: str
    status: Status | Literal["deferred"]
    reason: NotRequired[str]


class Part(TypedDict):
    """A batch's share of the run-wide outputs (poscarflow.parts), with what it was made
    from: beside it, `<batch>.extxyz` (its relaxed structures, in `frames` order) and
    `<batch>.db` (their database rows, ids 1, 2, ... in the same order)."""

    format: str  # digest of the code that made it (and of ASE's version)
    keys: dict[str, str]  # id → the static reuse key in the batch manifest
    rows: list[dict]  # table rows at full precision, in the batch's order
    versions: dict[str, int]  # "name version" → relaxes computed with it, and "relaxes"
    frames: list[tuple[str, int]]  # (id, lines) of each relaxed structure


class Summary(TypedDict, total=False):
    """A calculation's `summary.json`: provenance, status and the numbers of the table."""

    id: str
    step: Step
    calculator: str
    parameters: CalcSpec
    input: dict[str, Any]
    key: str
    code: dict[str, Any]
    host: str
    slurm_job_id: str | None
    start: str
    end: str
    wall_time: float
    attempts: int
    status: Status
    failure: Failure | None
    reason: str
    cause: str  # a failure of the machine: what the system said (strerror)
    corrections: list[dict[str, Any]]  # custodian's: handler, errors, actions
    warnings: list[str]
    traceback: list[str]
    formula: str
    natoms: int
    energy: float
    free_energy: float | None
    energy_per_atom: float
    max_force: float
    max_stress: float | None  # GPa, largest absolute component
    volume: float | None
    converged: bool
    opt_steps: int
    volume_initial: float | None
    device: str  # machine-learned potentials: the torch device it ran on (cpu, cuda)


class HistoryRecord(TypedDict, total=False):
    """One line of a structure's task history (`history.jsonl`)."""

    event: Literal["start", "end", "reset"]
    step: Step
    attempt: int
    time: str
    host: str
    slurm_job_id: str | None
    key: str
    status: Status
    failure: Failure | None
    reason: str | None
    rule: str | None  # the policy entry that covered the failure
    restarted: bool
    continued_from: int  # optimizer step the attempt continued from
    corrections: list[dict[str, Any]]  # what custodian fixed in VASP's run, and how
    traceback: list[str]


def now() -> str:
    """The current time, ISO 8601 in UTC."""
    return datetime.now(UTC).isoformat()


def new_summary(spec: CalcSpec, step: Step, source: dict[str, Any]) -> Summary:
    """The provenance part of a summary, before anything is computed."""
    return Summary(
        id=spec["id"], step=step, calculator=spec["calculator"], parameters=spec,
        input={k: v for k, v in source.items() if k != "relax"},
        host=socket.gethostname(), slurm_job_id=slurm_job_id(), start=now(),
    )  # fmt: skip


def failed_summary(spec: CalcSpec, step: Step, failure: Failure, reason: str) -> Summary:
    """The summary of a calculation that is given up without a result."""
    return Summary(
        id=spec["id"], step=step, calculator=spec["calculator"], parameters=spec,
        status="failed", failure=failure, reason=reason,
    )  # fmt: skip


def start_record(step: Step, attempt: int, key: str, continued_from: int = 0) -> HistoryRecord:
    """An attempt starts (an attempt with a start and no end was interrupted)."""
    return HistoryRecord(
        event="start", step=step, attempt=attempt, time=now(), key=key,
        host=socket.gethostname(), slurm_job_id=slurm_job_id(), continued_from=continued_from,
    )  # fmt: skip


def end_record(
    step: Step, attempt: int, key: str, summary: Summary, *, rule: str | None, restarted: bool
) -> HistoryRecord:
    """An attempt ended, with its outcome, custodian's corrections if any, and whether the
    policy restarts it."""
    record = HistoryRecord(
        event="end", step=step, attempt=attempt, time=now(), key=key,
        status=summary["status"], failure=summary.get("failure"), reason=summary.get("reason"),
        rule=rule, restarted=restarted, traceback=summary.get("traceback", [])[-5:],
    )  # fmt: skip
    if summary.get("corrections"):
        record["corrections"] = summary["corrections"]
    return record


def reset_record(step: Step) -> HistoryRecord:
    """`poscarflow reset` cleared a failure: restart budgets start again."""
    return HistoryRecord(event="reset", step=step, time=now())
