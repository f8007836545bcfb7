"""Find structure files, read them with clear errors, and hash their content.

Discovery runs at DAG-build time for every structure, so it only looks at file names;
reading and checking happen inside jobs, where a bad file fails alone.

Where a reader would guess, we decide:

- One bad file never stops discovery. A dangling link, a special file (FIFO, device), a
  name that is not a safe id, a name from which ASE cannot tell a format (names decide;
  contents are not sniffed at DAG-build time), a bare POSCAR, and every file of a
  duplicate id (ids that differ only in case too, as they clash on macOS) come back as a
  `StructureFile` with `problem` set and a safe made-up id, `<cleaned name>-<hash of the
  name>`, that no other file has; `read_structure` raises that problem as BadInput. No
  file of a duplicate id wins: which one was meant would be a guess.
- Files are compressed or not (`.gz`, `.bz2`, `.xz`, as `ase.io` reads them); the id is
  the name without compression and format suffixes (`Cu.vasp.gz` → `Cu`).
- POSCAR: the element names line must exist (without it ASE guesses the elements from
  the title line or a POTCAR) and name as many elements as the counts line has numbers.
  A folder with both POSCAR and CONTCAR uses its POSCAR.
- CIF: a site with partial or mixed occupancy (ASE's `atoms.info["occupancy"]`) is
  refused; ASE would keep one element per site.
- Several structures in one file are refused; give one per file.
- Dummy or vacancy species `X` (atomic number 0) are refused.
- Initial magnetic moments and charges (extxyz `initial_magmoms`, `initial_charges`) are
  kept as ASE reads them and enter the structure hash when present (explicit zeros too:
  quacc's VASP setup adds its preset moments only when none are given).
- Selective dynamics flags become ASE constraints (`FixAtoms` for `F F F`, `FixScaled`
  for mixed flags), which the relax honours; constraints enter the structure hash.
- Results stored in a file (extxyz energy, forces, magmoms) are dropped: with them
  attached, quacc's VASP setup treats the structure as a follow-up job and takes its
  magnetic moments from those results instead of the input's.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import itertools
import json
import lzma
import os
import re
import stat
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ase import Atoms

VASP_NAMES = ("POSCAR", "CONTCAR")
VASP_SUFFIXES = (".vasp", ".poscar", ".contcar")
COMPRESSIONS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}  # as ase.io reads
FOLDER_FILES = tuple(n + c for n in VASP_NAMES for c in ("", *COMPRESSIONS))
IGNORED = re.compile(r"^(\..*|README.*|.*\.(md|txt|rst|yaml|yml)|.*~)$", re.IGNORECASE)
SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
ACCEPTED = (
    "<id>.vasp, POSCAR_<id>, <id>/POSCAR, <id>.cif, <id>.extxyz or any other name ASE "
    "reads, optionally compressed .gz, .bz2 or .xz"
)
HASH_DECIMALS = 4  # positions and cell are rounded to 1e-4 Å before hashing
HASHED_ARRAYS = ("initial_magmoms", "initial_charges")  # hashed only when present
OCCUPANCY_TOLERANCE = 1e-3


class BadInput(ValueError):
    """A structure file that cannot be computed; the message names the file."""


class DiscoveryError(ValueError):
    """The structure folder as a whole is unusable (missing, not a folder, empty)."""


@dataclass(frozen=True)
class StructureFile:
    """One input structure.

    Attributes
    ----------
    id
        Safe structure id (letters, digits, `_ . + -`), unique in its folder.
    path
        The file to read; opened from Python only, never passed to a shell.
    format
        ASE format to read it with, or None to let ASE tell from the name.
    problem
        Why the file cannot be computed (one line that starts with the path), or None.
    """

    id: str
    path: str
    format: str | None
    problem: str | None = None


@dataclass(frozen=True)
class _Candidate:
    """A folder entry before ids are checked for duplicates."""

    name: str  # the entry's name in the folder, hashed into a problem id
    id: str  # the id its name gives, safe or not
    path: Path
    format: str | None
    problem: str | None  # without the leading path


def _show(path: str | Path) -> str:
    """The path as one printable line (control characters and odd bytes escaped)."""
    text = str(path)
    return text if text.isprintable() else ascii(text)[1:-1]


def _strip_compression(name: str) -> str:
    """The name without a compression suffix that ase.io reads through."""
    for suffix in COMPRESSIONS:
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def _ase_reads(path: Path) -> bool:
    """Whether ASE can tell a readable format from the file's name alone."""
    from ase.io.formats import UnknownFileTypeError, extension2format, filetype, ioformats

    ext = Path(_strip_compression(path.name)).suffix[1:].lower()
    known = extension2format.get(ext) or ioformats.get(ext)
    if known is not None and known.can_read:  # fast: filetype tries every format's names
        return True
    try:
        fmt = filetype(os.path.abspath(path), read=False)  # names such as OUTCAR
    except UnknownFileTypeError:
        return False
    return fmt in ioformats and ioformats[fmt].can_read


