"""The batches of one SLURM group job run side by side, on the CPUs the job asked for.

snakemake-executor-plugin-slurm issue 469: inside the job, the plugin's Snakemake runs
a group's chains one at a time (one blocking `srun` job step each), so a job of four
batches asks for four CPUs and uses one. A module of its own: tests/test_slurm.py starts
a long scenario in the background that holds one of the local cluster's two CPUs.
"""

from __future__ import annotations

from datetime import datetime
from types import SimpleNamespace

import pytest
from ase.build import bulk
from ase.io import write

from poscarflow import slurm
from tests import test_slurm
from tests.conftest import Workflow
from tests.test_slurm import SUBMITTED, slurm_run

partition = test_slurm.partition  # the local cluster's partition (a fixture)


@pytest.mark.parametrize("as_script", [False, True])
def test_the_job_runs_its_rules_without_the_plugins_jobstep(as_script: bool) -> None:
    """The installed plugin's options for Snakemake in the job lose its jobstep executor
    (and that executor's settings), so that Snakemake's local executor runs the rules."""
    pytest.importorskip("snakemake_executor_plugin_slurm")
    from snakemake_executor_plugin_slurm import Executor

    args = slurm.without_jobstep(Executor.additional_general_args)
    assert slurm.without_jobstep(args) is args  # changed once only
    settings = SimpleNamespace(pass_command_as_script=as_script)
    plugin = SimpleNamespace(workflow=SimpleNamespace(executor_settings=settings))
    assert "slurm-jobstep" in Executor.additional_general_args(plugin)
    assert args(plugin) == ""


@pytest.mark.slow
def test_batches_of_one_group_job_overlap_in_time(workflow: Workflow, partition: str) -> None:
    """Two batches of one structure each (256 rattled Cu atoms: an EMT relax of a few
    seconds) make one group job of 2 CPUs (`--cores 2`); their relaxes must run at the
    same time, not one after the other. Each relax's interval is its summary's start and
    end, taken in the job's processes."""
    ids = ("Cu256_a", "Cu256_b")
    for seed, sid in enumerate(ids):
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((4, 4, 4))
        atoms.rattle(0.1, seed=seed)
        write(workflow.structures / f"{sid}.vasp", atoms, format="vasp")
    workflow.config["batch_size"] = 1  # a batch per structure
    workflow.write_config()
    proc = slurm_run(workflow, partition, "--group-components", "calculation=2")
    (job,) = SUBMITTED.findall(proc.output)
    relaxes = [workflow.summary(sid, "relax") for sid in ids]
    assert [r["slurm_job_id"] for r in relaxes] == [job, job]
    (start1, end1), (start2, end2) = sorted(
        (datetime.fromisoformat(r["start"]), datetime.fromisoformat(r["end"])) for r in relaxes
    )
    overlap = (min(end1, end2) - start2).total_seconds()
    shorter = min(end1 - start1, end2 - start2).total_seconds()
    assert overlap > shorter / 2, f"relaxes overlap {overlap:.1f} s of {shorter:.1f} s"
