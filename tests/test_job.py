"""A batch job: in its own process (the path SLURM jobs take) or in the run's pool."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ase.build import bulk
from ase.io import write

from poscarflow import pool, settings
from poscarflow.fingerprint import job_code
from poscarflow.history import read_history
from poscarflow.job import JobError, run
from poscarflow.plan import Plan
from tests.conftest import example_config, run_step


def _plan(tmp_path: Path, n: int = 2, max_steps: int = 5, fmax: float = 0.05) -> Plan:
    """Rattled 32-atom EMT crystals (Al, Cu, Ni, Pd), one batch."""
    Path("structures").mkdir()
    for i, el in enumerate(("Al", "Cu", "Ni", "Pd")[:n]):
        atoms = bulk(el, cubic=True) * (2, 2, 2)
        atoms.rattle(0.1, seed=i)
        write(f"structures/{el}.vasp", atoms, format="vasp")
    relax = {"relax_cell": True, "optimizer": "FIRE", "fmax": fmax, "max_steps": max_steps}
    config = example_config(structures="structures", relax=relax)
    return Plan(config, tmp_path / ".hashes.json")


def test_job_without_pool_runs_in_process_and_reuses(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    plan = _plan(tmp_path)
    (batch,) = plan.batches
    for step in ("relax", "static"):
        run_step(plan, step, log=f"logs/{step}.log")
        entries = json.loads(Path(f"results/batches/{step}/{batch}.json").read_text())
        assert sorted(entries) == ["Al", "Cu"]
        assert {e["status"] for e in entries.values()} <= {"done", "unconverged"}
    assert "computing in this process (no pool" in Path("logs/relax.log").read_text()
    summary = json.loads(Path("results/calcs/Al/static/summary.json").read_text())
    assert summary["energy"] == pytest.approx(summary["energy_per_atom"] * summary["natoms"])
    before = Path("results/calcs/Al/relax/summary.json").read_text()
    run_step(plan, "relax", log="logs/again.log")
    assert Path("results/calcs/Al/relax/summary.json").read_text() == before
    assert "relax Al: reused" in Path("logs/again.log").read_text()


def test_job_refuses_code_that_changed_after_planning(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    plan = _plan(tmp_path, n=1)
    request = plan.request("relax", "batch0", rerun_on_code=True, policy={})
    with pytest.raises(JobError, match="changed after this run was planned"):
        run(str(request), "logs/l.log", "0" * 16)
    assert not Path("results/batches/relax/batch0.json").exists()


def test_request_file_holds_every_parameter_and_its_name_their_hash(
    tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    plan = _plan(tmp_path)
    first = plan.request("relax", "batch0", rerun_on_code=True, policy={"class:oom": 1})
    assert json.loads(first.read_text())["calcs"]["Al"]["relax"]["fmax"] == 0.05
    assert plan.request("relax", "batch0", rerun_on_code=True, policy={"class:oom": 1}) == first
    digest = plan.parameters_digest("relax", "batch0")
    plan.config["relax"]["fmax"] = 0.02
    del plan.specs  # cached_property: plan again
    assert plan.request("relax", "batch0", rerun_on_code=True, policy={"class:oom": 1}) != first
    assert plan.parameters_digest("relax", "batch0") != digest


@pytest.fixture
def running_pool(tmp_path: Path, monkeypatch):
    """A pool of 2 processes for EMT, as a local run's onstart starts it."""
    monkeypatch.chdir(tmp_path)
    handle = pool.start(2, "emt", tmp_path / "pool.log", tmp_path / "no-run.json")
    deadline = time.time() + 60  # listening (its abstract socket is in /proc/net/unix)
    while f"@{handle.address}" not in Path("/proc/net/unix").read_text():
        assert time.time() < deadline
        assert handle.process.poll() is None
        time.sleep(0.05)
    yield handle
    pool.stop(handle)


