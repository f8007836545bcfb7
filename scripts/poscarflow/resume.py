"""Continue, don't start over: what an interrupted attempt left behind.

An attempt computes in `results/calcs/<id>/.<step>.tmp-<pid>/` and writes `attempt.json`
there first. If it is killed (out of time or memory, preempted, node lost, Ctrl-C), the
folder stays: the next attempt finds the last completed optimizer step in quacc's
`opt.traj` and continues from that geometry with the optimizer's state (the restart file
ASE optimizers write at every step, e.g. BFGS's Hessian), so it takes the path the killed
one would have taken; and it closes the dead attempt in the task history with the reason
SLURM gives for it.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from poscarflow.files import atomic_path, read_json

if TYPE_CHECKING:
    from ase import Atoms

MARKER = "attempt.json"
OPT_STATE = "optimizer-state.json"  # the ASE optimizer's restart file, in an attempt folder
DEADLINE = "POSCARFLOW_DEADLINE"  # epoch seconds; set from SLURM's time limit if unset
# SLURM job states → failure classes of the restart policy.
SLURM_CLASSES = {
    "OUT_OF_MEMORY": "oom",
    "TIMEOUT": "timeout",
    "DEADLINE": "timeout",
    "NODE_FAIL": "node_failure",
    "PREEMPTED": "node_failure",
    "BOOT_FAIL": "node_failure",
}


def last_step(final: Path, key: str) -> tuple[Atoms, int, bytes | None] | None:
    """Geometry, total step count and optimizer state of the furthest interrupted relax
    with this key."""
    from ase.io.trajectory import Trajectory

    best: tuple[Atoms, int, bytes | None] | None = None
    for marker in final.parent.glob(f".{final.name}.tmp-*/{MARKER}"):
        info = read_json(marker) or {}
        if info.get("key") != key:
            continue
        for path in marker.parent.rglob("opt.traj"):
            frames = []
            try:
                with Trajectory(str(path)) as traj:
                    frames = [traj[i] for i in range(len(traj))]
            except Exception:  # a frame cut by the kill: keep those read before it
                pass
            steps = info.get("done_steps", 0) + len(frames) - 1
            if frames and (best is None or steps > best[1]):
                best = (frames[-1], steps, optimizer_state(marker.parent))
    return best


def optimizer_state(folder: Path) -> bytes | None:
    """The optimizer's restart file in an attempt folder, or None if there is none or the
    kill cut it (then the optimizer starts afresh from the geometry)."""
    try:
        data = (folder / OPT_STATE).read_bytes()
        json.loads(data)
    except (FileNotFoundError, ValueError):
        return None
    return data


def resumable(optimizer: type) -> type:
    """`optimizer` with its restart file written atomically. ASE writes it in place, so a
    kill during the write (for a large cell, most of a step's time) would leave a cut
    file and the next attempt without the optimizer's state. Optimizers with a dump of
    their own (GPMin) are left as they are."""
    from ase.optimize.optimize import Optimizer

    if optimizer.dump is not Optimizer.dump:
        return optimizer

    def dump(self, data) -> None:
        from ase.io.jsonio import write_json

        if self.comm.rank == 0 and self.restart is not None:
            with atomic_path(self.restart) as tmp, tmp.open("w") as fd:
                write_json(fd, data)

    return type(optimizer.__name__, (optimizer,), {"dump": dump})


def slurm_state(job_id: str | None) -> str | None:
    """The state SLURM reports for a job (kept for MinJobAge after it ends), or None.

    A job one of whose processes the cgroup killed for memory (say, the calculation,
    while Snakemake in the job lived on) ends FAILED, not OUT_OF_MEMORY; SLURM then says
    so only in the job's log ("Detected 1 oom-kill event(s)"), which is read here.
    """
    if not job_id:
        return None
    try:
        out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True,
                             text=True, timeout=20, check=False).stdout  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    fields = dict(f.split("=", 1) for f in out.split() if "=" in f)
    state = fields.get("JobState")
    if state == "FAILED" and "oom-kill event" in _tail(fields.get("StdErr")):
        return "OUT_OF_MEMORY"
    return state


def _tail(path: str | None, size: int = 20_000) -> str:
    """The end of a text file, or "" if it cannot be read."""
    try:
        with open(path or "", "rb") as handle:
            handle.seek(max(0, os.fstat(handle.fileno()).st_size - size))
            return handle.read().decode(errors="replace")
    except OSError:
        return ""


def interrupted(history: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The end record for an attempt that started and never ended, or None."""
    if not history or history[-1].get("event") != "start":
        return None
    start = history[-1]
    state = slurm_state(start.get("slurm_job_id"))
    failure = SLURM_CLASSES.get(state or "", "interrupted")
    return {
        "event": "end", "step": start["step"], "attempt": start["attempt"],
        "status": "failed", "failure": failure,
        "reason": f"attempt {start['attempt']} was stopped "
        f"({'SLURM: ' + state if state else 'its process ended'})",
    }  # fmt: skip


class WallTimeReached(RuntimeError):
    """A relax stopped cleanly before the job's time limit; the next attempt continues."""


@cache
def deadline() -> float | None:
    """When a relax should stop cleanly (epoch seconds), or None for no limit.

    `POSCARFLOW_DEADLINE` if set; in a SLURM job, its end time less a margin (5 % of
    the time left, between 30 s and 5 min), read once when the job starts.
    """
    if value := os.environ.get(DEADLINE):
        return float(value)
    left = _slurm_time_left(os.environ.get("SLURM_JOB_ID"))
    if left is None:
        return None
    return time.time() + left - min(300.0, max(30.0, 0.05 * left))


def _slurm_time_left(job_id: str | None) -> float | None:
    """Seconds left in a SLURM job (`squeue %L`: M:SS, H:MM:SS or D-HH:MM:SS)."""
    if not job_id:
        return None
    try:
        out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%L"], capture_output=True,
                             text=True, timeout=20, check=False).stdout.strip()  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    days, _, clock = out.rpartition("-")
    try:
        parts = [int(p) for p in clock.split(":")]
    except ValueError:
        return None  # UNLIMITED, NOT_SET, INVALID
    seconds = sum(p * 60**i for i, p in enumerate(reversed(parts)))
    return seconds + int(days or 0) * 86400
