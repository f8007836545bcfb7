"""The restart loop: restarts by policy, budgets, continued relaxes, deadlines."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from poscarflow.fingerprint import job_code
from poscarflow.history import read_history
from poscarflow.plan import Plan
from tests.conftest import REPO, example_config, run_step


def _relax_once(tmp_path: Path, restarts: dict[str, int], max_steps: int) -> dict:
    """One relax of a rattled 8-atom cell through the job code, with a policy."""
    from ase.build import bulk
    from ase.io import write

    atoms = bulk("Cu", cubic=True) * (2, 1, 1)
    atoms.rattle(0.1, seed=3)
    (tmp_path / "structures").mkdir(exist_ok=True)
    write(tmp_path / "structures" / "Cu8.vasp", atoms, format="vasp")
    relax = example_config()["relax"] | {"max_steps": max_steps, "fmax": 0.01}
    plan = Plan(example_config(structures="structures", relax=relax), tmp_path / ".h.json")
    run_step(plan, "relax", policy=restarts)
    return json.loads(Path("results/calcs/Cu8/relax/summary.json").read_text())


@pytest.mark.slow
def test_matching_pattern_restarts_and_continues_until_converged(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    summary = _relax_once(tmp_path, {"did not converge": 5}, max_steps=6)
    ends = [
        r
        for r in read_history(tmp_path / "results/calcs/Cu8" / "history.jsonl", "relax")
        if r["event"] == "end"
    ]
    assert summary["status"] == "done"
    assert 1 < summary["attempts"] == len(ends)
    assert all(r["rule"] == "did not converge" and r["restarted"] for r in ends[:-1])
    assert summary["opt_steps"] > 6  # the restarts continued, counting every step


def test_failure_matching_nothing_fails_at_once(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    summary = _relax_once(tmp_path, {"some other error": 3}, max_steps=2)
    assert (summary["status"], summary["attempts"]) == ("unconverged", 1)
    (end,) = [
        r
        for r in read_history(Path("results/calcs/Cu8") / "history.jsonl", "relax")
        if r["event"] == "end"
    ]
    assert (end["failure"], end["rule"], end["restarted"]) == ("unconverged", None, False)


def test_budget_is_used_up_and_survives_a_restart(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    summary = _relax_once(tmp_path, {"class:unconverged": 2}, max_steps=1)
    assert (summary["status"], summary["attempts"]) == ("unconverged", 3)
    # The job dies before its result is kept (node lost): the next run has no budget left.
    shutil.rmtree("results/calcs/Cu8/relax")
    Path("results/batches/relax/batch0.json").unlink()
    again = _relax_once(tmp_path, {"class:unconverged": 2}, max_steps=1)
    assert (again["status"], again["attempts"]) == ("unconverged", 4)
    ends = [
        r
        for r in read_history(Path("results/calcs/Cu8") / "history.jsonl", "relax")
        if r["event"] == "end"
    ]
    assert [r["restarted"] for r in ends] == [True, True, False, False]
    assert again["code"] == job_code("emt")


def _al32_plan(tmp_path: Path) -> Plan:
    """A rattled 32-atom Al cell relaxed tightly (about 45 BFGS steps), in `structures/`."""
    from ase.build import bulk
    from ase.io import write

    atoms = bulk("Al", cubic=True) * (2, 2, 2)
    atoms.rattle(0.1, seed=1)
    Path("structures").mkdir()
    write("structures/Al32.vasp", atoms, format="vasp")
    relax = example_config()["relax"] | {"fmax": 0.001}
    return Plan(example_config(structures="structures", relax=relax), tmp_path / ".h.json")


@pytest.mark.slow
def test_killed_relax_continues_from_its_last_step(tmp_path, monkeypatch) -> None:
    """Kill a relax of a 32-atom cell after k steps: the restart repeats none of them."""
    from ase.io.trajectory import Trajectory

    monkeypatch.chdir(tmp_path)
    plan = _al32_plan(tmp_path)
    (batch,) = plan.batches
    request = plan.request("relax", batch, rerun_on_code=True, policy={})
    command = [sys.executable, "-m", "poscarflow.job", str(request.resolve()), "logs/relax.log",
               "--code", job_code("emt")["digest"]]  # fmt: skip
    proc = subprocess.Popen(command)
    calcs = Path("results/calcs/Al32")
    deadline = time.time() + 120
    while time.time() < deadline and _frames(calcs) < 8:
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    (traj,) = calcs.glob(".relax.tmp-*/**/opt.traj")
    with Trajectory(str(traj)) as old:
        done = [old[i] for i in range(len(old))]
    k = len(done) - 1
    assert 7 <= k < 40  # killed part-way
    subprocess.run(command, check=True)
    log = Path("logs/relax.log").read_text()
    assert f"continuing from optimizer step {k}" in log
    with Trajectory(str(calcs / "relax" / "opt.traj")) as new:
        path = [new[i] for i in range(len(new))]
    # The whole path is kept, and the new attempt starts exactly where the killed one
    # stopped: 0 steps repeated.
    for old, kept in zip(done, path[: k + 1], strict=True):
        assert kept.positions == pytest.approx(old.positions, abs=1e-8)
        assert kept.cell.array == pytest.approx(old.cell.array, abs=1e-8)
    summary = json.loads((calcs / "relax" / "summary.json").read_text())
    assert summary["status"] == "done"
    assert len(path) == summary["opt_steps"] + 1
    records = read_history(calcs / "history.jsonl", "relax")
    assert [r["event"] for r in records] == ["start", "end", "start", "end"]
    assert records[1]["failure"] == "interrupted"
    # With the optimizer's state (BFGS's Hessian) carried over too, the relax takes the
    # very path of one never killed: same step count, same energy.
    (tmp_path / "whole").mkdir()
    shutil.copytree("structures", tmp_path / "whole/structures")
    subprocess.run(command, check=True, cwd=tmp_path / "whole")
    whole = json.loads((tmp_path / "whole" / calcs / "relax/summary.json").read_text())
    assert summary["opt_steps"] == whole["opt_steps"]
    assert summary["energy"] == pytest.approx(whole["energy"], abs=1e-9)
    assert not list((calcs / "relax").glob("*state*"))  # not kept with the results
    print(f"killed after {k} steps; steps repeated on restart: 0")


def _frames(calcs: Path) -> int:
    """Frames in the running relax's trajectory so far (0 while there is none)."""
    from ase.io.trajectory import Trajectory

    for traj in calcs.glob(".relax.tmp-*/**/opt.traj"):
        try:
            with Trajectory(str(traj)) as t:
                return len(t)
        except Exception:
            return 0
    return 0


