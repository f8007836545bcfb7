"""The real workflow, run by Snakemake in a temporary copy with EMT on small cells."""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from ase.build import bulk
from ase.io import read, write

from tests.conftest import SNAKEMAKE, Workflow
from tests.test_structures import BAD

pytestmark = pytest.mark.slow


def _rows(workflow: Workflow) -> dict[str, dict]:
    with (workflow.root / "results" / "summary.csv").open() as handle:
        return {row["id"]: row for row in csv.DictReader(handle)}


def _computed(workflow: Workflow, step: str) -> list[str]:
    """Ids whose calculation a batch computed (not reused), from the job logs."""
    lines = workflow.log(step).splitlines()
    return sorted(
        line.split(f"{step} ")[1].split(":")[0] for line in lines if ": computing" in line
    )


def _direct_quacc(path: Path, relax: dict, tmp: Path) -> tuple[float, float]:
    """Relax and static energies from quacc called directly, as a user would."""
    import ase.optimize
    from quacc import change_settings
    from quacc.recipes.emt.core import relax_job, static_job

    opt = {
        "fmax": relax["fmax"],
        "max_steps": relax["max_steps"],
        "optimizer": getattr(ase.optimize, relax["optimizer"]),
    }
    with change_settings({"RESULTS_DIR": tmp, "GZIP_FILES": False}):
        relaxed = relax_job(read(path), relax_cell=relax["relax_cell"], opt_params=opt)
        static = static_job(relaxed["atoms"])
    return relaxed["results"]["energy"], static["results"]["energy"]


def test_energies_match_direct_quacc_and_rerun_is_noop(workflow: Workflow, tmp_path: Path) -> None:
    ids = ("Cu_fcc", "Cu3Au_L12", "Cu_2x1x1_rattled")
    workflow.add_examples(*ids)
    workflow.run()
    rows = _rows(workflow)
    assert sorted(rows) == sorted(ids)
    for sid in ids:
        relax_e, static_e = _direct_quacc(
            workflow.structures / f"{sid}.vasp", workflow.config["relax"], tmp_path / sid
        )
        assert float(rows[sid]["relaxed_energy_eV"]) == pytest.approx(relax_e, abs=1e-6)
        assert float(rows[sid]["static_energy_eV"]) == pytest.approx(static_e, abs=1e-6)
        assert rows[sid]["status"] == "done"
        calc = workflow.root / "results/calcs" / sid
        assert {p.name for p in (calc / "relax").iterdir()} >= {
            "summary.json",
            "result.json.gz",
            "POSCAR",
            "final.extxyz",
            "opt.traj",
        }
        prov = workflow.summary(sid, "relax")
        assert prov["code"]["versions"]["quacc"]
        assert "poscarflow.compute" in prov["code"]["modules"]
        assert prov["input"]["file_hash"]
        assert prov["parameters"]["relax"]["fmax"] == workflow.config["relax"]["fmax"]
    relaxed = {a.info["id"]: a for a in read(workflow.root / "results/relaxed.extxyz", ":")}
    assert sorted(relaxed) == sorted(ids)
    for sid in ids:
        energy = relaxed[sid].get_potential_energy()
        assert energy == pytest.approx(float(rows[sid]["relaxed_energy_eV"]), abs=1e-6)
        assert relaxed[sid].get_forces().shape == (len(relaxed[sid]), 3)
    assert not list(workflow.root.glob("tmp-quacc-*"))
    assert not list((workflow.root / "results").rglob("tmp-quacc-*"))
    again = workflow.run()
    assert "Nothing to be done" in again.output
    _check_plots_database_report(workflow, ids)


