"""One attempt of one calculation, quacc's way: recipe → runner → summary.

The calculator's entry in the registry picks the recipe and its arguments (calculators.py);
quacc's recipe runs it with the checkpoint files kept in the attempt's folder; the
result becomes a typed `Summary` and the checkpoint files of a calculation folder.
"""

from __future__ import annotations

import errno
import gzip
import logging
import os
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

from poscarflow.calculators import get_calculator
from poscarflow.files import atomic_path, write_frames
from poscarflow.layout import FINAL, PATH, RESULT, TRAJECTORY
from poscarflow.records import Summary, new_summary, now
from poscarflow.resume import Continuation, WallTimeReached, deadline
from poscarflow.settings import user_quacc_settings
from poscarflow.structures import BadInput, StructureFile, read_structure, structure_hash

if TYPE_CHECKING:
    from collections.abc import Callable

    from ase import Atoms

    from poscarflow.records import CalcSpec, Step

logger = logging.getLogger("poscarflow")
# The only quacc settings poscarflow forces (the user's ~/.quacc.yaml and QUACC_* hold
# for everything else: SCRATCH_DIR, GZIP_FILES, VASP and custodian settings, ...): each
# calculation's files go to its attempt folder (RESULTS_DIR, set per attempt), in no
# folder of quacc's own, and an unconverged relax is recorded, not raised.
# QUACC_WORKFLOW_ENGINE is neutralised before quacc is imported (settings.py).
FORCED_SETTINGS = {"CREATE_UNIQUE_DIR": False, "CHECK_CONVERGENCE": False}
# Defaults of ours that a user's own choice overrides: files uncompressed, so that
# `opt.traj` reads as it is (quacc's own default gzips them).
DEFAULT_SETTINGS = {"GZIP_FILES": False}
# A Γ-point-only method needs a cell this wide (Å) in every periodic direction before
# its energies mean what they would in the crystal.
GAMMA_ONLY_MIN_WIDTH = 10.0
# OS errors that are the machine's fault, not the calculation's: a full disk or quota,
# an I/O error, a file system that went away or turned read-only.
INFRASTRUCTURE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.ESTALE, errno.EROFS}


def compute(
    step: Step, spec: CalcSpec, source: dict, workdir: Path, *,
    continued: Continuation | None = None,
) -> Summary:  # fmt: skip
    """Run one quacc job in `workdir`, continuing `continued` if given; return its summary.

    Expected failures become a failed summary with their class (bad input, the
    machine's fault, any other error with its traceback); a clean stop before the job's
    time limit raises WallTimeReached for the attempt loop.
    """
    calculator = get_calculator(spec["calculator"])
    recipe = calculator.recipe(step)  # imported outside the timing
    started = time.time()
    summary = new_summary(spec, step, source)
    try:
        atoms = continued.atoms if continued else load_atoms(step, spec, source)
        summary["input"]["structure_hash_read"] = structure_hash(atoms)
        if calculator.gamma_only and (warning := _too_small_for_gamma(atoms)):
            logger.warning("%s %s: %s", step, spec["id"], warning)
            summary["warnings"] = [warning]
        result = _run_quacc(recipe, step, spec, atoms, workdir)
        if continued is not None:  # the whole path, from the input on
            result["trajectory"] = continued.frames + list(result["trajectory"][1:])
        summary |= summary_numbers(step, result)
        if result.get("corrections"):  # custodian fixed VASP and reran it
            summary["corrections"] = result["corrections"]
        write_outputs(spec["id"], result, workdir, whole_path=continued is not None)
    except BadInput as err:
        summary |= {"status": "failed", "failure": "bad_input", "reason": str(err)}
    except WallTimeReached:
        raise
    except Exception as err:  # any crash of this calculation: recorded, the batch goes on
        fault = machine_fault(err)
        summary |= {
            "status": "failed",
            "failure": "infrastructure" if fault else getattr(err, "failure", "error"),
            "reason": f"{source['path']}: {_describe(fault or err)}",
            "traceback": traceback.format_exc().splitlines()[-20:],
        }
        if fault is not None:
            summary["cause"] = os.strerror(fault.errno)
        if getattr(err, "corrections", None):  # what custodian tried before it gave up
            summary["corrections"] = err.corrections  # type: ignore[attr-defined]
    summary["end"] = now()
    summary["wall_time"] = round(time.time() - started, 3)
    return summary


