# Helpers for all rules: the plan (structures, batches, requests) and input functions.
import os
import re
from functools import lru_cache
from pathlib import Path

from poscarflow import pool
from poscarflow.fingerprint import digest, job_code
from poscarflow.history import failures, read_history
from poscarflow.layout import PLOTS, Layout
from poscarflow.plan import Plan
from poscarflow.policy import escalated, read_file
from poscarflow.slurm import (
    check_request,
    run_group_jobs_side_by_side,
    submits_to_slurm,
    tolerate_controller_outages,
)
from poscarflow.vasp import check_potcars

LAYOUT = Layout(Path("results"))
RESULTS = str(LAYOUT.root)
PLAN = Plan(config, layout=LAYOUT)
POLICY = read_file(config["restart_policy"])
try:  # an unusable structure folder or config: one line, before anything runs
    PLAN.check()
    if config["calculator"] == "vasp":  # every POTCAR, before anything is submitted
        for preset in PLAN.vasp_presets:
            check_potcars(PLAN.elements, preset)
except ValueError as err:
    raise SystemExit(f"poscarflow: {err}") from None
if submits_to_slurm(workflow):
    tolerate_controller_outages()  # a slurmctld that does not answer for a while
    run_group_jobs_side_by_side()  # plugin issue 469
MEM_MB = 2000  # per batch job, before escalation
# The code a relax or static job runs (our modules and package versions) is part of its
# shell command, so that Snakemake's own `code` trigger sees it.
CODE = job_code(config["calculator"])["digest"]
JOB_COMMAND = "python -m poscarflow.job {params.request:q} {log:q} --code " + CODE


wildcard_constraints:
    batch="|".join(map(re.escape, PLAN.batches)) or "(?!)",


def parameters(step):
    """A hash of every parameter of a batch's calculations (for the params trigger)."""

    def digest(wildcards):
        return PLAN.parameters_digest(step, wildcards.batch)

    return digest


def request(step):
    """The batch job's request file: its parameters, restart policy and paths. A Path,
    which Snakemake's params trigger ignores: `parameters` stands for its content."""

    def path(wildcards):
        return PLAN.request(
            step,
            wildcards.batch,
            rerun_on_code="code" in map(str, workflow.rerun_triggers),
            policy={str(k): int(v) for k, v in POLICY["restarts"].items()},
        )

    return path


@lru_cache(maxsize=None)
def recorded_failures(sid):
    """Out-of-memory and out-of-time failures in a structure's task history since its
    last reset (read once per Snakemake process: four resources ask)."""
    if sid not in structures_with_history():
        return {"oom": 0, "timeout": 0}
    history = read_history(LAYOUT.history(sid))
    return {failure: failures(history, failure) for failure in ("oom", "timeout")}


@lru_cache(maxsize=None)
def structures_with_history():
    """Ids that have a task history (one listing instead of a file lookup per id)."""
    calcs = LAYOUT.root / "calcs"
    if not calcs.is_dir():
        return frozenset()
    return frozenset(
        e.name for e in os.scandir(calcs) if os.path.exists(f"{e.path}/history.jsonl")
    )


def escalating(base, failure):
    """A resource that grows after failures of class `failure` (oom or timeout): with
    each Snakemake retry and with each such failure in the batch's task histories, so
    the escalation survives a restart of Snakemake."""
    cap = "max_mem_mb" if failure == "oom" else "max_runtime"

    def resource(wildcards, attempt):
        seen = max(
            recorded_failures(sid)[failure] for sid in PLAN.batches[wildcards.batch]
        )
        return escalated(base, attempt, seen, POLICY["escalation"], cap)

    return resource


def structure_ids_digest(wildcards):
    """A hash of the run's structure ids: the collect job's params trigger."""
    return digest(list(PLAN.structures))


def run_file(wildcards):
    """The run file (results folder and structure ids), a Path: the params trigger
    ignores it and sees `structure_ids_digest`."""
    return PLAN.run_file()


def manifests(step):
    """Every batch manifest of one step."""
    return [str(LAYOUT.manifest(step, batch)) for batch in PLAN.batches]


def check_slurm_request():
    """Under profiles/slurm (-n too): refuse a group job that no node of the partition
    can hold, instead of letting it sit PENDING. Called while the DAG is built, when
    Snakemake knows the group components."""
    if partition := submits_to_slurm(workflow):
        components = workflow.group_settings.group_components.get("calculation", 1)
        per_job = max(1, min(components, len(PLAN.batches)))
        try:
            check_request(partition, cpus=per_job, mem_mb=per_job * MEM_MB)
        except ValueError as err:
            raise SystemExit(f"poscarflow: {err}") from None


def final_outputs(wildcards):
    """The targets of the run, asked for by the `all` target. A function, so that it
    runs when the DAG is built."""
    check_slurm_request()
    start_pool()  # importing quacc overlaps with building the DAG
    return [
        str(LAYOUT.table),
        str(LAYOUT.relaxed),
        str(LAYOUT.database),
        *(str(LAYOUT.plot(name)) for name in PLOTS),
        str(LAYOUT.complete),
    ]


POOL = {}


def start_pool():
    """Start the pool of a local run that will run jobs (not -n), once: called when the
    DAG starts to be built, so that the pool imports quacc meanwhile, and at `onstart`.
    """
    executing = workflow.executor_plugin is not None  # not --report, --summary, ...
    wanted = executing and workflow.local_exec and not workflow.dryrun
    wanted = wanted and workflow.is_main_process
    if wanted and "handle" not in POOL:
        POOL["handle"] = pool.start(
            workflow.cores,
            config["calculator"],
            "logs/pool.log",
            PLAN.run_file(),
        )


def pool_if_needed():
    """At `onstart`, when the DAG is known: keep (or start) the pool only if a relax or
    static job will run; a run that only remakes the table does not need it."""
    if {job.rule.name for job in workflow.dag.needrun_jobs()} & {"relax", "static"}:
        start_pool()
    else:
        stop_pool()


def stop_pool():
    """Stop this run's pool."""
    pool.stop(POOL.pop("handle", None))
