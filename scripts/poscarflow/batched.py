"""The batched engine: a batch's calculations as one TorchSim state, in one process.

For machine-learned potentials on a GPU, one structure at a time leaves the GPU idle;
TorchSim (`torch_sim`, TorchSim's own API: `initialize_state`, its FIRE optimizers,
`generate_force_convergence_fn`, `static`) computes all of a batch's structures in one
batched state. Each structure still keeps what the one-at-a-time path gives it
(batch.py, attempts.py): its own attempt folder `results/calcs/<id>/.relax.tmp-<pid>/`,
an `opt.traj` written at every optimizer step, a task history, a published
`relax/` folder with `summary.json`, `final.extxyz` and the whole `opt.traj`, and the
restart policy (an unconverged relax continues from its last frame).

Per structure, not per batch: a structure whose energy, forces or cell become NaN or
infinite leaves the state at that step and fails alone; one that converges, or reaches
`max_steps`, leaves it and is published at once; a kill leaves each unfinished
structure's frames, and the next run continues each from its last frame (FIRE starts
afresh there: its velocities and time step are not on disk; a restart by the policy
within the same job keeps them). A structure needs a periodic cell (TorchSim
0.3 holds one `pbc` per state); a molecule is a bad input for it alone.

Written for torch-sim-atomistic 0.3.0, the last release that installs on Python 3.11
(0.4 and later need 3.12). quacc 1.8.2's TorchSim recipes need torch-sim >= 0.5, so
they cannot be used here; README's "Batched engine" says more. The relax always uses
TorchSim's FIRE (`frechet_cell_fire` with `relax_cell`, else `fire`); the `optimizer`
setting is for the ASE path. The batch is the state: `batch_size` bounds its memory.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from functools import cache
from typing import TYPE_CHECKING, Any

from poscarflow.attempts import Deferred, close_attempt, fresh_attempt_dir, give_up, publish
from poscarflow.batch import reusable
from poscarflow.calculators import get_calculator
from poscarflow.compute import load_atoms, machine_fault, summary_numbers, write_outputs
from poscarflow.devices import resolve_device
from poscarflow.files import read_frames, remove_leftovers
from poscarflow.history import (
    append_history,
    attempts_ended,
    budget_left,
    interrupted,
    read_history,
)
from poscarflow.layout import TRAJECTORY, Layout
from poscarflow.policy import matching_rule
from poscarflow.records import end_record, failed_summary, new_summary, now, start_record
from poscarflow.resume import Continuation, WallTimeReached, deadline, last_step
from poscarflow.structures import BadInput, structure_hash

if TYPE_CHECKING:
    from pathlib import Path

    from ase import Atoms

    from poscarflow.records import CalcSpec, ManifestEntry, Request, Step, Summary

logger = logging.getLogger("poscarflow")


@dataclass(eq=False)
class Calc:
    """One calculation of the batch while it runs."""

    spec: CalcSpec
    source: dict
    identity: dict  # reuse key and code fingerprint
    continued: Continuation | None = None
    tmp: Path | None = None
    attempt: int = 0
    started: float = 0.0
    atoms: Atoms | None = None  # where this attempt starts
    frames: list[Atoms] = field(default_factory=list)  # this attempt's own path
    summary: dict = field(default_factory=dict)
    carried: Any = None  # its optimizer's state (one system), when a restart goes on in-job

    @property
    def sid(self) -> str:
        return self.spec["id"]

    @property
    def key(self) -> str:
        return self.identity["key"]

    def fail(self, failure: str, reason: str) -> None:
        self.summary |= {"status": "failed", "failure": failure, "reason": reason}


def run_batched(request: Request) -> dict[str, ManifestEntry]:
    """Run or reuse every calculation of one batch together; their manifest entries.

    A failure of the machine (a full disk, lost storage) defers the batch's unfinished
    calculations to the next run, as the one-at-a-time path does.
    """
    layout, step = Layout(request["results"]), request["step"]
    entries: dict[str, ManifestEntry] = {}
    todo: list[Calc] = []
    for sid, spec in request["calcs"].items():
        old, source, identity = reusable(layout, request, spec)
        if old is not None:
            entries[sid] = {"key": old["key"], "status": old["status"]}
        else:
            todo.append(Calc(spec, source, identity))
    groups: dict[str, list[Calc]] = {}  # overrides may give structures other settings
    for calc in todo:
        groups.setdefault(json.dumps(calc.spec[step], sort_keys=True), []).append(calc)  # type: ignore[literal-required]
    for calcs in groups.values():
        try:
            done = run_group(layout, step, calcs, request["policy"])
        except Exception as err:
            if not isinstance(err, Deferred) and not machine_fault(err):
                raise
            logger.warning("%s: deferred to the next run: %s", step, err)
            deferred: ManifestEntry = {"key": "", "status": "deferred", "reason": str(err)}
            done = {c.sid: _published(layout, step, c) or deferred for c in calcs}
        entries |= done
    return {sid: entries[sid] for sid in request["calcs"]}


def _published(layout: Layout, step: Step, calc: Calc) -> ManifestEntry | None:
    """The manifest entry of a calculation this run already published, else None."""
    from poscarflow.files import read_json

    summary = read_json(layout.summary(calc.sid, step)) or {}
    if summary.get("key") != calc.key:
        return None
    return {"key": summary["key"], "status": summary["status"]}


def run_group(
    layout: Layout, step: Step, calcs: list[Calc], policy: dict[str, int]
) -> dict[str, ManifestEntry]:
    """Calculations with the same settings, in rounds: a round runs them as one state;
    the restart policy sends some to the next round (continued from their last frame).
    Raises WallTimeReached after publishing what finished, if the job's time ran out."""
    published: dict[str, Summary] = {}
    ready = []
    for calc in calcs:
        if (summary := _prepare(layout, step, calc, policy)) is not None:
            published[calc.sid] = summary
        else:
            ready.append(calc)
    params = calcs[0].spec[step]  # type: ignore[literal-required]
    timed_out: list[Calc] = []
    while ready and not timed_out:
        live = [c for c in ready if _start(layout, step, c)]
        if live:
            model = build_model(calcs[0].spec["calculator"], params.get("calc_kwargs", {}))
            if step == "relax":
                timed_out = relax_together(live, params, model)
            else:
                static_together(live, model)
        restart = []
        for calc in (c for c in ready if c not in timed_out):
            if (summary := _finish(layout, step, calc, policy)) is None:
                restart.append(calc)
            else:
                published[calc.sid] = summary
        ready = restart
    for calc in timed_out:
        _stop_for_time(layout, calc, policy)
    if timed_out:
        raise WallTimeReached(f"relax stopped before the time limit ({len(timed_out)} left)")
    return {sid: {"key": s["key"], "status": s["status"]} for sid, s in published.items()}


