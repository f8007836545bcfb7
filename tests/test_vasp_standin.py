"""VASP's whole path, with a stand-in for the VASP executable (tests/fake_vasp.py).

quacc writes VASP's inputs, custodian runs "VASP" (the stand-in, through quacc's
VASP_CMD setting) with quacc's handlers and validators, ASE and pymatgen read its files
back, and poscarflow's restart loop continues what a kill, a deadline or custodian ended.
The stand-in's own fidelity is checked first, with the parsers the pipeline uses.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from poscarflow.history import read_history
from poscarflow.plan import Plan
from tests.conftest import REPO, example_config, run_step

if TYPE_CHECKING:
    from ase import Atoms

FAKE = Path(__file__).resolve().with_name("fake_vasp.py")
SID = "Cu8"
MAX_STEPS = 60
RELAX = {"fmax": 0.02, "max_steps": MAX_STEPS, "relax_cell": True}  # the config's relax:
# A fake POTCAR that pymatgen parses (custodian reads every input file, POTCAR included);
# its numbers are made up, so pymatgen warns that it does not know it.
POTCAR = """  PAW_PBE {el} 05Jan2001
  11.0000000000000
 parameters from PSCTR are:
   VRHFIN ={el}: d10 p1
   LEXCH  = PE
   TITEL  = PAW_PBE {el} 05Jan2001
   POMASS =   63.546; ZVAL   =   11.000    mass and valenz
   ENMAX  =  295.446; ENMIN  =  221.585 eV
 END of PSCTR-controll parameters
 local part
   0.100000000000E+01  0.200000000000E+01  0.300000000000E+01
 End of Dataset
"""
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # pymatgen on fake POTCARs


def stand_in_env(root: Path) -> dict[str, str]:
    """The variables with which quacc runs the stand-in as VASP, with fake POTCARs and an
    empty quacc settings file under `root`; the stand-in's ledger is `root/ledger.jsonl`."""
    (root / "quacc.yaml").write_text("")
    pp = root / "pp"
    (pp / "potpaw_PBE.64" / "Cu").mkdir(parents=True)
    (pp / "potpaw_PBE.64" / "Cu" / "POTCAR").write_text(POTCAR.format(el="Cu"))
    return {
        "QUACC_CONFIG_FILE": str(root / "quacc.yaml"),
        "VASP_PP_PATH": str(pp),
        "QUACC_VASP_PP_PATH": str(pp),
        "QUACC_VASP_CMD": f"{sys.executable} {FAKE}",
        "FAKE_VASP_LEDGER": str(root / "ledger.jsonl"),
    }


def _vasp_env(mp: pytest.MonkeyPatch, root: Path) -> Path:
    """quacc runs the stand-in as VASP, with fake POTCARs; the stand-in's ledger path."""
    for name in list(os.environ):
        if name.startswith(("QUACC_", "POSCARFLOW_", "FAKE_VASP_")):
            mp.delenv(name)
    mp.setenv("CUSTODIAN_WALLTIME_START", "")  # custodian sets it in this process:
    mp.delenv("CUSTODIAN_WALLTIME_START")  # gone again after the test
    for name, value in stand_in_env(root).items():
        mp.setenv(name, value)
    mp.chdir(root)
    return root / "ledger.jsonl"


def cu8() -> Atoms:
    """The rattled Cu8 cell every stand-in test relaxes."""
    from ase.build import bulk

    atoms = bulk("Cu", cubic=True) * (2, 1, 1)
    atoms.rattle(0.1, seed=3)
    return atoms


@pytest.fixture
def ledger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder where quacc's VASP is the stand-in; the file its ionic steps go to."""
    return _vasp_env(monkeypatch, tmp_path)


def relax(policy: dict[str, int] | None = None, step: str = "relax", **quacc: object) -> dict:
    """Relax (or compute the static of) a rattled Cu8 cell with VASP, in this folder,
    through the job code (as a SLURM job does), with `quacc` as the user's quacc
    settings; return the step's summary."""
    from ase.io import write
    from quacc import change_settings

    if not Path("structures", f"{SID}.vasp").exists():
        Path("structures").mkdir(exist_ok=True)
        write(f"structures/{SID}.vasp", cu8(), format="vasp")
    config = example_config(structures="structures", calculator="vasp",
                            relax=example_config()["relax"] | RELAX)  # fmt: skip
    with change_settings(_user_settings() | quacc):
        run_step(Plan(config, Path(".h.json").resolve()), step, policy=policy or {})
    return json.loads(Path(f"results/calcs/{SID}/{step}/summary.json").read_text())


