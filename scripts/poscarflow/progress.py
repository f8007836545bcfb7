"""How far a run is: relaxes and statics done, running, failed and pending, the rate and ETA.

Read from the task histories (`results/calcs/<id>/history.jsonl`, one small file per
structure) and the presence of each finished calculation's `summary.json`; summaries are
parsed only for calculations that have no history. So it is cheap enough to call every
few seconds on 10,000 structures: `poscarflow status --watch` and the pool's progress
lines use it.

```
relax 45/100 done (2 running, 1 failed) · static 20/100 done · elapsed 0:00:30 · 2.2/s · ETA 0:01:03
```

Elapsed time, rate and ETA cover the current run: from its first start record, where a
stretch of more than `IDLE_GAP` with nothing running starts a new run (the histories keep
every earlier run's records too), or from `since` when the caller knows when its run
started. A calculation whose parameters changed counts as done until its rerun starts
(`poscarflow status` and `poscarflow why` tell which are stale).
"""

from __future__ import annotations

import os
import socket
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Literal

from poscarflow.files import read_json
from poscarflow.history import read_history
from poscarflow.layout import STEPS

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from poscarflow.layout import Layout
    from poscarflow.records import HistoryRecord, Step

State = Literal["pending", "running", "interrupted", "done", "unconverged", "failed"]
# Where each state is counted: an interrupted attempt is redone, so it is pending.
BUCKET: dict[State, str] = {
    "pending": "pending", "interrupted": "pending", "running": "running",
    "done": "done", "unconverged": "done", "failed": "failed",
}  # fmt: skip
IDLE_GAP = timedelta(minutes=30)


@dataclass(frozen=True)
class Calc:
    """What the task history says about one calculation.

    Attributes
    ----------
    state
        `running` (its last attempt started and its process lives, or it runs on another
        host), `interrupted` (started, and its process is gone), `done`, `unconverged`,
        `failed` (finished and published), or `pending` (anything else: never started,
        reset, or waiting for a restart).
    attempts
        Attempts that ended (a failed or restarted attempt included).
    record
        Its latest history record, or None.
    ended
        When it finished (its last end record), for finished calculations.
    spans
        (start, end) of every attempt; end is None for the attempt that is running.
    """

    state: State
    attempts: int = 0
    record: HistoryRecord | None = None
    ended: datetime | None = None
    spans: tuple[tuple[datetime, datetime | None], ...] = ()


@dataclass(frozen=True)
class StepProgress:
    """Counts of one step's calculations (done includes unconverged relaxes)."""

    done: int = 0
    running: int = 0
    failed: int = 0
    pending: int = 0

    @property
    def total(self) -> int:
        """All calculations of this step."""
        return self.done + self.running + self.failed + self.pending

    @property
    def remaining(self) -> int:
        """Calculations still to finish (running or pending)."""
        return self.running + self.pending


@dataclass(frozen=True)
class Progress:
    """How far a run is.

    Attributes
    ----------
    relax, static
        Counts per step.
    started
        The run's first start record (or `since`); None before anything started.
    elapsed
        From `started` to now while a calculation runs (or, with `since`, while any is
        left), else to the run's last record.
    finished
        Calculations (both steps) that finished since `started`.
    rate
        `finished` per minute of `elapsed`; None until one has finished.
    eta
        Time left at that rate while the run is going; None once it stopped or finished.
    """

    relax: StepProgress = field(default_factory=StepProgress)
    static: StepProgress = field(default_factory=StepProgress)
    started: datetime | None = None
    elapsed: timedelta | None = None
    finished: int = 0
    rate: float | None = None
    eta: timedelta | None = None

    @property
    def remaining(self) -> int:
        """Calculations of both steps still to finish."""
        return self.relax.remaining + self.static.remaining


