"""The restart loop: attempts of one calculation, recorded in its task history.

A failure that the restart policy covers, with budget left, is restarted at once (an
unconverged relax continues from where it stopped); any other failure is final after one
attempt: no blind retries of a bug. A failure of the machine (a full disk, a lost file
system) is not the calculation's: it is not published, and the next plain run retries
it, within the policy's `class:infrastructure` budget. An attempt that a kill ended (a
killed Snakemake, pool process or SLURM job) is closed in the history with its cause
when the next attempt starts, and continued from its last optimizer step.
"""

from __future__ import annotations

import logging
import shutil
from typing import TYPE_CHECKING

from poscarflow import settings, slurm
from poscarflow.compute import compute
from poscarflow.files import (
    publish_dir,
    remove_leftovers,
    unreadable,
    write_frames,
    write_json,
)
from poscarflow.history import (
    append_history,
    attempts_ended,
    budget_left,
    interrupted,
    read_history,
)
from poscarflow.layout import ATTEMPT_MARKER, OPT_STATE, PATH, START, SUMMARY
from poscarflow.policy import matching_rule
from poscarflow.records import end_record, failed_summary, start_record
from poscarflow.resume import WallTimeReached, continuation, last_step

if TYPE_CHECKING:
    from pathlib import Path

    from poscarflow.layout import Layout
    from poscarflow.records import CalcSpec, HistoryRecord, Step, Summary
    from poscarflow.resume import Continuation

logger = logging.getLogger("poscarflow")


class Deferred(RuntimeError):
    """The machine failed this calculation (not its fault): the next run retries it."""


class JobEnding(RuntimeError):
    """SLURM is ending the job this attempt runs in. SLURM's SIGTERM reaches VASP (its own
    step) but not this process, so custodian may report VASP's death as a failure
    (validators on its cut files) before SIGKILL: that is the kill's doing. The attempt
    is left as a kill leaves it, for the next to close with SLURM's state and continue."""


def run_attempts(
    layout: Layout, step: Step, spec: CalcSpec, source: dict, *, identity: dict,
    policy: dict[str, int],
) -> Summary:  # fmt: skip
    """Compute one calculation until it succeeds or the policy stops it; publish it.

    `identity` holds its reuse key and code fingerprint, stored in the summary. Raises
    Deferred for a failure of the machine that the next run may retry.
    """
    sid, key = spec["id"], identity["key"]
    history_file = layout.history(sid)
    continued = last_step(layout, sid, key) if step == "relax" else None
    if continued is not None:
        logger.info("%s %s: continuing from optimizer step %d", step, sid, continued.done_steps)
    remove_leftovers(layout.calc_dir(sid, step))
    dead = interrupted(read_history(history_file, step))
    if dead is not None and not close_attempt(layout, sid, dead, policy, key):
        return give_up(layout, spec, step, dead, identity)
    while True:
        tmp = fresh_attempt_dir(layout, sid, step, key, continued)
        attempt = 1 + attempts_ended(read_history(history_file, step))
        done = continued.done_steps if continued else 0
        append_history(history_file, start_record(step, attempt, key, done))
        try:
            summary = compute(step, spec, source, tmp, continued=continued)
        except WallTimeReached as err:  # tmp stays for the next attempt, or give up
            ended = failed_summary(spec, step, "timeout", str(err))
            dead = end_record(step, attempt, key, ended, rule=None, restarted=False)
            if not close_attempt(layout, sid, dead, policy, key):
                return give_up(layout, spec, step, dead, identity)
            raise
        failure = summary.get("failure")
        if failure and slurm.job_ending(job := settings.slurm_job_id()):
            raise JobEnding(f"{step} {sid}: SLURM is ending job {job}: attempt {attempt} "
                            f"({failure}) is left for the next attempt")  # fmt: skip
        text = f"{summary.get('reason', '')}\n" + "\n".join(summary.get("traceback", []))
        rule = matching_rule(failure, text, policy) if failure else None
        restart = budget_left(read_history(history_file, step), rule, policy, key)
        append_history(
            history_file, end_record(step, attempt, key, summary, rule=rule, restarted=restart)
        )
        summary |= identity | {"attempts": attempt}
        if failure == "infrastructure":
            if restart:  # the attempt folder stays: the next run continues from it
                raise Deferred(summary.get("cause", summary["reason"]))
            return give_up(layout, spec, step, end_record(
                step, attempt, key, summary, rule=rule, restarted=False), identity)  # fmt: skip
        if not restart:
            return publish(layout, summary, tmp)
        logger.info("%s %s: attempt %d %s, restarting (policy %r)", step, sid, attempt,
                    failure, rule)  # fmt: skip
        if failure in ("unconverged", "custodian"):  # from the last geometry, not the input
            continued = continuation(tmp) or continued


