"""How much the workflow costs on top of the calculations themselves.

1. N EMT structures (relax + static each) through the workflow (local executor,
   `--cores C`) and through an in-process loop with C worker processes: both times and
   the ratio, against the target for that N and C (N=100: 1.15 on 2 cores, 1.30 on 16;
   N=1000: 1.10 on 16 cores).
2. Scale, for each of `--big` (default 10,000) and `--huge` (100,000, opt-in: the full
   run takes about half an hour on 2 cores) structures, trivial LJ with one optimizer
   step: `snakemake -n` (first and second call), the full run, a no-op run once
   finished (first call, while the full run's files are still being written back to
   disk, and second), `poscarflow status`, `poscarflow why`, the finishing rules alone (table,
   database, plots, check), and the peak memory of Snakemake and of its pool.

Every figure is printed with its target. Usage:
    python bench/overhead.py [--n 100] [--cores 2] [--big 10000] [--huge 0]
                             [--batch-sizes 10 25 100]
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ase.build import bulk
from ase.io import write

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from poscarflow.layout import Layout
from poscarflow.testing import Workflow

ELEMENTS = ("Cu", "Al", "Ni", "Pd", "Ag", "Pt", "Au")
SIZES = ((1, 1, 1), (2, 1, 1), (2, 2, 1), (2, 2, 2))
RATIO_TARGETS = {(100, 2): 1.15, (100, 16): 1.30, (1000, 16): 1.10}
SCALE_TARGETS = {  # seconds (and GiB for memory) by number of structures
    10_000: {"-n": 5, "no-op": 3, "finishing": 5},
    100_000: {"-n": 30, "no-op": 20, "status": 5, "memory": 4},
}


def make_structures(folder: Path, n: int) -> None:
    """N small rattled EMT cells of 4 to 32 atoms (0.1-0.8 s for relax + static each)."""
    for i in range(n):
        atoms = bulk(ELEMENTS[i % 7], cubic=True) * SIZES[i % 4]
        atoms.rattle(0.05, seed=i)
        write(folder / f"s{i:05d}.vasp", atoms, format="vasp", direct=True)


def timed(label: str, func, *args, target: float | None = None, **kwargs) -> float:
    """Run func(*args, **kwargs); print its wall time (and target); return it."""
    start = time.perf_counter()
    func(*args, **kwargs)
    seconds = time.perf_counter() - start
    goal = f"  (target <= {target:g} s)" if target is not None else ""
    print(f"{label:<58} {seconds:8.1f} s{goal}", flush=True)
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


def in_process_loop(workflow: Workflow, workdir: Path, cores: int) -> None:
    """The baseline: `cores` fresh worker processes (each imports quacc once).

    One BLAS thread per worker, as Snakemake gives a 1-thread job; without it the
    workers oversubscribe the cores and the baseline is several times slower.
    """
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"
    tasks = [(str(p), workflow.config["relax"], str(workdir))
             for p in sorted(workflow.structures.iterdir())]  # fmt: skip
    with multiprocessing.get_context("spawn").Pool(cores) as pool:
        pool.map(_worker, tasks, chunksize=1)


def overhead(root: Path, n: int, cores: int, batch_sizes: list[int | None]) -> None:
    """Part 1: workflow against the in-process loop on the same structures, for each
    batch size (None: the calculator's default)."""
    workflow = Workflow(root / "overhead")
    make_structures(workflow.structures, n)
    loop = timed(f"in-process loop, {cores} workers, {n} structures", in_process_loop,
                 workflow, root / "loop", cores)  # fmt: skip
    target = RATIO_TARGETS.get((n, cores))
    goal = f" (target <= {target})" if target else ""
    for size in batch_sizes:
        shutil.rmtree(workflow.root / "results", ignore_errors=True)
        shutil.rmtree(workflow.root / ".snakemake", ignore_errors=True)
        workflow.config["batch_size"] = size
        workflow.write_config()
        label = f"batch_size {size}" if size else "default batch_size"
        flow = timed(f"workflow (snakemake --cores {cores}), {n} structures, {label}",
                     workflow.run, cores=cores)  # fmt: skip
        print(f"ratio workflow / loop, {label}: {flow / loop:.2f}{goal}", flush=True)


def finishing_rules(workflow: Workflow, cores: int) -> None:
    """Rebuild the run-wide outputs (table, database, plots, check) alone."""
    for path in Layout(workflow.root / "results").run_outputs():
        path.unlink(missing_ok=True)
    workflow.run(cores=cores)


def peak_memory(workflow: Workflow, cores: int) -> tuple[float, str]:
    """Peak RSS (GiB) of the processes of one no-op run (Snakemake and its pool), and
    the pool's own report of its peak from its log."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    workflow.run(cores=cores)
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    log = (workflow.root / "logs/pool.log").read_text()
    pool = re.findall(r"peak memory: .*", log)
    return max(before, after) / 2**20, pool[-1] if pool else "(no pool report)"


def scale(root: Path, n: int, cores: int) -> None:
    """Part 2: DAG building, no-op runs, status, why and finishing for n structures."""
    targets = SCALE_TARGETS.get(n, {})
    workflow = Workflow(root / f"scale{n}")
    first = workflow.structures / "s000000.vasp"
    write(first, bulk("Cu"), format="vasp")
    for i in range(1, n):
        shutil.copyfile(first, workflow.structures / f"s{i:06d}.vasp")
    workflow.config |= {"calculator": "lj", "relax": workflow.config["relax"] | {"max_steps": 1}}
    workflow.write_config()
    timed(f"snakemake -n, {n} structures, first call", workflow.run, "-n", cores=cores)
    timed(f"snakemake -n, {n} structures, second call", workflow.run, "-n", cores=cores,
          target=targets.get("-n"))  # fmt: skip
    timed(f"full run, {n} structures (LJ, 1 step)", workflow.run, cores=cores)
    timed(f"no-op run once finished, {n} structures, first call", workflow.run, cores=cores)
    timed(f"no-op run once finished, {n} structures, second call", workflow.run, cores=cores,
          target=targets.get("no-op"))  # fmt: skip
    for command in ("status", "why"):
        timed(f"poscarflow {command}, {n} structures", _cli, workflow, command,
              target=targets.get(command))  # fmt: skip
    timed(f"finishing rules alone, {n} structures", finishing_rules, workflow, cores,
          target=targets.get("finishing"))  # fmt: skip
    memory, pool = peak_memory(workflow, cores)
    goal = f" (target <= {targets['memory']} GiB)" if "memory" in targets else ""
    print(f"{'peak memory of a no-op run, ' + str(n) + ' structures':<58} {memory:8.2f} GiB"
          f"{goal}; pool: {pool}", flush=True)  # fmt: skip


def _cli(workflow: Workflow, command: str) -> None:
    """`poscarflow COMMAND` in the workflow folder, output discarded."""
    subprocess.run([sys.executable, "-m", "poscarflow.cli", command], cwd=workflow.root,
                   env=workflow.env, stdout=subprocess.DEVNULL, check=False)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100, help="structures for the ratio (0: skip)")
    parser.add_argument("--cores", type=int, default=2, help="cores and loop workers")
    parser.add_argument("--big", type=int, default=10_000, help="scale part (0: skip)")
    parser.add_argument("--huge", type=int, default=0, help="a second scale part, e.g. 100000")
    parser.add_argument("--batch-sizes", type=int, nargs="*", default=[],
                        help="also measure the ratio with these batch sizes")  # fmt: skip
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="poscarflow-bench-") as tmp:
        if args.n:
            overhead(Path(tmp), args.n, args.cores, [None, *args.batch_sizes])
        for n in (args.big, args.huge):
            if n:
                scale(Path(tmp), n, args.cores)


if __name__ == "__main__":
    main()