def _prepare(layout: Layout, step: Step, calc: Calc, policy: dict[str, int]) -> Summary | None:
    """Find an interrupted attempt to continue; close its history record. A summary if
    the policy gives it up."""
    calc.continued = last_step(layout, calc.sid, calc.key) if step == "relax" else None
    if calc.continued is not None:
        logger.info("%s %s: continuing from step %d", step, calc.sid, calc.continued.done_steps)
    remove_leftovers(layout.calc_dir(calc.sid, step))
    dead = interrupted(read_history(layout.history(calc.sid), step))
    if dead is not None and not close_attempt(layout, calc.sid, dead, policy, calc.key):
        return give_up(layout, calc.spec, step, dead, calc.identity)
    return None


def _start(layout: Layout, step: Step, calc: Calc) -> bool:
    """Open an attempt: its folder and history record, its structure; False if that
    structure cannot be computed (a bad input, recorded in its summary)."""
    calc.tmp = fresh_attempt_dir(layout, calc.sid, step, calc.key, calc.continued)
    calc.attempt = 1 + attempts_ended(read_history(layout.history(calc.sid), step))
    done = calc.continued.done_steps if calc.continued else 0
    append_history(layout.history(calc.sid), start_record(step, calc.attempt, calc.key, done))
    calc.summary, calc.frames = new_summary(calc.spec, step, calc.source), []
    calc.started = time.time()
    try:
        atoms = calc.continued.atoms if calc.continued else load_atoms(step, calc.spec, calc.source)
        if not atoms.pbc.all():
            raise BadInput(f"{calc.spec.get('path', calc.sid)}: the batched engine (TorchSim) "
                           "needs a cell periodic in all three directions")  # fmt: skip
    except BadInput as err:
        calc.fail("bad_input", str(err))
        return False
    calc.atoms = atoms
    calc.summary["input"]["structure_hash_read"] = structure_hash(atoms)
    return True


