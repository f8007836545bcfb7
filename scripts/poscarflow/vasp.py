"""VASP through quacc: custodian and the parallel command per job, POTCARs checked first.

VASP cannot run everywhere poscarflow is tested; everything up to its input files is our
code and quacc's, and is tested with fake POTCARs (tests/test_vasp.py).
"""

from __future__ import annotations

import logging
import os
import time

from poscarflow.resume import deadline
from poscarflow.settings import slurm_ntasks

logger = logging.getLogger("poscarflow.vasp")


def vasp_settings() -> dict:
    """quacc settings for one VASP job: custodian on (its error handlers fix and rerun
    VASP), the parallel command from the job's SLURM tasks, and custodian's wall time
    from the job's deadline, so VASP stops cleanly with a CONTCAR to continue from."""
    settings: dict = {"VASP_USE_CUSTODIAN": True}
    if tasks := slurm_ntasks():
        settings["VASP_PARALLEL_CMD"] = f"srun -n {tasks}"
    if (stop := deadline()) is not None:
        settings["VASP_CUSTODIAN_WALL_TIME"] = max(60, int(stop - time.time()))
    return settings


def missing_potcars(elements: set[str], preset: str) -> dict[str, str]:
    """Element → why no POTCAR is found for it, asking quacc's Vasp calculator (as the
    jobs will) with the preset's POTCAR choices and VASP_PP_PATH; empty if all exist."""
    from ase import Atoms
    from quacc.calculators.vasp import Vasp

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