def calc_states(layout: Layout, sid: str, *, host: str | None = None) -> dict[Step, Calc]:
    """The state of each step of one structure, from its task history (read once).

    Parameters
    ----------
    layout
        The results folder.
    sid
        Structure id.
    host
        This machine's name (`socket.gethostname()` if None): an attempt started here
        runs while its process lives; one started elsewhere is trusted to run.

    Returns
    -------
    dict[Step, Calc]
        Step → its calculation's state.
    """
    host = host or socket.gethostname()
    history = read_history(layout.history(sid))
    return {step: _calc(layout, sid, step, [r for r in history if r.get("step") == step], host)
            for step in STEPS}  # fmt: skip


def _calc(layout: Layout, sid: str, step: Step, history: list[HistoryRecord], host: str) -> Calc:
    """One calculation's state from its history records."""
    spans, attempts, opened = [], 0, None
    for record in history:
        event, time = record.get("event"), _time(record)
        if event == "start":
            if opened is not None:  # a start without an end: it was stopped
                spans.append((opened, time or opened))
            opened = time
        elif event == "end":
            attempts += 1
            if opened is not None and time is not None:
                spans.append((opened, time))
            opened = None
    last = history[-1] if history else None
    if last is not None and last.get("event") == "start":
        alive = _alive(last, layout, sid, step, host)
        if opened is not None:
            spans.append((opened, None if alive else opened))
        state: State = "running" if alive else "interrupted"
        return Calc(state, attempts, last, None, tuple(spans))
    if last is not None and last.get("event") == "end" and not last.get("restarted"):
        if layout.summary(sid, step).exists():  # published: the end record says how
            state = last.get("status") or "done"
            return Calc(state, attempts, last, _time(last), tuple(spans))
        return Calc("pending", attempts, last, None, tuple(spans))
    # No history, a reset, or a restart not begun: only a summary (an earlier result, or
    # one made without a history) says more.
    summary = read_json(layout.summary(sid, step))
    if summary is not None:
        state = summary.get("status", "done")
        return Calc(state, attempts, last, _time({"time": summary.get("end")}), tuple(spans))
    return Calc("pending", attempts, last, None, tuple(spans))


def _alive(record: HistoryRecord, layout: Layout, sid: str, step: Step, host: str) -> bool:
    """Whether the attempt that `record` started still runs (on another host: trusted)."""
    if record.get("host") != host:
        return bool(record.get("slurm_job_id"))  # elsewhere: trust it until it ends
    for tmp in layout.attempt_dirs(sid, step):
        try:
            os.kill(int(tmp.name.rsplit("-", 1)[1]), 0)
            return True
        except (ValueError, ProcessLookupError, PermissionError):
            continue
    return False


def _time(record: HistoryRecord | dict) -> datetime | None:
    """A record's time, or None if it has none that can be read."""
    try:
        return datetime.fromisoformat(record["time"])  # type: ignore[typeddict-item]
    except (KeyError, TypeError, ValueError):
        return None


def progress(
    layout: Layout, ids: Iterable[str], *, since: datetime | None = None,
    now: datetime | None = None, idle_gap: timedelta = IDLE_GAP,
) -> Progress:  # fmt: skip
    """Count the calculations of `ids` by state, and time the run.

    Parameters
    ----------
    layout
        The results folder.
    ids
        The structures of the run.
    since
        When the run started, if the caller knows (the pool does); otherwise its first
        start record after the last pause of more than `idle_gap`.
    now
        The current time (tests); `datetime.now(UTC)` if None.
    idle_gap
        A pause with nothing running longer than this starts a new run.

    Returns
    -------
    Progress
        Counts per step, elapsed time, rate and ETA.
    """
    host = socket.gethostname()
    return summarise({sid: calc_states(layout, sid, host=host) for sid in ids},
                     since=since, now=now, idle_gap=idle_gap)  # fmt: skip


