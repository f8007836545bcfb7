"""Continue, don't start over: what an interrupted attempt left behind.

An attempt computes in `results/calcs/<id>/.<step>.tmp-<pid>/` and writes `attempt.json`
there first, and, when it continues an earlier attempt, that attempt's whole optimizer
path (`path.traj`). If it is killed (out of time or memory, preempted, node lost,
Ctrl-C), the folder stays: the next attempt finds the last completed optimizer step in
quacc's `opt.traj` and continues from that geometry with the optimizer's state (the
restart file ASE optimizers write at every step, e.g. BFGS's Hessian), so it takes the
path the killed one would have taken; the published `opt.traj` holds every attempt's
frames in order, from the input on. A VASP relax (VASP's own optimizer) leaves its path
in VASP's files instead, and goes on from its CONTCAR with the ionic steps left
(vasp_files.py).
"""

from __future__ import annotations

import pickle
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from poscarflow import settings, slurm
from poscarflow.files import atomic_path, read_frames, read_json
from poscarflow.layout import ATTEMPT_MARKER, OPT_STATE, PATH, START, TRAJECTORY

if TYPE_CHECKING:
    from ase import Atoms

    from poscarflow.layout import Layout


@dataclass
class Continuation:
    """Where a relax goes on from: its path so far and its optimizer's state."""

    frames: list[Atoms]  # every optimizer step so far, the input first
    state: bytes | None  # the optimizer's restart file, if one survived
    start: Atoms | None = None  # VASP: the geometry it goes on from (CONTCAR), if not the last

    @property
    def atoms(self) -> Atoms:
        """The geometry the next attempt starts from."""
        return (self.start if self.start is not None else self.frames[-1]).copy()

    @property
    def done_steps(self) -> int:
        """Optimizer steps already taken."""
        return len(self.frames) - 1


def attempt_path(folder: Path) -> list[Atoms]:
    """The whole path an attempt folder holds: earlier attempts' frames, then its own
    (quacc's `opt.traj`, in its run folder while the relax runs; VASP's ionic steps)."""
    from poscarflow.vasp_files import ionic_path

    earlier = read_frames(folder / PATH)
    runs = [*folder.rglob(TRAJECTORY), *folder.glob(f"symlink-*/{TRAJECTORY}")]  # scratch
    own = max((read_frames(p) for p in runs), key=len, default=[])
    own = own or ionic_path(folder)
    return earlier + own[1:] if earlier else own


def continuation(folder: Path) -> Continuation | None:
    """How to continue the relax an attempt folder holds, or None if it holds no step."""
    from poscarflow.vasp_files import restart_geometry

    frames = attempt_path(folder)
    if not frames:
        return None
    start = restart_geometry(folder)  # VASP's CONTCAR; else where a continued one began
    if start is None:
        start = next(iter(read_frames(folder / START)), None)
    return Continuation(frames, optimizer_state(folder), start)


def last_step(layout: Layout, sid: str, key: str) -> Continuation | None:
    """The furthest interrupted relax with this key, or None."""
    best: Continuation | None = None
    for folder in layout.attempt_dirs(sid, "relax"):
        if (read_json(folder / ATTEMPT_MARKER) or {}).get("key") != key:
            continue
        found = continuation(folder)
        if found and (best is None or len(found.frames) > len(best.frames)):
            best = found
    return best


def optimizer_state(folder: Path) -> bytes | None:
    """The optimizer's restart file in an attempt folder, or None if there is none or the
    kill cut it (then the optimizer starts afresh from the geometry)."""
    try:
        data = (folder / OPT_STATE).read_bytes()
        pickle.loads(data)
    except (FileNotFoundError, EOFError, pickle.UnpicklingError, ValueError):
        return None
    return data


def resumable(optimizer: type) -> type:
    """`optimizer` with its restart file written atomically and in binary. ASE writes it
    in place as JSON at every step, so a kill during the write (for a large cell, most of
    a step's time) would leave a cut file, and the JSON of a BFGS Hessian cost 13 % of
    the EMT benchmark; a pickle of the same arrays (the same numbers, bit for bit) costs
    little. Optimizers with a dump of their own (GPMin) are left as they are."""
    from ase.optimize.optimize import Optimizer

    if optimizer.dump is not Optimizer.dump:
        return optimizer

    def dump(self, data) -> None:
        if self.comm.rank == 0 and self.restart is not None:
            with atomic_path(self.restart) as tmp:
                tmp.write_bytes(pickle.dumps(data, protocol=pickle.HIGHEST_PROTOCOL))

    def load(self):
        return pickle.loads(Path(self.restart).read_bytes())

    return type(optimizer.__name__, (optimizer,), {"dump": dump, "load": load})


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
