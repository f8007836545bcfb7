"""Shared fixtures: a temporary copy of the workflow and a way to run Snakemake in it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "config" / "structures"
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def example_config(**changes: object) -> dict:
    """The shipped config with the schema's defaults filled in, updated with `changes`."""
    from poscarflow.plan import load_config

    return load_config(REPO / "config" / "config.yaml") | changes


class Workflow:
    """A copy of the workflow in a temporary folder, with its own config and structures."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True)
        shutil.copy2(REPO / "Snakefile", root)
        for name in ("workflow", "scripts", "profiles"):
            shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
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
        self, *args: str, check: bool = True, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess:
        """Run Snakemake here, with `env` added to the environment; return the finished
        process (stdout and stderr merged)."""
        proc = subprocess.run(
            [*SNAKEMAKE, "--cores", "2", *args],
            cwd=self.root,
            env=self.env | (env or {}),
            capture_output=True,
            text=True,
            check=False,
        )
        proc.output = proc.stdout + proc.stderr
        if check and proc.returncode != 0:
            pytest.fail(f"snakemake {' '.join(args)} failed:\n{proc.output[-4000:]}")
        return proc

    def cli(self, *args: str) -> str:
        """Run the `poscarflow` command here; return what it printed."""
        proc = subprocess.run(
            [sys.executable, "-m", "poscarflow.cli", *args],
            cwd=self.root, env=self.env, capture_output=True, text=True, check=True,
        )  # fmt: skip
        return proc.stdout

    def log(self, step: str) -> str:
        """All batch logs of one step, concatenated."""
        return "".join(p.read_text() for p in sorted((self.root / "logs" / step).glob("*.log")))

    def summary(self, sid: str, step: str) -> dict:
        """One calculation's summary.json."""
        import json

        return json.loads((self.root / "results/calcs" / sid / step / "summary.json").read_text())


@pytest.fixture(
    name="workflow"
)  # not a global named `workflow`: snakemake's validate looks for one
def workflow_copy(tmp_path: Path) -> Workflow:
    """An empty workflow copy; tests add structures and change the config."""
    return Workflow(tmp_path / "wf")