def machine_fault(err: BaseException | None) -> OSError | None:
    """The full disk or lost storage behind an exception (or one it was raised from)."""
    while err is not None:
        if isinstance(err, OSError) and err.errno in INFRASTRUCTURE_ERRNOS:
            return err
        err = err.__cause__ or err.__context__
    return None


def _describe(err: BaseException) -> str:
    """An exception in one line: the machine's fault said plainly, else type and text."""
    if isinstance(err, OSError) and err.errno in INFRASTRUCTURE_ERRNOS:
        where = f" ({err.filename})" if err.filename else ""
        return f"{os.strerror(err.errno)}{where}"
    return f"{type(err).__name__}: {err}"


def _too_small_for_gamma(atoms: Atoms) -> str | None:
    """A warning when a periodic cell is narrower than GAMMA_ONLY_MIN_WIDTH in a periodic
    direction (its distance between opposite faces), else None."""
    import numpy as np

    if not atoms.pbc.any():
        return None
    cell = atoms.cell.complete()
    widths = atoms.cell.volume / np.linalg.norm(np.cross(cell[[1, 2, 0]], cell[[2, 0, 1]]), axis=1)
    narrow = min(w for w, periodic in zip(widths, atoms.pbc, strict=True) if periodic)
    if narrow >= GAMMA_ONLY_MIN_WIDTH:
        return None
    return (
        f"cell is {narrow:.1f} Å wide, and this method samples the Γ point only: make a "
        f"supercell at least {GAMMA_ONLY_MIN_WIDTH:.0f} Å wide in every periodic direction"
    )


def load_atoms(step: Step, spec: CalcSpec, source: dict) -> Atoms:
    """The structure to compute: the input file for relax, the relaxed one for static."""
    if step == "relax":
        calc = get_calculator(spec["calculator"])
        structure = StructureFile(spec["id"], spec["path"], spec["format"], spec.get("problem"))
        return read_structure(structure, spec["checks"]["min_distance"], calc.elements)
    relax = source["relax"]
    if relax.get("status") not in ("done", "unconverged"):
        raise BadInput(f"relax of {spec['id']} did not finish: {relax.get('reason', 'missing')}")
    return read_final(Path(source["path"]))


def read_final(path: Path) -> Atoms:
    """Read the final structure a calculation wrote (extxyz: full precision, any cell)."""
    import ase.io

    return ase.io.read(path, format="extxyz")


def _run_quacc(recipe: Callable, step: Step, spec: CalcSpec, atoms: Atoms, workdir: Path) -> dict:
    """Call a quacc recipe with the calculation's files kept in `workdir`."""
    from quacc import change_settings

    calculator = get_calculator(spec["calculator"])
    params = spec[step]  # type: ignore[literal-required]
    if step == "relax":
        kwargs = calculator.relax_kwargs(params, workdir)
    else:
        kwargs = dict(params.get("calc_kwargs", {}))
    chosen = user_quacc_settings()
    defaults = {k: v for k, v in DEFAULT_SETTINGS.items() if k not in chosen}
    settings = defaults | FORCED_SETTINGS | {"RESULTS_DIR": workdir.resolve()}
    settings |= calculator.quacc_settings()
    with change_settings(settings):
        result = recipe(atoms, **kwargs)
    converged = result.get("converged", True)
    if step == "relax" and not converged and (deadline() or 1e30) < time.time():
        steps = len(result["trajectory"]) - 1
        raise WallTimeReached(f"relax stopped after {steps} steps, before the time limit")
    return result


