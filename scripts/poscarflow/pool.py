"""The per-run pool of calculation processes: start, stop, supervision and protocol.

Importing quacc costs ~3 s, more than a cheap relax, and a batch job would pay it for
every batch and step. So a local Snakemake run starts this server (`onstart`); each
relax or static job hands its request to it over a Unix socket and waits, and the server
spreads the calculations over processes forked from a fork server that imported quacc
once (which also balances the load between batches).

Supervision:
- a pool process that dies takes only the calculation it was running with it: that one
  is retried once (its task history closes the dead attempt as interrupted, and the
  relax continues from its last step), the process is replaced, and the batch goes on;
- when Snakemake dies (SIGKILL included), the server follows within a second, and with
  it the fork server and every pool process (each is killed by the kernel when its
  parent dies), so nothing is computed or published after the run has ended;
- the socket is private to the run: an abstract Unix socket with a random name, a
  random key that a client must prove (HMAC challenge), and peers of other users refused.

Jobs run by another executor (SLURM) have no pool: they compute in their own process.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import multiprocessing
import os
import queue
import secrets
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import traceback
from concurrent.futures import Future
from dataclasses import dataclass, field
from multiprocessing.connection import Client, Listener, wait
from pathlib import Path
from typing import TYPE_CHECKING, Any

from poscarflow import settings

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from poscarflow.records import Request

log = logging.getLogger("poscarflow.pool")
RETRIES = 1  # a calculation whose pool process died is retried this many times
# Imported once by the fork server, before any pool process is forked; the lifeline
# first, so that the fork server dies with the server even while it imports quacc.
PRELOAD = [
    "poscarflow.lifeline", "poscarflow.batch", "poscarflow.attempts", "poscarflow.compute",
    "ase.optimize", "ase.io.trajectory", "ase.io.extxyz", "ase.io.vasp", "monty.json",
]  # fmt: skip


class PoolError(RuntimeError):
    """The pool could not serve a request (it is gone, or refused us)."""


# The client side: a job hands its request to the pool.
def submit(request: Request, address: tuple[str, bytes]) -> dict[str, str]:
    """Have the pool run a batch request; return what it could not finish (see
    batch.run_batch)."""
    conn = _connect(*address)
    with conn:
        conn.send(request)
        try:
            reply = conn.recv()
        except (EOFError, OSError) as err:
            raise PoolError("this run's pool ended while computing this batch") from err
    if reply["error"]:
        raise PoolError(reply["error"])
    return reply["lost"]


def _connect(name: str, key: bytes, wait: float = 60) -> Any:
    """A connection to the pool; a pool that is still starting is waited for."""
    deadline = time.time() + wait
    while True:
        try:
            return Client("\0" + name, "AF_UNIX", authkey=key)
        except ConnectionRefusedError as err:  # not listening yet, or gone
            if time.time() > deadline:
                raise PoolError(f"this run's pool does not answer ({err}); is its Snakemake "
                                "gone?") from err  # fmt: skip
            time.sleep(0.05)
        except OSError as err:
            raise PoolError(f"this run's pool does not answer ({err})") from err


# Snakemake's side: start and stop the server.
@dataclass
class PoolHandle:
    """The running server of one Snakemake run."""

    process: subprocess.Popen
    address: str
    key: str


def start(processes: int, calculator: str, logfile: str | Path, progress: Path) -> PoolHandle:
    """Start the server and announce it to this process's jobs through the environment.

    `progress` is a JSON file with the results folder and the run's structure ids: the
    server prints a progress line for them to Snakemake's terminal every few seconds
    (its log goes to `logfile`).
    """
    address = f"poscarflow-{os.getpid()}-{secrets.token_hex(8)}"
    key = secrets.token_hex(32)
    Path(logfile).parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "poscarflow.pool", address, str(processes), calculator,
               str(os.getpid()), str(progress)]  # fmt: skip
    with open(logfile, "a") as out:
        process = subprocess.Popen(
            command, env=os.environ | settings.ONE_THREAD | {settings.POOL_KEY: key},
            stdin=subprocess.DEVNULL, stderr=out,
        )  # fmt: skip
    os.environ[settings.POOL_ADDRESS] = address
    os.environ[settings.POOL_KEY] = key
    return PoolHandle(process, address, key)


def stop(handle: PoolHandle | None) -> None:
    """Stop the server and its processes."""
    os.environ.pop(settings.POOL_ADDRESS, None)
    os.environ.pop(settings.POOL_KEY, None)
    if handle is not None and handle.process.poll() is None:
        handle.process.terminate()
        try:
            handle.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            handle.process.kill()


# The server's side.
def _pool_process(conn: Any) -> None:
    """A pool process: run the tasks it is sent, one at a time, until the server goes."""
    from poscarflow.lifeline import die_with_parent  # imported by the fork server

    die_with_parent()  # its parent is the fork server, which dies with the server
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is Snakemake's to handle
    while True:
        try:
            func, task = conn.recv()
        except (EOFError, OSError):
            os._exit(0)
        try:
            conn.send(("ok", func(task)))
        except Exception as err:  # reported to the job that sent it
            log.exception("task failed")
            conn.send(("error", f"{type(err).__name__}: {err}", traceback.format_exc()))


@dataclass
class _Task:
    func: Callable
    arg: Any
    future: Future = field(default_factory=Future)
    tries: int = 0


@dataclass
class _Process:
    process: Any
    conn: Any
    task: _Task | None = None


class SupervisedPool:
    """Processes forked from a fork server; a dead one is replaced, its task retried."""

    def __init__(self, processes: int, preload: list[str]) -> None:
        self.context = multiprocessing.get_context("forkserver")
        self.context.set_forkserver_preload(preload)
        self.tasks: queue.Queue[_Task] = queue.Queue()
        self.wake_r, self.wake_w = os.pipe()
        self.procs = [self._spawn() for _ in range(processes)]
        threading.Thread(target=self._dispatch, daemon=True).start()

    def _spawn(self) -> _Process:
        ours, theirs = self.context.Pipe()
        process = self.context.Process(target=_pool_process, args=(theirs,), daemon=True)
        process.start()
        theirs.close()
        return _Process(process, ours)

    def map(self, func: Callable, args: Iterable) -> list[Any]:
        """func over args in the pool, results in order; None where a task was lost."""
        tasks = [_Task(func, arg) for arg in args]
        for task in tasks:
            self.tasks.put(task)
        os.write(self.wake_w, b".")
        results = []
        for task in tasks:
            outcome = task.future.result()
            if outcome is not None and outcome[0] == "error":
                raise RuntimeError(outcome[1])
            results.append(None if outcome is None else outcome[1])
        return results

    def _dispatch(self) -> None:
        """Hand tasks to idle processes; collect results; replace dead processes."""
        while True:
            for proc in self.procs:
                if proc.task is None and not self.tasks.empty():
                    proc.task = self.tasks.get()
                    proc.task.tries += 1
                    proc.conn.send((proc.task.func, proc.task.arg))
            busy = {p.conn: p for p in self.procs if p.task is not None}
            sentinels = {p.process.sentinel: p for p in self.procs}
            ready = wait([self.wake_r, *busy, *sentinels], timeout=5)
            if self.wake_r in ready:
                os.read(self.wake_r, 4096)
            for conn in (c for c in ready if c in busy):
                proc = busy[conn]
                try:
                    proc.task.future.set_result(conn.recv())
                    proc.task = None
                except (EOFError, OSError):
                    pass  # it died while answering: its sentinel says so
            for sentinel in (s for s in ready if s in sentinels):
                self._replace(sentinels[sentinel])

    def _replace(self, dead: _Process) -> None:
        """A pool process died: retry its task (once) and start a new process."""
        dead.process.join()
        log.warning("pool process %d died (exit %s)", dead.process.pid, dead.process.exitcode)
        if (task := dead.task) is not None:
            if task.tries <= RETRIES:
                log.warning("retrying its calculation %s", _describe(task.arg))
                self.tasks.put(task)
            else:
                task.future.set_result(None)
        self.procs[self.procs.index(dead)] = self._spawn()

    def kill(self) -> None:
        """Kill every pool process now."""
        for proc in self.procs:
            with contextlib.suppress(OSError):
                proc.process.kill()


def _describe(arg: Any) -> str:
    """A task's calculation, for the log ((request, id) → "relax <id>")."""
    with contextlib.suppress(Exception):
        return f"{arg[0]['step']} {arg[1]}"
    return repr(arg)[:80]


