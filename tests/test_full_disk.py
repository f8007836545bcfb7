"""A full disk during a run: a short message, nothing unreadable published, and a plain
rerun after space is freed completes everything (a real, small tmpfs; needs root)."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from ase.build import bulk
from ase.io import write

from poscarflow.files import unreadable
from poscarflow.history import read_history
from tests.conftest import Workflow

pytestmark = pytest.mark.slow


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 64 MB tmpfs mounted for the test (skipped where mounting is not allowed)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)],
                          capture_output=True, text=True, check=False)  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(folder: Path) -> Path:
    """Fill the file system of `folder` to the last byte; return the filler file."""
    filler = folder / "filler"
    with filler.open("wb", buffering=0) as handle:
        try:
            while True:
                handle.write(b"\0" * (1 << 16))
                handle.flush()
        except OSError:
            pass
        try:
            while True:
                handle.write(b"\0")
                handle.flush()
        except OSError:
            pass
    return filler


def test_full_disk_fails_short_publishes_nothing_unreadable_and_a_rerun_completes(
    workflow: Workflow, small_disk: Path
) -> None:
    workflow.config["relax"]["fmax"] = 0.001
    workflow.write_config()
    for seed in range(6):
        atoms = bulk(("Al", "Cu", "Ni")[seed % 3], cubic=True) * (2, 2, 2)
        atoms.rattle(0.1, seed=seed)
        write(workflow.structures / f"M32_{seed}.vasp", atoms, format="vasp")
    (small_disk / "results").mkdir()
    (workflow.root / "results").symlink_to(small_disk / "results")
    proc = subprocess.Popen(
        ["python", "-m", "snakemake", "--cores", "2"], cwd=workflow.root, env=workflow.env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    calcs = small_disk / "results" / "calcs"
    deadline = time.time() + 120
    while time.time() < deadline and not list(calcs.glob("*/.relax.tmp-*/**/opt.traj")):
        time.sleep(0.02)
    filler = _fill(small_disk)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode != 0
    assert "Traceback" not in output
    assert "No space left on device" in output
    assert "poscarflow: relax: No space left on device: M32_" in output
    assert ".relax.tmp-" not in output  # no path that is gone after the run
    for folder in calcs.glob("*/*"):
        if folder.is_dir() and not folder.name.startswith("."):
            assert not unreadable(folder), folder
    deferred = [
        r for path in calcs.glob("*/history.jsonl") for r in read_history(path)
        if r.get("failure") == "infrastructure"
    ]  # fmt: skip
    assert deferred
    assert all(r["restarted"] for r in deferred)
    assert not any(r.get("failure") == "bad_input" for p in calcs.glob("*/history.jsonl")
                   for r in read_history(p))  # fmt: skip
    filler.unlink()
    again = workflow.run()
    with (workflow.root / "results" / "summary.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 6
    assert {r["status"] for r in rows} == {"done"}, rows
    assert os.path.exists(workflow.root / "results" / ".complete")
    assert "Traceback" not in again.output
    shutil.rmtree(small_disk / "results")
