"""Run a batch of relax or static calculations through quacc, reusing finished ones.

A Snakemake job covers a batch of structures so that cheap calculators pay the ~3 s
import of quacc once per batch, not once per structure. Each calculation still has its
own checkpoint folder, `results/calcs/<id>/<step>/`, keyed by a hash of its input,
parameters and code: a rerun batch recomputes only the calculations whose key changed.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import shutil
import socket
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from poscarflow import log_to
from poscarflow.calculators import get_calculator
from poscarflow.files import publish_dir, read_json, remove_leftovers, write_json
from poscarflow.fingerprint import code_fingerprint
from poscarflow.policy import (
    append_history,
    matching_rule,
    read_history,
    read_policy,
    restarts_used,
)
from poscarflow.resume import (
    MARKER,
    OPT_STATE,
    WallTimeReached,
    deadline,
    interrupted,
    last_step,
    optimizer_state,
    resumable,
)
from poscarflow.structures import (
    BadInput,
    StructureFile,
    file_hash,
    read_structure,
    structure_hash,
)
from poscarflow.vasp import vasp_settings

if TYPE_CHECKING:
    from collections.abc import Callable

    from ase import Atoms

logger = logging.getLogger("poscarflow")
SUMMARY = "summary.json"
FINAL = "final.extxyz"
JOB_ENTRY = "poscarflow.worker"  # the module a relax or static job runs
CODE_TRIGGER = "POSCARFLOW_CODE_TRIGGER"  # set by common.smk from --rerun-triggers


def calc_dir(results: str | Path, sid: str, step: str) -> Path:
    """The checkpoint folder of one calculation."""
    return Path(results) / "calcs" / sid / step


def read_summary(results: str | Path, sid: str, step: str) -> dict | None:
    """The summary of a finished calculation, or None if there is none."""
    return read_json(calc_dir(results, sid, step) / SUMMARY)


def job_code(calculator: str) -> dict:
    """The code fingerprint of a relax or static job (see fingerprint.py)."""
    calc = get_calculator(calculator)
    return code_fingerprint((JOB_ENTRY, calc.module), calc.packages)


def rerun_on_code() -> bool:
    """Whether a code change recomputes a calculation (Snakemake's `code` trigger is on).

    Without it (`--rerun-triggers` without `code`), a batch rerun for another reason keeps
    calculations made with older code, like a Guild restart without --force-sourcecode.
    """
    return os.environ.get(CODE_TRIGGER, "1") == "1"


def digest(data: Any) -> str:
    """A short, stable hash of JSON-able data."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def run_batch(
    step: str, calcs: dict[str, dict], manifest: str, log: str, mapper: Callable = map
) -> None:
    """Run or reuse every calculation of a batch, then write the batch manifest.

    Parameters
    ----------
    step
        "relax" or "static".
    calcs
        Structure id → that calculation's parameters, exactly as planned (see plan.py).
    manifest
        The batch's output file, `<results>/batches/<step>/<batch>.json`: each id's key
        and status. The results folder is taken from its path.
    log
        The rule's log file.
    mapper
        How to map over the calculations: `map` here, a process pool's map in the
        worker (see worker.py).
    """
    results = str(Path(manifest).parents[2])
    tasks = [(step, sid, spec, results, log) for sid, spec in calcs.items()]
    entries = dict(zip(calcs, mapper(_run_entry, tasks), strict=True))
    write_json(manifest, entries)
    failed = sum(e["status"] == "failed" for e in entries.values())
    logger.info("%s batch done: %d calculations, %d failed", step, len(entries), failed)


def _run_entry(task: tuple[str, str, dict, str, str]) -> dict:
    """One calculation of a batch, as a picklable task: its manifest entry."""
    step, sid, spec, results, log = task
    log_to(log)
    summary = run_or_reuse(step, sid, spec, Path(results))
    return {"key": summary["key"], "status": summary["status"]}