@pytest.mark.slow
def test_relax_stops_before_the_time_limit_and_the_next_attempt_continues(
    tmp_path, monkeypatch
) -> None:

    from poscarflow.resume import WallTimeReached, deadline
    from poscarflow.settings import DEADLINE

    monkeypatch.chdir(tmp_path)
    plan = _al32_plan(tmp_path)
    results = Path("results")

    def relax(restarts: dict[str, int]) -> dict:
        run_step(plan, "relax", policy=restarts)
        return json.loads((results / "calcs/Al32/relax/summary.json").read_text())

    monkeypatch.setenv(DEADLINE, str(time.time() + 1.0))
    deadline.cache_clear()
    with pytest.raises(WallTimeReached, match="before the time limit"):
        relax({"class:timeout": 1})
    (end,) = [
        r
        for r in read_history(results / "calcs/Al32" / "history.jsonl", "relax")
        if r["event"] == "end"
    ]
    assert (end["failure"], end["rule"], end["restarted"]) == ("timeout", "class:timeout", True)
    monkeypatch.delenv(DEADLINE)
    deadline.cache_clear()
    summary = relax({"class:timeout": 1})
    assert (summary["status"], summary["attempts"]) == ("done", 2)
    # The budget is spent now: the next stop before the limit is final.
    shutil.rmtree(results / "calcs/Al32/relax")
    monkeypatch.setenv(DEADLINE, str(time.time() + 1.0))
    deadline.cache_clear()
    final = relax({})
    deadline.cache_clear()
    assert (final["status"], final["failure"]) == ("failed", "timeout")


SCHEMA = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
OPTIMIZERS = SCHEMA["$defs"]["relax"]["properties"]["optimizer"]["enum"]  # all accepted


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_optimizer_continues_from_its_restart_file(name: str, tmp_path: Path) -> None:
    """Regression: GPMin has a dump() of its own, which the atomic one replaced."""
    import ase.optimize
    from ase.build import bulk
    from ase.calculators.emt import EMT

    from poscarflow.resume import resumable

    atoms = bulk("Cu", cubic=True) * 2
    atoms.rattle(0.1, seed=1)
    atoms.calc = EMT()
    optimizer = resumable(getattr(ase.optimize, name))
    restart = tmp_path / "state.json"
    for _ in range(2):  # the second starts from the first's restart file
        optimizer(atoms, restart=str(restart), logfile=None).run(fmax=1e-3, steps=2)
    assert restart.stat().st_size > 0


def test_relax_continued_twice_keeps_its_whole_path_and_the_input_volume(
    tmp_path, monkeypatch
) -> None:
    """Regression: a continued relax kept only its last attempt's frames, its
    `volume_initial` was that attempt's start, and its reason counted its steps only."""
    from ase.io import read

    from poscarflow.compute import read_result
    from poscarflow.files import read_frames

    monkeypatch.chdir(tmp_path)
    summary = _relax_once(tmp_path, {"class:unconverged": 2}, max_steps=3)
    assert (summary["status"], summary["attempts"]) == ("unconverged", 3)
    assert summary["opt_steps"] == 9
    assert "did not converge in 9 steps" in summary["reason"]
    calc = Path("results/calcs/Cu8/relax")
    frames = read_frames(calc / "opt.traj")
    assert len(frames) == 10  # the input and 9 steps, every attempt's, in order
    start = read("structures/Cu8.vasp")
    assert frames[0].positions == pytest.approx(start.positions, abs=1e-8)
    assert summary["volume_initial"] == pytest.approx(start.get_volume(), rel=1e-10)
    assert frames[-1].positions == pytest.approx(read(calc / "final.extxyz").positions)
    result = read_result(calc / "result.json.gz")  # Atoms read back with positions
    assert len(result["trajectory"]) == 10
    assert result["atoms"].positions == pytest.approx(frames[-1].positions, abs=1e-8)
    assert result["trajectory"][0].positions == pytest.approx(start.positions, abs=1e-8)
    starts = [r for r in read_history(calc.parent / "history.jsonl") if r["event"] == "start"]
    assert [r["continued_from"] for r in starts] == [0, 3, 6]
