"""What people look at: the ASE database and the plots."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from poscarflow.testing import argon_plan
from tests.conftest import run_step


def test_database_takes_parameter_hashes_that_look_like_numbers(tmp_path, monkeypatch) -> None:
    """Regression: ase.db refused the key '2e28615391847580' (read as a float)."""
    import ase.db

    from poscarflow import database

    monkeypatch.chdir(tmp_path)
    plan = argon_plan(tmp_path)
    run_step(plan, "relax")
    monkeypatch.setattr(database, "digest", lambda _: "2e28615391847580")
    run_step(plan, "static")  # makes the batch's part, database rows included
    _finish(plan.layout, ["Ar"])
    (row,) = ase.db.connect("results/results.db").select()
    assert row.parameters_hash == "sha256:2e28615391847580"


def test_plots_of_many_structures_stay_a_picture(tmp_path, monkeypatch) -> None:
    """Regression: one bar per structure made a 300,000-pixel-tall PNG for 10,000
    structures (no viewer opens it, and it took 2 minutes); many structures get a
    histogram instead, and only the plotted relaxes' trajectories are read."""
    from PIL import Image

    from poscarflow import plots
    from poscarflow.layout import Layout

    rows = [{"id": f"s{i:05d}", "status": "done" if i % 7 else "unconverged",
             "calculator": "lj", "energy_per_atom_eV": -0.1 - 1e-5 * i, "opt_steps": i % 300,
             "converged": bool(i % 7), "natoms": 4, "volume_initial_A3": 10.0,
             "volume_final_A3": 10.0 + (i % 11 - 5) / 10} for i in range(10_000)]  # fmt: skip
    read = []
    monkeypatch.setattr(plots, "_trajectory_forces", lambda path, cell: read.append(path) or [])
    pngs = {name: tmp_path / f"{name}.png" for name in ("energies", "convergence", "volumes")}
    plt = plots.pyplot()
    plots.plot_energies(plt, rows, str(pngs["energies"]))
    plots.plot_convergence(plt, Layout(tmp_path), rows, str(pngs["convergence"]))
    plots.plot_volumes(plt, rows, str(pngs["volumes"]))
    plt.close("all")
    for path in pngs.values():
        width, height = Image.open(path).size
        assert width < 2000
        assert height < 1000
    assert 0 < len(read) <= plots.MOST_CURVES


# A results folder made by hand: the readers need only the files the layout names.
AG_ENERGY = -0.0003668342939731062  # what EMT gives for fcc Ag: 17 digits in the old CSV


def _calculation(layout, sid: str, step: str, atoms, energy: float, **numbers) -> None:
    """A finished calculation's summary.json and final.extxyz (energy, forces, stress)."""
    import numpy as np
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.io import write

    from poscarflow.files import write_json

    summary = {
        "id": sid, "step": step, "calculator": "emt", "status": "done",
        "parameters": {"id": sid, "calculator": "emt",
                       "relax": {"fmax": 0.01, "relax_cell": True, "calc_kwargs": {}}},
        "code": {"digest": "0123abcd", "versions": {"ase": "3.29.0", "quacc": "1.8.2"}},
        "input": {"path": f"structures/{sid}.vasp"}, "formula": atoms.get_chemical_formula(),
        "natoms": len(atoms), "energy": energy, "energy_per_atom": energy / len(atoms),
        "max_force": 2.924703337634492e-15, "volume": atoms.get_volume(),
        "wall_time": 0.48321,
    } | numbers  # fmt: skip
    if step == "relax":
        summary |= {"converged": True, "opt_steps": 2, "volume_initial": 16.60753125}
    write_json(layout.summary(sid, step), {k: v for k, v in summary.items() if v is not None})
    atoms = atoms.copy()
    atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=np.zeros((len(atoms), 3)),
                                       stress=np.full(6, 1e-3))  # fmt: skip
    atoms.info = {"id": sid}
    write(layout.final_structure(sid, step), atoms, format="extxyz")