def _finish(layout: Layout, step: Step, calc: Calc, policy: dict[str, int]) -> Summary | None:
    """Record the attempt's end; publish it, or None if the policy restarts it."""
    summary: Any = calc.summary
    summary |= {"end": now(), "wall_time": round(time.time() - calc.started, 3)}
    failure = summary.get("failure")
    text = f"{summary.get('reason', '')}\n" + "\n".join(summary.get("traceback", []))
    rule = matching_rule(failure, text, policy) if failure else None
    history = layout.history(calc.sid)
    restart = budget_left(read_history(history, step), rule, policy, calc.key)
    append_history(history, end_record(step, calc.attempt, calc.key, summary,
                                       rule=rule, restarted=restart))  # fmt: skip
    summary |= calc.identity | {"attempts": calc.attempt}
    if not restart:
        return publish(layout, summary, calc.tmp)  # type: ignore[arg-type]
    logger.info("%s %s: attempt %d %s, restarting (policy %r)", step, calc.sid, calc.attempt,
                failure, rule)  # fmt: skip
    if failure == "unconverged":  # continue from the last frame, not from the input
        calc.continued = Continuation(read_frames(calc.tmp / TRAJECTORY), None)  # type: ignore[operator]
    else:
        calc.carried = None
    return None


def _stop_for_time(layout: Layout, calc: Calc, policy: dict[str, int]) -> None:
    """A relax the job's time limit stopped: its folder stays for the next attempt."""
    steps = len(calc.frames) - 1
    ended = failed_summary(calc.spec, "relax", "timeout",
                           f"relax stopped after {steps} steps, before the time limit")  # fmt: skip
    dead = end_record("relax", calc.attempt, calc.key, ended, rule=None, restarted=False)
    if not close_attempt(layout, calc.sid, dead, policy, calc.key):
        give_up(layout, calc.spec, "relax", dead, calc.identity)


@cache
def _model(calculator: str, settings: str) -> Any:
    """The TorchSim model of a batched calculator, built once per process and settings."""
    import torch

    potential = dict(get_calculator(calculator).kwargs)["potential"]
    kwargs = json.loads(settings)
    device = torch.device(resolve_device(kwargs.pop("device", "auto")))
    if potential == "lj":
        from torch_sim.models.lennard_jones import LennardJonesModel

        kwargs = {"compute_stress": True} | kwargs
        return LennardJonesModel(device=device, dtype=torch.float64, **kwargs)
    if potential == "sevennet":
        return _sevennet_model(device, **kwargs)
    raise ValueError(f"{calculator}: no TorchSim model {potential!r}")


def build_model(calculator: str, calc_kwargs: dict[str, Any]) -> Any:
    """The TorchSim model for these calc_kwargs (`device`: poscarflow.devices)."""
    return _model(calculator, json.dumps(calc_kwargs, sort_keys=True))