def _classify(path: Path) -> tuple[str, str | None, str | None]:
    """(id, format, problem) that a file's name gives."""
    base = _strip_compression(path.name)
    for prefix in VASP_NAMES:
        rest = base[len(prefix) :]
        if base.upper().startswith(prefix) and len(rest) > 1 and rest[0] in "._-":
            return rest[1:], "vasp", None
    if base.upper() in VASP_NAMES:
        fix = f"rename it <id>.vasp or move it to <id>/{base}"
        return base, "vasp", f"a bare {base} needs an id: {fix}"
    stem, suffix = os.path.splitext(base)
    if suffix.lower() in VASP_SUFFIXES:
        return stem, "vasp", None
    if not _ase_reads(path):
        return stem or base, None, f"cannot tell the format from the name; accepted: {ACCEPTED}"
    return stem, None, None


def _mode(path: Path) -> int | None:
    """The st_mode of what a path points to, or None if nothing (a dangling link)."""
    try:
        return path.stat().st_mode
    except OSError:
        return None


def _file_problem(path: Path, mode: int | None) -> str | None:
    """Why a folder entry with this st_mode cannot be opened as a file, or None."""
    if mode is None:
        target = os.readlink(path) if path.is_symlink() else "nothing"
        return f"dangling symbolic link to {_show(target)}"
    if not stat.S_ISREG(mode):
        return "not a regular file"
    return None


def _id_problem(sid: str) -> str | None:
    """Why an id is unsafe as a file name and a Snakemake wildcard, or None."""
    if SAFE_ID.match(sid):
        return None
    return (
        f"structure id {sid!r} is not a safe file name; use letters, digits and _ . + - "
        "only, starting with a letter or digit"
    )


def _candidate(item: Path) -> _Candidate | None:
    """What one entry of the structure folder holds, or None to skip it."""
    if IGNORED.match(item.name) or IGNORED.match(_strip_compression(item.name)):
        return None
    mode = _mode(item)
    if mode is not None and stat.S_ISDIR(mode):
        inner = next((item / n for n in FOLDER_FILES if os.path.lexists(item / n)), None)
        if inner is None:
            return None
        problem = _file_problem(inner, _mode(inner)) or _id_problem(item.name)
        return _Candidate(item.name, item.name, inner, "vasp", problem)
    sid, fmt, problem = _classify(item)
    problem = _file_problem(item, mode) or problem or _id_problem(sid)
    return _Candidate(item.name, sid, item, fmt, problem)


def _duplicates(candidates: list[_Candidate]) -> list[_Candidate]:
    """The candidates, with every file of an id given more than once made a problem."""
    groups: dict[str, list[_Candidate]] = defaultdict(list)
    for cand in candidates:
        if cand.problem is None:
            groups[cand.id.casefold()].append(cand)
    out = []
    for cand in candidates:
        group = groups.get(cand.id.casefold(), []) if cand.problem is None else []
        others = [_show(c.path) for c in group if c is not cand]
        if others:
            problem = (
                f"structure id {cand.id!r} is also given by {' and '.join(others)} "
                "(ids must differ in more than upper/lower case); rename one of them"
            )
            out.append(replace(cand, problem=problem))
        else:
            out.append(cand)
    return out


def _problem_id(cand: _Candidate, taken: set[str]) -> str:
    """A safe id for a problem file: its cleaned name and a hash of its real name."""
    base = re.sub(r"[^A-Za-z0-9_.+-]", "_", cand.id).lstrip("_.+-")[:40] or "file"
    digest = hashlib.sha256(cand.name.encode("utf-8", "surrogateescape")).hexdigest()
    tails = itertools.chain((digest[:n] for n in (8, 16, 64)), map(str, itertools.count()))
    return next(pid for t in tails if (pid := f"{base}-{t}").casefold() not in taken)


