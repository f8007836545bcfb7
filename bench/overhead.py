"""How much the workflow costs on top of the calculations themselves.

1. N EMT structures (relax + static each) through the workflow (local executor, 2 cores)
   and through an in-process loop with 2 worker processes; prints both times and the
   ratio (target <= 1.25).
2. `snakemake -n` for BIG structures and a no-op run once they are finished (trivial
   LJ calculator, one optimizer step; target < 20 s each).

Usage: python bench/overhead.py [--n 100] [--big 10000]
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from ase.build import bulk
from ase.io import write

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.conftest import Workflow

ELEMENTS = ("Cu", "Al", "Ni", "Pd", "Ag", "Pt", "Au")
SIZES = ((1, 1, 1), (2, 1, 1), (2, 2, 1), (2, 2, 2))


def make_structures(folder: Path, n: int) -> None:
    """N small rattled EMT cells of 4 to 32 atoms (0.1-0.8 s for relax + static each)."""
    for i in range(n):
        atoms = bulk(ELEMENTS[i % 7], cubic=True) * SIZES[i % 4]
        atoms.rattle(0.05, seed=i)
        write(folder / f"s{i:05d}.vasp", atoms, format="vasp", direct=True)


def timed(label: str, func, *args) -> float:
    """Run func(*args); print and return its wall time."""
    start = time.perf_counter()
    func(*args)
    seconds = time.perf_counter() - start
    print(f"{label:<48} {seconds:8.1f} s", flush=True)
    return seconds


def _worker(task: tuple[str, dict, str]) -> float:
    """Relax + static of one structure, as a user's own loop would do it."""
    import ase.optimize
    from ase.io import read

    logging.getLogger("quacc").setLevel(logging.WARNING)
    from quacc import change_settings
    from quacc.recipes.emt.core import relax_job, static_job

    path, relax, workdir = task
    opt = {"fmax": relax["fmax"], "max_steps": relax["max_steps"],
           "optimizer": getattr(ase.optimize, relax["optimizer"])}  # fmt: skip
    with change_settings({"RESULTS_DIR": Path(workdir), "GZIP_FILES": False,
                          "CHECK_CONVERGENCE": False}):  # fmt: skip
        relaxed = relax_job(read(path), relax_cell=relax["relax_cell"], opt_params=opt)
        return static_job(relaxed["atoms"])["results"]["energy"]


def in_process_loop(workflow: Workflow, workdir: Path) -> None:
    """The baseline: 2 fresh worker processes (each imports quacc once).

    One BLAS thread per worker, as Snakemake gives a 1-thread job; without it the two
    workers oversubscribe the 2 cores and the baseline is 4x slower.
    """
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"
    tasks = [(str(p), workflow.config["relax"], str(workdir))
             for p in sorted(workflow.structures.iterdir())]  # fmt: skip
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        pool.map(_worker, tasks, chunksize=1)


def overhead(root: Path, n: int) -> None:
    """Part 1: workflow against the in-process loop on the same structures."""
    workflow = Workflow(root / "overhead")
    make_structures(workflow.structures, n)
    loop = timed(f"in-process loop, 2 workers, {n} structures", in_process_loop,
                 workflow, root / "loop")  # fmt: skip
    flow = timed(f"workflow (snakemake --cores 2), {n} structures", workflow.run)
    print(f"ratio workflow / loop: {flow / loop:.2f} (target <= 1.25)")


def scale(root: Path, big: int) -> None:
    """Part 2: DAG building and no-op runs for many structures."""
    workflow = Workflow(root / "scale")
    first = workflow.structures / "s00000.vasp"
    write(first, bulk("Cu"), format="vasp")
    for i in range(1, big):
        shutil.copyfile(first, workflow.structures / f"s{i:05d}.vasp")
    workflow.config |= {"calculator": "lj", "relax": workflow.config["relax"] | {"max_steps": 1}}
    workflow.write_config()
    timed(f"snakemake -n, {big} structures, first call", workflow.run, "-n")
    timed(f"snakemake -n, {big} structures, second call", workflow.run, "-n")
    timed(f"full run, {big} structures (LJ, 1 step)", workflow.run)
    timed(f"no-op run once finished, {big} structures", workflow.run)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100, help="structures for the ratio (0: skip)")
    parser.add_argument("--big", type=int, default=10_000, help="structures for -n (0: skip)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="poscarflow-bench-") as tmp:
        if args.n:
            overhead(Path(tmp), args.n)
        if args.big:
            scale(Path(tmp), args.big)


if __name__ == "__main__":
    main()
