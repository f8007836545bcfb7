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
import time
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from poscarflow import settings, slurm
from poscarflow.files import atomic_path, read_json
from poscarflow.layout import ATTEMPT_MARKER, OPT_STATE

if TYPE_CHECKING:
    from ase import Atoms

    from poscarflow.layout import Layout


def last_step(layout: Layout, sid: str, key: str) -> tuple[Atoms, int, bytes | None] | None:
    """Geometry, total step count and optimizer state of the furthest interrupted relax
    with this key."""
    from ase.io.trajectory import Trajectory

    best: tuple[Atoms, int, bytes | None] | None = None
    for folder in layout.attempt_dirs(sid, "relax"):
        marker = folder / ATTEMPT_MARKER
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


class WallTimeReached(RuntimeError):
    """A relax stopped cleanly before the job's time limit; the next attempt continues."""


@cache
def deadline() -> float | None:
    """When a relax should stop cleanly (epoch seconds), or None for no limit.

    `POSCARFLOW_DEADLINE` if set; in a SLURM job, its end time less a margin (5 % of
    the time left, between 30 s and 5 min), read once when the job starts.
    """
    if (value := settings.deadline_override()) is not None:
        return value
    left = slurm.time_left(settings.slurm_job_id())
    if left is None:
        return None
    return time.time() + left - min(300.0, max(30.0, 0.05 * left))
