"""`poscarflow status`, its progress counts and `reset`: fast tests on fake calculation
folders (task histories and summaries as a run writes them), and a real run."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from contextlib import chdir
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from poscarflow import why
from poscarflow.fingerprint import job_code
from poscarflow.history import read_history
from poscarflow.layout import Layout
from poscarflow.plan import Plan, load_config
from poscarflow.progress import Progress, StepProgress, calc_states, progress, progress_line
from poscarflow.status import format_table, status
from tests.conftest import EXAMPLES, REPO, SNAKEMAKE, Workflow

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


class FakeRun:
    """A workflow folder whose results are written here as a run would write them:
    task-history records and summaries, no calculation."""

    def __init__(self, root: Path, ids: list[str]) -> None:
        self.root = root
        (root / "config").mkdir(parents=True)
        (root / "structures").mkdir()
        config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
        (root / "config" / "config.yaml").write_text(
            yaml.safe_dump(config | {"structures": "structures"})
        )
        shutil.copy2(REPO / "config" / "restart_policy.yaml", root / "config")
        for sid in ids:
            shutil.copy2(EXAMPLES / "Cu_fcc.vasp", root / "structures" / f"{sid}.vasp")
        self.layout = Layout(root / "results")
        with chdir(root):  # the plan's paths are relative to the workflow folder
            self.plan = Plan(load_config("config/config.yaml"))
            _ = self.plan.specs

    def record(self, sid: str, step: str, event: str, at: datetime, **fields: object) -> None:
        record = {"event": event, "step": step, "time": at.isoformat(), "key": "k"} | fields
        if event == "start":
            record |= {"attempt": 1, "host": socket.gethostname(), "slurm_job_id": None}
        path = self.layout.history(sid)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")

    def finish(
        self,
        sid: str,
        step: str,
        at: datetime = T0,
        *,
        seconds: float = 1.0,
        status: str = "done",
        failure: str | None = None,
        reason: str = "",
    ) -> None:
        """A finished attempt: start and end records, and the published summary."""
        self.record(sid, step, "start", at)
        end = at + timedelta(seconds=seconds)
        self.record(sid, step, "end", end, status=status, failure=failure, reason=reason,
                    restarted=False)  # fmt: skip
        summary = {
            "id": sid, "step": step, "status": status, "failure": failure, "reason": reason,
            "parameters": self.plan.specs[sid][step], "code": job_code("emt"),
            "energy_per_atom": -0.5, "end": end.isoformat(),
        }  # fmt: skip
        folder = self.layout.calc_dir(sid, step)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "summary.json").write_text(json.dumps(summary))

    def start(self, sid: str, step: str, at: datetime = T0, *, pid: int | None = None) -> None:
        """An attempt in progress in process `pid` (this one by default)."""
        self.record(sid, step, "start", at)
        self.layout.attempt_dir(sid, step, pid or os.getpid()).mkdir(parents=True)


@pytest.fixture
def fake(tmp_path: Path) -> FakeRun:
    return FakeRun(tmp_path / "wf", ["a", "b", "c", "d", "e"])


def test_progress_counts_each_step_while_relaxes_run(fake: FakeRun) -> None:
    """Regression: a relax that finished counted as `pending` until its static ran."""
    fake.finish("a", "relax")
    fake.start("b", "relax")
    fake.finish("c", "relax", status="failed", failure="bad_input", reason="bad")
    fake.finish("e", "relax")
    fake.finish("e", "static", T0 + timedelta(seconds=5))
    p = progress(fake.layout, ["a", "b", "c", "d", "e"], now=T0 + timedelta(seconds=10))
    assert p.relax == StepProgress(done=2, running=1, failed=1, pending=1)
    assert p.static == StepProgress(done=1, pending=4)
    assert (p.relax.total, p.remaining) == (5, 6)


def test_progress_states_from_the_history(fake: FakeRun) -> None:
    """Interrupted (process gone), restarted (waiting), reset and published states."""
    fake.start("a", "relax", pid=2**22 + 12345)  # no such process
    fake.record("b", "relax", "start", T0)
    fake.record("b", "relax", "end", T0, status="failed", failure="unconverged", restarted=True)
    fake.finish("c", "relax")
    shutil.rmtree(fake.layout.calc_dir("c", "relax"))  # as `poscarflow reset` does
    fake.record("c", "relax", "reset", T0)
    fake.finish("d", "relax", status="unconverged", failure="unconverged")
    states = {sid: calc_states(fake.layout, sid)["relax"].state for sid in "abcd"}
    assert states == {"a": "interrupted", "b": "pending", "c": "pending", "d": "unconverged"}
    p = progress(fake.layout, "abcd")
    assert p.relax == StepProgress(done=1, pending=3)


def test_progress_times_the_current_run_only(fake: FakeRun) -> None:
    """Elapsed time from the run's first start; an earlier run (a day before) and its
    finished calculations count neither for the time nor for the rate."""
    fake.finish("e", "relax", T0 - timedelta(days=1))
    fake.finish("e", "static", T0 - timedelta(days=1))
    fake.finish("a", "relax", T0, seconds=10)
    fake.finish("b", "relax", T0 + timedelta(seconds=10), seconds=10)
    fake.start("c", "relax", T0 + timedelta(seconds=20))
    p = progress(fake.layout, "abcde", now=T0 + timedelta(seconds=30))
    assert p.started == T0
    assert p.elapsed == timedelta(seconds=30)
    assert p.finished == 2
    assert p.rate == pytest.approx(4.0)  # per minute
    assert p.remaining == 6  # 1 relax running, 1 relax and 4 statics pending
    assert p.eta == timedelta(minutes=6 / 4)
    # The pool knows when its run started.
    since = T0 - timedelta(seconds=30)
    assert progress(fake.layout, "abcde", since=since, now=T0 + timedelta(seconds=30)).elapsed \
        == timedelta(minutes=1)  # fmt: skip


def test_progress_of_a_finished_run_stops_the_clock(fake: FakeRun) -> None:
    for i, sid in enumerate("abcde"):
        fake.finish(sid, "relax", T0 + timedelta(seconds=i))
        fake.finish(sid, "static", T0 + timedelta(seconds=10 + i))
    p = progress(fake.layout, "abcde", now=T0 + timedelta(hours=5))
    assert (p.elapsed, p.finished, p.eta) == (timedelta(seconds=15), 10, None)
    assert progress_line(p) == ("relax 5/5 done · static 5/5 done · elapsed 0:00:15 · 40/min")


def test_progress_clock_stops_when_nothing_runs(fake: FakeRun) -> None:
    """Regression: after a reset (or a crash) left calculations pending, the elapsed
    time grew with the clock as if the run went on."""
    fake.finish("a", "relax", T0, seconds=3)
    fake.finish("b", "relax", status="failed", failure="error", reason="boom")
    shutil.rmtree(fake.layout.calc_dir("b", "relax"))
    fake.record("b", "relax", "reset", T0 + timedelta(seconds=10))
    p = progress(fake.layout, "ab", now=T0 + timedelta(minutes=5))
    assert (p.relax.pending, p.elapsed, p.eta) == (1, timedelta(seconds=3), None)


def test_progress_line() -> None:
    p = Progress(
        relax=StepProgress(done=45, running=2, failed=1, pending=52),
        static=StepProgress(done=20, pending=80), started=T0,
        elapsed=timedelta(seconds=21), finished=65, rate=186.0, eta=timedelta(seconds=18.4),
    )  # fmt: skip
    assert progress_line(p) == (
        "relax 45/100 done (2 running, 1 failed) · static 20/100 done · elapsed 0:00:21"
        " · 3.1/s · ETA 0:00:18"
    )
    assert progress_line(Progress(StepProgress(pending=3), StepProgress(pending=3))) == (
        "relax 0/3 done · static 0/3 done"
    )


def test_status_computes_the_code_fingerprint_once(fake: FakeRun, monkeypatch) -> None:
    """Regression: stale detection asked for the jobs' code fingerprint (and reread
    summaries) once per calculation, not once per call."""
    calls = []
    monkeypatch.setattr(why, "job_code", lambda calc: calls.append(calc) or job_code(calc))
    for sid in "abcde":
        fake.finish(sid, "relax")
        fake.finish(sid, "static")
    monkeypatch.chdir(fake.root)
    rows = status(fake.plan, "results")
    assert [r["state"] for r in rows] == ["done"] * 5
    assert len(calls) == 1


def test_status_row_of_a_relaxed_structure(fake: FakeRun, monkeypatch) -> None:
    fake.finish("a", "relax")
    monkeypatch.chdir(fake.root)
    (row,) = status(fake.plan, "results", ["a"])
    assert (row["state"], row["attempts"]) == ("pending", {"relax": 1, "static": 0})
    assert row["steps"] == {"relax": "done", "static": "pending"}


def test_table_columns_fit_the_longest_id() -> None:
    """Regression: ids were padded to 24 characters, longer ones pushed columns apart."""
    rows = [
        {"id": sid, "state": "done", "failure": None, "reason": "", "slurm_job_id": None,
         "attempts": {"relax": 1, "static": 1}, "energy_per_atom": -0.5}
        for sid in ("a", "Cu_fcc_supercell_3x3x3_rattled_strained")
    ]  # fmt: skip
    lines = format_table(rows).splitlines()
    assert {line.index("done") for line in lines[1:3]} == {lines[0].index("state")}
    assert lines[0].index("state") == len("Cu_fcc_supercell_3x3x3_rattled_strained") + 2
    assert all(line == line.rstrip() for line in lines)


@pytest.mark.slow
def test_status_reset_and_a_second_run_refused(workflow: Workflow) -> None:
    workflow.add_examples("Cu_fcc", "Ni_fcc")
    (workflow.structures / "Fe_bcc.vasp").write_text(
        (workflow.structures / "Cu_fcc.vasp").read_text().replace("Cu", "Fe")
    )
    first = subprocess.Popen([*SNAKEMAKE, "--cores", "2"], cwd=workflow.root, env=workflow.env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    time.sleep(2.5)  # the first run holds the lock now
    second = workflow.run(check=False)
    assert second.returncode != 0
    assert "Directory cannot be locked" in second.output
    assert first.wait(timeout=300) != 0  # Fe_bcc failed; the others finished
    status = workflow.cli("status")
    lines = status.splitlines()
    assert "1 failed, 2 done (3 total)" in lines
    assert lines[-3].split() == ["relax", "2", "0", "1", "0", "3"]
    assert lines[-2].split() == ["static", "2", "0", "1", "0", "3"]
    assert "elements Fe not supported" in status
    rows = {r["id"]: r for r in json.loads(workflow.cli("status", "--json"))}
    assert rows["Cu_fcc"]["attempts"] == {"relax": 1, "static": 1}
    assert rows["Fe_bcc"]["failure"] == "bad_input"
    # reset: dry run changes nothing; a real reset clears only the failure.
    done_before = (workflow.root / "results/calcs/Cu_fcc/relax/summary.json").read_text()
    assert "would reset Fe_bcc relax" in workflow.cli("reset", "--dry-run")
    assert (workflow.root / "results/calcs/Fe_bcc/relax").exists()
    assert (workflow.root / "results/summary.csv").exists()
    workflow.cli("reset")
    assert not (workflow.root / "results/calcs/Fe_bcc/relax").exists()
    assert (workflow.root / "results/calcs/Cu_fcc/relax/summary.json").read_text() == done_before
    rows = {r["id"]: r for r in json.loads(workflow.cli("status", "--json"))}
    assert (rows["Fe_bcc"]["state"], rows["Cu_fcc"]["state"]) == ("pending", "done")
    events = [
        r["event"] for r in read_history(workflow.root / "results/calcs/Fe_bcc" / "history.jsonl")
    ]
    assert events[-2:] == ["reset", "reset"]
    # Regression: with results/summary.csv present, the next plain run did nothing but
    # `check`; now the reset batches rerun, the failure is retried, the rest reused.
    assert (workflow.root / "results/summary.csv").exists() is False
    again = workflow.run(check=False)
    assert "relax Fe_bcc: computing" in workflow.log("relax")
    assert "relax Cu_fcc: reused" in workflow.log("relax")
    events = [
        r["event"] for r in read_history(workflow.root / "results/calcs/Fe_bcc" / "history.jsonl")
    ]
    assert events[-2:] == ["start", "end"]
    assert "1 of 3 structures failed" in again.output
