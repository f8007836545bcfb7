"""Discovery, bad-input detection and the structure hash."""

from __future__ import annotations

import bz2
import gzip
import lzma
import os
import re
from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write

from poscarflow.calculators import EMT_ELEMENTS
from poscarflow.structures import (
    BadInput,
    DiscoveryError,
    StructureFile,
    cached_contents,
    content,
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


# --- POSCAR species and counts ----------------------------------------------------------


@pytest.mark.parametrize(
    ("species", "problem"),
    [
        ("Cu Au\n4", "element names line has 2 names (Cu Au) but the counts line has 1 (4)"),
        ("Cu\n2 2", "element names line has 1 name (Cu) but the counts line has 2 (2 2)"),
        ("4", "no element names line"),
    ],
)
def test_poscar_species_must_match_counts(tmp_path: Path, species: str, problem: str) -> None:
    structure = _write(tmp_path, "mixed.vasp", GOOD.replace("\nCu\n4", f"\n{species}"))
    with pytest.raises(BadInput) as err:
        read_structure(structure)
    assert str(err.value).startswith(structure.path)
    assert problem in str(err.value)


# --- CIF occupancy ----------------------------------------------------------------------

CIF = """data_x
_cell_length_a 3.6
_cell_length_b 3.6
_cell_length_c 3.6
_cell_angle_alpha 90
_cell_angle_beta 90
_cell_angle_gamma 90
_symmetry_space_group_name_H-M 'P 1'
loop_
_atom_site_label
_atom_site_type_symbol
_atom_site_fract_x
_atom_site_fract_y
_atom_site_fract_z
_atom_site_occupancy
{sites}
"""
ORDERED_SITES = "Cu1 Cu 0 0 0 1.0\nCu2 Cu 0.5 0.5 0 1.0"


@pytest.mark.parametrize(
    "sites",
    [
        "Cu1 Cu 0 0 0 0.5\nAu1 Au 0 0 0 0.5\nCu2 Cu 0.5 0.5 0 1.0",  # mixed site
        "Cu1 Cu 0 0 0 0.5\nCu2 Cu 0.5 0.5 0 1.0",  # half-empty site
    ],
)
def test_partial_occupancy_is_refused(tmp_path: Path, sites: str) -> None:
    (tmp_path / "alloy.cif").write_text(CIF.format(sites=sites))
    (structure,) = discover(tmp_path)
    with pytest.raises(BadInput) as err:
        read_structure(structure)
    message = str(err.value)
    assert message.startswith(structure.path)
    assert "partial occupancy on site" in message
    assert "not supported; order the structure first" in message


def test_fully_occupied_cif_reads(tmp_path: Path) -> None:
    (tmp_path / "ordered.cif").write_text(CIF.format(sites=ORDERED_SITES))
    (structure,) = discover(tmp_path)
    assert read_structure(structure).get_chemical_formula() == "Cu2"


# --- What else a reader could guess -----------------------------------------------------


def test_hash_of_plain_structures_is_unchanged() -> None:
    """Existing results keep their hash (a changed hash would rerun every calculation)."""
    assert structure_hash(bulk("Cu", cubic=True)) == "bfe5cbaadff50414"


@pytest.mark.parametrize("array", ["initial_magmoms", "initial_charges"])
def test_hash_sees_magmoms_and_charges(tmp_path: Path, array: str) -> None:
    plain = bulk("Fe", cubic=True)
    values = {}
    for name, per_atom in {"a": [2.0, 2.0], "b": [2.0, -2.0], "zero": [0.0, 0.0]}.items():
        atoms = plain.copy()
        atoms.set_array(array, np.array(per_atom))
        write(tmp_path / f"{name}.extxyz", atoms)
    for structure in discover(tmp_path):
        atoms = read_structure(structure)
        assert array in atoms.arrays  # ASE keeps the column
        values[structure.id] = (structure_hash(atoms), content(structure)[0])
    assert values["a"][0] == values["a"][1]
    assert len({h for h, _ in values.values()} | {structure_hash(plain)}) == 4


def test_selective_dynamics_become_constraints_and_change_the_hash(tmp_path: Path) -> None:
    flags = ["F F F", "T T T", "T F T", "T T T"]
    lines = GOOD.splitlines()
    lines[7:] = ["Selective dynamics", "Direct"] + [
        f"{xyz} {flag}" for xyz, flag in zip(lines[8:12], flags, strict=True)
    ]
    fixed = read_structure(_write(tmp_path, "fixed.vasp", "\n".join(lines) + "\n"))
    free = read_structure(_write(tmp_path, "free.vasp", GOOD))
    names = sorted(type(c).__name__ for c in fixed.constraints)
    assert names == ["FixAtoms", "FixScaled"]
    assert structure_hash(fixed) != structure_hash(free)


@pytest.mark.parametrize("name", ["dummy.vasp", "dummy.extxyz"])
def test_dummy_species_is_refused(tmp_path: Path, name: str) -> None:
    atoms = bulk("Cu", cubic=True)
    atoms.numbers[3] = 0  # X, ASE's dummy atom
    write(tmp_path / name, atoms)
    (structure,) = discover(tmp_path)
    with pytest.raises(BadInput, match=r"dummy species X \(atom 3\) not supported"):
        read_structure(structure)


def test_stored_results_are_dropped(tmp_path: Path) -> None:
    """An extxyz with energy and magmoms as results would make quacc's VASP setup take
    its magnetic moments from them; the input is the structure alone."""
    atoms = bulk("Fe", cubic=True)
    results = {"energy": -1.0, "forces": np.zeros((2, 3)), "magmoms": np.array([2.0, 2.0])}
    atoms.calc = SinglePointCalculator(atoms, **results)
    write(tmp_path / "Fe.extxyz", atoms)
    (structure,) = discover(tmp_path)
    read = read_structure(structure)
    assert read.calc is None
    assert structure_hash(read) == structure_hash(bulk("Fe", cubic=True))


def test_several_frames_are_refused(tmp_path: Path) -> None:
    write(tmp_path / "two.extxyz", [bulk("Cu"), bulk("Al")])
    (structure,) = discover(tmp_path)
    with pytest.raises(BadInput, match="holds 2 structures; give one per file"):
        read_structure(structure)


# --- Compressed files -------------------------------------------------------------------

COMPRESSORS = {"gz": gzip.compress, "bz2": bz2.compress, "xz": lzma.compress}


@pytest.mark.parametrize("compression", sorted(COMPRESSORS))
@pytest.mark.parametrize(
    ("name", "fmt"),
    [("Cu.vasp", "vasp"), ("POSCAR_Cu", "vasp"), ("Cu.cif", None), ("Cu.extxyz", None)],
)
def test_compressed_files_read(
    tmp_path: Path, compression: str, name: str, fmt: str | None
) -> None:
    atoms = bulk("Cu", cubic=True)
    write(tmp_path / name, atoms, format=fmt)
    raw = (tmp_path / name).read_bytes()
    packed = tmp_path / "packed"
    packed.mkdir()
    (packed / f"{name}.{compression}").write_bytes(COMPRESSORS[compression](raw))
    (structure,) = discover(packed)
    assert (structure.id, structure.format, structure.problem) == ("Cu", fmt, None)
    assert read_structure(structure).get_chemical_formula() == "Cu4"
    plain = StructureFile("Cu", str(tmp_path / name), fmt)
    assert content(structure) == content(plain)


def test_compressed_poscar_in_a_folder(tmp_path: Path) -> None:
    (tmp_path / "Cu").mkdir()
    (tmp_path / "Cu" / "POSCAR.gz").write_bytes(gzip.compress(GOOD.encode()))
    (structure,) = discover(tmp_path)
    assert (structure.id, structure.format) == ("Cu", "vasp")
    assert len(read_structure(structure)) == 4


def test_compressed_poscar_layout_is_checked(tmp_path: Path) -> None:
    bad = GOOD.replace("\n4\n", "\n6\n").encode()
    (tmp_path / "Cu.vasp.xz").write_bytes(lzma.compress(bad))
    (structure,) = discover(tmp_path)
    with pytest.raises(BadInput, match="say 6 atoms but there are 4"):
        read_structure(structure)


def test_corrupt_compressed_file_is_bad_input(tmp_path: Path) -> None:
    (tmp_path / "Cu.vasp.gz").write_bytes(b"not gzip at all")
    (structure,) = discover(tmp_path)
    with pytest.raises(BadInput, match=r"Cu\.vasp\.gz: cannot be read"):
        read_structure(structure)


# --- Discovery: one bad file is a problem, not a stopped run ----------------------------

SAFE = r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$"


def _problems(folder: Path) -> dict[str, StructureFile]:
    return {s.id: s for s in discover(folder) if s.problem}


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("bad id;rm.vasp", "is not a safe file name"),
        ("-rf.vasp", "is not a safe file name"),
        ("$(reboot).cif", "is not a safe file name"),
        ("new\nline.vasp", "is not a safe file name"),
        ("notes", "cannot tell the format"),
        ("Cu.tar.gz", "cannot tell the format"),
        ("POSCAR", "needs an id"),
    ],
)
def test_bad_names_become_problems(tmp_path: Path, name: str, problem: str) -> None:
    (tmp_path / name).write_text(GOOD)
    (tmp_path / "ok.vasp").write_text(GOOD)
    found = discover(tmp_path)
    assert [s.id for s in found if not s.problem] == ["ok"]
    (bad,) = [s for s in found if s.problem]
    assert re.match(SAFE, bad.id)
    assert bad.path == str(tmp_path / name)
    assert problem in bad.problem
    assert "\n" not in bad.problem
    assert bad.problem.startswith(str(tmp_path) + "/")
    with pytest.raises(BadInput) as err:
        read_structure(bad)
    assert str(err.value) == bad.problem


