"""Shared fixtures: quacc's settings isolated, and a temporary copy of the workflow."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from poscarflow.testing import EXAMPLES, REPO, SNAKEMAKE, Workflow, example_config, run_step

__all__ = ["EXAMPLES", "REPO", "SNAKEMAKE", "Workflow", "example_config", "run_step"]


@pytest.fixture(autouse=True)
def _isolated_quacc_settings(monkeypatch, tmp_path_factory) -> None:
    """No user's ~/.quacc.yaml or QUACC_* variable reaches a test (as quacc's own
    tests do), and no pool of another run is announced to it."""
    for name in list(os.environ):
        if name.startswith(("QUACC_", "POSCARFLOW_")):
            monkeypatch.delenv(name)
    empty = tmp_path_factory.mktemp("quacc") / "quacc.yaml"
    empty.write_text("")
    monkeypatch.setenv("QUACC_CONFIG_FILE", str(empty))


@pytest.fixture(
    name="workflow"
)  # not a global named `workflow`: snakemake's validate looks for one
def workflow_copy(tmp_path: Path) -> Workflow:
    """An empty workflow copy; tests add structures and change the config."""
    return Workflow(tmp_path / "wf")