def summarise(
    calcs: Mapping[str, Mapping[Step, Calc]], *, since: datetime | None = None,
    now: datetime | None = None, idle_gap: timedelta = IDLE_GAP,
) -> Progress:  # fmt: skip
    """`Progress` from states that `calc_states` returned (id → step → Calc)."""
    now = now or datetime.now(UTC)
    counts: dict[str, Counter[str]] = {step: Counter() for step in STEPS}
    spans: list[tuple[datetime, datetime]] = []
    ends: list[datetime] = []
    for steps in calcs.values():
        for step, calc in steps.items():
            counts[step][BUCKET[calc.state]] += 1
            spans += [(start, now if end is None else end) for start, end in calc.spans]
            if calc.ended is not None and BUCKET[calc.state] in {"done", "failed"}:
                ends.append(calc.ended)
    relax, static = (StepProgress(**counts[step]) for step in STEPS)
    remaining = relax.remaining + static.remaining
    started, last = _last_run(spans, idle_gap)
    if since is not None:  # the caller's run is going while anything is left
        started, going = since, remaining > 0
    else:  # from the files alone: the clock runs while a calculation does
        going = relax.running + static.running > 0
    if started is None:
        return Progress(relax, static)
    elapsed = max((now if going else last) - started, timedelta(0))
    finished = sum(end >= started for end in ends)
    minutes = elapsed.total_seconds() / 60
    rate = finished / minutes if finished and minutes > 0 else None
    eta = timedelta(minutes=remaining / rate) if going and rate else None
    return Progress(relax, static, started, elapsed, finished, rate, eta)


def _last_run(
    spans: list[tuple[datetime, datetime]], idle_gap: timedelta
) -> tuple[datetime | None, datetime]:
    """Start and end of the last stretch of attempts with no pause longer than idle_gap."""
    start, end = None, datetime.min.replace(tzinfo=UTC)
    for begin, finish in sorted(spans):
        if start is None or begin - end > idle_gap:
            start, end = begin, finish
        else:
            end = max(end, finish)
    return start, end


def duration(delta: timedelta) -> str:
    """`H:MM:SS` (whole seconds; days spelt out by timedelta)."""
    return str(timedelta(seconds=round(delta.total_seconds())))


def rate_text(per_minute: float) -> str:
    """A rate as `3.1/s` when fast, else `4.2/min`."""
    if per_minute >= 60:
        return f"{per_minute / 60:.1f}/s"
    return f"{per_minute:.2g}/min" if per_minute < 10 else f"{per_minute:.0f}/min"


def _step_text(name: str, counts: StepProgress) -> str:
    busy = ", ".join(f"{n} {what}" for what, n in
                     (("running", counts.running), ("failed", counts.failed)) if n)  # fmt: skip
    return f"{name} {counts.done}/{counts.total} done" + (f" ({busy})" if busy else "")


def progress_line(p: Progress) -> str:
    """One line, for a terminal that scrolls (the pool's progress lines).

    `relax 45/100 done (2 running, 1 failed) · static 20/100 done · elapsed 0:00:30 ·
    2.2/s · ETA 0:01:03`; elapsed, rate and ETA appear once known.
    """
    parts = [_step_text("relax", p.relax), _step_text("static", p.static)]
    if p.elapsed is not None:
        parts.append(f"elapsed {duration(p.elapsed)}")
    if p.rate is not None:
        parts.append(rate_text(p.rate))
    if p.eta is not None:
        parts.append(f"ETA {duration(p.eta)}")
    return " · ".join(parts)


def progress_table(p: Progress) -> str:
    """Counts per step as a small aligned table, then elapsed time, rate and ETA."""
    head = ("", "done", "running", "failed", "pending", "total")
    rows = [head] + [
        (step, *(str(n) for n in (c.done, c.running, c.failed, c.pending, c.total)))
        for step, c in (("relax", p.relax), ("static", p.static))
    ]
    lines = ["  ".join(f"{cell:<6}" if i == 0 else f"{cell:>7}" for i, cell in enumerate(row))
             for row in rows]  # fmt: skip
    timing = [
        f"elapsed {duration(p.elapsed)}" if p.elapsed is not None else "not started",
        f"{rate_text(p.rate)}" if p.rate is not None else "",
        f"ETA {duration(p.eta)}" if p.eta is not None else "",
    ]
    return "\n".join([*(line.rstrip() for line in lines), " · ".join(t for t in timing if t)])
