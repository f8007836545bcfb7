"""Batches run in-process (no worker server): the path SLURM jobs take."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from ase.build import bulk
from ase.io import write

from poscarflow.jobs import job_code
from poscarflow.plan import Plan
from poscarflow.worker import ADDRESS, CodeChanged, dispatch
from tests.conftest import example_config

CODE = job_code("lj")["digest"]


def test_dispatch_without_server_runs_in_process_and_reuses(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv(ADDRESS, raising=False)
    monkeypatch.chdir(tmp_path)
    Path("structures").mkdir()
    write("structures/Ar.vasp", bulk("Ar", "fcc", a=5.3), format="vasp")
    write("structures/Kr.vasp", bulk("Kr", "fcc", a=5.7), format="vasp")
    relax = {"relax_cell": False, "optimizer": "FIRE", "fmax": 0.05, "max_steps": 5}
    config = example_config(structures="structures", calculator="lj", relax=relax)
    plan = Plan(config, tmp_path / ".hashes.json")
    (batch,) = plan.batches
    for step in ("relax", "static"):
        manifest = f"results/batches/{step}/{batch}.json"
        dispatch(step, plan.batch_params(step, batch), manifest, f"logs/{step}.log", CODE)
        entries = json.loads(Path(manifest).read_text())
        assert sorted(entries) == ["Ar", "Kr"]
        assert {e["status"] for e in entries.values()} <= {"done", "unconverged"}
    summary = json.loads(Path("results/calcs/Ar/static/summary.json").read_text())
    assert summary["slurm_job_id"] == os.environ.get("SLURM_JOB_ID")
    assert summary["energy"] == pytest.approx(summary["energy_per_atom"] * summary["natoms"])
    before = Path("results/calcs/Ar/relax/summary.json").read_text()
    relax_manifest = manifest.replace("static", "relax")
    dispatch("relax", plan.batch_params("relax", batch), relax_manifest, "logs/again.log", CODE)
    assert Path("results/calcs/Ar/relax/summary.json").read_text() == before
    assert "relax Ar: reused" in Path("logs/again.log").read_text()


def test_job_refuses_code_that_changed_after_planning(tmp_path: Path) -> None:
    calcs = {"a": {"calculator": "lj"}}
    with pytest.raises(CodeChanged, match="changed after this run was planned"):
        dispatch("relax", calcs, str(tmp_path / "m.json"), str(tmp_path / "l.log"), "0" * 16)
    assert not (tmp_path / "m.json").exists()
