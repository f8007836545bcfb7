"""Failures handled, not just retried: policy, task history, status and reset."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from poscarflow import policy
from poscarflow.jobs import job_code, run_or_reuse
from poscarflow.plan import Plan
from poscarflow.policy import read_history
from poscarflow.worker import dispatch
from tests.conftest import REPO, SNAKEMAKE, Workflow, example_config


def test_policy_add_get_remove_clear_like_alchemiscale(tmp_path: Path) -> None:
    path = tmp_path / "restart_policy.yaml"
    policy.add(["string1", "string2", "string3"], 5, path)
    assert policy.add(["string1", "string4", "string5"], 3, path) == {
        "string1": 3, "string2": 5, "string3": 5, "string4": 3, "string5": 3,
    }  # fmt: skip
    assert policy.remove(["string2", "string3"], path) == {
        "string1": 3, "string4": 3, "string5": 3,
    }  # fmt: skip
    assert policy.read_policy(path) == {"string1": 3, "string4": 3, "string5": 3}
    policy.write_policy({}, path)
    assert policy.read_policy(path) == {}
    with pytest.raises(ValueError, match="unknown class 'oops'"):
        policy.add(["class:oops"], 1, path)


def _relax_once(tmp_path: Path, restarts: dict[str, int], max_steps: int) -> dict:
    """One relax of a rattled 8-atom cell through run_or_reuse, with a policy file."""
    from ase.build import bulk
    from ase.io import write

    (tmp_path / "config").mkdir(exist_ok=True)
    policy.write_policy(restarts, tmp_path / policy.POLICY_FILE)
    atoms = bulk("Cu", cubic=True) * (2, 1, 1)
    atoms.rattle(0.1, seed=3)
    (tmp_path / "structures").mkdir(exist_ok=True)
    write(tmp_path / "structures" / "Cu8.vasp", atoms, format="vasp")
    relax = example_config()["relax"] | {"max_steps": max_steps, "fmax": 0.01}
    plan = Plan(example_config(structures="structures", relax=relax), tmp_path / ".h.json")
    return run_or_reuse("relax", "Cu8", plan.specs["Cu8"]["relax"], tmp_path / "results")


def test_matching_pattern_restarts_and_continues_until_converged(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    summary = _relax_once(tmp_path, {"did not converge": 5}, max_steps=6)
    ends = [r for r in read_history(tmp_path / "results/calcs/Cu8", "relax") if r["event"] == "end"]
    assert summary["status"] == "done"
    assert 1 < summary["attempts"] == len(ends)
    assert all(r["rule"] == "did not converge" and r["restarted"] for r in ends[:-1])
    assert summary["opt_steps"] > 6  # the restarts continued, counting every step


def test_failure_matching_nothing_fails_at_once(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    summary = _relax_once(tmp_path, {"some other error": 3}, max_steps=2)
    assert (summary["status"], summary["attempts"]) == ("unconverged", 1)
    (end,) = [r for r in read_history(Path("results/calcs/Cu8"), "relax") if r["event"] == "end"]
    assert (end["failure"], end["rule"], end["restarted"]) == ("unconverged", None, False)


def test_budget_is_used_up_and_survives_a_restart(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    summary = _relax_once(tmp_path, {"class:unconverged": 2}, max_steps=1)
    assert (summary["status"], summary["attempts"]) == ("unconverged", 3)
    # The job dies before its result is kept (node lost): the next run has no budget left.
    import shutil

    shutil.rmtree("results/calcs/Cu8/relax")
    again = _relax_once(tmp_path, {"class:unconverged": 2}, max_steps=1)
    assert (again["status"], again["attempts"]) == ("unconverged", 4)
    ends = [r for r in read_history(Path("results/calcs/Cu8"), "relax") if r["event"] == "end"]
    assert [r["restarted"] for r in ends] == [True, True, False, False]
    assert again["code"] == job_code("emt")


WRITER = """
import sys
from poscarflow.files import write_json
data = {"x": list(range(200_000))}
while True:
    write_json(sys.argv[1], data)