def _pids_under(pid: int) -> set[int]:
    """Every descendant process of `pid` (from /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_pool_refuses_a_connection_without_the_key(running_pool) -> None:
    from multiprocessing.connection import Client

    with pytest.raises((multiprocessing.AuthenticationError, EOFError, OSError)):
        Client("\0" + running_pool.address, "AF_UNIX", authkey=b"not the key").send({})
    # ... and still serves a job that has it
    with Client("\0" + running_pool.address, "AF_UNIX", authkey=running_pool.key.encode()):
        pass
    assert "refused a connection" in Path("pool.log").read_text()


def _frames(folder: Path) -> int:
    """Frames of the relax running in `folder` so far."""
    from ase.io.trajectory import Trajectory

    for traj in folder.glob(".relax.tmp-*/opt.traj"):
        try:
            with Trajectory(str(traj)) as frames:
                return len(frames)
        except Exception:  # being written
            return 0
    return 0


@pytest.mark.slow
def test_pool_process_killed_mid_batch_costs_only_its_calculation(
    tmp_path: Path, running_pool
) -> None:
    plan = _plan(tmp_path, n=4, max_steps=2000, fmax=1e-6)  # time to kill one mid-way
    request = plan.request("relax", "batch0", rerun_on_code=True, policy={})
    job = multiprocessing.get_context("fork").Process(
        target=run, args=(str(request), "logs/relax.log", job_code("emt")["digest"])
    )
    job.start()
    # wait until Al has taken some steps, then kill the pool process computing it
    deadline = time.time() + 60
    while time.time() < deadline and _frames(Path("results/calcs/Al")) < 5:
        time.sleep(0.05)
    (attempt,) = Path("results/calcs/Al").glob(".relax.tmp-*")
    victim = int(attempt.name.rsplit("-", 1)[1])
    os.kill(victim, signal.SIGKILL)
    job.join(timeout=600)
    assert job.exitcode == 0
    entries = json.loads(Path("results/batches/relax/batch0.json").read_text())
    assert sorted(entries) == ["Al", "Cu", "Ni", "Pd"]
    history = read_history(Path("results/calcs/Al/history.jsonl"), "relax")
    assert [r["event"] for r in history] == ["start", "end", "start", "end"]
    assert history[1]["failure"] == "interrupted"
    assert history[1]["restarted"] is True
    assert history[2]["continued_from"] > 0  # it went on from its last step
    for sid in ("Cu", "Ni", "Pd"):
        assert [r["event"] for r in read_history(Path(f"results/calcs/{sid}/history.jsonl"))] == [
            "start", "end"
        ]  # fmt: skip
    log = Path("pool.log").read_text()
    assert f"pool process {victim} died" in log
    assert "retrying its calculation relax Al" in log
    assert not _alive(victim)


@pytest.mark.slow
def test_pool_follows_its_snakemake_when_it_is_killed(tmp_path: Path, monkeypatch) -> None:
    """SIGKILL of the process that started the pool (Snakemake): within 10 s no process
    of the pool is left, and nothing is published after."""
    monkeypatch.chdir(tmp_path)
    plan = _plan(tmp_path, n=2, max_steps=100000, fmax=1e-9)
    request = plan.request("relax", "batch0", rerun_on_code=True, policy={})
    ready = multiprocessing.get_context("fork").Queue()

    def snakemake_stand_in() -> None:  # starts the pool, runs a job through it
        handle = pool.start(2, "emt", tmp_path / "pool.log", tmp_path / "no-run.json")
        ready.put(handle.process.pid)
        run(str(request), "logs/relax.log", job_code("emt")["digest"])

    parent = multiprocessing.get_context("fork").Process(target=snakemake_stand_in)
    parent.start()
    server = ready.get(timeout=30)
    deadline = time.time() + 60
    while time.time() < deadline and len(list(Path("results/calcs").glob("*/.relax.tmp-*"))) < 2:
        time.sleep(0.05)
    pool_processes = _pids_under(server)
    assert len(pool_processes) >= 3  # the fork server and two pool processes
    os.kill(parent.pid, signal.SIGKILL)
    parent.join()
    deadline = time.time() + 10
    while time.time() < deadline and any(_alive(p) for p in {server, *pool_processes}):
        time.sleep(0.1)
    assert not [p for p in {server, *pool_processes} if _alive(p)]
    time.sleep(1)
    assert not list(Path("results/calcs").glob("*/relax"))  # nothing published


def test_pool_stops_at_once_when_its_snakemake_ends_while_it_starts(tmp_path: Path) -> None:
    """Regression: a no-op run's Snakemake ends before the pool's fork server has
    imported quacc; the pool noticed only once it had started (seconds later), and held
    Snakemake's output open until then (a CI job or `subprocess.run` waited for it)."""
    log = tmp_path / "pool.log"
    starts_and_exits = (f"from poscarflow import pool; pool.start(2, 'emt', {str(log)!r}, "
                        f"{str(tmp_path / 'no-run.json')!r})")  # fmt: skip
    # returns once stdout closes: when the pool, which inherited it, is gone too
    subprocess.run([sys.executable, "-c", starts_and_exits], stdout=subprocess.PIPE,
                   timeout=120, check=True)  # fmt: skip
    text = log.read_text()
    assert "is gone: stopping the pool" in text
    assert "processes starting" not in text  # it did not wait for quacc's import


def test_job_inside_a_slurm_allocation_still_uses_the_pool(
    tmp_path: Path, running_pool, monkeypatch
) -> None:
    monkeypatch.setenv(settings.SLURM_JOB_ID, "12345")  # `salloc`, local executor
    plan = _plan(tmp_path)
    request = plan.request("relax", "batch0", rerun_on_code=True, policy={})
    run(str(request), "logs/relax.log", job_code("emt")["digest"])
    assert "relax batch0: 2 calculations" in Path("pool.log").read_text()
    assert "computing in this process" not in Path("logs/relax.log").read_text()


@pytest.mark.slow
def test_pool_server_killed_takes_its_processes_and_the_job_says_so(
    tmp_path: Path, running_pool
) -> None:
    plan = _plan(tmp_path, n=2, max_steps=100000, fmax=1e-9)
    request = plan.request("relax", "batch0", rerun_on_code=True, policy={})
    command = [sys.executable, "-m", "poscarflow.job", str(request), "logs/relax.log", "--code",
               job_code("emt")["digest"]]  # fmt: skip
    job = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)  # pool's env: inherited
    deadline = time.time() + 60
    while time.time() < deadline and len(list(Path("results/calcs").glob("*/.relax.tmp-*"))) < 2:
        time.sleep(0.05)
    server = running_pool.process.pid
    pool_processes = _pids_under(server)
    os.kill(server, signal.SIGKILL)
    running_pool.process.wait()
    _, err = job.communicate(timeout=30)
    deadline = time.time() + 10
    while time.time() < deadline and any(_alive(p) for p in pool_processes):
        time.sleep(0.1)
    assert not [p for p in pool_processes if _alive(p)]
    assert job.returncode == 1
    assert err == "poscarflow: this run's pool ended while computing this batch\n"
    time.sleep(1)
    assert not list(Path("results/calcs").glob("*/relax"))  # nothing published
