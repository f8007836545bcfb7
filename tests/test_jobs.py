"""Batches run in-process (no worker server): the path SLURM jobs take."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from ase.build import bulk
from ase.io import write

from poscarflow.plan import Plan
from poscarflow.worker import ADDRESS, dispatch
from tests.conftest import example_config


def test_dispatch_without_server_runs_in_process_and_reuses(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv(ADDRESS, raising=False)
    monkeypatch.chdir(tmp_path)
    Path("structures").mkdir()
    write("structures/Ar.vasp", bulk("Ar", "fcc", a=5.3), format="vasp")
    write("structures/Kr.vasp", bulk("Kr", "fcc", a=5.7), format="vasp")
    relax = {"relax_cell": False, "optimizer": "FIRE", "fmax": 0.05, "max_steps": 5}
    plan = Plan(example_config(structures="structures", calculator="lj", relax=relax))
    (batch,) = plan.batches
    for step in ("relax", "static"):
        manifest = f"results/batches/{step}/{batch}.json"
        dispatch(step, plan.batch_params(step, batch), manifest, f"logs/{step}.log")
        entries = json.loads(Path(manifest).read_text())
        assert sorted(entries) == ["Ar", "Kr"]
        assert {e["status"] for e in entries.values()} <= {"done", "unconverged"}
    summary = json.loads(Path("results/calcs/Ar/static/summary.json").read_text())
    assert summary["slurm_job_id"] == os.environ.get("SLURM_JOB_ID")
    assert summary["energy"] == pytest.approx(summary["energy_per_atom"] * summary["natoms"])
    before = Path("results/calcs/Ar/relax/summary.json").read_text()
    dispatch(
        "relax",
        plan.batch_params("relax", batch),
        manifest.replace("static", "relax"),
        "logs/again.log",
    )
    assert Path("results/calcs/Ar/relax/summary.json").read_text() == before
    assert "relax Ar: reused" in Path("logs/again.log").read_text()
