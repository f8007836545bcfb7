"""VASP through quacc: custodian and the parallel command per job, POTCARs checked first.

The registry's VASP recipes are quacc's (`quacc.recipes.vasp.core`), run with custodian
as quacc configures it (VASP_USE_CUSTODIAN, its handlers, validators and max errors),
and given back with what the restart loop needs: the relax's ionic path and whether VASP
converged (vasp_files.py reads them from VASP's files), custodian's corrections, and,
when custodian gives up, a `custodian` failure with custodian's reason. A relax that
custodian's wall-time handler stopped before the job's time limit raises
WallTimeReached, so that the next attempt continues it.

VASP cannot run everywhere poscarflow is tested: tests/test_vasp.py checks the inputs
quacc writes, with fake POTCARs; tests/test_vasp_standin.py runs the whole path with a
stand-in for the VASP executable (tests/fake_vasp.py) that writes VASP's files.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from poscarflow.resume import WallTimeReached, deadline
from poscarflow.settings import slurm_ntasks
from poscarflow.vasp_files import computed_at, corrections, ionic_path, reached_accuracy

if TYPE_CHECKING:
    from collections.abc import Callable

    from ase import Atoms

logger = logging.getLogger("poscarflow.vasp")
# Set by custodian's WalltimeHandler, in this process, when it is first made: it measures
# the wall time from then on (custodian's format).
CUSTODIAN_START = "CUSTODIAN_WALLTIME_START"


class CustodianFailed(RuntimeError):
    """Custodian gave up on VASP (too many errors, one it cannot fix, a failed
    validation): its own failure class, governed by the restart policy."""

    failure = "custodian"

    def __init__(self, reason: str, found: list[dict[str, Any]]) -> None:
        super().__init__(reason)
        self.corrections = found


def relax_job(atoms: Atoms, preset: str | None = "DefaultSetGGA", **kwargs: Any) -> dict:
    """quacc's VASP relax, with its ionic path (`trajectory`: the start geometry, then
    one frame per ionic step), whether VASP converged and custodian's corrections."""
    from quacc import get_settings
    from quacc.recipes.vasp.core import relax_job as quacc_relax

    result = _through_custodian(quacc_relax, atoms, preset=preset, **kwargs)
    folder = Path(get_settings().RESULTS_DIR)  # compute.py keeps it unique per attempt
    ionic = ionic_path(folder)[1:]
    result["trajectory"] = [computed_at(atoms.copy(), ionic[0]) if ionic else atoms.copy(), *ionic]
    result["converged"] = reached_accuracy(folder)
    _write_path(folder, result["trajectory"])
    handlers = {c["handler"] for c in result["corrections"]}
    if not result["converged"] and "WalltimeHandler" in handlers:
        steps = len(result["trajectory"]) - 1
        raise WallTimeReached(f"VASP stopped after {steps} ionic steps (custodian's "
                              "wall-time handler), before the time limit")  # fmt: skip
    return result


def static_job(atoms: Atoms, preset: str | None = "DefaultSetGGA", **kwargs: Any) -> dict:
    """quacc's VASP static, with custodian's corrections."""
    from quacc.recipes.vasp.core import static_job as quacc_static

    return _through_custodian(quacc_static, atoms, preset=preset, **kwargs)


def _through_custodian(recipe: Callable, atoms: Atoms, **kwargs: Any) -> dict:
    """Run a quacc VASP recipe; custodian's corrections in the result, or CustodianFailed
    with custodian's reason when it gave up."""
    from custodian.custodian import CustodianError
    from quacc import JobFailure, get_settings

    try:
        result = recipe(atoms, **kwargs)
    except JobFailure as err:
        if not isinstance(err.parent_error, CustodianError):
            raise
        found = corrections(Path(err.directory))
        raise CustodianFailed(_gave_up(err.parent_error, found), found) from err
    result["corrections"] = corrections(Path(get_settings().RESULTS_DIR))
    return result


def _gave_up(error: Exception, found: list[dict[str, Any]]) -> str:
    """Custodian's reason in one line, with the errors its handlers had corrected."""
    message = " ".join(str(getattr(error, "message", error)).split())
    for name in ("handler", "validator"):  # named by class, not by their object's repr
        if (obj := getattr(error, name, None)) is not None:
            message = message.replace(str(obj), type(obj).__name__)
    reason = f"custodian gave up: {type(error).__name__}: {message}"
    if found:
        fixes = ", ".join(f"{c['handler']} ({'/'.join(c['errors'])})" for c in found)
        reason += f"; after {len(found)} correction(s): {fixes}"
    return reason


def _write_path(folder: Path, frames: list[Atoms]) -> None:
    """The relax's ionic path as the ASE trajectory every relax publishes (opt.traj)."""
    from poscarflow.files import write_frames
    from poscarflow.layout import TRAJECTORY

    write_frames(folder / TRAJECTORY, frames)


def vasp_settings() -> dict:
    """quacc settings for one VASP job: custodian on (its error handlers fix and rerun
    VASP), the parallel command from the job's SLURM tasks, and custodian's wall time
    from the job's deadline, so VASP stops cleanly with a CONTCAR to continue from."""
    settings: dict = {"VASP_USE_CUSTODIAN": True}
    if tasks := slurm_ntasks():
        settings["VASP_PARALLEL_CMD"] = f"srun -n {tasks}"
    if (stop := deadline()) is not None:
        settings["VASP_CUSTODIAN_WALL_TIME"] = max(60, int(stop - _custodian_clock()))
    return settings


def _custodian_clock() -> float:
    """When custodian's wall time starts: the start its WalltimeHandler recorded in this
    process (a pool process runs many jobs), else now."""
    try:
        start = dt.datetime.strptime(os.environ[CUSTODIAN_START], "%a %b %d %H:%M:%S %Z %Y")
    except (KeyError, ValueError):
        return time.time()
    return start.timestamp()  # naive local time, as custodian writes and reads it


def missing_potcars(elements: set[str], preset: str) -> dict[str, str]:
    """Element → why no POTCAR is found for it, asking quacc's Vasp calculator (as the
    jobs will) with the preset's POTCAR choices and VASP_PP_PATH; empty if all exist.

    Runs in Snakemake's process: quacc's import gives the root logger a handler
    (logging.basicConfig), which would print every line of Snakemake's twice; it goes.
    """
    from ase import Atoms

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    from quacc.calculators.vasp import Vasp

    root.handlers[:] = handlers
    root.setLevel(level)
    missing = {}
    for element in sorted(elements):
        atoms = Atoms(element, cell=[6.0, 6.0, 6.0], pbc=True)
        try:
            Vasp(atoms, preset=preset).initialize(atoms)
        except Exception as err:  # ASE raises RuntimeError; no VASP_PP_PATH raises others
            missing[element] = str(err).strip().splitlines()[-1].strip() or type(err).__name__
    return missing


def check_potcars(elements: set[str], preset: str) -> None:
    """Stop the whole run before anything is submitted if any element lacks a POTCAR."""
    missing = missing_potcars(elements, preset)
    if missing:
        pp_path = os.environ.get("VASP_PP_PATH", "(VASP_PP_PATH is not set)")
        lines = "\n".join(f"  {el}: {why}" for el, why in missing.items())
        raise ValueError(
            f"no POTCAR for {len(missing)} element(s) of this run (preset {preset}, "
            f"VASP_PP_PATH={pp_path}):\n{lines}\nInstall them, or remove the structures "
            "that contain these elements."
        )
