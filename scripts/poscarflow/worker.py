"""One pool of calculation processes per local Snakemake run: quacc is imported once.

Importing quacc costs ~3 s, more than a cheap relax, and a batch job would pay it again for
every batch and step. So when jobs run locally, Snakemake's `onstart` hook starts this
server; each relax or static job hands its batch to it over a socket and waits, and the
server spreads the batch's calculations over processes that imported quacc at start (which
also balances the load between batches). Where there is no server (jobs on SLURM, dry
runs, or a server that did not start) a job runs its batch itself: the results are the same.
"""

from __future__ import annotations

import argparse
import ast
import logging
import multiprocessing
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
import traceback
from concurrent.futures import ProcessPoolExecutor
from multiprocessing.connection import Client, Listener
from pathlib import Path
from typing import Any

from poscarflow.calculators import get_calculator
from poscarflow.fingerprint import STACK
from poscarflow.jobs import JOB_ENTRY, job_code, run_batch

ADDRESS = "POSCARFLOW_WORKER"
AUTHKEY = "POSCARFLOW_WORKER_KEY"
ONE_THREAD = {v: "1" for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
log = logging.getLogger("poscarflow.worker")


def _socket(address: str) -> str:
    """A Linux abstract socket: no file to clean up, no path-length limit."""
    return "\0" + address


def start(processes: int, calculator: str, logfile: str) -> subprocess.Popen:
    """Start the server for this Snakemake process; its jobs find it by environment."""
    address = f"poscarflow-{os.getpid()}-{secrets.token_hex(4)}"
    key = secrets.token_hex(16)
    Path(logfile).parent.mkdir(parents=True, exist_ok=True)
    with open(logfile, "a") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", JOB_ENTRY, "serve", address, str(processes), calculator],
            env=os.environ | ONE_THREAD | {AUTHKEY: key},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    os.environ[ADDRESS] = address
    os.environ[AUTHKEY] = key
    return server


def stop(server: subprocess.Popen | None) -> None:
    """Stop the server and its processes (it also stops by itself if Snakemake dies)."""
    os.environ.pop(ADDRESS, None)
    if server is not None and server.poll() is None:
        server.terminate()
        server.wait(timeout=30)


class CodeChanged(RuntimeError):
    """The installed code differs from the code the run was planned with."""


def dispatch(step: str, calcs: dict[str, dict], manifest: str, log: str, code: str) -> None:
    """Run a batch on this run's server if there is one, else in this process.

    `code` is the fingerprint digest the job was planned with; a job refuses to run if
    the installed code differs (someone edited it while jobs were queued).
    """
    calculator = next(iter(calcs.values()))["calculator"]
    installed = job_code(calculator)["digest"]
    if installed != code:
        raise CodeChanged(
            f"poscarflow's code or the versions of {', '.join(STACK)} changed after this "
            f"run was planned (planned {code}, installed {installed}); start Snakemake "
            "again so that it plans with the code that will run"
        )
    address = os.environ.get(ADDRESS)
    if address and "SLURM_JOB_ID" not in os.environ:
        try:
            conn = Client(_socket(address), "AF_UNIX", authkey=os.environ[AUTHKEY].encode())
        except OSError:
            pass  # no server after all: run here
        else:
            with conn:
                conn.send({"step": step, "calcs": calcs, "manifest": manifest, "log": log})
                status, detail = conn.recv()
            if status != "ok":
                raise RuntimeError(f"the worker failed on this batch:\n{detail}")
            return
    run_batch(step, calcs, manifest, log)


def _handle(conn: Any, pool: ProcessPoolExecutor) -> None:
    """Serve one batch request: its calculations go to the pool."""
    with conn:
        try:
            request = conn.recv()
            run_batch(**request, mapper=lambda f, tasks: pool.map(f, tasks, chunksize=1))
            conn.send(("ok", ""))
        except Exception:  # report any failure to the waiting job, keep serving
            conn.send(("error", traceback.format_exc()))


def _stop_all(*_: object) -> None:
    """Kill the pool processes and exit."""
    for child in multiprocessing.active_children():
        child.kill()
    os._exit(0)


def _watch(parent: int) -> None:
    """Exit when the Snakemake process that started us is gone (killed with -9)."""
    while os.getppid() == parent:
        time.sleep(0.5)
    _stop_all()


def serve(address: str, processes: int, calculator: str) -> None:
    """Listen first (jobs may connect while quacc imports), then fork the pool."""
    parent = os.getppid()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s worker: %(message)s")
    listener = Listener(_socket(address), "AF_UNIX", authkey=os.environ[AUTHKEY].encode())
    signal.signal(signal.SIGTERM, _stop_all)
    started = time.time()
    calc = get_calculator(calculator)
    for step in ("relax", "static"):
        calc.recipe(step)
    pool = ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("fork"))
    list(pool.map(abs, range(processes)))  # fork all processes now, before any thread
    log.info("%d processes ready in %.1f s", processes, time.time() - started)
    threading.Thread(target=_watch, args=(parent,), daemon=True).start()
    while True:
        conn = listener.accept()
        threading.Thread(target=_handle, args=(conn, pool), daemon=True).start()


def main(argv: list[str] | None = None) -> None:
    """`run` a batch (the relax and static rules' shell command) or `serve` the pool."""
    parser = argparse.ArgumentParser(prog=f"python -m {JOB_ENTRY}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run one batch job")
    run.add_argument("step", choices=("relax", "static"))
    run.add_argument("manifest")
    run.add_argument("log")
    run.add_argument("calcs", type=ast.literal_eval, help="the rule's params.calcs")
    run.add_argument("--code", required=True, help="fingerprint digest planned")
    serve_ = sub.add_parser("serve", help="the per-run pool (started by onstart)")
    serve_.add_argument("address")
    serve_.add_argument("processes", type=int)
    serve_.add_argument("calculator")
    args = parser.parse_args(argv)
    if args.command == "serve":
        serve(args.address, args.processes, args.calculator)
        return
    try:
        dispatch(args.step, args.calcs, args.manifest, args.log, args.code)
    except CodeChanged as err:
        sys.exit(f"poscarflow: {err}")


if __name__ == "__main__":
    main()