def _user_settings() -> dict:
    """The user's quacc settings of this test (quacc reads QUACC_* variables once, when
    it is imported; the job code keeps every setting it does not need to change)."""
    return {"VASP_CMD": os.environ["QUACC_VASP_CMD"],
            "VASP_PP_PATH": Path(os.environ["VASP_PP_PATH"])}  # fmt: skip


def ledger_steps(ledger: Path) -> list[dict]:
    """The ionic steps the stand-in computed, in order (every run)."""
    lines = [json.loads(line) for line in ledger.read_text().splitlines()]
    return [r for r in lines if "step" in r]


def _history(step: str = "relax") -> list[dict]:
    return read_history(Path(f"results/calcs/{SID}/history.jsonl"), step)


def _final() -> object:
    from ase.io import read

    return read(f"results/calcs/{SID}/relax/final.extxyz")


def _path() -> list:
    from poscarflow.files import read_frames

    return read_frames(Path(f"results/calcs/{SID}/relax/opt.traj"))


def uninterrupted(root: Path) -> dict:
    """Relax Cu8 with VASP in `root`, uninterrupted: its summary, final structure, path
    and ionic steps."""
    root.mkdir(exist_ok=True)
    with pytest.MonkeyPatch.context() as mp:
        ledger = _vasp_env(mp, root)
        summary = relax()
        return {
            "summary": summary,
            "final": _final(),
            "path": _path(),
            "steps": ledger_steps(ledger),
        }


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """An uninterrupted VASP relax: its summary, final structure, path and ionic steps."""
    return uninterrupted(tmp_path_factory.mktemp("uninterrupted"))


def same_structure(a, b, tol: float = 1e-6) -> None:
    assert np.abs(a.cell.array - b.cell.array).max() < tol
    assert np.abs(a.positions - b.positions).max() < tol


def _killed_job(after: int, **env: str) -> subprocess.CompletedProcess:
    """Relax in a job process that the stand-in kills (SIGKILL, with itself) after
    `after` ionic steps, as SLURM's time limit, a lost node or the OOM killer do."""
    path = os.pathsep.join([str(REPO / "scripts"), str(REPO)])
    env = os.environ | env | {"FAKE_VASP_STOP_AFTER": str(after), "FAKE_VASP_STOP": "kill-job",
                              "PYTHONPATH": path}  # fmt: skip
    code = "from tests.test_vasp_standin import relax; relax()"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          start_new_session=True, timeout=300, check=False)  # fmt: skip


# The stand-in: VASP's files, read by the parsers the pipeline uses ------------------------


