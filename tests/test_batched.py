"""The batched engine (poscarflow.batched) with TorchSim's Lennard-Jones model: one
TorchSim state per batch, yet per-structure folders, histories, failures and restarts."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from poscarflow.history import read_history
from poscarflow.plan import Plan
from tests.conftest import example_config, run_step

pytest.importorskip("torch_sim")

ARGON = {"sigma": 3.405, "epsilon": 0.0104, "cutoff": 8.5}


def _cells(folder: Path, names: list[str]) -> None:
    """Rattled 8-atom fcc cells of slightly different sizes ("Kr…" ones are Kr)."""
    from ase.build import bulk
    from ase.io import write

    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        atoms = bulk("Kr" if name.startswith("Kr") else "Ar", "fcc", a=5.1 + 0.1 * i, cubic=True)
        atoms = atoms.repeat((2, 1, 1))
        atoms.rattle(0.05, seed=i)
        write(folder / f"{name}.extxyz", atoms)


def _plan(root: Path, **relax: object) -> Plan:
    settings = {"fmax": 0.01, "max_steps": 300, "calc_kwargs": ARGON} | relax
    config = example_config(
        structures=str(root / "structures"), calculator="torchsim-lj",
        relax=example_config()["relax"] | settings, static={"calc_kwargs": ARGON},
    )  # fmt: skip
    return Plan(config, root / ".hashes.json")


def _summary(sid: str, step: str = "relax", root: Path = Path()) -> dict:
    return json.loads((root / f"results/calcs/{sid}/{step}/summary.json").read_text())


def _path(sid: str, root: Path = Path()) -> list:
    from poscarflow.files import read_frames

    return read_frames(root / f"results/calcs/{sid}/relax/opt.traj")


def test_a_batch_relaxes_as_each_structure_would_alone(tmp_path: Path, monkeypatch) -> None:
    """Three cells in one state: each gets its own folder, path and history, and the
    same result as when it is relaxed alone; the static matches its final energy."""
    monkeypatch.chdir(tmp_path)
    names = ["Ar0", "Ar1", "Ar2"]
    _cells(tmp_path / "structures", names)
    plan = _plan(tmp_path)
    assert len(plan.batches) == 1
    run_step(plan, "relax")
    run_step(plan, "static")
    for i, sid in enumerate(names):
        relax, static = _summary(sid), _summary(sid, "static")
        assert (relax["status"], relax["converged"], relax["device"]) == ("done", True, "cpu")
        assert relax["opt_steps"] > 5
        assert len(_path(sid)) == relax["opt_steps"] + 1
        assert static["energy"] == pytest.approx(relax["energy"], abs=1e-8)
        folder = tmp_path / f"results/calcs/{sid}/relax"
        assert {"summary.json", "final.extxyz", "opt.traj", "result.json.gz"} <= {
            p.name for p in folder.iterdir()
        }
        events = [r["event"] for r in read_history(tmp_path / f"results/calcs/{sid}/history.jsonl")]
        assert events == ["start", "end", "start", "end"]
        alone = tmp_path / f"alone{i}"
        _cells(alone / "structures", names)
        for other in names:
            if other != sid:
                (alone / "structures" / f"{other}.extxyz").unlink()
        monkeypatch.chdir(alone)
        run_step(_plan(alone), "relax")
        monkeypatch.chdir(tmp_path)
        single = _summary(sid, root=alone)
        assert single["opt_steps"] == relax["opt_steps"]
        assert single["energy"] == pytest.approx(relax["energy"], abs=1e-9)
        assert single["volume"] == pytest.approx(relax["volume"], abs=1e-6)


def test_one_structure_that_blows_up_or_is_a_molecule_fails_alone(
    tmp_path: Path, monkeypatch
) -> None:
    from ase.build import molecule
    from ase.io import write
    from torch_sim.models.lennard_jones import LennardJonesModel

    import poscarflow.batched

    class BlowsUp(LennardJonesModel):
        """Argon, but every Kr cell's energy turns NaN from the 4th evaluation on."""

        calls = 0

        def forward(self, state):
            out = super().forward(state)
            BlowsUp.calls += 1
            if BlowsUp.calls > 3:
                out["energy"][state.system_idx[state.atomic_numbers == 36].unique()] = float("nan")
            return out

    model = BlowsUp(**ARGON, compute_stress=True, dtype=__import__("torch").float64)
    monkeypatch.setattr(poscarflow.batched, "build_model", lambda *_: model)
    monkeypatch.chdir(tmp_path)
    _cells(tmp_path / "structures", ["Ar0", "Kr1", "Ar2"])
    water = molecule("H2O")
    write(tmp_path / "structures/water.extxyz", water)
    run_step(_plan(tmp_path), "relax")
    kr, water = _summary("Kr1"), _summary("water")
    assert (kr["status"], kr["failure"]) == ("failed", "error")
    assert "not finite (NaN or inf) at step 3: the structure blew up" in kr["reason"]
    assert len(_path("Kr1")) == 3  # the finite frames it had, readable
    assert (water["status"], water["failure"]) == ("failed", "bad_input")
    assert "needs a cell periodic in all three directions" in water["reason"]
    for sid in ("Ar0", "Ar2"):
        assert _summary(sid)["status"] == "done"