def _sevennet_model(device: Any, model: str = "7net-0", modal: str | None = None,
                    **build: Any) -> Any:  # fmt: skip
    """TorchSim 0.3.0's SevenNetModel with a checkpoint shipped in the sevenn wheel.

    torch-sim 0.3.0 imports `sevenn.calculator.torch_script_type`, a name sevenn 0.12
    dropped with its TorchScript support; it only serves an isinstance() test, so it is
    given back (a TorchScript module type) before the import.
    """
    import warnings

    import sevenn.calculator
    import torch
    from sevenn.util import load_checkpoint

    if not hasattr(sevenn.calculator, "torch_script_type"):
        sevenn.calculator.torch_script_type = torch.jit.ScriptModule  # type: ignore[attr-defined]
    from torch_sim.models.sevennet import SevenNetModel

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        network = load_checkpoint(model).build_model(**build)
        return SevenNetModel(model=network, modal=modal, device=device)


def relax_together(calcs: list[Calc], params: dict[str, Any], model: Any) -> list[Calc]:
    """Relax `calcs` as one TorchSim state; each ends with its summary's numbers and
    checkpoint files, or a failure. Returns those the job's time limit stopped."""
    import torch_sim as ts
    from ase.io.trajectory import Trajectory

    optimizer = ts.frechet_cell_fire if params["relax_cell"] else ts.fire
    init, update = optimizer(model=model)
    converged = ts.generate_force_convergence_fn(
        force_tol=params["fmax"], include_cell_forces=params["relax_cell"]
    )
    engine = {"name": "TorchSim Relax", "device": str(model.device),
              "optimizer": f"torch_sim.{optimizer.__name__}"}  # fmt: skip
    stop_at = deadline()
    writers = {c.sid: Trajectory(str(c.tmp / TRAJECTORY), "w") for c in calcs}  # type: ignore[operator]
    fresh = [c for c in calcs if c.carried is None]
    parts = [c.carried for c in calcs if c.carried is not None]  # FIRE goes on where it was
    active, step = fresh + [c for c in calcs if c.carried is not None], 0
    try:
        if fresh:
            atoms = [c.atoms for c in fresh]
            parts.insert(0, init(ts.initialize_state(atoms, model.device, model.dtype)))
        state = parts[0] if len(parts) == 1 else ts.concatenate_states(parts)
        for calc in active:
            calc.carried = None
        while active:
            done = converged(state, None).tolist()
            last = step >= params["max_steps"]
            keep = _record_step(active, state, step, done=done, last=last, writers=writers,
                                engine=engine)  # fmt: skip
            if len(keep) < len(active):
                active = [active[i] for i in keep]
                if not active:
                    break
                state = state[keep]
            if stop_at is not None and time.time() > stop_at:
                return active
            state = update(state)
            step += 1
    except Exception as err:  # the model or optimizer failed the whole state
        if machine_fault(err):
            raise
        for calc in active:
            calc.fail("error", f"{calc.spec['path']}: the batched state failed at step "
                      f"{step}: {type(err).__name__}: {err}")  # fmt: skip
        logger.exception("batched relax failed")
    finally:
        for writer in writers.values():
            writer.close()
    return []


def _record_step(
    active: list[Calc], state: Any, step: int, *, done: list[bool], last: bool,
    writers: dict[str, Any], engine: dict[str, Any],
) -> list[int]:  # fmt: skip
    """Write each structure's frame of this step; finish those that converged, blew up
    or reached the last step. The positions in the state of those that go on."""
    keep = []
    for i, (calc, frame) in enumerate(zip(active, _frames(state), strict=True)):
        if frame is None:
            calc.fail("error", f"{calc.spec['path']}: energy, forces or cell not finite "
                      f"(NaN or inf) at step {step}: the structure blew up")  # fmt: skip
            continue
        writers[calc.sid].write(frame)
        calc.frames.append(frame)
        if done[i] or last:
            writers.pop(calc.sid).close()
            _relaxed(calc, bool(done[i]), engine)
            if not done[i]:  # a restart in this job continues with FIRE's own state
                calc.carried = state[[i]]
        else:
            keep.append(i)
    return keep


