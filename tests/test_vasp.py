"""VASP up to its input files, with fake POTCARs: VASP itself cannot run here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from ase.build import bulk
from ase.io import write

from poscarflow.plan import Plan
from poscarflow.vasp import vasp_settings
from tests.conftest import Workflow, example_config, run_step

FAKE_POTCAR = """  PAW_PBE {el} 05Jan2001
  11.0000000000000
 parameters from PSCTR are:
   VRHFIN ={el}: d10 p1
   TITEL  = PAW_PBE {el} 05Jan2001
   POMASS =   63.546; ZVAL   =   11.000    mass and valenz
   ENMAX  =  295.446; ENMIN  =  221.585 eV
 End of Dataset
"""


@pytest.fixture
def pp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A VASP_PP_PATH with fake PBE POTCARs for Cu and Al only (as quacc's tests do)."""
    root = tmp_path / "pp"
    for el in ("Cu", "Al"):
        (root / "potpaw_PBE.64" / el).mkdir(parents=True)
        (root / "potpaw_PBE.64" / el / "POTCAR").write_text(FAKE_POTCAR.format(el=el))
    monkeypatch.setenv("VASP_PP_PATH", str(root))
    return root


def test_relax_writes_vasp_inputs_through_quacc_and_custodian(
    tmp_path: Path, pp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("QUACC_VASP_CMD", "/bin/true")  # VASP itself cannot run here
    Path("structures").mkdir()
    write("structures/Cu.vasp", bulk("Cu", cubic=True), format="vasp")
    relax = example_config()["relax"] | {"fmax": 0.02, "max_steps": 80}
    plan = Plan(example_config(structures="structures", calculator="vasp", relax=relax),
                tmp_path / ".h.json")  # fmt: skip
    assert plan.batches == {"Cu": ["Cu"]}  # expensive: one structure per job
    run_step(plan, "relax")
    summary = json.loads(Path("results/calcs/Cu/relax/summary.json").read_text())
    assert summary["status"] == "failed"  # /bin/true wrote no OUTCAR
    (inputs,) = Path("results/calcs/Cu/relax").glob("failed-quacc-*")
    incar = dict(
        (k.strip(), v.strip()) for k, v in
        (line.split("=", 1) for line in (inputs / "INCAR").read_text().splitlines() if "=" in line)
    )  # fmt: skip
    assert float(incar["EDIFFG"]) == pytest.approx(-0.02)  # fmax
    assert incar["NSW"] == "80"  # max_steps
    assert incar["ISIF"] == "3"  # relax_cell
    assert float(incar["ENCUT"]) == pytest.approx(520)  # DefaultSetGGA
    assert (inputs / "KPOINTS").exists()
    assert "Cu" in (inputs / "POSCAR").read_text()
    assert "PAW_PBE Cu" in (inputs / "POTCAR").read_text()
    assert (inputs / "custodian.json").exists()  # run through custodian's error handlers


def test_parallel_command_and_wall_time_come_from_the_slurm_job(monkeypatch) -> None:
    from poscarflow.resume import deadline
    from poscarflow.settings import DEADLINE

    monkeypatch.setenv("SLURM_NTASKS", "16")
    monkeypatch.setenv(DEADLINE, "9999999999")
    deadline.cache_clear()
    settings = vasp_settings()
    deadline.cache_clear()
    assert settings["VASP_PARALLEL_CMD"] == "srun -n 16"
    assert settings["VASP_USE_CUSTODIAN"] is True
    assert settings["VASP_CUSTODIAN_WALL_TIME"] > 3600


@pytest.mark.slow
def test_missing_potcars_stop_the_run_before_anything_starts(
    workflow: Workflow, pp_path: Path
) -> None:
    workflow.config["calculator"] = "vasp"
    workflow.write_config()
    for el, builder in (("Cu", bulk("Cu")), ("Al", bulk("Al")), ("Fe", bulk("Fe")),
                        ("Ni", bulk("Ni"))):  # fmt: skip
        write(workflow.structures / f"{el}.vasp", builder, format="vasp")
    proc = workflow.run("-n", check=False)
    assert proc.returncode != 0
    assert "poscarflow: no POTCAR for 2 element(s) of this run (preset DefaultSetGGA" in proc.output
    assert "Fe: No pseudopotential for Fe!" in proc.output
    assert "Ni: No pseudopotential for Ni!" in proc.output
    assert not (workflow.root / "results").exists()
    for el in ("Fe", "Ni"):
        (workflow.structures / f"{el}.vasp").unlink()
    output = workflow.run("-n").output
    assert "relax" in output
    assert output.count("Building DAG of jobs") == 1  # quacc's import doubles no line