def _check_plots_database_report(workflow: Workflow, ids: tuple[str, ...]) -> None:
    """The results people look at: PNG plots, an ASE database, a Snakemake report."""
    import ase.db

    results = workflow.root / "results"
    for name in ("energy_per_atom", "convergence", "volume_change"):
        assert (results / "plots" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    db = ase.db.connect(str(results / "results.db"))
    rows = {row.structure_id: row for row in db.select()}
    assert sorted(rows) == sorted(ids)
    energy = float(_rows(workflow)["Cu_fcc"]["relaxed_energy_eV"])
    assert rows["Cu_fcc"].energy == pytest.approx(energy, abs=1e-6)
    assert rows["Cu_fcc"].converged
    assert rows["Cu_fcc"].calculator == "emt"
    workflow.run("--report", "report.html")
    report = (workflow.root / "report.html").read_text()
    assert "summary.csv" in report
    assert "convergence.png" in report


def test_parameter_change_and_new_structure_recompute_only_them(workflow: Workflow) -> None:
    workflow.add_examples("Cu_fcc", "Al_fcc", "Ni_fcc")
    workflow.run()
    workflow.config["overrides"] = {"Al_fcc": {"relax": {"fmax": 0.005}}}
    workflow.write_config()
    workflow.add_examples("Pt_fcc")
    shutil_logs(workflow)
    workflow.run()
    assert _computed(workflow, "relax") == ["Al_fcc", "Pt_fcc"]
    assert _computed(workflow, "static") == ["Al_fcc", "Pt_fcc"]
    assert workflow.summary("Al_fcc", "relax")["parameters"]["relax"]["fmax"] == 0.005


def shutil_logs(workflow: Workflow) -> None:
    """Forget earlier job logs so that the next run's log is read alone."""
    for log in (workflow.root / "logs").rglob("*.log"):
        log.unlink()


def test_bad_inputs_fail_alone_and_are_listed(workflow: Workflow) -> None:
    workflow.add_examples("Cu_fcc", "Ni_fcc")
    for case, (text, _) in BAD.items():
        (workflow.structures / f"{case}.vasp").write_text(text)
    proc = workflow.run(check=False)
    assert proc.returncode != 0
    rows = _rows(workflow)
    assert rows["Cu_fcc"]["status"] == rows["Ni_fcc"]["status"] == "done"
    relaxed = read(workflow.root / "results/relaxed.extxyz", ":")
    assert sorted(a.info["id"] for a in relaxed) == ["Cu_fcc", "Ni_fcc"]
    for case, (_, problem) in BAD.items():
        assert rows[case]["status"] == "failed", case
        assert rows[case]["reason"].startswith(f"structures/{case}.vasp: "), rows[case]
        assert problem in rows[case]["reason"]
        assert f"  {case}: structures/{case}.vasp: " in proc.output
    assert f"{len(BAD)} of {len(BAD) + 2} structures failed" in proc.output


def test_misspelt_config_key_stops_before_anything_runs(workflow: Workflow) -> None:
    workflow.add_examples("Cu_fcc")
    workflow.config["relax"]["fmx"] = 0.1
    workflow.write_config()
    proc = workflow.run("-n", check=False)
    assert proc.returncode != 0
    assert "'fmx' was unexpected" in proc.output
    assert not (workflow.root / "results").exists()


def _read(path: Path) -> str:
    """A /proc file's text, or "" if its process just ended."""
    try:
        return path.read_bytes().decode(errors="replace")
    except OSError:
        return ""


def _wait_until_gone(marker: str, timeout: float = 10) -> None:
    """Fail unless every process whose command line holds `marker` ends within timeout."""
    deadline = time.time() + timeout
    while True:
        alive = [p for p in Path("/proc").glob("[0-9]*/cmdline") if marker in _read(p)]
        if not alive:
            return
        assert time.time() < deadline, f"still running: {alive}"
        time.sleep(0.2)


def test_killed_run_resumes_without_recomputing(workflow: Workflow) -> None:
    workflow.config["relax"]["fmax"] = 0.001
    workflow.write_config()
    for seed in range(4):
        atoms = bulk("Al", cubic=True) * (2, 2, 2)
        atoms.rattle(0.1, seed=seed)
        write(workflow.structures / f"Al32_{seed}.vasp", atoms, format="vasp")
    proc = subprocess.Popen(
        [*SNAKEMAKE, "--cores", "2"],
        cwd=workflow.root,
        env=workflow.env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    calcs = workflow.root / "results" / "calcs"
    deadline = time.time() + 120
    while not list(calcs.glob("*/relax/summary.json")) and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    _wait_until_gone(f"poscarflow-{proc.pid}-")
    finished = {p.parts[-3]: p.read_text() for p in calcs.glob("*/relax/summary.json")}
    assert 1 <= len(finished) < 4
    for folder in calcs.glob("*/relax"):  # every visible checkpoint is complete
        assert (folder / "summary.json").exists()
    shutil_logs(workflow)
    workflow.run("--unlock")  # a SIGKILLed Snakemake leaves its lock, as the README says
    workflow.run()
    reused = set(finished) - set(_computed(workflow, "relax"))
    assert reused == set(finished)
    for sid, text in finished.items():
        assert (calcs / sid / "relax" / "summary.json").read_text() == text
    assert not list(calcs.glob("*/.*"))  # no temporary folders left behind
    assert all(r["status"] == "done" for r in _rows(workflow).values())


def test_wrong_and_unusable_inputs_fail_alone_while_the_others_finish(workflow: Workflow) -> None:
    """Regression: `Cu Au` with one count was computed as pure Cu, a half-occupied CIF
    site as pure Au, and a dangling link or an unsafe file name stopped the whole run."""
    from tests.test_structures import CIF

    workflow.add_examples("Cu_fcc", "Ni_fcc")
    cu = (workflow.structures / "Cu_fcc.vasp").read_text().splitlines()
    cu[5] = "Cu Au"  # two elements, one count
    (workflow.structures / "CuAu_onecount.vasp").write_text("\n".join(cu) + "\n")
    sites = "Cu1 Cu 0 0 0 0.5\nAu1 Au 0 0 0 0.5\nCu2 Cu 0.5 0.5 0 1.0"
    (workflow.structures / "disordered.cif").write_text(CIF.format(sites=sites))
    (workflow.structures / "gone.vasp").symlink_to(workflow.structures / "nowhere.vasp")
    for name in ("my Cu.vasp", "-dash.vasp", "a;touch HACKED.vasp"):
        shutil.copy2(workflow.structures / "Cu_fcc.vasp", workflow.structures / name)
    proc = workflow.run(check=False)
    assert proc.returncode != 0
    assert "Traceback" not in proc.output
    assert not list(workflow.root.rglob("HACKED*"))  # no name reached a shell
    rows = _rows(workflow)
    assert rows["Cu_fcc"]["status"] == rows["Ni_fcc"]["status"] == "done"
    failed = {sid: r["reason"] for sid, r in rows.items() if r["status"] == "failed"}
    assert len(failed) == 6, failed
    assert "counts line has 1" in failed["CuAu_onecount"]
    assert "partial occupancy" in failed["disordered"]
    reasons = " | ".join(failed.values())
    assert "gone.vasp" in reasons
    for name in ("my Cu.vasp", "-dash.vasp", "a;touch HACKED.vasp"):
        assert name in reasons
    assert "6 of 8 structures failed" in proc.output


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"structures": "empty"}, "empty: no structure files found"),
        ({"structures": "config/config.yaml"}, "config/config.yaml: is a file, not a folder"),
        ({"relax": {"calc_kwargs": {"bogus": 1}}},
         "config relax.calc_kwargs: bogus not accepted by the emt calculator"),
        ({"overrides": {"nope": {"relax": {"fmax": 0.1}}}},
         "config overrides name unknown structure ids: nope"),
    ],
)  # fmt: skip
def test_unusable_folder_or_config_stops_before_anything_runs(
    workflow: Workflow, change: dict, message: str
) -> None:
    workflow.add_examples("Cu_fcc")
    (workflow.root / "empty").mkdir()
    workflow.config |= change
    workflow.write_config()
    proc = workflow.run("-n", check=False)
    assert proc.returncode != 0
    assert f"poscarflow: {message}" in proc.output
    assert "Traceback" not in proc.output
    assert not (workflow.root / "results").exists()


