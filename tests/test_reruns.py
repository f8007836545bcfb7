"""Guild's restart doctest (../shared/seeds), replayed on the real workflow step by step.

One structure per job (`batch_size: 1`), so the jobs Snakemake reports name the
structures that ran. Each step asserts which jobs ran from Snakemake's own output.
"""

from __future__ import annotations

import re

import pytest
from ase.io import read, write

from tests.conftest import Workflow

pytestmark = pytest.mark.slow
JOB = re.compile(
    r"^(?:local)?rule (relax|static):\n(?:    .*\n)*?    wildcards: batch=(\S+)$", re.M
)
NO_CODE = ("--rerun-triggers", "mtime", "params", "input", "software-env")


def ran(workflow: Workflow, *args: str) -> set[str]:
    """Run Snakemake; return the jobs it ran as {"relax:<id>", "static:<id>"}."""
    proc = workflow.run(*args)
    return {f"{rule}:{sid}" for rule, sid in JOB.findall(proc.output)}


def both(*ids: str) -> set[str]:
    return {f"{step}:{sid}" for sid in ids for step in ("relax", "static")}


def set_overrides(workflow: Workflow, overrides: dict) -> None:
    workflow.config["overrides"] = overrides
    workflow.write_config()


def test_guild_restart_scenario(workflow: Workflow) -> None:
    workflow.config["batch_size"] = 1
    workflow.add_examples("Cu_fcc", "Al_fcc", "Ni_fcc")
    workflow.write_config()
    jobs = workflow.root / "scripts" / "poscarflow" / "compute.py"

    # Run with defaults, then restart one structure with explicit new values: only it runs.
    assert ran(workflow) == both("Cu_fcc", "Al_fcc", "Ni_fcc")
    set_overrides(workflow, {"Cu_fcc": {"relax": {"fmax": 0.005, "max_steps": 400}}})
    assert ran(workflow) == both("Cu_fcc")
    assert workflow.summary("Cu_fcc", "relax")["parameters"]["relax"]["fmax"] == 0.005

    # The same values again, spelled differently (key order, 400.0, defaults made
    # explicit): --needed, nothing runs.
    set_overrides(workflow, {
        "Cu_fcc": {"relax": {"max_steps": 400.0, "fmax": 0.005}},
        "Al_fcc": {"relax": {"fmax": 0.01, "optimizer": "BFGS"}},
    })  # fmt: skip
    assert ran(workflow) == set()

    # A changed value reruns that structure; a static-only setting reruns its static only.
    static_only = {"static": {"calc_kwargs": {"asap_cutoff": True}}}
    set_overrides(workflow, {"Cu_fcc": {"relax": {"fmax": 0.002}}, "Ni_fcc": static_only})
    assert ran(workflow) == both("Cu_fcc") | {"static:Ni_fcc"}

    # A comment-only change of the code a job imports never reruns.
    jobs.write_text(jobs.read_text() + "\n# a comment only\n")
    assert ran(workflow) == set()

    # A real code change: not without the code trigger (Guild's restart keeps the old
    # source), yes with it (--force-sourcecode), and every calculation is recomputed.
    jobs.write_text(jobs.read_text() + "\nCHANGED = True\n")
    assert "Code has changed since last execution" in workflow.run("-n").output
    assert ran(workflow, *NO_CODE) == set()
    assert ran(workflow) == both("Cu_fcc", "Al_fcc", "Ni_fcc")
    assert workflow.log("relax").count(": computing") >= 3

    # A package version change is a code change (here pymatgen's metadata on the path).
    meta = workflow.root / "scripts" / "pymatgen-9999.0.dist-info"
    meta.mkdir()
    (meta / "METADATA").write_text("Metadata-Version: 2.1\nName: pymatgen\nVersion: 9999.0\n")
    assert "Code has changed" in workflow.run("-n").output
    assert ran(workflow) == both("Cu_fcc", "Al_fcc", "Ni_fcc")
    assert workflow.summary("Al_fcc", "relax")["code"]["versions"]["pymatgen"] == "9999.0"

    # A touched input, and one rewritten as the same structure in another layout: no rerun.
    al = workflow.structures / "Al_fcc.vasp"
    al.touch()
    ni = workflow.structures / "Ni_fcc.vasp"
    write(ni, read(ni), format="vasp", direct=False)
    ni.write_text(
        "rewritten in Cartesian coordinates" + ni.read_text()[ni.read_text().index("\n") :]
    )
    assert ran(workflow) == set()

    # A moved atom reruns that structure only, and `poscarflow why` said so beforehand.
    atoms = read(ni)
    atoms.positions[1, 0] += 0.05
    write(ni, atoms, format="vasp")
    why = workflow.cli("why")
    assert "Ni_fcc relax: input structures/Ni_fcc.vasp changed" in why
    assert "1 of 3 structures would be recomputed." in why
    assert ran(workflow) == both("Ni_fcc")
