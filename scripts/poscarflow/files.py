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

    bad = []
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
