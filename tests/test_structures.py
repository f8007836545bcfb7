"""Discovery, bad-input detection and the structure hash."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk
from ase.io import write

from poscarflow.calculators import EMT_ELEMENTS
from poscarflow.structures import (
    BadInput,
    DiscoveryError,
    StructureFile,
    discover,
    read_structure,
    structure_hash,
)

GOOD = """Cu4
1.0
3.6 0 0
0 3.6 0
0 0 3.6
Cu
4
Direct
0 0 0
0.5 0.5 0
0.5 0 0.5
0 0.5 0.5
"""


def _write(folder: Path, name: str, text: str) -> StructureFile:
    path = folder / name
    path.write_text(text)
    return StructureFile(path.stem, str(path), "vasp")


def test_discover_naming_patterns(tmp_path: Path) -> None:
    (tmp_path / "a.vasp").write_text(GOOD)
    (tmp_path / "POSCAR_b").write_text(GOOD)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "POSCAR").write_text(GOOD)
    write(tmp_path / "d.cif", bulk("Cu"))
    write(tmp_path / "e.extxyz", bulk("Al"))
    (tmp_path / "README.md").write_text("notes")
    found = {s.id: s for s in discover(tmp_path)}
    assert sorted(found) == ["a", "b", "c", "d", "e"]
    assert found["b"].format == "vasp"
    assert found["c"].path.endswith("c/POSCAR")
    assert found["d"].format is None
    assert len(read_structure(found["d"])) == 1


def test_duplicate_ids_name_both_files(tmp_path: Path) -> None:
    (tmp_path / "Cu.vasp").write_text(GOOD)
    write(tmp_path / "Cu.cif", bulk("Cu"))
    with pytest.raises(DiscoveryError, match=r"Cu\.cif and .*Cu\.vasp both give .*'Cu'"):
        discover(tmp_path)


def test_unsafe_id_is_refused(tmp_path: Path) -> None:
    (tmp_path / "bad id;rm.vasp").write_text(GOOD)
    with pytest.raises(DiscoveryError, match="not a safe file name"):
        discover(tmp_path)


def test_bare_poscar_needs_an_id(tmp_path: Path) -> None:
    (tmp_path / "POSCAR").write_text(GOOD)
    with pytest.raises(DiscoveryError, match="needs an id"):
        discover(tmp_path)


BAD = {
    "empty": ("", "empty file"),
    "truncated": (GOOD[:40], "truncated"),
    "nonnumeric": (GOOD.replace("0.5 0.5 0\n", "0.5 abc 0\n"), "not a readable structure"),
    "nan": (GOOD.replace("0.5 0.5 0\n", "0.5 nan 0\n"), "non-finite"),
    "too_few_atoms": (GOOD.replace("\n4\n", "\n6\n"), "say 6 atoms but there are 4"),
    "too_many_atoms": (GOOD.replace("\n4\n", "\n2\n"), "say 2 atoms but there are 4"),
    "unknown_element": (GOOD.replace("\nCu\n4", "\nXx\n4"), "unknown element Xx"),
    "zero_volume": (GOOD.replace("0 0 3.6", "0 0 0"), "zero-volume cell"),
    "overlap": (GOOD.replace("0.5 0.5 0\n", "0.01 0 0\n"), "overlapping atoms"),
    "unsupported": (GOOD.replace("\nCu\n4", "\nFe\n4"), "elements Fe not supported"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_names_file_and_problem(tmp_path: Path, case: str) -> None:
    text, problem = BAD[case]
    structure = _write(tmp_path, f"{case}.vasp", text)
    with pytest.raises(BadInput) as err:
        read_structure(structure, elements=EMT_ELEMENTS)
    assert str(err.value).startswith(structure.path)
    assert problem in str(err.value)
    assert "\n" not in str(err.value)


def test_good_structure_reads(tmp_path: Path) -> None:
    atoms = read_structure(_write(tmp_path, "ok.vasp", GOOD), elements=EMT_ELEMENTS)
    assert atoms.get_chemical_formula() == "Cu4"


def test_hash_ignores_layout_and_noise_but_not_moves(tmp_path: Path) -> None:
    atoms = bulk("Cu", cubic=True) * (2, 1, 1)
    atoms.rattle(0.05, seed=4)
    write(tmp_path / "direct.vasp", atoms, format="vasp", direct=True)
    write(tmp_path / "cart.vasp", atoms, format="vasp", direct=False)
    read = {
        n: read_structure(StructureFile(n, str(tmp_path / f"{n}.vasp"), "vasp"))
        for n in ("direct", "cart")
    }
    assert structure_hash(read["direct"]) == structure_hash(read["cart"])
    noisy = atoms.copy()
    noisy.positions += np.random.default_rng(0).uniform(-1e-7, 1e-7, noisy.positions.shape)
    noisy.info["comment"] = "other"
    assert structure_hash(noisy) == structure_hash(atoms)
    moved = atoms.copy()
    moved.positions[0, 0] += 0.01
    assert structure_hash(moved) != structure_hash(atoms)
