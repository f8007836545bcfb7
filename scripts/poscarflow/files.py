"""Write files and folders so that a reader never sees a half-written one."""

from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterator

    from ase import Atoms


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary name beside `path`; move it into place only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: str | Path, data: Any) -> None:
    """Write JSON atomically, keys sorted so equal data gives equal files."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_json(path: str | Path) -> Any | None:
    """Read JSON, or None if the file is missing."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None


def publish_dir(tmp: Path, final: Path) -> None:
    """Replace folder `final` by the finished folder `tmp` (two renames, then cleanup).

    A kill between the renames leaves `final` missing, never half-filled, so the
    calculation is simply redone.
    """
    old = final.with_name(f".{final.name}.old-{os.getpid()}")
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def remove_leftovers(final: Path) -> None:
    """Delete temporary folders that a killed job left beside `final`."""
    for stale in final.parent.glob(f".{final.name}.*-*"):
        shutil.rmtree(stale, ignore_errors=True)


def unreadable(folder: Path) -> list[Path]:
    """Files under `folder` that cannot be read back whole: a trajectory, JSON or gzip
    file cut by a full disk or a kill."""
    import gzip

    from ase.io.trajectory import Trajectory

    bad = [p for p in folder.rglob("*") if p.is_symlink() and not p.exists()]  # dangling
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            if path.suffix == ".traj":
                with Trajectory(str(path)) as traj:
                    for atoms in traj:
                        atoms.get_positions()
            elif path.name.endswith(".gz"):
                with gzip.open(path) as handle:
                    while handle.read(1 << 20):
                        pass
            elif path.suffix == ".json":
                json.loads(path.read_text())
        except Exception:  # any reader's error means the file is not usable
            bad.append(path)
    return bad


def read_frames(path: Path) -> list[Atoms]:
    """The frames of a trajectory, as many as can be read (a kill may cut the last);
    `opt.traj.gz` where quacc gzipped `opt.traj` (QUACC_GZIP_FILES)."""
    import gzip
    import io

    from ase.io.trajectory import Trajectory

    frames: list[Atoms] = []
    zipped = path.with_name(path.name + ".gz")
    try:
        source = (
            path
            if path.exists() or not zipped.exists()
            else io.BytesIO(gzip.decompress(zipped.read_bytes()))
        )
        with Trajectory(source) as traj:
            for i in range(len(traj)):
                frames.append(traj[i])
    except Exception:  # missing, or cut by a kill or a full disk: keep what was read
        pass
    return frames


def write_frames(path: Path, frames: list[Atoms]) -> None:
    """Write a trajectory atomically (energies and forces kept)."""
    from ase.io.trajectory import Trajectory

    with atomic_path(path) as tmp, Trajectory(str(tmp), "w") as traj:
        for atoms in frames:
            traj.write(atoms)
