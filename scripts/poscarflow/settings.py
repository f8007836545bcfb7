"""Every environment variable poscarflow reads, named in one place.

Everything else a job needs reaches it through its request file (see `records.Request`),
so a job's behaviour can be read from that file and these few variables.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

# Set by the pool for the jobs of one local run (see pool.py); absent on SLURM.
POOL_ADDRESS = "POSCARFLOW_POOL"
POOL_KEY = "POSCARFLOW_POOL_KEY"
# Epoch seconds at which a relax stops cleanly; from SLURM's time limit when unset.
DEADLINE = "POSCARFLOW_DEADLINE"
# The SLURM partition and account of profiles/slurm (read by the profile only).
SLURM_PARTITION = "POSCARFLOW_SLURM_PARTITION"
SLURM_ACCOUNT = "POSCARFLOW_SLURM_ACCOUNT"
# Set by SLURM inside a job: where the calculation ran, and its MPI tasks (VASP).
SLURM_JOB_ID = "SLURM_JOB_ID"
SLURM_NTASKS = "SLURM_NTASKS"
# The Python that runs bin/srun and bin/sbatch, SLURM's commands waiting for slurmctld
# (set by slurm.use_waiting_wrappers; plain `python` without it).
PYTHON = "POSCARFLOW_PYTHON"
# quacc's own setting that poscarflow neutralises: Snakemake is the workflow engine.
QUACC_WORKFLOW_ENGINE = "QUACC_WORKFLOW_ENGINE"
# quacc's own settings file (its default is ~/.quacc.yaml).
QUACC_CONFIG_FILE = "QUACC_CONFIG_FILE"
# One BLAS/OpenMP thread per pool process: the pool already uses every core.
ONE_THREAD = {v: "1" for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}


def slurm_job_id() -> str | None:
    """The SLURM job this process runs in, or None outside SLURM."""
    return os.environ.get(SLURM_JOB_ID)


def slurm_ntasks() -> str | None:
    """The number of MPI tasks of this SLURM job, or None."""
    return os.environ.get(SLURM_NTASKS)


def deadline_override() -> float | None:
    """`POSCARFLOW_DEADLINE` as epoch seconds, or None when unset."""
    value = os.environ.get(DEADLINE)
    return float(value) if value else None


def pool_address() -> tuple[str, bytes] | None:
    """This run's pool (address, key), or None when the job must compute itself."""
    address, key = os.environ.get(POOL_ADDRESS), os.environ.get(POOL_KEY)
    return (address, key.encode()) if address and key else None


def neutralise_workflow_engine() -> str | None:
    """Make quacc run each recipe as a plain function (Snakemake is the workflow engine);
    returns the user's QUACC_WORKFLOW_ENGINE if one was set. Must run before quacc is
    imported: quacc refuses to change its engine later."""
    previous = os.environ.get(QUACC_WORKFLOW_ENGINE)
    os.environ[QUACC_WORKFLOW_ENGINE] = "None"
    return previous if previous not in (None, "", "None", "null") else None


def user_quacc_settings() -> set[str]:
    """The quacc settings the user chose (QUACC_<NAME> variables, keys of quacc's
    settings file), as names without the prefix; poscarflow's defaults yield to them."""
    import yaml

    chosen = {name[6:] for name in os.environ if name.startswith("QUACC_")}
    path = Path(os.environ.get(QUACC_CONFIG_FILE, "~/.quacc.yaml")).expanduser()
    with contextlib.suppress(OSError, ValueError, AttributeError, TypeError):
        chosen |= set(yaml.safe_load(path.read_text()) or {})
    return chosen
