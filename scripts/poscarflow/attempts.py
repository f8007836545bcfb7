"""The restart loop: attempts of one calculation, recorded in its task history.

A failure that the restart policy covers, with budget left, is restarted at once (an
unconverged relax continues from where it stopped); any other failure is final after one
attempt: no blind retries of a bug. An attempt that a kill ended (a killed Snakemake,
pool process or SLURM job) is closed in the history with its cause when the next attempt
starts, and continued from its last optimizer step.
"""

from __future__ import annotations

import logging
import shutil
from typing import TYPE_CHECKING

from poscarflow.compute import compute, read_final
from poscarflow.files import publish_dir, remove_leftovers, write_json
from poscarflow.history import (
    append_history,
    attempts_ended,
    budget_left,
    interrupted,
    read_history,
)
from poscarflow.layout import ATTEMPT_MARKER, OPT_STATE, SUMMARY
from poscarflow.policy import matching_rule
from poscarflow.records import end_record, failed_summary, start_record
from poscarflow.resume import WallTimeReached, last_step, optimizer_state

if TYPE_CHECKING:
    from pathlib import Path

    from poscarflow.layout import Layout
    from poscarflow.records import CalcSpec, HistoryRecord, Step, Summary

logger = logging.getLogger("poscarflow")


def run_attempts(
    layout: Layout, step: Step, spec: CalcSpec, source: dict, *, identity: dict,
    policy: dict[str, int],
) -> Summary:  # fmt: skip
    """Compute one calculation until it succeeds or the policy stops it; publish it.

    `identity` holds its reuse key and code fingerprint, stored in the summary.
    """
    sid, key = spec["id"], identity["key"]
    history_file = layout.history(sid)
    start_atoms, done_steps, state = None, 0, None
    if step == "relax" and (resumed := last_step(layout, sid, key)):
        start_atoms, done_steps, state = resumed
        logger.info("%s %s: continuing from optimizer step %d", step, sid, done_steps)
    remove_leftovers(layout.calc_dir(sid, step))
    dead = interrupted(read_history(history_file, step))
    if dead is not None and not _close(layout, sid, dead, policy, key):
        return _give_up(layout, spec, step, dead, identity)
    while True:
        tmp = _fresh_attempt_dir(layout, sid, step, key, done_steps=done_steps, state=state)
        attempt = 1 + attempts_ended(read_history(history_file, step))
        append_history(history_file, start_record(step, attempt, key, done_steps))
        try:
            summary = compute(step, spec, source, tmp, start=start_atoms)
        except WallTimeReached as err:  # tmp stays for the next attempt, or give up
            ended = failed_summary(spec, step, "timeout", str(err))
            dead = end_record(step, attempt, key, ended, rule=None, restarted=False)
            if not _close(layout, sid, dead, policy, key):
                return _give_up(layout, spec, step, dead, identity)
            raise
        if "opt_steps" in summary:  # steps of earlier attempts this one continued
            summary["opt_steps"] += done_steps
        failure = summary.get("failure")
        text = f"{summary.get('reason', '')}\n" + "\n".join(summary.get("traceback", []))
        rule = matching_rule(failure, text, policy) if failure else None
        restart = budget_left(read_history(history_file, step), rule, policy, key)
        append_history(
            history_file, end_record(step, attempt, key, summary, rule=rule, restarted=restart)
        )
        summary |= identity | {"attempts": attempt}
        if not restart:
            return publish(layout, summary, tmp)
        logger.info("%s %s: attempt %d %s, restarting (policy %r)", step, sid, attempt,
                    failure, rule)  # fmt: skip
        if failure == "unconverged":  # continue from the last geometry, not from the input
            start_atoms, state = read_final(tmp / "final.extxyz"), optimizer_state(tmp)
            done_steps = summary["opt_steps"]


def _fresh_attempt_dir(
    layout: Layout, sid: str, step: Step, key: str, *, done_steps: int, state: bytes | None
) -> Path:
    """This process's attempt folder, empty but for its marker and the optimizer state."""
    tmp = layout.attempt_dir(sid, step)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write_json(tmp / ATTEMPT_MARKER, {"key": key, "done_steps": done_steps})
    if state is not None:  # the optimizer continues where it stopped
        (tmp / OPT_STATE).write_bytes(state)
    return tmp


def _close(layout: Layout, sid: str, dead: HistoryRecord, policy: dict[str, int],
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


def _give_up(layout: Layout, spec: CalcSpec, step: Step, dead: HistoryRecord,
             identity: dict) -> Summary:  # fmt: skip
    """Publish a failed summary for an attempt that may not be restarted."""
    summary = failed_summary(spec, step, dead["failure"], dead.get("reason") or "")
    summary |= identity | {"attempts": dead["attempt"]}
    return publish(layout, summary, layout.attempt_dir(spec["id"], step))


def publish(layout: Layout, summary: Summary, tmp: Path) -> Summary:
    """Write the summary last and move the finished folder into place."""
    tmp.mkdir(parents=True, exist_ok=True)
    for scratch in (ATTEMPT_MARKER, OPT_STATE):  # only an unfinished attempt needs them
        (tmp / scratch).unlink(missing_ok=True)
    write_json(tmp / SUMMARY, summary)
    publish_dir(tmp, layout.calc_dir(summary["id"], summary["step"]))
    logger.info("%s %s: %s %s", summary["step"], summary["id"], summary["status"],
                summary.get("reason", ""))  # fmt: skip
    return summary