def _peer_uid(conn: Any) -> int:
    """The user id of the process at the other end of a Unix socket connection."""
    sock = socket.socket(fileno=os.dup(conn.fileno()))
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    finally:
        sock.close()
    return struct.unpack("3i", creds)[1]


def _handle(conn: Any, pool: SupervisedPool) -> None:
    """Serve one job's request: its calculations go to the pool."""
    from poscarflow.batch import run_batch

    with conn:
        try:
            request = conn.recv()
            log.info("%s %s: %d calculations", request["step"], request["batch"],
                     len(request["calcs"]))  # fmt: skip
            lost = run_batch(request, mapper=pool.map)
            conn.send({"lost": lost, "error": None})
        except Exception as err:  # reported to the waiting job; the pool goes on
            log.exception("request failed")
            with contextlib.suppress(OSError):
                conn.send({"lost": {}, "error": f"{type(err).__name__}: {err}"})


def _exit(pool: SupervisedPool, status: int = 0, progress: _Progress | None = None) -> None:
    """Print the last progress line, log the pool's peak memory, kill its processes, exit."""
    import resource

    if progress is not None:
        progress.tick()
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    log.info("peak memory: server %.0f MB, largest pool process %.0f MB", own,
             max((_peak_mb(p.process.pid) for p in pool.procs), default=0))  # fmt: skip
    pool.kill()
    os._exit(status)