def test_unconverged_relax_continues_from_its_last_frame_by_policy(
    tmp_path: Path, monkeypatch
) -> None:
    """Restarts by the policy within the job go on from the last frame with FIRE's state."""
    monkeypatch.chdir(tmp_path)
    _cells(tmp_path / "structures", ["Ar0", "Ar1"])
    run_step(_plan(tmp_path, max_steps=6), "relax", policy={"did not converge": 20})
    for sid in ("Ar0", "Ar1"):
        summary = _summary(sid)
        assert summary["status"] == "done"
        assert summary["attempts"] > 1
        assert summary["opt_steps"] > 6  # every attempt's steps, in one path
        path = _path(sid)
        assert len(path) == summary["opt_steps"] + 1
        ends = [r for r in read_history(Path(f"results/calcs/{sid}/history.jsonl"))
                if r["event"] == "end"]  # fmt: skip
        assert all(r["failure"] == "unconverged" and r["restarted"] for r in ends[:-1])
    # FIRE's own state went on across the restarts: the very path of one relax
    _cells(tmp_path / "whole/structures", ["Ar0", "Ar1"])
    monkeypatch.chdir(tmp_path / "whole")
    run_step(_plan(tmp_path / "whole"), "relax")
    for sid in ("Ar0", "Ar1"):
        whole, restarted = _summary(sid), _summary(sid, root=tmp_path)
        assert whole["attempts"] == 1
        assert restarted["opt_steps"] == whole["opt_steps"]
        assert restarted["energy"] == pytest.approx(whole["energy"], abs=1e-10)


SLOW_JOB = """
import sys, time
import poscarflow.batched as batched
from poscarflow.job import main
record = batched._record_step
def slow(*args, **kwargs):
    time.sleep(0.1)
    return record(*args, **kwargs)
batched._record_step = slow
main(sys.argv[1:])
"""