def test_problem_ids_are_stable_and_never_collide(tmp_path: Path) -> None:
    for name in ("a b.vasp", "a;b.vasp", "a&b.vasp"):
        (tmp_path / name).write_text(GOOD)
    first = sorted(_problems(tmp_path))
    assert len(first) == 3
    assert sorted(_problems(tmp_path)) == first
    (tmp_path / f"{first[0]}.vasp").write_text(GOOD)  # a real file takes a problem's id
    found = discover(tmp_path)
    assert len({s.id for s in found}) == 4
    assert next(s for s in found if s.id == first[0]).problem is None


def test_dangling_symlink_is_a_problem(tmp_path: Path) -> None:
    (tmp_path / "gone.vasp").symlink_to(tmp_path / "nowhere.vasp")
    (tmp_path / "ok.vasp").write_text(GOOD)
    (bad,) = _problems(tmp_path).values()
    assert bad.problem.startswith(str(tmp_path / "gone.vasp") + ": dangling symbolic link")
    with pytest.raises(BadInput, match="dangling"):
        read_structure(bad)
    hashes = cached_contents(discover(tmp_path), tmp_path / "cache.json")
    assert hashes[bad.id] == content(bad)
    assert hashes[bad.id][1] == []
    assert hashes[bad.id][0] != hashes["ok"][0]