def run_or_reuse(step: str, sid: str, spec: dict, results: Path) -> dict:
    """Return the calculation's summary, computing it only if its key changed."""
    final = calc_dir(results, sid, step)
    source = _input_identity(step, sid, spec, results)
    key = summary_key(step, source, spec)
    code = job_code(spec["calculator"])
    old = read_json(final / SUMMARY)
    if old is not None and old.get("key") == key:
        same_code = old.get("code", {}).get("digest") == code["digest"]
        if same_code or not rerun_on_code():
            logger.info("%s %s: reused (key %s, %s)", step, sid, key, old["status"])
            return old
    logger.info("%s %s: computing (key %s)", step, sid, key)
    return _attempts(step, sid, spec, source, final, identity={"key": key, "code": code})


def _attempts(
    step: str, sid: str, spec: dict, source: dict, final: Path, *, identity: dict
) -> dict:
    """Compute, restarting as the restart policy allows; record every attempt.

    A failure that matches a policy entry whose budget is not used up is restarted at
    once (an unconverged relax continues from where it stopped); any other failure is
    final after one attempt: no blind retries of a bug.
    """
    policy = read_policy()
    history = final.parent
    start_atoms, done_steps, state = None, 0, None
    if step == "relax" and (resumed := last_step(final, identity["key"])):
        start_atoms, done_steps, state = resumed
        logger.info("%s %s: continuing from optimizer step %d", step, sid, done_steps)
    remove_leftovers(final)
    dead = interrupted(read_history(history, step))
    if dead is not None and _close_interrupted(dead, history, policy, identity["key"]):
        return _give_up(dead, spec, final, identity)
    while True:
        tmp = final.with_name(f".{step}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        write_json(tmp / MARKER, {"key": identity["key"], "done_steps": done_steps})
        if state is not None:  # the optimizer continues where it stopped
            (tmp / OPT_STATE).write_bytes(state)
        attempt = 1 + sum(r.get("event") == "end" for r in read_history(history, step))
        append_history(history, {"event": "start", "step": step, "attempt": attempt,
                                 "time": _now(), "host": socket.gethostname(),
                                 "slurm_job_id": os.environ.get("SLURM_JOB_ID")})  # fmt: skip
        try:
            summary = _compute(step, sid, spec, source, tmp, start=start_atoms)
        except WallTimeReached as err:  # leave tmp for the next attempt, or give up
            dead = {"event": "end", "step": step, "attempt": attempt, "status": "failed",
                    "failure": "timeout", "reason": str(err)}  # fmt: skip
            if _close_interrupted(dead, history, policy, identity["key"]):
                return _give_up(dead, spec, final, identity)
            raise
        if "opt_steps" in summary:  # steps of earlier attempts this one continued
            summary["opt_steps"] += done_steps
        failure = summary.get("failure")
        text = f"{summary.get('reason', '')}\n" + "\n".join(summary.get("traceback", []))
        rule = matching_rule(failure, text, policy) if failure else None
        restart = (
            rule is not None
            and restarts_used(_same_key(read_history(history, step), identity["key"]), rule)
            < policy[rule]
        )
        append_history(history, {
            "event": "end", "step": step, "attempt": attempt, "time": _now(),
            "key": identity["key"], "status": summary["status"], "failure": failure,
            "reason": summary.get("reason"),
            "rule": rule, "restarted": restart, "traceback": summary.get("traceback", [])[-5:],
        })  # fmt: skip
        summary |= identity | {"attempts": attempt}
        if not restart:
            return _publish(summary, tmp, final)
        logger.info("%s %s: attempt %d %s, restarting (policy %r)", step, sid, attempt,
                    failure, rule)  # fmt: skip
        if failure == "unconverged":  # continue from the last geometry, not from the input
            start_atoms, state = ase_read(tmp / FINAL), optimizer_state(tmp)
            done_steps = summary["opt_steps"]


def _same_key(history: list[dict], key: str) -> list[dict]:
    """History records that count for a calculation's budget: its key's, and resets."""
    return [r for r in history if r.get("key") == key or r.get("event") == "reset"]


def _close_interrupted(dead: dict, history: Path, policy: dict, key: str) -> bool:
    """Record an attempt that never ended; True if its class has no restart left.

    A plain interruption (Ctrl-C, a killed Snakemake) always continues; out of memory,
    out of time and node failures reported by SLURM spend the policy's budget.
    """
    rule = matching_rule(dead["failure"], dead["reason"], policy)
    budget_left = (
        rule is not None
        and restarts_used(_same_key(read_history(history, dead["step"]), key), rule) < policy[rule]
    )
    restart = dead["failure"] == "interrupted" or budget_left
    append_history(history, dead | {"time": _now(), "key": key, "rule": rule,
                                    "restarted": restart})  # fmt: skip
    logger.info("%s (%s)", dead["reason"], "continuing" if restart else "no restart left")
    return not restart


def _give_up(dead: dict, spec: dict, final: Path, identity: dict) -> dict:
    """Publish a failed summary for an attempt that may not be restarted."""
    summary = {"id": spec["id"], "step": dead["step"], "calculator": spec["calculator"],
               "parameters": spec, "status": "failed", "failure": dead["failure"],
               "reason": dead["reason"], "attempts": dead["attempt"]}  # fmt: skip
    tmp = final.with_name(f".{dead['step']}.tmp-{os.getpid()}")
    return _publish(summary | identity, tmp, final)


def _publish(summary: dict, tmp: Path, final: Path) -> dict:
    """Write the summary last and move the finished folder into place."""
    tmp.mkdir(parents=True, exist_ok=True)
    for scratch in (MARKER, OPT_STATE):  # only an unfinished attempt needs them
        (tmp / scratch).unlink(missing_ok=True)
    write_json(tmp / SUMMARY, summary)
    publish_dir(tmp, final)
    logger.info("%s %s: %s %s", summary["step"], summary["id"], summary["status"],
                summary.get("reason", ""))  # fmt: skip
    return summary


def _now() -> str:
    return datetime.now(UTC).isoformat()


def summary_key(step: str, source: dict, spec: dict) -> str:
    """What identifies a calculation: its step, input and parameters."""
    return digest({"step": step, "input": source["hash"], "spec": spec})


def ase_read(path: Path) -> Atoms:
    """Read the final structure a calculation wrote (extxyz: full precision, any cell)."""
    import ase.io

    return ase.io.read(path, format="extxyz")


def _input_identity(step: str, sid: str, spec: dict, results: Path) -> dict:
    """What the calculation starts from, and a hash that identifies it."""
    if step == "relax":
        path = Path(spec["path"])
        raw = file_hash(path) if path.is_file() else "missing"
        return {"path": str(path), "file_hash": raw, "hash": spec["structure_hash"]}
    relax = read_summary(results, sid, "relax") or {}
    return {
        "path": str(calc_dir(results, sid, "relax") / FINAL),
        "hash": relax.get("key", "missing"),
        "relax": relax,
    }


def _compute(
    step: str, sid: str, spec: dict, source: dict, workdir: Path, *, start: Atoms | None = None
) -> dict:
    """Run one quacc job in `workdir`, from `start` if given; return its summary."""
    recipe = get_calculator(spec["calculator"]).recipe(step)  # import outside the timing
    started = time.time()
    summary: dict[str, Any] = {
        "id": sid,
        "step": step,
        "calculator": spec["calculator"],
        "parameters": spec,
        "input": {k: v for k, v in source.items() if k != "relax"},
        "host": socket.gethostname(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "start": datetime.now(UTC).isoformat(),
    }
    try:
        atoms = start if start is not None else _load_atoms(step, spec, source)
        summary["input"]["structure_hash_read"] = structure_hash(atoms)
        result = _run_quacc(recipe, step, spec, atoms, workdir)
        summary |= _numbers(step, result)
        _write_outputs(sid, result, workdir)
    except BadInput as err:
        summary |= {"status": "failed", "failure": "bad_input", "reason": str(err)}
    except WallTimeReached:
        raise
    except Exception as err:  # record any crash of this calculation, keep the batch going
        summary |= {
            "status": "failed",
            "failure": "error",
            "reason": f"{source['path']}: {type(err).__name__}: {err}",
            "traceback": traceback.format_exc().splitlines()[-20:],
        }
    summary["end"] = datetime.now(UTC).isoformat()
    summary["wall_time"] = round(time.time() - started, 3)
    return summary


def _load_atoms(step: str, spec: dict, source: dict) -> Atoms:
    """The structure to compute: the input file for relax, the relaxed one for static."""
    if step == "relax":
        calc = get_calculator(spec["calculator"])
        structure = StructureFile(spec["id"], spec["path"], spec["format"])
        return read_structure(structure, spec["checks"]["min_distance"], calc.elements)
    relax = source["relax"]
    if relax.get("status") not in ("done", "unconverged"):
        raise BadInput(f"relax of {spec['id']} did not finish: {relax.get('reason', 'missing')}")
    return ase_read(Path(source["path"]))


def _run_quacc(recipe: Callable, step: str, spec: dict, atoms: Atoms, workdir: Path) -> dict:
    """Call a quacc recipe with the calculation's files kept in `workdir`."""
    import ase.optimize
    from quacc import change_settings

    calc, params = get_calculator(spec["calculator"]), spec[step]
    kwargs = dict(params.get("calc_kwargs", {}))
    settings = {
        "RESULTS_DIR": workdir.resolve(),
        "SCRATCH_DIR": None,
        "CREATE_UNIQUE_DIR": False,
        "GZIP_FILES": False,
        "CHECK_CONVERGENCE": False,  # unconverged is recorded, not raised
    }
    if spec["calculator"] == "vasp":
        settings |= vasp_settings()
    if step == "relax":
        kwargs["relax_cell"] = params["relax_cell"]
        if calc.ase_optimizer:
            kwargs["opt_params"] = {
                "fmax": params["fmax"],
                "max_steps": params["max_steps"],
                "optimizer": resumable(getattr(ase.optimize, params["optimizer"])),
                # its state at every step, where a later attempt finds it (resume.py)
                "optimizer_kwargs": {"restart": str(workdir.resolve() / OPT_STATE)},
            }
            if (stop_at := deadline()) is not None:
                kwargs["opt_params"]["stop_condition"] = lambda _: time.time() > stop_at
        else:
            kwargs |= {"ediffg": -params["fmax"], "nsw": params["max_steps"]}
    with change_settings(settings):
        result = recipe(atoms, **kwargs)
    converged = result.get("converged", True)
    if step == "relax" and not converged and (deadline() or 1e30) < time.time():
        steps = len(result["trajectory"]) - 1
        raise WallTimeReached(f"relax stopped after {steps} steps, before the time limit")
    return result


def _numbers(step: str, result: dict) -> dict:
    """The few numbers of a quacc result that the summary table needs."""
    import numpy as np

    atoms = result["atoms"]
    forces = np.asarray(result["results"]["forces"])
    numbers = {
        "formula": atoms.get_chemical_formula(mode="metal"),
        "natoms": len(atoms),
        "energy": float(result["results"]["energy"]),
        "energy_per_atom": float(result["results"]["energy"]) / len(atoms),
        "max_force": float(np.linalg.norm(forces, axis=1).max()),
        "volume": float(atoms.get_volume()) if atoms.pbc.all() else None,
        "status": "done",
    }
    if step == "relax":
        converged = bool(result.get("converged", True))
        numbers |= {
            "converged": converged,
            "opt_steps": len(result.get("trajectory", [])) - 1,
            "volume_initial": (
                float(result["input_atoms"]["atoms"].get_volume()) if atoms.pbc.all() else None
            ),
            "status": "done" if converged else "unconverged",
        }
        if not converged:
            numbers |= {
                "failure": "unconverged",
                "reason": f"relax did not converge in {numbers['opt_steps']} steps "
                f"(max force {numbers['max_force']:.3g} eV/Å)",
            }
    return numbers


def _write_outputs(sid: str, result: dict, workdir: Path) -> None:
    """Write the checkpoint files: full quacc result, the final structure as extxyz with
    energy and forces, and as a POSCAR when it has a cell."""
    import ase.io
    from ase.calculators.singlepoint import SinglePointCalculator
    from monty.json import jsanitize

    with gzip.open(workdir / "result.json.gz", "wt") as handle:
        json.dump(jsanitize(result, strict=False, enum_values=True), handle)
    atoms = result["atoms"].copy()
    atoms.info = {"id": sid}
    if atoms.cell.rank == 3:
        ase.io.write(workdir / "POSCAR", atoms, format="vasp", direct=True)
    atoms.calc = SinglePointCalculator(
        atoms, **{k: v for k, v in result["results"].items() if k in ("energy", "forces", "stress")}
    )
    ase.io.write(workdir / FINAL, atoms, format="extxyz")