def _structure_files(candidates: list[_Candidate]) -> list[StructureFile]:
    """Turn candidates into StructureFiles, giving problem files ids no file has."""
    taken = {c.id.casefold() for c in candidates if c.problem is None}
    files = []
    for cand in candidates:
        if cand.problem is None:
            files.append(StructureFile(cand.id, str(cand.path), cand.format))
            continue
        sid = _problem_id(cand, taken)
        taken.add(sid.casefold())
        problem = f"{_show(cand.path)}: {cand.problem}"
        files.append(StructureFile(sid, str(cand.path), cand.format, problem))
    return sorted(files, key=lambda s: s.id)


def _check_folder(folder: str | Path) -> Path:
    """The structure folder as a Path; DiscoveryError if it is not a folder."""
    root = Path(folder)
    if root.is_file():
        raise DiscoveryError(f"{root}: is a file, not a folder; give the structure folder")
    if not root.is_dir():
        raise DiscoveryError(f"{root}: structure folder does not exist")
    return root


def discover(folder: str | Path) -> list[StructureFile]:
    """List the structure files of a folder, sorted by id.

    Parameters
    ----------
    folder
        Holds `<id>.vasp`, `POSCAR_<id>`, `<id>/POSCAR` (or CONTCAR) and any other file
        ASE can read (`<id>.cif`, `<id>.extxyz`, ...), each optionally compressed.

    Returns
    -------
    list[StructureFile]
        One per structure file; a file that cannot be computed (dangling link, unsafe or
        duplicate id, unknown format) has `problem` set and a safe made-up id.

    Raises
    ------
    DiscoveryError
        If the folder does not exist, is a file, or holds no structure file at all.
    """
    root = _check_folder(folder)
    items = sorted(root.iterdir(), key=lambda p: p.name)
    candidates = [c for item in items if (c := _candidate(item))]
    if not candidates:
        raise DiscoveryError(f"{root}: no structure files found (accepted: {ACCEPTED})")
    return _structure_files(_duplicates(candidates))


def _check_species_line(path: Path, species: list[str], counts: list[str]) -> None:
    """Element names and counts must pair up (ASE silently drops or guesses otherwise)."""
    from ase.data import chemical_symbols

    if not species:
        raise BadInput(
            f"{path}: no element names line (VASP 4 layout); add one above the counts line "
            "(ASE would guess the elements from the title line or a POTCAR)"
        )
    unknown = [s for s in species if s.split("/")[0].split("_")[0] not in chemical_symbols]
    if unknown:
        raise BadInput(f"{path}: unknown element {', '.join(unknown)}")
    if len(species) != len(counts):
        plural = "s" if len(species) != 1 else ""
        raise BadInput(
            f"{path}: the element names line has {len(species)} name{plural} "
            f"({' '.join(species)}) but the counts line has {len(counts)} "
            f"({' '.join(counts)}); give one count per element"
        )


def _check_poscar_layout(path: Path, text: str) -> None:
    """Catch POSCAR errors that ASE reports obscurely or not at all (atom counts)."""
    lines = text.splitlines()
    if len(lines) < 8:
        raise BadInput(f"{path}: truncated POSCAR ({len(lines)} lines)")
    fields = lines[5].split()
    counts_line = 5 if not fields or fields[0].lstrip("-").isdigit() else 6
    counts = lines[counts_line].split()
    try:
        natoms = sum(int(c) for c in counts)
    except ValueError:
        msg = f"{path}: atom counts line is not integers: {lines[counts_line]!r}"
        raise BadInput(msg) from None
    _check_species_line(path, fields if counts_line == 6 else [], counts)
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


def _read_bytes(path: Path) -> bytes:
    """The file's content, decompressed; BadInput if it cannot be read."""
    opener = COMPRESSIONS.get(path.suffix, open)
    try:
        with opener(path, "rb") as fd:
            return fd.read()
    except (OSError, EOFError, lzma.LZMAError) as err:
        raise BadInput(f"{path}: cannot be read: {err}") from err


def _read_one(path: Path, fmt: str | None) -> Atoms:
    """The single structure in a file, read by ASE; BadInput otherwise."""
    import ase.io

    try:
        images = ase.io.read(path, index=":", format=fmt)
    except Exception as err:  # ASE raises many types for malformed files
        detail = str(err) or type(err).__name__
        raise BadInput(f"{path}: not a readable structure ({detail})") from err
    if len(images) != 1:
        raise BadInput(f"{path}: holds {len(images)} structures; give one per file")
    return images[0]


