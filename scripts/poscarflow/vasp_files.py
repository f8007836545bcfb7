"""What a VASP run leaves behind: its ionic steps, where it goes on from, custodian's log.

VASP relaxes with its own optimizer (IBRION/NSW), so a relax attempt's path is in VASP's
files, not in an ASE trajectory: the ionic steps of vasprun.xml (XDATCAR when vasprun.xml
has none), including the runs custodian backed up before it corrected an error and reran
VASP (`error.N.tar.gz`), and the geometry VASP would have computed next (CONTCAR). A
killed VASP leaves them cut: only whole ionic steps count, and a cut CONTCAR is not used.

The run folder of an attempt is quacc's (`tmp-quacc-*` while VASP runs or when it was
killed, `failed-quacc-*` when the job failed) or, once quacc finished, the attempt folder
itself. Atoms are in the input's order (VASP's files are sorted by species: ASE's
`ase-sort.dat` undoes that).
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ase import Atoms

CUSTODIAN_LOG = "custodian.json"


def run_dir(folder: Path) -> Path | None:
    """The VASP run an attempt folder holds (the newest, if there are several), or None."""
    candidates = [folder, *folder.glob("tmp-quacc-*"), *folder.glob("failed-quacc-*")]
    runs = [d for d in candidates if (d / "INCAR").is_file() and _start_file(d) is not None]
    return max(runs, key=lambda d: (d / "INCAR").stat().st_mtime, default=None)


def ionic_path(folder: Path) -> list[Atoms]:
    """The start geometry of an attempt's VASP run, then every ionic step it completed
    (energy, forces and stress attached), custodian's earlier runs first; [] if none."""
    run = run_dir(folder)
    if run is None:
        return []
    resort = _resort(run)
    start = _read_poscar(_start_file(run), resort)  # type: ignore[arg-type]
    if start is None:
        return []
    steps: list[Atoms] = []
    seen: set[str] = set()
    for text in [*_backed_up_vaspruns(run), _read_text(run / "vasprun.xml")]:
        digest = hashlib.sha256(text.encode()).hexdigest()
        if text and digest not in seen:  # custodian's last backup may be the current run
            seen.add(digest)
            steps += vasprun_steps(text, resort)
    if not steps:
        steps = xdatcar_steps(_read_text(run / "XDATCAR"), len(start), resort)
    return [computed_at(start, steps[0]) if steps else start, *steps]


def computed_at(start: Atoms, first: Atoms) -> Atoms:
    """The start geometry with the results of VASP's first ionic step, which VASP
    computed there: every frame of a relax's path has its energy and forces, as ASE
    optimizers write them (the table's plots read them)."""
    import numpy as np
    from ase.calculators.singlepoint import SinglePointCalculator

    if first.calc is not None and np.abs(first.positions - start.positions).max() < 1e-6:
        start.calc = SinglePointCalculator(start, **first.calc.results)
    return start


def restart_geometry(folder: Path) -> Atoms | None:
    """Where VASP goes on from: the CONTCAR of an attempt's run if it is whole, else its
    last completed ionic step, else the geometry it started from; None without a run."""
    run = run_dir(folder)
    if run is None:
        return None
    resort = _resort(run)
    path = ionic_path(folder)
    natoms = len(path[0]) if path else None
    contcar = _read_poscar(run / "CONTCAR", resort, natoms)
    if contcar is not None:
        return contcar
    return path[-1].copy() if path else None


def corrections(folder: Path) -> list[dict[str, Any]]:
    """What custodian did in a run: one entry per correction, with the handler, the errors
    it found and the actions it took (INCAR or file changes), from custodian.json."""
    run = run_dir(folder) or folder
    try:
        log = json.loads((run / CUSTODIAN_LOG).read_text())
    except (FileNotFoundError, ValueError):
        return []
    found = []
    for job in log:
        for correction in job.get("corrections", []):
            handler = correction.get("handler") or {}
            name = handler.get("@class", str(handler)) if isinstance(handler, dict) else handler
            found.append({"handler": name, "errors": list(correction.get("errors") or []),
                          "actions": correction.get("actions") or []})  # fmt: skip
    return found


def reached_accuracy(folder: Path) -> bool:
    """Whether VASP says the relax converged (OUTCAR: 'reached required accuracy')."""
    run = run_dir(folder) or folder
    return "reached required accuracy" in _read_text(run / "OUTCAR")


def vasprun_steps(text: str, resort: list[int] | None = None) -> list[Atoms]:
    """The whole ionic steps of a vasprun.xml's text (a cut last step is left out)."""
    import ase.io

    end = text.rfind("</calculation>")
    if end < 0:
        return []
    whole = text[: end + len("</calculation>")] + "\n</modeling>\n"
    frames = ase.io.read(io.BytesIO(whole.encode("latin-1", "replace")), index=":",
                         format="vasp-xml")  # fmt: skip
    return [_resorted(atoms, resort) for atoms in frames if atoms.calc is not None]