def _relaxed(calc: Calc, converged: bool, engine: dict[str, Any]) -> None:
    """A structure left the state: its result as quacc shapes it, its files."""
    path = calc.continued.frames + calc.frames[1:] if calc.continued else calc.frames
    final = calc.frames[-1]
    result = {
        "atoms": final, "results": dict(final.calc.results), "converged": converged,
        "trajectory": path, "input_atoms": {"atoms": path[0]}, **engine,
    }  # fmt: skip
    calc.summary |= summary_numbers("relax", result) | {"device": engine["device"]}
    write_outputs(calc.sid, result, calc.tmp, whole_path=True)  # type: ignore[arg-type]


def static_together(calcs: list[Calc], model: Any) -> None:
    """Single points of `calcs` through `torch_sim.static`, in one state."""
    import torch_sim as ts
    from ase.calculators.singlepoint import SinglePointCalculator

    try:
        properties = ts.static(system=[c.atoms for c in calcs], model=model)
    except Exception as err:
        if machine_fault(err):
            raise
        for calc in calcs:
            calc.fail("error", f"the batched static failed: {type(err).__name__}: {err}")
        logger.exception("batched static failed")
        return
    for calc, props in zip(calcs, properties, strict=True):
        values = {k: v.detach().cpu().double().numpy() for k, v in props.items()}
        results = {"energy": float(values["potential_energy"].reshape(-1)[0]),
                   "forces": values["forces"].reshape(-1, 3)}  # fmt: skip
        if "stress" in values:
            results["stress"] = _voigt(values["stress"].reshape(3, 3))
        if not all(_all_finite(v) for v in results.values()):
            calc.fail("error", f"{calc.sid}: energy or forces not finite (NaN or inf)")
            continue
        atoms = calc.atoms.copy()  # type: ignore[union-attr]
        atoms.calc = SinglePointCalculator(atoms, **results)
        result = {"atoms": atoms, "results": results, "name": "TorchSim Static",
                  "device": str(model.device)}  # fmt: skip
        calc.summary |= summary_numbers("static", result) | {"device": str(model.device)}
        write_outputs(calc.sid, result, calc.tmp, whole_path=False)  # type: ignore[arg-type]


def _frames(state: Any) -> list[Atoms | None]:
    """One Atoms per system of the state, with its energy, forces and stress; None for a
    system whose numbers are not all finite."""
    from ase.calculators.singlepoint import SinglePointCalculator

    finite = _finite(state)
    atoms_list: list[Atoms | None] = state.to_atoms()
    energy = state.energy.detach().cpu().double().numpy()
    forces = state.forces.detach().cpu().double().numpy()
    stress = getattr(state, "stress", None)
    stress = None if stress is None else stress.detach().cpu().double().numpy()
    system = state.system_idx.detach().cpu().numpy()
    for i, atoms in enumerate(atoms_list):
        if not finite[i]:
            atoms_list[i] = None
            continue
        results = {"energy": float(energy[i]), "forces": forces[system == i]}
        if stress is not None:
            results["stress"] = _voigt(stress[i])
        atoms.calc = SinglePointCalculator(atoms, **results)  # type: ignore[union-attr]
    return atoms_list


def _finite(state: Any) -> list[bool]:
    """Per system: are its energy, forces, positions and cell all finite?"""
    import torch

    n = state.n_systems
    bad = ~torch.isfinite(state.energy)
    for per_atom in (state.forces, state.positions):
        rows = ~torch.isfinite(per_atom).all(dim=1)
        bad |= torch.zeros(n, dtype=torch.bool, device=bad.device).index_put(
            (state.system_idx,), rows, accumulate=True
        )
    bad |= ~torch.isfinite(state.cell.reshape(n, -1)).all(dim=1)
    return (~bad).tolist()


def _voigt(stress: Any) -> Any:
    """A 3x3 stress as ASE's Voigt order (xx, yy, zz, yz, xz, xy)."""
    import numpy as np

    return np.array([stress[0, 0], stress[1, 1], stress[2, 2],
                     stress[1, 2], stress[0, 2], stress[0, 1]])  # fmt: skip


def _all_finite(value: Any) -> bool:
    import numpy as np

    return bool(np.isfinite(value).all())
