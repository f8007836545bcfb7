"""A slurmctld that stops answering in the middle of a run must not end it (upstream:
snakemake-executor-plugin-slurm issue 313, "a busy SLURM makes Snakemake exit").

The slow test stops slurmctld of the local cluster (scripts/slurm-local.sh, started by
the `partition` fixture of tests/test_slurm.py if it is not up) for 30 s while jobs run
and wait in the queue and Snakemake is still submitting, then starts it again: the run
goes on, every structure is done, each batch is submitted once. The fast tests check the
pieces of poscarflow.slurm with stand-ins for SLURM's commands.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from poscarflow import slurm
from poscarflow.history import interrupted, read_history
from tests import test_slurm
from tests.conftest import SNAKEMAKE, Workflow
from tests.test_slurm import FAST_POLLING, PARTITION, SUBMITTED, _sh, job_ids, slurm_job

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

# The local cluster's default partition; starts the cluster if it is not up (and stops it
# after this module), skips where it cannot be started.
partition = test_slurm.partition

DOWN = "echo 'slurm_load_jobs error: Unable to contact slurm controller (connect failure)' >&2"


def stand_ins(folder: Path, **scripts: str) -> Path:
    """Stand-ins for SLURM commands (name=shell script body) in `folder`."""
    folder.mkdir(exist_ok=True)
    for name, body in scripts.items():
        path = folder / name
        path.write_text(f"#!/bin/sh\n{body}\n")
        path.chmod(0o755)
    return folder


def commands(folder: Path, monkeypatch: pytest.MonkeyPatch, **scripts: str) -> Path:
    """Stand-ins for SLURM commands, first on this test's PATH."""
    monkeypatch.setenv("PATH", f"{stand_ins(folder, **scripts)}{os.pathsep}{os.environ['PATH']}")
    return folder