def xdatcar_steps(text: str, natoms: int, resort: list[int] | None = None) -> list[Atoms]:
    """The whole configurations of an XDATCAR's text (no energies: positions and cell)."""
    from ase import Atoms

    lines, frames = text.split("\n"), []
    cell, symbols, i = None, None, 0
    while i < len(lines):
        line = lines[i]
        if line.strip().lower().startswith("direct configuration"):
            block = lines[i + 1 : i + 1 + natoms]
            if cell is None or symbols is None or i + 1 + natoms >= len(lines):
                break  # cut: the last configuration is not whole
            scaled = [[float(x) for x in row.split()[:3]] for row in block]
            atoms = Atoms(symbols, scaled_positions=scaled, cell=cell, pbc=True)
            frames.append(atoms[resort] if resort else atoms)
            i += 1 + natoms
            continue
        if i + 6 < len(lines) and _is_header(lines, i):
            scale = float(lines[i + 1].split()[0])
            cell = [[scale * float(x) for x in lines[i + k].split()[:3]] for k in (2, 3, 4)]
            species, counts = lines[i + 5].split(), [int(n) for n in lines[i + 6].split()]
            symbols = [s for s, n in zip(species, counts, strict=True) for _ in range(n)]
            i += 7
            continue
        i += 1
    return frames


def _is_header(lines: list[str], i: int) -> bool:
    """Whether an XDATCAR header (title, scale, three cell vectors, species, counts)
    starts at line `i`."""
    try:
        float(lines[i + 1].split()[0])
        for k in (2, 3, 4):
            [float(x) for x in lines[i + k].split()[:3]]
        [int(n) for n in lines[i + 6].split()]
    except (ValueError, IndexError):
        return False
    return bool(lines[i + 5].split()) and lines[i + 5].split()[0].isalpha()


def _start_file(run: Path) -> Path | None:
    """The POSCAR a run started from: custodian keeps the original as POSCAR.orig (its
    corrections may copy CONTCAR over POSCAR)."""
    for name in ("POSCAR.orig", "POSCAR"):
        if (run / name).is_file():
            return run / name
    return None


def _backed_up_vaspruns(run: Path) -> list[str]:
    """vasprun.xml of the runs custodian backed up before its corrections, in order."""
    texts = []
    backups = sorted(run.glob("error.*.tar.gz"), key=lambda p: int(p.name.split(".")[1]))
    for backup in backups:
        try:
            with tarfile.open(backup) as tar:
                member = next((m for m in tar.getmembers() if m.name.endswith("vasprun.xml")), None)
                handle = tar.extractfile(member) if member else None
                texts.append(handle.read().decode("latin-1") if handle else "")
        except (OSError, tarfile.TarError):  # a backup cut by a kill
            continue
    return texts


def _read_poscar(path: Path, resort: list[int] | None, natoms: int | None = None) -> Atoms | None:
    """A POSCAR/CONTCAR, or None if it is missing or cut (every position line must be
    whole: a cut number would still parse)."""
    import ase.io

    text = _read_text(path)
    lines = text.split("\n")
    try:
        counts_at = next(
            i for i in range(5, 8) if lines[i].split() and lines[i].split()[0].isdigit()
        )
        count = sum(int(n) for n in lines[counts_at].split())
        header = counts_at + 1
        if lines[header].strip()[:1].lower() == "s":  # Selective dynamics
            header += 1
        if len(lines) <= header + count + 1 or (natoms is not None and count != natoms):
            return None
        atoms = ase.io.read(io.StringIO(text), format="vasp")
    except (StopIteration, ValueError, IndexError):
        return None
    return atoms[resort] if resort else atoms


def _resort(run: Path) -> list[int] | None:
    """ASE's ase-sort.dat: the input order of VASP's (species-sorted) atoms."""
    try:
        rows = (run / "ase-sort.dat").read_text().split("\n")
        return [int(row.split()[1]) for row in rows if row.strip()]
    except (FileNotFoundError, ValueError, IndexError):
        return None


def _resorted(atoms: Atoms, resort: list[int] | None) -> Atoms:
    """A frame of VASP's in the input's order, with its energy, forces and stress."""
    from ase.calculators.singlepoint import SinglePointCalculator

    if not resort:
        return atoms
    kept = ("energy", "free_energy", "forces", "stress")
    results = {k: v for k, v in atoms.calc.results.items() if k in kept}
    new = atoms[resort]
    if "forces" in results:
        results["forces"] = results["forces"][resort]
    new.calc = SinglePointCalculator(new, **results)
    return new


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="latin-1")
    except (FileNotFoundError, IsADirectoryError):
        return ""