def _peak_mb(pid: int) -> float:
    """A live process's peak resident memory (VmHWM), in MB."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _exit_with(parent: int, started: list[SupervisedPool]) -> None:
    """Exit when the Snakemake process that started us is gone (even after SIGKILL),
    also while the pool is still starting (`started` is empty until then: a no-op run
    ends before the fork server has imported quacc, and a pool that lived on would hold
    Snakemake's output open for seconds; the fork server dies with us, see lifeline)."""
    while os.getppid() == parent:
        time.sleep(0.2)
    log.warning("Snakemake (pid %d) is gone: stopping the pool", parent)
    if not started:
        os._exit(1)
    _exit(started[0], 1)


class _Progress:
    """Progress lines for Snakemake's terminal: printed when they change, at most every
    5 s (less often when counting takes long: 10,000 structures take about a second),
    and once more when the pool stops."""

    def __init__(self, run: Path) -> None:
        from datetime import UTC, datetime

        from poscarflow.files import read_json
        from poscarflow.layout import Layout

        info = read_json(run) or {}
        self.layout = Layout(Path(info.get("results", "results")))
        self.ids: list[str] = info.get("ids", [])
        self.started = datetime.now(UTC)
        self.last = ""
        self.lock = threading.Lock()

    def tick(self) -> None:
        """Print the current line if it changed."""
        from poscarflow.progress import progress, progress_line

        with self.lock:
            try:
                line = progress_line(progress(self.layout, self.ids, since=self.started))
            except Exception:  # a half-written file: try again next time
                log.exception("progress not counted")
                return
            if line != self.last:
                print(f"poscarflow: {line}", flush=True)
                self.last = line

    def run(self) -> None:
        """Tick forever (a daemon thread)."""
        while True:
            begin = time.time()
            self.tick()
            time.sleep(max(5.0, 10 * (time.time() - begin)))


def serve(
    address: str, processes: int, calculator: str, parent: int, progress: str | None = None
) -> None:
    """Listen first (jobs may connect while quacc imports), then start the pool. `parent`
    is the Snakemake process that started it (it may be gone already)."""
    from poscarflow.calculators import get_calculator

    logging.basicConfig(level=logging.INFO, format="%(asctime)s pool: %(message)s")
    if engine := settings.neutralise_workflow_engine():  # before the fork server imports quacc
        log.info("QUACC_WORKFLOW_ENGINE=%s ignored: Snakemake is the workflow engine", engine)
    listener = Listener("\0" + address, "AF_UNIX", authkey=os.environ[settings.POOL_KEY].encode())
    started = time.time()
    pools: list[SupervisedPool] = []
    threading.Thread(target=_exit_with, args=(parent, pools), daemon=True).start()
    pool = SupervisedPool(processes, [*PRELOAD, get_calculator(calculator).module])
    pools.append(pool)
    reporter = _Progress(Path(progress)) if progress else None
    signal.signal(signal.SIGTERM, lambda *_: _exit(pool, 0, reporter))
    if reporter is not None:
        threading.Thread(target=reporter.run, daemon=True).start()
    log.info("%d processes starting (%.1f s)", processes, time.time() - started)
    uid = os.getuid()
    for _ in itertools.count():
        try:
            conn = listener.accept()
        except (OSError, EOFError, multiprocessing.AuthenticationError) as err:
            log.warning("refused a connection: %s", err)
            continue
        if _peer_uid(conn) != uid:
            log.warning("refused a connection from another user")
            conn.close()
            continue
        threading.Thread(target=_handle, args=(conn, pool), daemon=True).start()


if __name__ == "__main__":  # the pool's functions must pickle as poscarflow.pool's
    from poscarflow import pool  # noqa: PLW0406

    pool.serve(sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), *sys.argv[5:])