@pytest.fixture
def results(tmp_path, monkeypatch):
    """Three structures: `Ag` with every summary key, `Cu` from before free_energy,
    max_stress and warnings existed, and `Au` whose relax failed."""
    from ase.build import bulk

    from poscarflow.files import write_json
    from poscarflow.layout import Layout

    monkeypatch.chdir(tmp_path)
    layout = Layout(tmp_path / "results")
    ag = bulk("Ag", "fcc", a=4.06)
    _calculation(layout, "Ag", "relax", ag, AG_ENERGY - 1e-9, max_stress=2.9e-15,
                 free_energy=AG_ENERGY - 1e-9, warnings=["Gamma point only"])  # fmt: skip
    _calculation(layout, "Ag", "static", ag, AG_ENERGY, free_energy=AG_ENERGY - 2.5e-7,
                 max_stress=0.01234567, warnings=["small cell"])  # fmt: skip
    cu = bulk("Cu", "fcc", a=3.6)
    for step in ("relax", "static"):
        _calculation(layout, "Cu", step, cu, -0.0070331461937)
    write_json(layout.summary("Au", "relax"), {
        "id": "Au", "step": "relax", "calculator": "emt", "status": "failed",
        "failure": "bad_input", "reason": "structures/Au.vasp: overlapping atoms"})  # fmt: skip
    return layout


def _finish(layout, ids: list[str], batches: dict[str, list[str]] | None = None) -> None:
    """The finishing job's work: table, structures, database and plots."""
    from poscarflow.finish import finish_results

    finish_results(layout, ids, batches or {"batch0": ids}, "logs/finish.log")


def _collect(layout) -> None:
    _finish(layout, ["Ag", "Au", "Cu"])


def _csv(layout) -> dict[str, dict]:
    import csv

    with layout.table.open(newline="") as handle:
        return {row["id"]: row for row in csv.DictReader(handle)}


def test_csv_is_rounded_with_units_and_json_keeps_full_precision(results) -> None:
    """Regression: summary.csv had 17 significant digits (-0.0003668342939731062,
    2.9e-15) and no units."""
    _collect(results)
    rows = _csv(results)
    assert list(rows["Ag"]) == [
        "id", "formula", "natoms", "status", "relaxed_energy_eV", "static_energy_eV",
        "static_free_energy_eV", "energy_per_atom_eV", "volume_initial_A3",
        "volume_final_A3", "max_force_eV_per_A", "max_stress_GPa", "converged", "opt_steps",
        "wall_time_s", "reason", "warnings", "calculator", "input",
    ]  # fmt: skip
    ag = rows["Ag"]
    assert ag["static_energy_eV"] == "-0.000367"
    assert ag["energy_per_atom_eV"] == "-0.000367"
    assert ag["max_force_eV_per_A"] == "0.0000"  # not 2.9e-15, and no "-0.0000"
    assert ag["volume_initial_A3"] == "16.608"
    assert ag["wall_time_s"] == "1.0"  # relax + static
    assert rows["Au"]["status"] == "failed"
    assert rows["Au"]["static_energy_eV"] == ""
    assert "overlapping atoms" in rows["Au"]["reason"]
    full = {row["id"]: row for row in json.loads(results.table_json.read_text())}
    assert full["Ag"]["static_energy_eV"] == pytest.approx(AG_ENERGY, rel=1e-12, abs=0)
    assert full["Ag"]["max_force_eV_per_A"] == pytest.approx(2.924703337634492e-15, rel=1e-12)
    assert full["Ag"]["wall_time_s"] == pytest.approx(0.96642)


def test_free_energy_stress_and_warnings_columns_also_from_older_summaries(results) -> None:
    _collect(results)
    rows = _csv(results)
    assert rows["Ag"]["static_free_energy_eV"] == "-0.000367"
    assert rows["Ag"]["max_stress_GPa"] == "0.0000"  # the relax's, not the static's
    assert rows["Ag"]["warnings"] == "relax: Gamma point only; static: small cell"
    assert rows["Ag"]["calculator"] == "emt"
    assert (rows["Cu"]["static_free_energy_eV"], rows["Cu"]["max_stress_GPa"],
            rows["Cu"]["warnings"]) == ("", "", "")  # fmt: skip
    full = {row["id"]: row for row in json.loads(results.table_json.read_text())}
    assert full["Ag"]["static_free_energy_eV"] == pytest.approx(AG_ENERGY - 2.5e-7)
    assert full["Ag"]["warnings"] == ["relax: Gamma point only", "static: small cell"]
    assert full["Cu"]["max_stress_GPa"] is None


