"""Find structure files, read them with clear errors, and hash their content.

Discovery runs at DAG-build time for every structure, so it only looks at file names;
reading and checking happen inside jobs, where a bad file fails alone.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ase import Atoms

VASP_NAMES = ("POSCAR", "CONTCAR")
VASP_SUFFIXES = (".vasp", ".poscar", ".contcar")
IGNORED = re.compile(r"^(\..*|README.*|.*\.(md|txt|rst|yaml|yml)|.*~)$", re.IGNORECASE)
SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
HASH_DECIMALS = 4  # positions and cell are rounded to 1e-4 Å before hashing


class BadInput(ValueError):
    """A structure file that cannot be computed; the message names the file."""


class DiscoveryError(ValueError):
    """The structure folder as a whole is unusable (unsafe or duplicate ids)."""


@dataclass(frozen=True)
class StructureFile:
    """One input structure: its id, its file and the ASE format to read it with."""

    id: str
    path: str
    format: str | None


def _classify(path: Path) -> tuple[str, str | None] | None:
    """Return (id, format) for a file at the top of the structure folder, or None."""
    name = path.name
    if IGNORED.match(name):
        return None
    for prefix in VASP_NAMES:
        if (
            name.upper().startswith(prefix)
            and name[len(prefix) : len(prefix) + 1]
            in (
                ".",
                "_",
                "-",
            )
            and len(name) > len(prefix) + 1
        ):
            return name[len(prefix) + 1 :], "vasp"
    if name.upper() in VASP_NAMES:
        raise DiscoveryError(
            f"{path}: a bare {name} needs an id: rename it <id>.vasp or move it to <id>/{name}"
        )
    if path.suffix.lower() in VASP_SUFFIXES:
        return path.stem, "vasp"
    return path.stem, None


def discover(folder: str | Path) -> list[StructureFile]:
    """List the structure files of a folder, sorted by id.

    Accepts `<id>.vasp`, `POSCAR_<id>`, `<id>/POSCAR` (or CONTCAR) and any other file ASE
    can read (`<id>.cif`, `<id>.extxyz`, ...). Raises DiscoveryError for unsafe or
    duplicate ids, naming the files.
    """
    root = Path(folder)
    if not root.is_dir():
        raise DiscoveryError(f"{root}: structure folder does not exist")
    found: dict[str, StructureFile] = {}
    for item in sorted(root.iterdir()):
        path, entry = item, None
        if item.is_dir():
            inner = next((item / n for n in VASP_NAMES if (item / n).is_file()), None)
            if inner:
                path, entry = inner, (item.name, "vasp")
        else:
            entry = _classify(item)
        if entry is None:
            continue
        sid, fmt = entry
        if not SAFE_ID.match(sid):
            raise DiscoveryError(
                f"{path}: structure id {sid!r} is not a safe file name; use letters, "
                "digits and _ . + - only"
            )
        if sid in found:
            raise DiscoveryError(f"{found[sid].path} and {path} both give the structure id {sid!r}")
        found[sid] = StructureFile(sid, str(path), fmt)
    return sorted(found.values(), key=lambda s: s.id)


def _check_poscar_layout(path: Path, text: str) -> None:
    """Catch POSCAR errors that ASE reports obscurely or not at all (atom counts)."""
    from ase.data import chemical_symbols

    lines = text.splitlines()
    if len(lines) < 8:
        raise BadInput(f"{path}: truncated POSCAR ({len(lines)} lines)")
    fields = lines[5].split()
    if fields and not fields[0].lstrip("-").isdigit():
        unknown = [s for s in fields if s.split("/")[0].split("_")[0] not in chemical_symbols]
        if unknown:
            raise BadInput(f"{path}: unknown element {', '.join(unknown)}")
        counts_line = 6
    else:
        counts_line = 5
    try:
        natoms = sum(int(c) for c in lines[counts_line].split())
    except ValueError:
        msg = f"{path}: atom counts line is not integers: {lines[counts_line]!r}"
        raise BadInput(msg) from None
    start = counts_line + 2
    if lines[counts_line + 1].strip()[:1].lower() == "s":  # Selective dynamics
        start += 1
    coords = 0
    for line in lines[start:]:
        if not line.strip():
            break
        coords += 1
    if coords != natoms:
        raise BadInput(
            f"{path}: atom counts say {natoms} atoms but there are {coords} coordinate lines"
        )


def read_structure(
    structure: StructureFile, min_distance: float = 0.5, elements: frozenset[str] | None = None
) -> Atoms:
    """Read one structure and check it can be computed; raise BadInput otherwise.

    Parameters
    ----------
    structure
        The file to read.
    min_distance
        Closest allowed distance between two atoms, in Å (overlapping atoms).
    elements
        Elements the chosen calculator supports; None for any.
    """
    import ase.io
    import numpy as np

    path = Path(structure.path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise BadInput(f"{path}: cannot be read: {err}") from err
    if not text.strip():
        raise BadInput(f"{path}: empty file")
    if structure.format == "vasp":
        _check_poscar_layout(path, text)
    try:
        images = ase.io.read(path, index=":", format=structure.format)
    except Exception as err:  # ASE raises many types for malformed files
        detail = str(err) or type(err).__name__
        raise BadInput(f"{path}: not a readable structure ({detail})") from err
    if len(images) != 1:
        raise BadInput(f"{path}: holds {len(images)} structures; give one per file")
    atoms = images[0]
    if len(atoms) == 0:
        raise BadInput(f"{path}: no atoms")
    if not (np.isfinite(atoms.positions).all() and np.isfinite(atoms.cell.array).all()):
        raise BadInput(f"{path}: non-finite (NaN or inf) coordinates or cell")
    if atoms.pbc.any() and abs(atoms.cell.volume) < 1e-6:
        raise BadInput(f"{path}: zero-volume cell")
    if elements is not None:
        unsupported = sorted(set(atoms.get_chemical_symbols()) - elements)
        if unsupported:
            raise BadInput(
                f"{path}: elements {', '.join(unsupported)} not supported by the calculator "
                f"(it supports {', '.join(sorted(elements))})"
            )
    _check_distances(path, atoms, min_distance)
    return atoms


def _check_distances(path: Path, atoms: Atoms, min_distance: float) -> None:
    """Raise BadInput if two atoms (or periodic images) are closer than min_distance."""
    from ase.neighborlist import neighbor_list

    if len(atoms) == 1 and not atoms.pbc.any():
        return
    i, j, d = neighbor_list("ijd", atoms, min_distance)
    if len(d):
        k = d.argmin()
        raise BadInput(
            f"{path}: overlapping atoms {i[k]} and {j[k]} ({d[k]:.3f} Å apart, "
            f"minimum {min_distance} Å)"
        )


def structure_hash(atoms: Atoms) -> str:
    """Hash what defines a structure (numbers, positions, cell, pbc), tolerant to noise.

    Like quacc's Parsl hash it ignores `info` and the calculator; unlike it, positions
    and cell are rounded so that a file rewritten with Cartesian instead of direct
    coordinates, or with float noise, gives the same hash.
    """
    import numpy as np

    parts = [
        np.asarray(atoms.numbers, dtype=np.int64),
        np.round(atoms.positions, HASH_DECIMALS) + 0.0,  # + 0.0 turns -0.0 into 0.0
        np.round(atoms.cell.array, HASH_DECIMALS) + 0.0,
        np.asarray(atoms.pbc, dtype=np.int8),
    ]
    digest = hashlib.sha256()
    for part in parts:
        digest.update(np.ascontiguousarray(part).tobytes())
    return digest.hexdigest()[:16]


def content(structure: StructureFile) -> tuple[str, list[str]]:
    """The structure hash of a file and its elements; for a file ASE cannot read, a hash
    of its bytes and no elements (the relax job will explain what is wrong)."""
    import ase.io

    try:
        images = ase.io.read(structure.path, index=":", format=structure.format)
        if len(images) == 1:
            return structure_hash(images[0]), sorted(set(images[0].get_chemical_symbols()))
    except Exception:  # unreadable now: a bad input the relax job will explain
        pass
    return "file-" + file_hash(structure.path), []


def cached_contents(
    structures: list[StructureFile], cache_file: Path
) -> dict[str, tuple[str, list[str]]]:
    """Structure id → `content`, reading only files whose size or mtime changed.

    Runs at DAG-build time: a second `snakemake -n` on 10,000 unchanged files only stats
    them. Touching a file rereads it and gives the same hash, so nothing reruns.
    """
    from poscarflow.files import read_json, write_json

    cache = read_json(cache_file) or {}
    hashes: dict[str, tuple[str, list[str]]] = {}
    changed = False
    for structure in structures:
        stat = os.stat(structure.path)
        stamp = f"{structure.format}:{stat.st_size}:{stat.st_mtime_ns}"
        entry = cache.get(structure.path)
        if entry is None or entry[0] != stamp or len(entry) != 3:
            entry = cache[structure.path] = [stamp, *content(structure)]
            changed = True
        hashes[structure.id] = (entry[1], entry[2])
    if changed:
        write_json(cache_file, cache)
    return hashes


def file_hash(path: str | Path) -> str:
    """Hash a file's raw bytes (provenance, and identity of unreadable files)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
