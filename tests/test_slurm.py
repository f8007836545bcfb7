"""The real workflow under `snakemake --profile profiles/slurm`, on a real SLURM cluster.

Uses the one-node cluster of scripts/slurm-local.sh (`.ci/run` starts it; this module
starts it too if it is installable and not running) and skips, saying why, where SLURM
cannot be installed or started. Jobs really go through sbatch: every calculation records
the SLURM job that ran it.

The TIMEOUT scenario costs about 4 minutes, mostly waiting (SLURM's shortest time limit
is one minute, then a retry with up to four), so it is started first, in the background, and
checked last.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import yaml
from ase.build import bulk
from ase.io import write

from poscarflow.history import read_history
from poscarflow.plan import assign_batches
from tests.conftest import REPO, SNAKEMAKE, Workflow

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = pytest.mark.slow

PARTITION = "POSCARFLOW_SLURM_PARTITION"  # the profile's required setting
# Poll SLURM every 2 s (the profile's 40 s / 30 s are for a shared cluster, not a test).
FAST_POLLING = (
    "--slurm-init-seconds-before-status-checks", "2", "--seconds-between-status-checks", "2"
)  # fmt: skip
EXAMPLES = ("Cu_fcc", "Cu3Au_L12", "Cu_2x1x1_rattled", "Al_fcc")
SUBMITTED = re.compile(r"has been submitted with SLURM jobid (\d+)")
SLOW_ID = "Cu500_slow"
STEPS = ("relax", "static")


def _sh(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=REPO)


@pytest.fixture(scope="module")
def partition() -> Iterator[str]:
    """The cluster's default partition. Starts the local cluster if it is not up (and
    stops it afterwards); skips if it cannot be started."""
    started_here = False
    if _sh("bash", "scripts/slurm-local.sh", "status").returncode != 0:
        started = _sh("bash", "scripts/slurm-local.sh", "start")
        if started.returncode != 0:
            tail = (started.stdout + started.stderr).strip().splitlines()[-3:]
            pytest.skip(
                "no SLURM cluster: `bash scripts/slurm-local.sh start` failed "
                f"(it needs root and Debian's slurm packages): {' | '.join(tail)}"
            )
        started_here = True
    if shutil.which("sinfo") is None:
        pytest.skip("no SLURM cluster: `sinfo` is not installed")
    names = _sh("sinfo", "-h", "-o", "%P").stdout.split()
    yield next((n.rstrip("*") for n in names if n.endswith("*")), names[0])
    if started_here:
        _sh("bash", "scripts/slurm-local.sh", "stop")


def slurm_run(workflow: Workflow, partition: str, *args: str) -> subprocess.CompletedProcess:
    """`snakemake --profile profiles/slurm` in a workflow copy, as a user runs it, with the
    partition in the environment. (Workflow.run's `--cores 2` matters: this node has 2
    CPUs, and it caps a group job's CPUs; the profile puts 4 batches in one job.)"""
    profile = ("--profile", "profiles/slurm", *FAST_POLLING)
    return workflow.run(*profile, *args, env={PARTITION: partition})


def small_limits(workflow: Workflow, resource: str, bases: dict[str, int], factor: int) -> None:
    """Deliberately small limits in a workflow copy: the rules' own base `resource` (the
    shipped values are for real work) and the restart policy's escalation factor."""
    for rule, base in bases.items():
        path = workflow.root / f"workflow/rules/{rule}.smk"
        text = path.read_text()
        new = re.sub(rf"{resource}=escalating\(\w+,", f"{resource}=escalating({base},", text)
        assert new != text, f"no {resource}=escalating(...) in {path}"
        path.write_text(new)
    policy = workflow.root / "config/restart_policy.yaml"
    policy.write_text(re.sub(r"factor: [\d.]+", f"factor: {factor}", policy.read_text()))


def slurm_job(job_id: str) -> dict[str, str]:
    """A finished job's state, memory and time limit (kept for MinJobAge, 10 min here)."""
    out = _sh("squeue", "-h", "-t", "all", "-j", job_id, "-o", "%T %m %l").stdout.split()
    assert out, f"SLURM job {job_id} is not known to squeue"
    return dict(zip(("state", "mem", "limit"), out, strict=True))


def minutes(limit: str) -> int:
    """SLURM's [D-]H:MM:SS or M:SS time limit in minutes."""
    days, _, clock = limit.rpartition("-")
    parts = [int(p) for p in clock.split(":")]
    seconds = sum(p * 60**i for i, p in enumerate(reversed(parts)))
    return int(days or 0) * 1440 + seconds // 60


def job_ids(workflow: Workflow, ids: list[str] | tuple[str, ...]) -> set[str | None]:
    """The slurm_job_id recorded in every relax and static summary."""
    return {workflow.summary(sid, step)["slurm_job_id"] for sid in ids for step in STEPS}


@pytest.fixture(scope="module", autouse=True)
def timeout_run(partition: str, tmp_path_factory: pytest.TempPathFactory):
    """Start the TIMEOUT scenario now, in the background (see the module docstring).

    A relax that needs about two minutes here (720 rattled Cu atoms, EMT + BFGS: 1.3 s a
    step, about 95 steps; 500 atoms were enough while the optimizer's state was written
    as JSON at every step, and now finish in 40 s) asks for one: this copy's relax rule
    has a base runtime of 1 minute instead of
    120, and its escalation factor is 4, so SLURM ends the first attempt (TIMEOUT) and
    Snakemake's retry gets 4 minutes (it needs about 1.5; room for a busy node), in
    which the relax continues from its last optimizer step and finishes. The relax and
    static of a batch are one group job whose wall time is the sum of theirs, hence
    static:runtime=0. A far POSCARFLOW_DEADLINE turns off the relax's clean stop shortly
    before the limit (tested elsewhere), which otherwise ends it first: here SLURM itself
    must end the job, as it does when one optimizer step takes longer than that margin.
    """
    workflow = Workflow(tmp_path_factory.mktemp("timeout") / "wf")
    small_limits(workflow, "runtime", {"relax": 1}, factor=4)
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((5, 6, 6))
    atoms.rattle(0.1, seed=1)
    write(workflow.structures / f"{SLOW_ID}.vasp", atoms, format="vasp")
    workflow.config["batch_size"] = 1
    workflow.config["overrides"] = {SLOW_ID: {"relax": {"fmax": 1e-3, "max_steps": 1000}}}
    workflow.write_config()
    args = ["--retries", "1", "--set-resources", "static:runtime=0"]
    log = workflow.root / "snakemake-output.txt"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [*SNAKEMAKE, "--profile", "profiles/slurm", "--cores", "2", *FAST_POLLING, *args],
            cwd=workflow.root,
            env=workflow.env | {PARTITION: partition, "POSCARFLOW_DEADLINE": "4102444800"},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    yield proc, log, workflow
    if proc.poll() is None:  # its test did not run: stop it and cancel its SLURM job
        proc.kill()
        proc.wait()
        if run_id := re.search(r"SLURM run ID: (\S+)", log.read_text()):
            _sh("scancel", "--name", run_id.group(1))


def test_missing_or_unknown_partition_stops_before_submitting(
    workflow: Workflow, partition: str
) -> None:
    workflow.add_examples("Cu_fcc")
    env = {k: v for k, v in workflow.env.items() if k != PARTITION}
    cmd = [*SNAKEMAKE, "--profile", "profiles/slurm", "--cores", "2"]
    for value, message in (
        (None, f"{PARTITION} is not set: export it as the SLURM partition"),
        ("no-such-partition", "no partition no-such-partition on this cluster; sinfo lists: "),
    ):
        run_env = env if value is None else env | {PARTITION: value}
        proc = subprocess.run(
            cmd, cwd=workflow.root, env=run_env, capture_output=True, text=True, check=False
        )
        output = proc.stdout + proc.stderr
        assert proc.returncode != 0
        assert message in output.splitlines()[-1]
        assert not SUBMITTED.search(output)
    assert not (workflow.root / "results").exists()


def test_sacct_reports_the_state_of_a_job(partition: str) -> None:
    """The cluster keeps accounting (slurmdbd): `sacct -j` answers with a job's state.
    A job reaches the database a moment after sbatch returns, and the node may be busy
    with the TIMEOUT scenario's job, so this waits (bounded) for the final state. (Not
    the job name: sacct can show "allocation" for a moment, before the job's record.)"""
    submitted = _sh(
        "sbatch", "--parsable", "-p", partition, "-t", "1", "--mem", "100",
        "-o", "/dev/null", "--wrap", "true",
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip().split(";")[0]
    row: list[str] = []
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        sacct = _sh("sacct", "-j", job_id, "-X", "-n", "-P", "-o", "JobID,State,ExitCode")
        assert sacct.returncode == 0, sacct.stderr  # e.g. "accounting storage is disabled"
        row = sacct.stdout.strip().split("|")
        if len(row) == 3 and row[1] not in {"PENDING", "RUNNING", "COMPLETING"}:
            break
        time.sleep(1)
    assert row == [job_id, "COMPLETED", "0:0"]


def test_slurm_run_matches_local_run_and_rerun_submits_nothing(
    workflow: Workflow, partition: str, tmp_path: Path
) -> None:
    workflow.add_examples(*EXAMPLES)
    proc = slurm_run(workflow, partition)
    submitted = set(SUBMITTED.findall(proc.output))
    assert submitted, "no sbatch submission in Snakemake's output"
    recorded = job_ids(workflow, EXAMPLES)
    assert None not in recorded, "a calculation ran outside SLURM"
    assert recorded <= submitted
    for job_id in recorded:
        assert slurm_job(job_id)["state"] == "COMPLETED"

    local = Workflow(tmp_path / "local")
    local.add_examples(*EXAMPLES)
    local.run()
    for sid in EXAMPLES:
        for step in STEPS:
            on_slurm = workflow.summary(sid, step)["energy"]
            assert on_slurm == pytest.approx(local.summary(sid, step)["energy"], abs=1e-6)

    again = slurm_run(workflow, partition)
    assert "Nothing to be done" in again.output
    assert not SUBMITTED.search(again.output)


def test_out_of_memory_is_reported_and_retried_with_more(
    workflow: Workflow, partition: str
) -> None:
    """The rules ask for 200 MB, x3 per retry: enough for Snakemake in the job and for our
    code to start, not for quacc's imports, so the first attempt dies inside a relax,
    after the task history recorded its start (measured here: a limit of 150 to 280 MB
    does that; at 100 SLURM kills Snakemake before our code runs, 320 is enough). Both
    rules, since a group job asks for the largest mem_mb of its jobs."""
    ids = ("Cu_fcc", "Al_fcc")
    workflow.add_examples(*ids)
    small_limits(workflow, "mem_mb", {"relax": 200, "static": 200}, factor=3)
    proc = slurm_run(workflow, partition, "--retries", "1")
    first, retry = SUBMITTED.findall(proc.output)
    # SLURM's own report, from the job's SLURM log (show-failed-logs in the profile)
    assert re.search(r"slurmstepd\S*: error: Detected \d+ oom-kill event", proc.output)
    assert "Trying to restart job" in proc.output
    oom, done = slurm_job(first), slurm_job(retry)
    assert (oom["state"], oom["mem"]) == ("OUT_OF_MEMORY", "200M")
    assert (done["state"], done["mem"]) == ("COMPLETED", "600M")
    assert minutes(done["limit"]) > minutes(oom["limit"])  # runtime grows as well
    assert job_ids(workflow, ids) == {retry}
    # the task history and `poscarflow status` say what happened
    ends = [
        r
        for sid in ids
        for r in read_history(workflow.root / "results/calcs" / sid / "history.jsonl", "relax")
        if r["event"] == "end" and r["failure"]
    ]  # fmt: skip
    assert [(r["attempt"], r["failure"]) for r in ends] == [(1, "oom")]
    assert ends[0]["reason"] == "attempt 1 was stopped (SLURM: OUT_OF_MEMORY)"
    rows = json.loads(workflow.cli("status", "--json"))
    assert {r["state"] for r in rows} == {"done"}
    assert sorted(r["attempts"]["relax"] for r in rows) == [1, 2]


def test_sbatch_calls_for_100_structures(workflow: Workflow, partition: str) -> None:
    """The profile's group-components puts several batches' relax+static in one job."""
    profile = yaml.safe_load((REPO / "profiles/slurm/config.yaml").read_text())
    per_job = profile["group-components"]["calculation"]
    ids = [f"Cu_{i:03d}" for i in range(100)]
    for i, sid in enumerate(ids):
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
        atoms.rattle(0.02, seed=i)
        write(workflow.structures / f"{sid}.vasp", atoms, format="vasp")
    # Lennard-Jones, one optimizer step: cheap, and 25 per batch gives several batches.
    workflow.config |= {"calculator": "lj", "batch_size": 25, "relax": {"max_steps": 1}}
    workflow.write_config()
    batches = len(assign_batches(ids, 25))
    proc = slurm_run(workflow, partition, "results/summary.csv")  # the calculations' table
    submitted = SUBMITTED.findall(proc.output)
    assert batches > 1
    assert len(submitted) == math.ceil(batches / per_job)
    assert job_ids(workflow, ids) == set(submitted)


def test_timeout_is_reported_and_retried_with_more_time(timeout_run) -> None:
    proc, log, workflow = timeout_run
    proc.wait(timeout=600)
    output = log.read_text()
    assert proc.returncode == 0, output[-5000:]
    first, retry = SUBMITTED.findall(output)
    # SLURM's own report, from the job's SLURM log (show-failed-logs in the profile)
    assert f"*** JOB {first} ON " in output
    assert "DUE TO TIME LIMIT ***" in output
    assert "Trying to restart job" in output
    timed_out, done = slurm_job(first), slurm_job(retry)
    assert (timed_out["state"], minutes(timed_out["limit"])) == ("TIMEOUT", 1)
    assert (done["state"], minutes(done["limit"])) == ("COMPLETED", 4)

    relax = workflow.summary(SLOW_ID, "relax")
    assert (relax["status"], relax["attempts"], relax["slurm_job_id"]) == ("done", 2, retry)
    history = [
        r
        for r in read_history(workflow.root / f"results/calcs/{SLOW_ID}/history.jsonl", "relax")
        if r["event"] == "end"
    ]  # fmt: skip
    assert [(r["attempt"], r["failure"]) for r in history] == [(1, "timeout"), (2, None)]
    assert "SLURM: TIMEOUT" in history[0]["reason"]
    # the retry continued from the first attempt's last step, not from the input
    (batch_log,) = (workflow.root / "logs/relax").glob("*.log")
    continued = re.search(r"continuing from optimizer step (\d+)", batch_log.read_text())
    assert continued
    assert 0 < int(continued.group(1)) < relax["opt_steps"]
    (row,) = json.loads(workflow.cli("status", "--json"))
    assert (row["state"], row["attempts"]["relax"]) == ("done", 2)