def test_special_file_is_a_problem_not_a_hang(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.extxyz")  # reading it would block the DAG build
    (bad,) = discover(tmp_path)
    assert bad.problem == f"{tmp_path / 'pipe.extxyz'}: not a regular file"
    assert cached_contents([bad], tmp_path / "cache.json")[bad.id] == content(bad)


@pytest.mark.parametrize("names", [("Cu.vasp", "Cu.cif"), ("Cu.vasp", "cu.vasp")])
def test_duplicate_ids_are_problems_naming_both_files(
    tmp_path: Path, names: tuple[str, str]
) -> None:
    for name in names:
        write(tmp_path / name, bulk("Cu"), format="vasp" if name.endswith("vasp") else None)
    (tmp_path / "Al.vasp").write_text(GOOD)
    found = discover(tmp_path)
    assert [s.id for s in found if not s.problem] == ["Al"]
    problems = [s for s in found if s.problem]
    assert len(problems) == 2
    assert len({s.id for s in problems}) == 2
    for structure in problems:
        assert structure.problem.startswith(structure.path)
        assert all(name in structure.problem for name in names)
        assert "is also given by" in structure.problem


@pytest.mark.parametrize("extra", [None, "README.md"])
def test_no_structure_files_is_an_error(tmp_path: Path, extra: str | None) -> None:
    if extra:
        (tmp_path / extra).write_text("notes")
    with pytest.raises(DiscoveryError, match=r": no structure files found \(accepted: "):
        discover(tmp_path)


def test_structure_path_that_is_a_file_or_missing(tmp_path: Path) -> None:
    (tmp_path / "Cu.vasp").write_text(GOOD)
    with pytest.raises(DiscoveryError, match=r"Cu\.vasp: is a file, not a folder"):
        discover(tmp_path / "Cu.vasp")
    with pytest.raises(DiscoveryError, match="nowhere: structure folder does not exist"):
        discover(tmp_path / "nowhere")