def test_html_table_and_overview_for_the_report(results) -> None:
    _collect(results)
    page = results.table_html.read_text(encoding="ascii")  # Å as a character reference
    assert "<th>static energy (eV)</th>" in page
    assert "<th>volume final (&#197;&#179;)</th>" in page
    assert '<td class="num">-0.000367</td>' in page
    assert page.index(">Au<") < page.index(">Ag<")  # failed first
    text = results.overview.read_text()
    assert "**3 structures**: 2 done, 1 failed; computed with emt." in text
    assert "ase 3.29.0, poscarflow code 0123abcd, quacc 1.8.2" in text
    assert "``Au``: structures/Au.vasp: overlapping atoms" in text


def test_database_has_calculator_energies_and_stress_the_ase_way(results) -> None:
    """Regression: `ase db` showed `unknown` as every row's calculator."""
    import ase.db

    _collect(results)
    db = ase.db.connect(str(results.database))
    rows = {row.structure_id: row for row in db.select()}
    assert sorted(rows) == ["Ag", "Cu"]  # failed structures have no relaxed structure
    ag = rows["Ag"]
    assert ag.calculator == "emt"
    assert ag.calculator_parameters == {}
    assert ag.energy == pytest.approx(AG_ENERGY - 1e-9, rel=1e-12)  # the relax's
    assert ag.static_energy == pytest.approx(AG_ENERGY, rel=1e-12)
    assert ag.static_free_energy == pytest.approx(AG_ENERGY - 2.5e-7, rel=1e-12)
    assert ag.max_stress == pytest.approx(2.9e-15)
    assert ag.parameters_hash.startswith("sha256:")
    assert "max_stress" not in rows["Cu"].key_value_pairs
    assert "energy" in db.metadata["key_descriptions"]
    shown = subprocess.run([sys.executable, "-m", "ase", "db", str(results.database)],
                           capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert "emt" in shown
    assert "unknown" not in shown


def test_database_rows_are_written_in_one_transaction(results, monkeypatch) -> None:
    """One connection and one commit for a batch's rows (a commit each costs a disk
    sync)."""
    import ase.db.sqlite

    from poscarflow.parts import make_part

    connections = []
    connect = ase.db.sqlite.SQLite3Database._connect
    monkeypatch.setattr(ase.db.sqlite.SQLite3Database, "_connect",
                        lambda self: connections.append(1) or connect(self))  # fmt: skip
    make_part(results, "batch0", dict.fromkeys(["Ag", "Au", "Cu"], ""))
    assert len(connections) == 1


def _trajectory(path, atoms, stresses) -> None:
    """An opt.traj whose frames have zero forces and the given stresses (a symmetric cell
    relaxing its volume only)."""
    import numpy as np
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.io.trajectory import Trajectory

    with Trajectory(str(path), "w") as traj:
        for stress in stresses:
            frame = atoms.copy()
            frame.calc = SinglePointCalculator(frame, energy=0.0, stress=np.full(6, stress),
                                               forces=np.full((len(atoms), 3), 1e-16))  # fmt: skip
            traj.write(frame)


def test_plots_say_what_they_show(results) -> None:
    """Regression: symmetric cells' forces (1e-15) fell below the axis, so few curves
    showed; no legend for the curves or the volume colours; the title read "11 slowest
    of 11"; the energy plot did not say that failed structures were left out."""
    from ase.build import bulk

    from poscarflow import plots

    plt = plots.pyplot()

    _collect(results)
    _trajectory(results.trajectory("Ag"), bulk("Ag", "fcc", a=4.06), [0.05, 0.01, 1e-4])
    _trajectory(results.trajectory("Cu"), bulk("Cu", "fcc", a=3.6), [0.02, 0.0])
    rows = json.loads(results.table_json.read_text())
    energies = plots.plot_energies(plt, rows, "e.png")
    assert "calculator: emt" in energies.axes[0].get_title()
    assert "1 failed, left out" in energies.axes[0].get_title()
    volumes = plots.plot_volumes(plt, rows, "v.png")
    labels = [t.get_text() for t in volumes.axes[0].get_legend().get_texts()]
    assert labels == ["expanded (volume grew)", "contracted (volume shrank)"]
    convergence = plots.plot_convergence(plt, results, rows, "c.png")
    steps, forces = convergence.axes
    assert len(steps.patches) >= 2  # a bar per relax
    assert "2 relaxes, 0 not converged" in steps.get_title()
    assert [t.get_text() for t in forces.get_legend().get_texts()] == ["Ag", "Cu"]
    for line in forces.get_lines()[:2]:  # every curve above the floor, the cell term shown
        assert min(line.get_ydata()) >= plots.FORCE_FLOOR
        assert max(line.get_ydata()) > 1e-3
    assert "2 slowest of 2" in forces.get_title()
    plt.close("all")


# Parts: each static batch job's share of the run-wide outputs ------------------------------


def test_finishing_joins_the_parts_in_table_order_without_reading_calculations(
    results, monkeypatch
) -> None:
    """The finishing job reads only the batches' parts (not 30,000 files at 10,000
    structures), and its table, extxyz and database follow the structures' order, not
    the batches'."""
    import ase.db
    from ase.io import read

    from poscarflow import parts

    batches = {"batch0": ["Cu", "Au"], "batch1": ["Ag"]}
    for batch, ids in batches.items():
        parts.make_part(results, batch, dict.fromkeys(ids, ""))

    def no_calculations(*args) -> None:
        raise AssertionError("the finishing job read a calculation's files")

    monkeypatch.setattr(parts, "summaries", no_calculations)
    _finish(results, ["Ag", "Au", "Cu"], batches)
    assert list(_csv(results)) == ["Ag", "Au", "Cu"]
    assert [a.info["id"] for a in read(results.relaxed, ":")] == ["Ag", "Cu"]
    rows = list(ase.db.connect(str(results.database)).select())
    assert [(r.id, r.structure_id) for r in rows] == [(1, "Ag"), (3, "Cu")]
    assert rows[0].energy == pytest.approx(AG_ENERGY - 1e-9, rel=1e-12)
    assert rows[1].static_energy == pytest.approx(-0.0070331461937, rel=1e-12)


def test_a_part_whose_keys_or_code_differ_is_made_again(results, monkeypatch) -> None:
    """A part is a cache: a manifest with other keys (the calculations changed) or
    other code makes the finishing job remake it from the calculations."""
    from poscarflow import parts
    from poscarflow.files import read_json, write_json

    ids = ["Ag", "Au", "Cu"]
    parts.make_part(results, "batch0", dict.fromkeys(ids, ""))
    summary = read_json(results.summary("Ag", "static"))
    write_json(results.summary("Ag", "static"), summary | {"energy": -1.0, "key": "new"})
    keys = {sid: "new" if sid == "Ag" else "" for sid in ids}
    write_json(results.manifest("static", "batch0"),
               {sid: {"key": key, "status": "done"} for sid, key in keys.items()})  # fmt: skip
    _collect(results)
    assert _csv(results)["Ag"]["static_energy_eV"] == "-1.000000"
    assert read_json(results.part("batch0"))["keys"]["Ag"] == "new"
    write_json(results.summary("Ag", "static"), summary | {"energy": -2.0, "key": "new"})
    _collect(results)  # same keys, same code: the part is used as it is
    assert _csv(results)["Ag"]["static_energy_eV"] == "-1.000000"
    monkeypatch.setattr(parts, "part_format", lambda: "made by other code")
    _collect(results)
    assert _csv(results)["Ag"]["static_energy_eV"] == "-2.000000"


def test_the_table_code_is_not_the_calculations_code() -> None:
    """Changing a column of the table must rerun no calculation: the modules that make
    parts are outside the code fingerprint of relax and static jobs."""
    from poscarflow.fingerprint import job_code

    modules = job_code("emt")["modules"]
    assert "poscarflow.batch" in modules
    assert not {"poscarflow.parts", "poscarflow.collect", "poscarflow.database"} & set(modules)