def read_structure(
    structure: StructureFile, min_distance: float = 0.5, elements: frozenset[str] | None = None
) -> Atoms:
    """Read one structure and check it can be computed.

    Parameters
    ----------
    structure
        The file to read.
    min_distance
        Closest allowed distance between two atoms, in Å (overlapping atoms).
    elements
        Elements the chosen calculator supports; None for any.

    Returns
    -------
    Atoms
        The structure, with magnetic moments, charges and constraints as ASE read them,
        and no stored results (no calculator).

    Raises
    ------
    BadInput
        If the file has a discovery problem or cannot be computed; the one-line message
        starts with the path and names the problem.
    """
    if structure.problem:
        raise BadInput(structure.problem)
    path = Path(structure.path)
    data = _read_bytes(path)
    if not data.strip():
        raise BadInput(f"{path}: empty file")
    if structure.format == "vasp":
        try:
            text = data.decode()
        except UnicodeDecodeError as err:
            raise BadInput(f"{path}: cannot be read: {err}") from err
        _check_poscar_layout(path, text)
    atoms = _read_one(path, structure.format)
    atoms.calc = None  # stored results would steer quacc (see the module docstring)
    _check_atoms(path, atoms, min_distance, elements)
    return atoms


def _check_atoms(
    path: Path, atoms: Atoms, min_distance: float, elements: frozenset[str] | None
) -> None:
    """Raise BadInput for a structure that cannot be computed as it stands."""
    import numpy as np

    if len(atoms) == 0:
        raise BadInput(f"{path}: no atoms")
    if not (np.isfinite(atoms.positions).all() and np.isfinite(atoms.cell.array).all()):
        raise BadInput(f"{path}: non-finite (NaN or inf) coordinates or cell")
    if atoms.pbc.any() and abs(atoms.cell.volume) < 1e-6:
        raise BadInput(f"{path}: zero-volume cell")
    _check_occupancy(path, atoms)
    _check_elements(path, atoms, elements)
    _check_distances(path, atoms, min_distance)


def _check_occupancy(path: Path, atoms: Atoms) -> None:
    """Refuse partially or mixed occupied sites (ASE's CIF reader keeps one element)."""
    for site, shares in (atoms.info.get("occupancy") or {}).items():
        if len(shares) > 1 or any(abs(v - 1) > OCCUPANCY_TOLERANCE for v in shares.values()):
            listed = ", ".join(f"{el} {occ:g}" for el, occ in shares.items())
            raise BadInput(
                f"{path}: partial occupancy on site {site}{_site_position(atoms, site)} "
                f"({listed}) not supported; order the structure first"
            )


def _site_position(atoms: Atoms, site: object) -> str:
    """' at (x, y, z)' in fractional coordinates for a CIF site, or '' if unknown."""
    kinds = atoms.arrays.get("spacegroup_kinds")
    if kinds is None or not str(site).isdigit() or int(str(site)) not in kinds:
        return ""
    first = list(kinds).index(int(str(site)))
    x, y, z = atoms.get_scaled_positions(wrap=False)[first]
    return f" at ({x:.4g}, {y:.4g}, {z:.4g})"


def _check_elements(path: Path, atoms: Atoms, elements: frozenset[str] | None) -> None:
    """Refuse dummy atoms (X) and elements the calculator does not support."""
    dummies = [int(i) for i in (atoms.numbers == 0).nonzero()[0]]
    if dummies:
        shown = ", ".join(map(str, dummies[:5])) + (", ..." if len(dummies) > 5 else "")
        raise BadInput(
            f"{path}: dummy species X (atom{'s' if len(dummies) > 1 else ''} {shown}) "
            "not supported; remove it or give the real element"
        )
    if elements is not None:
        unsupported = sorted(set(atoms.get_chemical_symbols()) - elements)
        if unsupported:
            raise BadInput(
                f"{path}: elements {', '.join(unsupported)} not supported by the calculator "
                f"(it supports {', '.join(sorted(elements))})"
            )


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


def _jsonable(value: Any) -> Any:
    """NumPy values as plain Python for json.dumps."""
    return value.tolist() if hasattr(value, "tolist") else str(value)


