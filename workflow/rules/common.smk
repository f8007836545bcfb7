# Helpers for all rules: the plan (structures, batches, parameters) and input functions.
import re

from poscarflow import worker
from poscarflow.plan import Plan

RESULTS = "results"
PLAN = Plan(config)


wildcard_constraints:
    batch="|".join(map(re.escape, PLAN.batches)) or "(?!)",


def batch_structures(wildcards):
    """The structure files a relax batch reads."""
    return [PLAN.structures[sid].path for sid in PLAN.batches[wildcards.batch]]


def relax_params(wildcards):
    """Per-structure relax parameters of a batch (tracked by Snakemake's params trigger)."""
    return PLAN.batch_params("relax", wildcards.batch)


def static_params(wildcards):
    """Per-structure static parameters of a batch."""
    return PLAN.batch_params("static", wildcards.batch)


def manifests(step):
    """Every batch manifest of one step."""
    return expand(f"{RESULTS}/batches/{step}/{{batch}}.json", batch=PLAN.batches)


def final_outputs():
    """What `rule all` asks for."""
    return [
        f"{RESULTS}/summary.csv",
        f"{RESULTS}/relaxed.extxyz",
        f"{RESULTS}/.complete",
    ]


WORKER = {}


def start_worker():
    """Start this run's calculation processes (quacc imported once) for local jobs."""
    if workflow.local_exec:
        WORKER["server"] = worker.start(
            workflow.cores, config["calculator"], "logs/worker.log"
        )


def stop_worker():
    """Stop this run's calculation processes."""
    worker.stop(WORKER.pop("server", None))
