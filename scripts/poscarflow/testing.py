"""Helpers shared by the tests and the benchmarks (like `pymatgen.util.testing`).

A `Workflow` is a copy of this workflow in a temporary folder, run by a real Snakemake;
`run_step` runs one batch job's code in this process, as a job on SLURM does.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from poscarflow.fingerprint import job_code

if TYPE_CHECKING:
    from poscarflow.plan import Plan

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "config" / "structures"
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def example_config(**changes: object) -> dict:
    """The shipped config with the schema's defaults filled in, updated with `changes`."""
    from poscarflow.plan import load_config

    return load_config(REPO / "config" / "config.yaml") | changes


def argon_plan(folder: Path) -> Plan:
    """One fcc argon cell in `folder/structures`, LJ with two optimizer steps: the cheapest
    real calculation (run in `folder`, which must be the working directory)."""
    from ase.build import bulk
    from ase.io import write

    from poscarflow.plan import Plan

    (folder / "structures").mkdir()
    write(folder / "structures/Ar.vasp", bulk("Ar", "fcc", a=5.3), format="vasp")
    relax = example_config()["relax"] | {"max_steps": 2}
    config = example_config(structures="structures", calculator="lj", relax=relax)
    return Plan(config, folder / ".h.json")


def run_step(
    plan: Plan, step: str, *, policy: dict[str, int] | None = None, log: str = "logs/job.log",
    rerun_on_code: bool = True,
) -> None:  # fmt: skip
    """Run every batch job of one step in this process (no pool), as a job on SLURM."""
    from poscarflow.job import run

    for batch in plan.batches:
        request = plan.request(step, batch, rerun_on_code=rerun_on_code, policy=policy or {})
        run(str(request), log, job_code(plan.config["calculator"])["digest"])


class Workflow:
    """A copy of the workflow in a temporary folder, with its own config and structures."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True)
        shutil.copy2(REPO / "Snakefile", root)
        for name in ("workflow", "scripts", "profiles"):
            shutil.copytree(REPO / name, root / name, symlinks=True,
                            ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
        (root / "config").mkdir()
        shutil.copy2(REPO / "config" / "restart_policy.yaml", root / "config")
        self.structures = root / "structures"
        self.structures.mkdir()
        self.config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
        self.config["structures"] = "structures"
        self.write_config()

    def write_config(self) -> None:
        """Write self.config to the workflow's config/config.yaml."""
        (self.root / "config" / "config.yaml").write_text(yaml.safe_dump(self.config))

    def add_examples(self, *ids: str) -> None:
        """Copy bundled example structures into the structure folder."""
        for sid in ids:
            shutil.copy2(EXAMPLES / f"{sid}.vasp", self.structures / f"{sid}.vasp")

    @property
    def env(self) -> dict[str, str]:
        """The environment of Snakemake and its jobs: this copy's package comes first."""
        return os.environ | {"PYTHONPATH": str(self.root / "scripts")}

    def run(
        self, *args: str, check: bool = True, env: dict[str, str] | None = None,
        cores: int = 2,
    ) -> subprocess.CompletedProcess:  # fmt: skip
        """Run Snakemake here, with `env` added to the environment; return the finished
        process (stdout and stderr merged in `.output`)."""
        proc = subprocess.run(
            [*SNAKEMAKE, "--cores", str(cores), *args],
            cwd=self.root, env=self.env | (env or {}), capture_output=True, text=True,
            check=False,
        )  # fmt: skip
        proc.output = proc.stdout + proc.stderr  # type: ignore[attr-defined]
        if check and proc.returncode != 0:
            raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.output[-4000:]}")  # type: ignore[attr-defined]
        return proc

    def popen(self, *args: str, cores: int = 2) -> subprocess.Popen:
        """Start Snakemake here in its own session (so a test can kill its group)."""
        return subprocess.Popen(
            [*SNAKEMAKE, "--cores", str(cores), *args], cwd=self.root, env=self.env,
            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def cli(self, *args: str, check: bool = True) -> str:
        """Run the `poscarflow` command here; return what it printed (stdout)."""
        proc = subprocess.run(
            [sys.executable, "-m", "poscarflow.cli", *args],
            cwd=self.root, env=self.env, capture_output=True, text=True, check=check,
        )  # fmt: skip
        return proc.stdout

    def log(self, step: str) -> str:
        """All batch logs of one step, concatenated."""
        return "".join(p.read_text() for p in sorted((self.root / "logs" / step).glob("*.log")))

    def summary(self, sid: str, step: str) -> dict:
        """One calculation's summary.json."""
        import json

        return json.loads((self.root / "results/calcs" / sid / step / "summary.json").read_text())