def _hash_parts(atoms: Atoms) -> list[bytes]:
    """The bytes a structure hash is made of; extras only when present, so a plain
    structure keeps the hash it had before they were added."""
    import numpy as np

    def rounded(array: Any) -> bytes:
        return np.ascontiguousarray(np.round(array, HASH_DECIMALS) + 0.0).tobytes()  # -0 → 0

    parts = [
        np.ascontiguousarray(atoms.numbers, dtype=np.int64).tobytes(),
        rounded(atoms.positions),
        rounded(atoms.cell.array),
        np.ascontiguousarray(atoms.pbc, dtype=np.int8).tobytes(),
    ]
    parts += [name.encode() + rounded(atoms.arrays[name]) for name in HASHED_ARRAYS
              if name in atoms.arrays]  # fmt: skip
    if atoms.constraints:
        fixed = [c.todict() for c in atoms.constraints]
        parts.append(b"constraints" + json.dumps(fixed, sort_keys=True, default=_jsonable).encode())
    return parts


def structure_hash(atoms: Atoms) -> str:
    """Hash what defines a structure, tolerant to noise.

    Numbers, positions, cell and pbc always; initial magnetic moments, initial charges
    and constraints (selective dynamics) when present. Like quacc's Parsl hash it
    ignores `info` and the calculator; unlike it, positions and cell are rounded so
    that a file rewritten with Cartesian instead of direct coordinates, or with float
    noise, gives the same hash.

    Parameters
    ----------
    atoms
        The structure.

    Returns
    -------
    str
        16 hexadecimal digits.
    """
    digest = hashlib.sha256()
    for part in _hash_parts(atoms):
        digest.update(part)
    return digest.hexdigest()[:16]


def _text_hash(text: str) -> str:
    """Hash a text (identity of a file that has a problem instead of content)."""
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:16]


def content(structure: StructureFile) -> tuple[str, list[str]]:
    """The structure hash of a file and its elements.

    Parameters
    ----------
    structure
        The file; compressed files are read through.

    Returns
    -------
    tuple[str, list[str]]
        The structure hash and sorted elements. For a file ASE cannot read, `file-` and a
        hash of its bytes, and no elements (the relax job will explain what is wrong);
        for a file with a problem (or one that vanished), `problem-` and a hash of it.
    """
    import ase.io

    if structure.problem:
        return "problem-" + _text_hash(structure.problem), []
    try:
        images = ase.io.read(structure.path, index=":", format=structure.format)
        if len(images) == 1:
            return structure_hash(images[0]), sorted(set(images[0].get_chemical_symbols()))
    except Exception:  # unreadable now: a bad input the relax job will explain
        pass
    try:
        return "file-" + file_hash(structure.path), []
    except OSError as err:
        return "problem-" + _text_hash(f"{structure.path}: {err}"), []


def _stamp(structure: StructureFile) -> str | None:
    """Format, size and mtime of a file, or None if it has a problem or cannot be stat'ed."""
    if structure.problem:
        return None
    try:
        info = os.stat(structure.path)
    except OSError:
        return None
    return f"{structure.format}:{info.st_size}:{info.st_mtime_ns}"


def cached_contents(
    structures: list[StructureFile], cache_file: Path
) -> dict[str, tuple[str, list[str]]]:
    """Structure id → `content`, reading only files whose size or mtime changed.

    Runs at DAG-build time: a second `snakemake -n` on 10,000 unchanged files only stats
    them. Touching a file rereads it and gives the same hash, so nothing reruns. Files
    with a problem (dangling links included) are never stat'ed nor cached.

    Parameters
    ----------
    structures
        The files, as `discover` returns them.
    cache_file
        JSON cache of path → [stamp, hash, elements]; rewritten atomically when it changes.

    Returns
    -------
    dict[str, tuple[str, list[str]]]
        Structure id → (hash, elements), for every structure, problem files included.
    """
    from poscarflow.files import read_json, write_json

    cache = read_json(cache_file) or {}
    hashes: dict[str, tuple[str, list[str]]] = {}
    changed = False
    for structure in structures:
        stamp = _stamp(structure)
        if stamp is None:
            hashes[structure.id] = content(structure)
            continue
        entry = cache.get(structure.path)
        if entry is None or entry[0] != stamp or len(entry) != 3:
            entry = cache[structure.path] = [stamp, *content(structure)]
            changed = True
        hashes[structure.id] = (entry[1], entry[2])
    if changed:
        write_json(cache_file, cache)
    return hashes


def file_hash(path: str | Path) -> str:
    """Hash a file's bytes as stored, compressed or not (provenance, unreadable files).

    Parameters
    ----------
    path
        The file.

    Returns
    -------
    str
        16 hexadecimal digits of its SHA-256.
    """
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