@pytest.mark.slow
def test_killed_batch_continues_each_structure_from_its_last_frame(
    tmp_path: Path, monkeypatch
) -> None:
    """SIGKILL a batch job mid-relax: the rerun continues every structure from the last
    frame it wrote, and each published path starts with the killed attempt's frames."""
    from poscarflow.files import read_frames
    from poscarflow.fingerprint import job_code

    monkeypatch.chdir(tmp_path)
    names = ["Ar0", "Ar1", "Ar2"]
    _cells(tmp_path / "structures", names)
    plan = _plan(tmp_path)
    (batch,) = plan.batches
    request = plan.request("relax", batch, rerun_on_code=True, policy={})
    args = [str(request.resolve()), "logs/relax.log", "--code", job_code("torchsim-lj")["digest"]]
    proc = subprocess.Popen([sys.executable, "-c", SLOW_JOB, *args])
    calcs = tmp_path / "results/calcs"

    def written() -> list[int]:
        return [len(read_frames(p)) for p in calcs.glob("*/.relax.tmp-*/opt.traj")]

    deadline = time.time() + 120
    while time.time() < deadline and (len(written()) < 3 or min(written()) < 6):
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    before = {sid: read_frames(next((calcs / sid).glob(".relax.tmp-*/opt.traj")))
              for sid in names}  # fmt: skip
    assert all(len(frames) >= 6 for frames in before.values())
    subprocess.run([sys.executable, "-m", "poscarflow.job", *args], check=True)
    log = Path("logs/relax.log").read_text()
    for sid, done in before.items():
        k = len(done) - 1
        assert f"relax {sid}: continuing from step {k}" in log
        summary = _summary(sid)
        assert summary["status"] == "done"
        path = _path(sid)
        assert len(path) == summary["opt_steps"] + 1
        for old, kept in zip(done, path[: k + 1], strict=True):
            assert kept.positions == pytest.approx(old.positions, abs=1e-10)
        records = read_history(calcs / sid / "history.jsonl", "relax")
        assert [r["event"] for r in records] == ["start", "end", "start", "end"]
        assert records[1]["failure"] == "interrupted"
        assert records[2]["continued_from"] == k


@pytest.mark.slow
def test_snakemake_runs_a_batched_calculator_through_its_pool(workflow) -> None:
    """The real workflow: each batch job hands its whole batch to one pool process."""
    _cells(workflow.structures, ["Ar0", "Ar1", "Ar2", "Ar3"])
    workflow.config |= {
        "calculator": "torchsim-lj", "batch_size": 2,
        "relax": {"fmax": 0.02, "calc_kwargs": ARGON}, "static": {"calc_kwargs": ARGON},
    }  # fmt: skip
    workflow.write_config()
    workflow.run()
    for sid in ("Ar0", "Ar1", "Ar2", "Ar3"):
        relax, static = workflow.summary(sid, "relax"), workflow.summary(sid, "static")
        assert (relax["status"], static["status"]) == ("done", "done")
        assert static["energy"] == pytest.approx(relax["energy"], abs=1e-8)
    assert "nothing to be done" in workflow.run().output.lower()  # all reused


@pytest.mark.slow
def test_torchsim_sevennet_matches_the_ase_calculator(tmp_path: Path, monkeypatch) -> None:
    """SevenNet-0 through TorchSim 0.3's wrapper (batched) gives the energies of sevenn's
    own ASE calculator on the relaxed cells."""
    pytest.importorskip("sevenn")
    import warnings

    from ase.build import bulk
    from ase.io import read, write
    from sevenn.calculator import SevenNetCalculator

    monkeypatch.chdir(tmp_path)
    (tmp_path / "structures").mkdir()
    write(tmp_path / "structures/NaCl.extxyz", bulk("NaCl", "rocksalt", a=5.7))
    write(tmp_path / "structures/Si.extxyz", bulk("Si", a=5.5))
    relax = example_config()["relax"] | {"fmax": 0.05, "calc_kwargs": {"device": "cpu"}}
    config = example_config(structures="structures", calculator="torchsim-sevennet",
                            relax=relax, static={"calc_kwargs": {"device": "cpu"}})  # fmt: skip
    plan = Plan(config, tmp_path / ".hashes.json")
    run_step(plan, "relax")
    run_step(plan, "static")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        calc = SevenNetCalculator("7net-0", device="cpu")
    for sid in ("NaCl", "Si"):
        static = _summary(sid, "static")
        assert (_summary(sid)["status"], static["status"]) == ("done", "done")
        atoms = read(f"results/calcs/{sid}/relax/final.extxyz")
        atoms.calc = calc
        assert static["energy"] == pytest.approx(atoms.get_potential_energy(), abs=1e-5)