def test_job_state_asks_the_accounting_while_slurmctld_is_down(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_ = commands(tmp_path / "bin", monkeypatch, scontrol=f"{DOWN}; exit 1",
                    sacct="echo 'CANCELLED by 0'")  # fmt: skip
    assert slurm.job_state("7") == "CANCELLED"
    (bin_ / "sacct").write_text("#!/bin/sh\necho OUT_OF_MEMORY\n")
    assert slurm.job_state("7") == "OUT_OF_MEMORY"
    start = {"event": "start", "step": "relax", "attempt": 1, "key": "k", "slurm_job_id": "7"}
    dead = interrupted([start])  # type: ignore[list-item]
    assert dead
    assert (dead["failure"], dead["reason"]) == (
        "oom",
        "attempt 1 was stopped (SLURM: OUT_OF_MEMORY)",
    )


def test_no_answer_at_all_is_recorded_as_such(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Neither slurmctld nor the accounting answers: the history says so, not that the
    process ended."""
    commands(tmp_path / "bin", monkeypatch, scontrol=f"{DOWN}; exit 1", sacct="exit 1")
    assert slurm.job_state("7") == slurm.NO_ANSWER
    start = {"event": "start", "step": "relax", "attempt": 2, "key": "k", "slurm_job_id": "7"}
    dead = interrupted([start])  # type: ignore[list-item]
    assert dead
    assert dead["failure"] == "interrupted"
    assert dead["reason"] == "attempt 2 was stopped (SLURM did not answer about its job 7)"


def test_time_left_is_unknown_while_slurmctld_is_down(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    commands(tmp_path / "bin", monkeypatch, squeue=f"{DOWN}; exit 1")
    with caplog.at_level(logging.WARNING, logger="poscarflow.slurm"):
        assert slurm.time_left("7") is None
    assert "its time limit is unknown" in caplog.text
    commands(tmp_path / "bin", monkeypatch, squeue="echo 1-02:03:04")
    assert slurm.time_left("7") == 86400 + 2 * 3600 + 3 * 60 + 4


def test_wait_for_controller_until_it_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """`scontrol ping` says DOWN twice, then UP."""
    calls = tmp_path / "calls"
    ping = (
        f"echo x >> {calls}\n"
        f'if [ "$(wc -l < {calls})" -le 2 ]; then echo "Slurmctld(primary) at vm is DOWN"; '
        'exit 1; fi\necho "Slurmctld(primary) at vm is UP"'
    )
    commands(tmp_path / "bin", monkeypatch, scontrol=ping)
    with caplog.at_level(logging.WARNING, logger="poscarflow.slurm"):
        assert slurm.wait_for_controller(limit=60, pause=0)
    assert len(calls.read_text().split()) == 3
    assert "slurmctld does not answer: waiting" in caplog.text
    assert "slurmctld answers again" in caplog.text
    commands(tmp_path / "bin", monkeypatch, scontrol="exit 1")
    assert not slurm.wait_for_controller(limit=0, pause=0)


def test_srun_and_sbatch_wrappers_run_slurms_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """bin/srun and bin/sbatch, first on PATH, run SLURM's own command with the same
    arguments and standard input once slurmctld answers."""
    commands(tmp_path / "bin", monkeypatch,
             scontrol='echo "Slurmctld(primary) at vm is UP"',
             srun='echo "real srun $*"', sbatch='echo "real sbatch $*: $(cat)"')  # fmt: skip
    monkeypatch.setenv("PYTHONPATH", str(Path(slurm.__file__).parents[1]))
    monkeypatch.setenv("POSCARFLOW_PYTHON", "")  # restored after the test
    slurm.use_waiting_wrappers()
    assert os.environ["PATH"].split(os.pathsep)[0] == str(slurm.WRAPPERS)
    assert os.environ["POSCARFLOW_PYTHON"] == sys.executable
    srun = subprocess.run(["srun", "-n1", "echo hi"], capture_output=True, text=True, check=True)
    assert srun.stdout == "real srun -n1 echo hi\n"
    sbatch = subprocess.run(["sbatch", "--parsable"], input="#!/bin/sh\n", capture_output=True,
                            text=True, check=True)  # fmt: skip
    assert sbatch.stdout == "real sbatch --parsable: #!/bin/sh\n"


class Executor:
    """Stands in for the SLURM plugin's executor: its `check_active_jobs` yields the jobs
    in `running`, reports those in `ended` and says nothing about the others."""

    def __init__(self, running: set[str], ended: set[str]) -> None:
        self.running, self.ended, self.reported = running, ended, []
        self.logger = logging.getLogger("test.executor")

    def report_job_success(self, job_info: object) -> None:
        self.reported.append(job_info)

    def report_job_error(self, job_info: object, msg: str | None = None) -> None:
        self.reported.append(job_info)

    async def check_active_jobs(self, active_jobs: list[str]) -> AsyncIterator[str]:
        for job in active_jobs:
            if job in self.ended:
                self.report_job_success(job)
            elif job in self.running:
                yield job


def test_jobs_without_an_answer_are_kept(caplog: pytest.LogCaptureFixture) -> None:
    check = slurm.keep_unanswered_jobs(Executor.check_active_jobs)
    assert slurm.keep_unanswered_jobs(check) is check  # changed once only

    async def round_(executor: Executor, jobs: list[str]) -> list[str]:
        return [j async for j in check(executor, jobs)]

    answered = Executor(running={"a"}, ended={"b"})
    with caplog.at_level(logging.WARNING, logger="test.executor"):
        assert asyncio.run(round_(answered, ["a", "b"])) == ["a"]
    assert answered.reported == ["b"]
    assert not caplog.text
    assert "report_job_success" not in vars(answered)  # its own methods again

    # no status query answered: the plugin neither yields nor reports any job
    silent = Executor(running=set(), ended=set())
    with caplog.at_level(logging.WARNING, logger="test.executor"):
        assert asyncio.run(round_(silent, ["a", "b"])) == ["a", "b"]
    assert "SLURM did not answer about 2 job(s)" in caplog.text


def wait_for_queue(proc: subprocess.Popen, log: Path) -> str:
    """The SLURM run ID, once one of the run's jobs runs and another waits in the queue."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        if run_id := re.search(r"SLURM run ID: (\S+)", log.read_text()):
            states = _sh("squeue", "-h", "--name", run_id.group(1), "-o", "%T").stdout.split()
            if "RUNNING" in states and "PENDING" in states:
                return run_id.group(1)
        time.sleep(0.5)
    raise AssertionError(f"no job running and one queued:\n{log.read_text()[-3000:]}")


def local_cluster(action: str) -> None:
    proc = _sh("bash", "scripts/slurm-local.sh", action)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.slow
def test_run_goes_on_through_a_slurmctld_outage(
    workflow: Workflow, partition: str, tmp_path: Path
) -> None:
    """Six batches, one per job (`--group-components calculation=1`), submitted two per
    5 s: when slurmctld stops, two jobs run (this node has two CPUs), two wait in the
    queue, and two are still to be submitted. The jobs' work starts 10 s after SLURM
    starts them (`--precommand`), in the outage: it needs no job step (no srun), hence
    no slurmctld (poscarflow.slurm.without_jobstep). A `sacct` that fails
    (a cluster without accounting; here the plugin's switch to sacct would answer) makes
    the plugin's status queries fail too while slurmctld is down."""
    ids = ("Cu_fcc", "Cu3Au_L12", "Cu_2x1x1_rattled", "Al_fcc", "Ni_fcc", "Pd_fcc")
    workflow.add_examples(*ids)
    workflow.config["batch_size"] = 1
    workflow.write_config()
    no_accounting = stand_ins(
        tmp_path / "no-accounting",
        sacct="echo 'sacct: error: Slurm accounting storage is disabled' >&2; exit 1",
    )
    cmd = [
        *SNAKEMAKE, "--profile", "profiles/slurm", "--cores", "2", *FAST_POLLING,
        "--group-components", "calculation=1", "--max-jobs-per-timespan", "2/5s",
        "--precommand", "sleep 10", "--slurm-keep-successful-logs",
    ]  # fmt: skip
    path = f"{no_accounting}{os.pathsep}{os.environ['PATH']}"
    log = workflow.root / "snakemake-output.txt"
    with log.open("w") as out:
        proc = subprocess.Popen(
            cmd, cwd=workflow.root, env=workflow.env | {PARTITION: partition, "PATH": path},
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    run_id = None
    try:
        run_id = wait_for_queue(proc, log)
        local_cluster("stop-controller")
        try:
            time.sleep(30)
            submitted_in_outage = len(SUBMITTED.findall(log.read_text()))
        finally:
            local_cluster("start-controller")
        proc.wait(timeout=420)
    finally:
        if proc.poll() is None:  # hung: stop it and its jobs
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            if run_id:
                _sh("scancel", "--name", run_id)
    output = log.read_text()
    assert proc.returncode == 0, output[-5000:]

    # every structure done, each batch submitted once, by a job that completed
    rows = {r["id"]: r for r in json.loads(workflow.cli("status", "--json"))}
    assert {sid: r["state"] for sid, r in rows.items()} == dict.fromkeys(ids, "done")
    submitted = SUBMITTED.findall(output)
    assert len(submitted) == len(set(submitted)) == len(ids)
    assert submitted_in_outage < len(ids)  # sbatch waited for slurmctld
    assert "Trying to restart job" not in output
    assert job_ids(workflow, ids) == set(submitted)
    for job_id in submitted:
        assert slurm_job(job_id)["state"] == "COMPLETED"

    # what happened, in Snakemake's output and the jobs' SLURM logs
    assert "poscarflow: SLURM did not answer about" in output
    slurm_logs = "".join(
        p.read_text() for p in (workflow.root / ".snakemake/slurm_logs").rglob("*.log")
    )
    assert "Unable to confirm allocation" not in slurm_logs

    # one attempt of each calculation, started and ended once
    for sid in ids:
        history = read_history(workflow.root / "results/calcs" / sid / "history.jsonl")
        events = [(r["step"], r["event"], r["attempt"]) for r in history]
        assert events == [
            ("relax", "start", 1), ("relax", "end", 1), ("static", "start", 1),
            ("static", "end", 1),
        ], sid  # fmt: skip
        assert all(r["status"] == "done" for r in history if r["event"] == "end")
