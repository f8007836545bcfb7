"""Run a batch job's calculations, reusing finished ones, and write its manifest.

A Snakemake job covers a batch of structures so that cheap calculators pay quacc's import
once per batch (or once per run, with the pool). Each calculation still has its own
checkpoint folder keyed by a hash of its input, parameters and code: a rerun batch
recomputes only the calculations whose key changed (quacc's content hash, per structure).
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

from poscarflow import log_to
from poscarflow.files import read_json, write_json
from poscarflow.fingerprint import digest, job_code
from poscarflow.layout import FINAL, Layout

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from poscarflow.records import CalcSpec, ManifestEntry, Request, Step, Summary

logger = logging.getLogger("poscarflow")


LOST = "its pool process died twice"
PARTS = "poscarflow.parts"


def run_batch(request: Request, mapper: Callable[..., Iterable] = map) -> dict[str, str]:
    """Run or reuse every calculation of a batch, then write the batch manifest.

    `mapper` maps `run_one` over the calculations: `map` in this process, or the pool's.
    Returns id → why, for the calculations that could not finish through no fault of
    their own (the machine failed them, or their pool process died twice): then there is
    no manifest, the job fails, and the next run retries them.
    """
    from poscarflow.calculators import get_calculator

    calcs = request["calcs"]
    if calcs and get_calculator(next(iter(calcs.values()))["calculator"]).batched:
        # the whole batch in one process, as one TorchSim state (poscarflow.batched)
        (entries,) = list(mapper(run_together, [request]))
        entries = entries or dict.fromkeys(calcs)
    else:
        tasks = [({**request, "calcs": {sid: spec}}, sid) for sid, spec in calcs.items()]
        entries = dict(zip(calcs, mapper(run_one, tasks), strict=True))
    lost = {sid: (e or {}).get("reason", LOST) for sid, e in entries.items()
            if e is None or e["status"] == "deferred"}  # fmt: skip
    failed = sum(e is not None and e["status"] == "failed" for e in entries.values())
    logger.info("%s batch %s done: %d calculations, %d failed, %d to retry", request["step"],
                request["batch"], len(entries), failed, len(lost))  # fmt: skip
    if not lost:
        if request["step"] == "static":
            keys = {sid: entry["key"] for sid, entry in entries.items()}
            list(mapper(make_part, [(request["results"], request["batch"], keys)]))
        write_json(request["manifest"], entries)
    return lost


def make_part(task: tuple[str, str, dict[str, str]]) -> None:
    """The batch's share of the table, relaxed structures and database (a picklable
    task). poscarflow.parts is imported by name, so that the table's code stays out of
    the calculations' code fingerprint: changing a column reruns no calculation."""
    import importlib

    importlib.import_module(PARTS).make_part_of_request(task)


def run_one(task: tuple[Request, str]) -> ManifestEntry:
    """One calculation of a batch (a picklable task): its manifest entry, or a
    `deferred` one with the reason when the machine failed it."""
    from poscarflow.attempts import Deferred
    from poscarflow.compute import machine_fault

    request, sid = task
    try:
        log_to(request["log"])
        summary = run_or_reuse(Layout(request["results"]), request, request["calcs"][sid])
    except Exception as err:
        if not isinstance(err, Deferred) and not machine_fault(err):
            raise
        fault = machine_fault(err)
        reason = os.strerror(fault.errno) if fault and fault.errno else str(err)
        logger.warning("%s %s: deferred to the next run: %s", request["step"], sid, err)
        return {"key": "", "status": "deferred", "reason": reason}
    return {"key": summary["key"], "status": summary["status"]}


def run_together(request: Request) -> dict[str, ManifestEntry]:
    """A whole batch of a batched calculator (a picklable task): the manifest entries.

    The engine is its registry entry's module (poscarflow.batched), imported by name like
    a recipe, so that it is part of the code fingerprint of its own jobs only."""
    import importlib

    from poscarflow.calculators import get_calculator

    log_to(request["log"])
    calculator = get_calculator(next(iter(request["calcs"].values()))["calculator"])
    return importlib.import_module(calculator.module).run_batched(request)


def run_or_reuse(layout: Layout, request: Request, spec: CalcSpec) -> Summary:
    """Return the calculation's summary, computing it only if its key changed."""
    from poscarflow.attempts import run_attempts

    old, source, identity = reusable(layout, request, spec)
    if old is not None:
        return old
    return run_attempts(layout, request["step"], spec, source, identity=identity,
                        policy=request["policy"])  # fmt: skip


def reusable(layout: Layout, request: Request, spec: CalcSpec) -> tuple[Summary | None, dict, dict]:
    """The finished summary to reuse (None if it must be computed), what the calculation
    starts from, and its identity (reuse key and code fingerprint)."""
    step, sid = request["step"], spec["id"]
    source = input_identity(layout, step, spec)
    key = reuse_key(step, source, spec)
    code = job_code(spec["calculator"])
    old = read_json(layout.summary(sid, step))
    if old is not None and old.get("key") == key:
        same_code = old.get("code", {}).get("digest") == code["digest"]
        if same_code or not request["rerun_on_code"]:
            logger.info("%s %s: reused (key %s, %s)", step, sid, key, old["status"])
            return old, source, {}
    logger.info("%s %s: computing (key %s)", step, sid, key)
    return None, source, {"key": key, "code": code}


def reuse_key(step: Step, source: dict, spec: CalcSpec) -> str:
    """What identifies a calculation: its step, input and parameters."""
    return digest({"step": step, "input": source["hash"], "spec": spec})


def input_identity(layout: Layout, step: Step, spec: CalcSpec) -> dict:
    """What the calculation starts from, and a hash that identifies it."""
    from poscarflow.structures import file_hash

    if step == "relax":
        path = spec["path"]
        try:
            raw = file_hash(path)
        except OSError:
            raw = "missing"
        return {"path": path, "file_hash": raw, "hash": spec["structure_hash"]}
    relax = read_json(layout.summary(spec["id"], "relax")) or {}
    return {
        "path": str(layout.calc_dir(spec["id"], "relax") / FINAL),
        "hash": relax.get("key", "missing"),
        "relax": relax,
    }