"""


def test_a_writer_killed_mid_write_never_leaves_a_partial_file(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    for delay in (0.05, 0.2, 0.35):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target)])
        time.sleep(delay)
        proc.kill()
        proc.wait()
        if target.exists():
            assert len(json.loads(target.read_text())["x"]) == 200_000


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
    assert status.splitlines()[-1] == "1 failed, 2 done (3 total)"
    assert "elements Fe not supported" in status
    rows = {r["id"]: r for r in json.loads(workflow.cli("status", "--json"))}
    assert rows["Cu_fcc"]["attempts"] == {"relax": 1, "static": 1}
    assert rows["Fe_bcc"]["failure"] == "bad_input"
    # reset: dry run changes nothing; a real reset clears only the failure.
    done_before = (workflow.root / "results/calcs/Cu_fcc/relax/summary.json").read_text()
    assert "reset Fe_bcc relax" in workflow.cli("reset", "--failed-only", "--dry-run")
    assert (workflow.root / "results/calcs/Fe_bcc/relax").exists()
    workflow.cli("reset", "--failed-only")
    assert not (workflow.root / "results/calcs/Fe_bcc/relax").exists()
    assert (workflow.root / "results/calcs/Cu_fcc/relax/summary.json").read_text() == done_before
    rows = {r["id"]: r for r in json.loads(workflow.cli("status", "--json"))}
    assert (rows["Fe_bcc"]["state"], rows["Cu_fcc"]["state"]) == ("pending", "done")
    events = [r["event"] for r in read_history(workflow.root / "results/calcs/Fe_bcc")]
    assert events[-2:] == ["reset", "reset"]


def test_killed_relax_continues_from_its_last_step(tmp_path, monkeypatch) -> None:
    """Kill a relax of a 32-atom cell after k steps: the restart repeats none of them."""
    from ase.build import bulk
    from ase.io import write
    from ase.io.trajectory import Trajectory

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("POSCARFLOW_WORKER", raising=False)
    atoms = bulk("Al", cubic=True) * (2, 2, 2)
    atoms.rattle(0.1, seed=1)
    Path("structures").mkdir()
    write("structures/Al32.vasp", atoms, format="vasp")
    relax = example_config()["relax"] | {"fmax": 0.001}
    plan = Plan(example_config(structures="structures", relax=relax), tmp_path / ".h.json")
    (batch,) = plan.batches
    calcs_arg, code = repr(plan.batch_params("relax", batch)), job_code("emt")["digest"]
    manifest = f"results/batches/relax/{batch}.json"
    command = [sys.executable, "-m", "poscarflow.worker", "run", "relax", manifest,
               "logs/relax.log", calcs_arg, "--code", code]  # fmt: skip
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
        first = new[0]
    # The new attempt starts exactly where the killed one stopped: 0 steps repeated.
    assert first.positions == pytest.approx(done[-1].positions, abs=1e-8)
    assert first.cell.array == pytest.approx(done[-1].cell.array, abs=1e-8)
    summary = json.loads((calcs / "relax" / "summary.json").read_text())
    assert summary["status"] == "done"
    records = read_history(calcs, "relax")
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


def test_relax_stops_before_the_time_limit_and_the_next_attempt_continues(
    tmp_path, monkeypatch
) -> None:
    from ase.build import bulk
    from ase.io import write

    from poscarflow.resume import DEADLINE, WallTimeReached, deadline

    monkeypatch.chdir(tmp_path)
    atoms = bulk("Al", cubic=True) * (2, 2, 2)
    atoms.rattle(0.1, seed=1)
    Path("structures").mkdir()
    write("structures/Al32.vasp", atoms, format="vasp")
    Path("config").mkdir()
    policy.write_policy({"class:timeout": 1}, policy.POLICY_FILE)
    relax = example_config()["relax"] | {"fmax": 0.001}
    plan = Plan(example_config(structures="structures", relax=relax), tmp_path / ".h.json")
    spec, results = plan.specs["Al32"]["relax"], Path("results")
    monkeypatch.setenv(DEADLINE, str(time.time() + 1.0))
    deadline.cache_clear()
    with pytest.raises(WallTimeReached, match="before the time limit"):
        run_or_reuse("relax", "Al32", spec, results)
    (end,) = [r for r in read_history(results / "calcs/Al32", "relax") if r["event"] == "end"]
    assert (end["failure"], end["rule"], end["restarted"]) == ("timeout", "class:timeout", True)
    monkeypatch.delenv(DEADLINE)
    deadline.cache_clear()
    summary = run_or_reuse("relax", "Al32", spec, results)
    assert (summary["status"], summary["attempts"]) == ("done", 2)
    # The budget is spent now: the next stop before the limit is final.
    policy.write_policy({}, policy.POLICY_FILE)
    import shutil

    shutil.rmtree(results / "calcs/Al32/relax")
    monkeypatch.setenv(DEADLINE, str(time.time() + 1.0))
    deadline.cache_clear()
    final = run_or_reuse("relax", "Al32", spec, results)
    deadline.cache_clear()
    assert (final["status"], final["failure"]) == ("failed", "timeout")


def test_resources_escalate_with_recorded_failures_and_reset(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    folders = [tmp_path / "a", tmp_path / "b"]
    assert policy.escalated(1000, "oom", 1, folders) == 1000
    assert policy.escalated(1000, "oom", 3, folders) == 2250  # Snakemake's 3rd attempt
    # rounded up: a 1-minute job is retried with 2 minutes, not 1.5 truncated to 1
    assert policy.escalated(1, "timeout", 2, folders) == 2
    for _ in range(2):  # two out-of-memory ends recorded for b (a restart of Snakemake)
        policy.append_history(folders[1], {"event": "end", "step": "relax", "failure": "oom"})
    assert policy.escalated(1000, "oom", 1, folders) == 2250
    assert policy.escalated(60, "timeout", 1, folders) == 60
    Path("config").mkdir()
    Path(policy.POLICY_FILE).write_text("escalation: {factor: 2, max_mem_mb: 3000}\n")
    assert policy.escalated(1000, "oom", 1, folders) == 3000  # capped
    policy.append_history(folders[1], {"event": "reset", "step": "relax"})
    assert policy.escalated(1000, "oom", 1, folders) == 1000


def test_database_takes_parameter_hashes_that_look_like_numbers(tmp_path, monkeypatch) -> None:
    """Regression: ase.db refused the key '2e28615391847580' (read as a float)."""
    import ase.db

    from poscarflow import plots

    monkeypatch.chdir(tmp_path)
    Path("structures").mkdir()
    from ase.build import bulk
    from ase.io import write

    write("structures/Ar.vasp", bulk("Ar", "fcc", a=5.3), format="vasp")
    relax = example_config()["relax"] | {"max_steps": 2}
    plan = Plan(example_config(structures="structures", calculator="lj", relax=relax),
                tmp_path / ".h.json")  # fmt: skip
    code = job_code("lj")["digest"]
    for step in ("relax", "static"):
        dispatch(step, plan.batch_params(step, "batch0"), f"results/batches/{step}/batch0.json",
                 "logs/l.log", code)  # fmt: skip
    from poscarflow.collect import collect

    collect(["Ar"], "results/summary.csv", "results/relaxed.extxyz", "logs/c.log")
    monkeypatch.setattr(plots, "digest", lambda _: "2e28615391847580")
    plots.write_database("results/summary.csv", "results/results.db", "logs/d.log")
    (row,) = ase.db.connect("results/results.db").select()
    assert row.parameters_hash == "sha256:2e28615391847580"


def test_plots_of_many_structures_stay_a_picture(tmp_path) -> None:
    """Regression: one bar per structure made a 300,000-pixel-tall PNG for 10,000
    structures (no viewer opens it, and it took 2 minutes); many structures get a
    histogram instead."""
    import csv

    from PIL import Image

    from poscarflow.plots import plot_all

    table = tmp_path / "summary.csv"
    rows = [{"id": f"s{i:04d}", "status": "done", "energy_per_atom": -0.1 - 1e-4 * i,
             "opt_steps": "", "natoms": 4, "volume_initial": 10.0, "volume_final": 10.1}
            for i in range(1000)]  # fmt: skip
    with table.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    pngs = {name: tmp_path / f"{name}.png" for name in ("energies", "convergence", "volumes")}
    plot_all(str(table), **{k: str(v) for k, v in pngs.items()}, log=str(tmp_path / "p.log"))
    for path in pngs.values():
        width, height = Image.open(path).size
        assert width < 2000
        assert height < 1000


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
