# Helpers for all rules: the plan (structures, batches, parameters) and input functions.
import os
import re
from pathlib import Path

from poscarflow import worker
from poscarflow.jobs import CODE_TRIGGER, job_code
from poscarflow.plan import Plan
from poscarflow.policy import escalated
from poscarflow.vasp import check_potcars

RESULTS = "results"
PLAN = Plan(config)
if config["calculator"] == "vasp":  # every POTCAR, before anything is submitted
    for preset in PLAN.vasp_presets:
        check_potcars(PLAN.elements, preset)
# The code a relax or static job runs (our modules and package versions): it is part of
# the shell command so that Snakemake's own `code` trigger sees it.
CODE = job_code(config["calculator"])["digest"]
JOB_COMMAND = (
    "python -m poscarflow.worker run {step} {{output:q}} {{log:q}} {{params.calcs:q}}"
    f" --code {CODE}"
)


wildcard_constraints:
    batch="|".join(map(re.escape, PLAN.batches)) or "(?!)",


def batch_structures(wildcards):
    """The structure files a relax batch reads. `ancient`: a touched file is no change;
    a changed structure reaches the job as a new structure_hash in its params."""
    return [ancient(PLAN.structures[sid].path) for sid in PLAN.batches[wildcards.batch]]


def relax_params(wildcards):
    """Per-structure relax parameters of a batch (tracked by Snakemake's params trigger)."""
    return PLAN.batch_params("relax", wildcards.batch)


def static_params(wildcards):
    """Per-structure static parameters of a batch."""
    return PLAN.batch_params("static", wildcards.batch)


def escalating(base, failure):
    """A resource that grows after failures of class `failure` (oom or timeout): with
    each Snakemake retry and with each such failure in the batch's task histories, so
    the escalation survives a restart of Snakemake (see policy.escalated)."""

    def resource(wildcards, attempt):
        folders = [Path(RESULTS, "calcs", sid) for sid in PLAN.batches[wildcards.batch]]
        return escalated(base, failure, attempt, folders)

    return resource


def manifests(step):
    """Every batch manifest of one step."""
    return expand(f"{RESULTS}/batches/{step}/{{batch}}.json", batch=PLAN.batches)


def final_outputs():
    """What `rule all` asks for."""
    return [
        f"{RESULTS}/summary.csv",
        f"{RESULTS}/relaxed.extxyz",
        f"{RESULTS}/results.db",
        f"{RESULTS}/plots/energy_per_atom.png",
        f"{RESULTS}/.complete",
    ]


WORKER = {}


def start_worker():
    """Before the first job: tell jobs whether code changes count (jobs.rerun_on_code),
    and start this run's calculation processes (quacc imported once) for local jobs."""
    code_counts = "code" in map(str, workflow.rerun_triggers)
    os.environ[CODE_TRIGGER] = "1" if code_counts else "0"
    if workflow.local_exec:
        WORKER["server"] = worker.start(
            workflow.cores, config["calculator"], "logs/worker.log"
        )


def stop_worker():
    """Stop this run's calculation processes."""
    worker.stop(WORKER.pop("server", None))