@pytest.mark.slow
def test_stand_in_writes_files_that_ase_pymatgen_and_emmet_read(tmp_path, monkeypatch) -> None:
    """One stand-in run on quacc's inputs; every reader agrees with EMT and with the
    others (ASE's Vasp calculator reads vasprun.xml and OUTCAR as quacc's runs do)."""
    import ase.io
    from ase.calculators.emt import EMT
    from emmet.core.tasks import TaskDoc
    from pymatgen.io.vasp import Oszicar, Outcar, Poscar, Vasprun

    run = _stand_in_inputs(tmp_path, monkeypatch)
    proc = subprocess.run([sys.executable, str(FAKE)], cwd=run, capture_output=True, text=True,
                          check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    vasprun = Vasprun(run / "vasprun.xml")
    n = len(vasprun.ionic_steps)
    assert 3 < n < 40
    assert vasprun.converged
    assert len(Oszicar(run / "OSZICAR").ionic_steps) == n
    outcar = Outcar(run / "OUTCAR")
    assert outcar.final_energy == pytest.approx(vasprun.final_energy, abs=1e-6)
    assert outcar.run_stats["Elapsed time (sec)"] >= 0
    frames = {name: ase.io.read(run / name, ":") for name in ("vasprun.xml", "OUTCAR", "XDATCAR")}
    assert {len(f) for f in frames.values()} == {n}
    for xml, out, xdat in zip(*frames.values(), strict=True):
        assert np.abs(xml.positions - out.positions).max() < 1e-4
        assert np.abs(xml.positions - xdat.positions).max() < 1e-5
        assert np.abs(xml.get_forces() - out.get_forces()).max() < 1e-5
        emt = xml.copy()
        emt.calc = EMT()  # the stand-in's numbers are EMT's (energy shifted per atom)
        assert np.abs(emt.get_forces() - xml.get_forces()).max() < 1e-6
        assert np.abs(emt.get_stress() - xml.get_stress()).max() < 1e-6
    assert "reached required accuracy" in (run / "OUTCAR").read_text()
    contcar = Poscar.from_file(run / "CONTCAR").structure
    assert np.abs(contcar.cart_coords - frames["vasprun.xml"][-1].positions).max() < 1e-6
    doc = TaskDoc.from_directory(run)  # quacc's VASP summary parses the folder with emmet
    assert doc.state == "successful"
    assert len(doc.calcs_reversed[0].output.ionic_steps) == n


def test_a_killed_run_leaves_whole_ionic_steps_and_a_contcar_to_go_on_from(
    tmp_path, monkeypatch
) -> None:
    """What the pipeline reads from a killed VASP: its whole steps, CONTCAR (the next
    geometry), or the last whole step when CONTCAR is cut."""
    from poscarflow.vasp_files import ionic_path, restart_geometry

    run = _ase_inputs(tmp_path, monkeypatch)
    env = os.environ | {"FAKE_VASP_STOP_AFTER": "3", "FAKE_VASP_STOP": "kill"}
    proc = subprocess.run([sys.executable, str(FAKE)], cwd=run, env=env, check=False)
    assert proc.returncode == -9  # killed, not finished: vasprun.xml is not closed
    assert not (run / "vasprun.xml").read_text().rstrip().endswith("</modeling>")
    path = ionic_path(tmp_path)
    assert len(path) == 1 + 3
    assert all(f.calc is not None for f in path)  # the start: VASP's first step's numbers
    assert path[0].get_potential_energy() == path[1].get_potential_energy()
    contcar = restart_geometry(tmp_path)
    assert np.abs(contcar.positions - path[-1].positions).max() > 1e-4  # the next step
    text = (run / "vasprun.xml").read_text()
    (run / "vasprun.xml").write_text(text[: text.rfind("</calculation>") + 5])  # cut in step 3
    (run / "CONTCAR").write_text((run / "CONTCAR").read_text()[:400])  # cut in a position
    cut = ionic_path(tmp_path)
    assert len(cut) == 1 + 2
    for ours, whole in zip(cut, path, strict=False):
        assert np.abs(ours.positions - whole.positions).max() < 1e-9
    assert np.abs(restart_geometry(tmp_path).positions - cut[-1].positions).max() < 1e-9
    (run / "vasprun.xml").unlink()  # then XDATCAR's configurations (positions, no energies)
    xdatcar = ionic_path(tmp_path)
    assert len(xdatcar) == 1 + 3
    for ours, whole in zip(xdatcar[1:], path[1:], strict=True):
        assert np.abs(ours.positions - whole.positions).max() < 1e-6


def test_a_continued_attempt_killed_before_vasp_started_keeps_where_it_goes_on_from(
    tmp_path,
) -> None:
    """The attempt folder of a continued VASP relax holds the path so far and the CONTCAR
    it goes on from before VASP writes anything: a kill then loses no ionic step."""
    from ase.build import bulk

    from poscarflow.files import write_frames
    from poscarflow.layout import PATH, START
    from poscarflow.resume import continuation

    frames = [bulk("Cu", cubic=True) for _ in range(3)]
    for i, atoms in enumerate(frames):
        atoms.positions += 0.01 * i
    write_frames(tmp_path / PATH, frames[:2])
    write_frames(tmp_path / START, frames[2:])
    found = continuation(tmp_path)
    assert found.done_steps == 1
    assert np.abs(found.atoms.positions - frames[2].positions).max() < 1e-12


def test_custodian_wall_time_counts_from_when_custodian_started(monkeypatch) -> None:
    """Custodian measures its wall time from the first WalltimeHandler made in a process
    (a pool process runs many jobs): the wall time it is given reaches the deadline."""
    from datetime import datetime

    from poscarflow.resume import deadline
    from poscarflow.settings import DEADLINE
    from poscarflow.vasp import CUSTODIAN_START, vasp_settings

    started = datetime.fromtimestamp(time.time() - 1000)
    monkeypatch.setenv(CUSTODIAN_START, started.strftime("%a %b %d %H:%M:%S UTC %Y"))
    monkeypatch.setenv(DEADLINE, str(time.time() + 3600))
    deadline.cache_clear()
    try:
        wall_time = vasp_settings()["VASP_CUSTODIAN_WALL_TIME"]
    finally:
        deadline.cache_clear()
    assert wall_time == pytest.approx(4600, abs=5)


def _ase_inputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The Cu8 relax's VASP inputs as quacc's run folder holds them while VASP runs
    (ASE's Vasp calculator writes them, with the tags quacc's relax sets that matter to
    the stand-in; quacc's own are used in the slow tests)."""
    from ase.calculators.vasp import Vasp

    _vasp_env(monkeypatch, tmp_path)
    atoms = cu8()
    run = tmp_path / "tmp-quacc-killed"
    run.mkdir()
    calc = Vasp(directory=str(run), xc="pbe", pp="potpaw_PBE.64", ibrion=2, isif=3, nsw=60,
                ediffg=-0.02, ediff=1e-5, ispin=2, magmom=[2.0] * 8, kpts=(4, 8, 8))  # fmt: skip
    calc.write_input(atoms)
    return run


def _stand_in_inputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A run folder with quacc's VASP inputs for the Cu8 relax (quacc writes them with
    VASP_CMD=/bin/true); the stand-in then runs there as custodian runs VASP."""
    from quacc import JobFailure, change_settings
    from quacc.recipes.vasp.core import relax_job

    _vasp_env(monkeypatch, tmp_path)
    atoms = cu8()
    settings = _user_settings() | {
        "VASP_CMD": "/bin/true", "RESULTS_DIR": tmp_path, "CREATE_UNIQUE_DIR": False,
        "GZIP_FILES": False, "VASP_USE_CUSTODIAN": False}  # fmt: skip
    # /bin/true writes nothing: quacc fails and keeps the inputs in failed-quacc-*
    with change_settings(settings), pytest.raises(JobFailure):
        relax_job(atoms, relax_cell=True, nsw=MAX_STEPS, ediffg=-0.02)
    (run,) = tmp_path.glob("failed-quacc-*")
    for name in ("custodian.json", "vasp.out", "vasprun.xml", "OUTCAR"):
        (run / name).unlink(missing_ok=True)
    return run


# The pipeline: kills, custodian, deadlines -------------------------------------------------


@pytest.mark.slow
def test_killed_relax_continues_from_its_last_ionic_step(ledger, reference) -> None:
    proc = _killed_job(after=4)
    assert proc.returncode == -9, proc.stdout + proc.stderr
    assert [r["event"] for r in _history()] == ["start"]  # the job died mid-attempt
    summary = relax()
    assert (summary["status"], summary["attempts"]) == ("done", 2)
    starts = [r for r in _history() if r["event"] == "start"]
    assert [r["continued_from"] for r in starts] == [0, 4]
    (end,) = [r for r in _history() if r["event"] == "end" and r["attempt"] == 1]
    assert (end["failure"], end["restarted"]) == ("interrupted", True)
    # Ends where an uninterrupted relax ends, with as many ionic steps, none repeated.
    same_structure(_final(), reference["final"])
    assert summary["opt_steps"] == reference["summary"]["opt_steps"] == len(reference["steps"])
    steps = ledger_steps(ledger)
    assert [s["run"] for s in steps].count(1) == 4
    assert len(steps) == len(reference["steps"])
    for ours, theirs in zip(steps, reference["steps"], strict=True):
        assert np.abs(np.subtract(ours["positions"], theirs["positions"])).max() < 1e-6
    path = _path()  # the whole ionic path of both attempts, from the input on
    assert len(path) == len(reference["path"]) == summary["opt_steps"] + 1
    for ours, theirs in zip(path, reference["path"], strict=True):
        same_structure(ours, theirs)
    # The static runs on the final structure of the continued relax.
    static = relax(step="static")
    assert static["status"] == "done"
    (computed,) = [s for s in ledger_steps(ledger) if s["run"] == 3]
    assert np.abs(np.subtract(computed["positions"], _final().positions)).max() < 1e-9


@pytest.mark.slow
def test_relax_continues_from_the_last_whole_step_when_contcar_is_cut(ledger, reference) -> None:
    proc = _killed_job(after=4, FAKE_VASP_CUT="CONTCAR")
    assert proc.returncode == -9, proc.stdout + proc.stderr
    summary = relax()
    assert (summary["status"], summary["attempts"]) == ("done", 2)
    starts = [r for r in _history() if r["event"] == "start"]
    assert [r["continued_from"] for r in starts] == [0, 4]
    same_structure(_final(), reference["final"])
    steps = ledger_steps(ledger)  # step 4 is computed again (the restart point), nothing else
    first_again = next(s for s in steps if s["run"] == 2)
    assert np.abs(np.subtract(first_again["positions"], steps[3]["positions"])).max() < 1e-6
    assert len(steps) == len(reference["steps"]) + 1 == summary["opt_steps"]


@pytest.mark.slow
def test_custodian_fixes_a_vasp_error_inside_the_job_and_the_history_says_how(
    ledger, reference, monkeypatch
) -> None:
    monkeypatch.setenv("FAKE_VASP_ERROR", "ZBRENT: fatal error in bracketing")
    monkeypatch.setenv("FAKE_VASP_ERROR_AT", "3")
    monkeypatch.setenv("FAKE_VASP_ERROR_RUNS", "1,2")  # custodian's first fix does not help
    summary = relax()
    assert (summary["status"], summary["attempts"]) == ("done", 1)
    (end,) = [r for r in _history() if r["event"] == "end"]
    assert summary["corrections"] == end["corrections"]
    first, second = end["corrections"]
    assert all((c["handler"], c["errors"]) == ("VaspErrorHandler", ["zbrent"])
               for c in (first, second))  # fmt: skip
    assert _incar_changes(first) == {"EDIFF": 1e-6, "NELMIN": 8}
    assert _incar_changes(second) == {"EDIFF": 1e-7, "IBRION": 1}
    assert {"file": "CONTCAR", "action": {"_file_copy": {"dest": "POSCAR"}}} in first["actions"]
    incar = Path(f"results/calcs/{SID}/relax/INCAR").read_text()
    assert "IBRION = 1" in incar  # VASP's last run had custodian's INCAR
    # Each rerun went on from CONTCAR: the path goes through the three runs, unbroken.
    assert [s["run"] for s in ledger_steps(ledger)].count(1) == 3
    assert [s["run"] for s in ledger_steps(ledger)].count(2) == 3
    assert summary["opt_steps"] == reference["summary"]["opt_steps"]
    same_structure(_final(), reference["final"])


def _incar_changes(correction: dict) -> dict:
    """The INCAR tags a custodian correction set."""
    return {k: v for a in correction["actions"] if a.get("dict") == "INCAR"
            for k, v in a["action"]["_set"].items()}  # fmt: skip


@pytest.mark.slow
def test_custodian_giving_up_is_a_failure_class_the_policy_governs(
    ledger, reference, monkeypatch
) -> None:
    monkeypatch.setenv("FAKE_VASP_ERROR", "ZBRENT: fatal error in bracketing")
    monkeypatch.setenv("FAKE_VASP_ERROR_AT", "3")
    failed = relax(VASP_CUSTODIAN_MAX_ERRORS=1)  # the user's quacc setting
    assert (failed["status"], failed["failure"], failed["attempts"]) == ("failed", "custodian", 1)
    assert (
        "custodian gave up: MaxCorrectionsPerJobError: Max errors per job reached: 1."
        in failed["reason"]
    )
    assert "VaspErrorHandler (zbrent)" in failed["reason"]
    (end,) = [r for r in _history() if r["event"] == "end"]
    assert (end["failure"], end["rule"], end["restarted"]) == ("custodian", None, False)
    assert end["corrections"][0]["handler"] == "VaspErrorHandler"
    # A pattern on custodian's message allows a restart: it continues from the CONTCAR of
    # the attempt custodian gave up on, with the ionic steps left.
    shutil.rmtree("results")
    ledger.unlink()
    done = relax({"zbrent": 1}, VASP_CUSTODIAN_MAX_ERRORS=1)
    assert (done["status"], done["attempts"]) == ("done", 2)
    first, second = (r for r in _history() if r["event"] == "end")
    assert (first["failure"], first["rule"], first["restarted"]) == ("custodian", "zbrent", True)
    assert [r["continued_from"] for r in _history() if r["event"] == "start"] == [0, 3]
    assert second["status"] == "done"
    assert f"NSW = {MAX_STEPS - 3}" in Path(f"results/calcs/{SID}/relax/INCAR").read_text()
    assert done["opt_steps"] == reference["summary"]["opt_steps"]
    same_structure(_final(), reference["final"])


@pytest.mark.slow
def test_relax_stopped_by_custodian_before_the_deadline_continues(
    ledger, reference, monkeypatch
) -> None:
    """The job's deadline reaches custodian as its wall time; its WalltimeHandler writes
    a STOPCAR, VASP stops after the ionic step, and the next job continues. Custodian
    looks every 100 s by default: this test alone makes it look every 0.1 s."""
    import custodian.custodian

    from poscarflow.resume import WallTimeReached, deadline
    from poscarflow.settings import DEADLINE

    init = custodian.custodian.Custodian.__init__

    def quick(self, *args, **kwargs) -> None:
        init(self, *args, **(kwargs | {"polling_time_step": 0.1, "monitor_freq": 1}))

    monkeypatch.setattr(custodian.custodian.Custodian, "__init__", quick)
    monkeypatch.setenv("FAKE_VASP_SLEEP", "0.5")  # a slow VASP: the STOPCAR comes mid-run
    monkeypatch.setenv(DEADLINE, str(time.time() + 30))
    deadline.cache_clear()
    try:
        with pytest.raises(WallTimeReached, match="custodian's wall-time handler"):
            relax({"class:timeout": 1})
    finally:
        monkeypatch.delenv(DEADLINE)
        deadline.cache_clear()
    (end,) = [r for r in _history() if r["event"] == "end"]
    assert (end["failure"], end["restarted"]) == ("timeout", True)
    done_before = len(ledger_steps(ledger))
    assert 0 < done_before < len(reference["steps"])
    monkeypatch.delenv("FAKE_VASP_SLEEP")
    summary = relax({"class:timeout": 1})
    assert (summary["status"], summary["attempts"]) == ("done", 2)
    assert [r["continued_from"] for r in _history() if r["event"] == "start"] == [0, done_before]
    assert summary["opt_steps"] == reference["summary"]["opt_steps"]
    same_structure(_final(), reference["final"])


@pytest.mark.slow
def test_vasp_killed_as_slurm_ends_the_job_is_left_for_the_next_job(
    ledger, reference, tmp_path, monkeypatch
) -> None:
    """SLURM's time limit: its SIGTERM kills VASP (a step of its own) but not the job's
    Python, and custodian reports the dead VASP (its validators on the cut vasprun.xml)
    before SIGKILL comes. That attempt is left as a kill leaves it, and the next job
    continues it. scontrol is a stand-in saying what SLURM says then."""
    from poscarflow.attempts import JobEnding
    from tests.test_slurm_outage import commands

    bin_ = commands(tmp_path / "bin", monkeypatch,
                    scontrol="echo 'JobId=7 JobState=COMPLETING Reason=TimeLimit'")  # fmt: skip
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    monkeypatch.setenv("FAKE_VASP_STOP_AFTER", "4")  # VASP alone is killed
    with pytest.raises(JobEnding, match=r"SLURM is ending job 7: attempt 1 \(custodian\)"):
        relax()
    assert [r["event"] for r in _history()] == ["start"]
    assert not Path(f"results/calcs/{SID}/relax").exists()  # nothing published
    (bin_ / "scontrol").write_text("#!/bin/sh\necho 'JobId=7 JobState=TIMEOUT'\n")
    monkeypatch.setenv("SLURM_JOB_ID", "8")
    summary = relax({"class:timeout": 1})
    assert (summary["status"], summary["attempts"]) == ("done", 2)
    ends = [r for r in _history() if r["event"] == "end"]
    assert [(r["failure"], r["reason"]) for r in ends] == [
        ("timeout", "attempt 1 was stopped (SLURM: TIMEOUT)"), (None, None)]  # fmt: skip
    assert [r["continued_from"] for r in _history() if r["event"] == "start"] == [0, 4]
    assert summary["opt_steps"] == reference["summary"]["opt_steps"]
    same_structure(_final(), reference["final"])