def test_quacc_settings_of_the_user_are_honoured_and_the_engine_neutralised(
    workflow: Workflow, tmp_path: Path
) -> None:
    """Regression: QUACC_SCRATCH_DIR and QUACC_GZIP_FILES were silently overridden, and
    QUACC_WORKFLOW_ENGINE=jobflow crashed every batch (ModuleNotFoundError: jobflow)."""
    workflow.add_examples("Cu_fcc", "Cu_2x1x1_rattled")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    env = {"QUACC_SCRATCH_DIR": str(scratch), "QUACC_GZIP_FILES": "true",
           "QUACC_WORKFLOW_ENGINE": "jobflow"}  # fmt: skip
    workflow.run(env=env)
    relax = workflow.root / "results/calcs/Cu_2x1x1_rattled/relax"
    assert (relax / "opt.traj.gz").exists()  # quacc gzipped its files
    assert f"Run directory = {scratch}" in workflow.log("relax")  # ran in the scratch dir
    pool_log = (workflow.root / "logs/pool.log").read_text()
    assert "QUACC_WORKFLOW_ENGINE=jobflow ignored: Snakemake is the workflow engine" in pool_log
    plain = Workflow(tmp_path / "plain")
    plain.add_examples("Cu_fcc", "Cu_2x1x1_rattled")
    plain.run()
    for sid in ("Cu_fcc", "Cu_2x1x1_rattled"):
        ours, theirs = workflow.summary(sid, "static"), plain.summary(sid, "static")
        assert ours["energy"] == pytest.approx(theirs["energy"], abs=1e-10)
    from poscarflow.files import read_frames

    assert len(read_frames(relax / "opt.traj")) == workflow.summary(
        "Cu_2x1x1_rattled", "relax")["opt_steps"] + 1  # fmt: skip


def test_progress_lines_in_the_terminal_while_it_runs(workflow: Workflow) -> None:
    """Regression: Snakemake sat at "0 of 7 steps" while a batch of 31 ran; now the pool
    prints per-calculation counts every few seconds."""
    import re

    workflow.config["relax"]["fmax"] = 0.001
    workflow.write_config()
    for seed in range(16):
        atoms = bulk("Al", cubic=True) * (2, 2, 2)
        atoms.rattle(0.1, seed=seed)
        write(workflow.structures / f"Al32_{seed}.vasp", atoms, format="vasp")
    proc = workflow.run()
    done = [int(n) for n in re.findall(r"poscarflow: relax (\d+)/16 done", proc.output)]
    assert len(done) >= 3, proc.output[-3000:]
    assert done == sorted(done)
    assert 0 < done[1] < 16  # a count while the relaxes were running
    assert done[-1] == 16
    assert "static 16/16 done" in proc.output