def fresh_attempt_dir(
    layout: Layout, sid: str, step: Step, key: str, continued: Continuation | None
) -> Path:
    """This process's attempt folder: its marker, and what it continues (the path so far
    and the optimizer's state), so that a kill of this attempt loses none of it."""
    tmp = layout.attempt_dir(sid, step)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write_json(tmp / ATTEMPT_MARKER, {"key": key})
    if continued is not None:
        write_frames(tmp / PATH, continued.frames)
        if continued.state is not None:  # the optimizer continues where it stopped
            (tmp / OPT_STATE).write_bytes(continued.state)
        if continued.start is not None:  # VASP goes on from its CONTCAR
            write_frames(tmp / START, [continued.start])
    return tmp


def close_attempt(layout: Layout, sid: str, dead: HistoryRecord, policy: dict[str, int],
           key: str) -> bool:  # fmt: skip
    """Record an attempt that ended without a result; True if it may be continued.

    A plain interruption always continues; out of memory, out of time and node failures
    spend the policy's budget.
    """
    rule = matching_rule(dead["failure"], dead.get("reason") or "", policy)
    history = read_history(layout.history(sid), dead["step"])
    restart = dead["failure"] == "interrupted" or budget_left(history, rule, policy, key)
    append_history(layout.history(sid), dead | {"key": key, "rule": rule, "restarted": restart})
    logger.info("%s (%s)", dead.get("reason"), "continuing" if restart else "no restart left")
    return restart


def give_up(layout: Layout, spec: CalcSpec, step: Step, dead: HistoryRecord,
             identity: dict) -> Summary:  # fmt: skip
    """Publish a failed summary, alone, for an attempt that may not be restarted."""
    summary = failed_summary(spec, step, dead["failure"], dead.get("reason") or "")
    summary |= identity | {"attempts": dead["attempt"]}
    tmp = layout.attempt_dir(spec["id"], step)
    shutil.rmtree(tmp, ignore_errors=True)
    return publish(layout, summary, tmp)


def publish(layout: Layout, summary: Summary, tmp: Path) -> Summary:
    """Write the summary last and move the finished folder into place.

    A failed calculation's folder keeps what helps to understand it (quacc's failed-quacc
    folder, VASP's inputs), minus any file that cannot be read back (cut by a full disk
    or a kill); reasons name the published folder, not the attempt's temporary one.
    """
    final = layout.calc_dir(summary["id"], summary["step"])
    tmp.mkdir(parents=True, exist_ok=True)
    for scratch in (ATTEMPT_MARKER, OPT_STATE, PATH, START):  # only unfinished attempts need them
        (tmp / scratch).unlink(missing_ok=True)
    if summary["status"] == "failed":
        for path in unreadable(tmp):
            path.unlink()
            summary.setdefault("warnings", []).append(f"removed unreadable {path.name}")
        for name in ("reason", "traceback"):
            if name in summary:
                summary[name] = _renamed(summary[name], tmp, final)  # type: ignore[literal-required]
    write_json(tmp / SUMMARY, summary)
    publish_dir(tmp, final)
    logger.info("%s %s: %s %s", summary["step"], summary["id"], summary["status"],
                summary.get("reason", ""))  # fmt: skip
    return summary


def _renamed(text: str | list[str], tmp: Path, final: Path) -> str | list[str]:
    """`text` with the attempt folder's path replaced by the published folder's."""
    if isinstance(text, list):
        return [_renamed(line, tmp, final) for line in text]  # type: ignore[misc]
    for old, new in ((tmp.resolve(), final.resolve()), (tmp, final)):
        text = text.replace(str(old), str(new))
    return text