def summary_numbers(step: Step, result: dict) -> dict[str, Any]:
    """The few numbers of a quacc result that the summary table needs."""
    import numpy as np
    from ase import units

    atoms = result["atoms"]
    forces = np.asarray(result["results"]["forces"])
    results = result["results"]
    stress = results.get("stress")
    numbers: dict[str, Any] = {
        "formula": atoms.get_chemical_formula(mode="metal"),
        "natoms": len(atoms),
        "energy": float(results["energy"]),
        "free_energy": float(results["free_energy"]) if "free_energy" in results else None,
        "energy_per_atom": float(results["energy"]) / len(atoms),
        "max_force": float(np.linalg.norm(forces, axis=1).max()),
        "max_stress": float(np.abs(stress).max() / units.GPa) if stress is not None else None,
        "volume": float(atoms.get_volume()) if atoms.pbc.all() else None,
        "status": "done",
    }
    if result.get("device"):  # where a machine-learned potential ran (cpu, cuda)
        numbers["device"] = str(result["device"])
    if step == "relax":
        converged = bool(result.get("converged", True))
        path = result.get("trajectory") or [result["input_atoms"]["atoms"]]
        numbers |= {
            "converged": converged,
            "opt_steps": len(path) - 1,
            "volume_initial": float(path[0].get_volume()) if atoms.pbc.all() else None,
            "status": "done" if converged else "unconverged",
        }
        if not converged:
            numbers |= {
                "failure": "unconverged",
                "reason": f"relax did not converge in {numbers['opt_steps']} steps "
                f"(max force {numbers['max_force']:.3g} eV/Å)",
            }
    return numbers


def write_outputs(sid: str, result: dict, workdir: Path, *, whole_path: bool) -> None:
    """Write the checkpoint files: the full quacc result (Atoms as ASE's JSON, so they
    read back with positions: `read_result`), the final structure as extxyz with energy
    and forces and as a POSCAR when it has a cell, and for a continued relax the whole
    optimizer path as `opt.traj`."""
    import ase.io
    from ase.calculators.singlepoint import SinglePointCalculator

    if whole_path:  # replaces quacc's opt.traj of this attempt (gzipped or not)
        write_frames(workdir / TRAJECTORY, result["trajectory"])
        (workdir / f"{TRAJECTORY}.gz").unlink(missing_ok=True)
        (workdir / PATH).unlink(missing_ok=True)
    # gzip level 1: level 9 (the default) took 20-30 ms per EMT relax, for 8 % fewer bytes
    with atomic_path(workdir / RESULT) as tmp, gzip.open(tmp, "wt", compresslevel=1) as handle:
        handle.write(encode_result(result))
    atoms = result["atoms"].copy()
    atoms.info = {"id": sid}
    if atoms.cell.rank == 3:
        ase.io.write(workdir / "POSCAR", atoms, format="vasp", direct=True)
    atoms.calc = SinglePointCalculator(
        atoms, **{k: v for k, v in result["results"].items() if k in ("energy", "forces", "stress")}
    )
    ase.io.write(workdir / FINAL, atoms, format="extxyz")


def encode_result(result: dict) -> str:
    """A quacc result as JSON: Atoms the ASE way (`ase.io.jsonio`), everything else the
    monty way (quacc's own serialisation)."""
    from ase.io.jsonio import MyEncoder
    from monty.json import MontyEncoder

    class Encoder(MyEncoder):
        def default(self, obj: object) -> object:
            try:
                return super().default(obj)
            except TypeError:
                return MontyEncoder().default(obj)

    return Encoder().encode(result)


def read_result(path: Path) -> dict:
    """Read a `result.json.gz` back, with its Atoms (positions, cell, results)."""
    from ase.io.jsonio import decode

    with gzip.open(path, "rt") as handle:
        return decode(handle.read())
