"""What people look at: the ASE database and the plots."""

from __future__ import annotations

from pathlib import Path

from poscarflow.plan import Plan
from tests.conftest import example_config, run_step


def test_database_takes_parameter_hashes_that_look_like_numbers(tmp_path, monkeypatch) -> None:
    """Regression: ase.db refused the key '2e28615391847580' (read as a float)."""
    import ase.db

    from poscarflow import database

    monkeypatch.chdir(tmp_path)
    Path("structures").mkdir()
    from ase.build import bulk
    from ase.io import write

    write("structures/Ar.vasp", bulk("Ar", "fcc", a=5.3), format="vasp")
    relax = example_config()["relax"] | {"max_steps": 2}
    plan = Plan(example_config(structures="structures", calculator="lj", relax=relax),
                tmp_path / ".h.json")  # fmt: skip
    for step in ("relax", "static"):
        run_step(plan, step)
    from poscarflow.collect import collect

    collect(["Ar"], "results/summary.csv", "results/relaxed.extxyz", "logs/c.log")
    monkeypatch.setattr(database, "digest", lambda _: "2e28615391847580")
    database.write_database("results/summary.csv", "results/results.db", "logs/d.log")
    (row,) = ase.db.connect("results/results.db").select()
    assert row.parameters_hash == "sha256:2e28615391847580"


def test_plots_of_many_structures_stay_a_picture(tmp_path) -> None:
    """Regression: one bar per structure made a 300,000-pixel-tall PNG for 10,000
    structures (no viewer opens it, and it took 2 minutes); many structures get a
    histogram instead."""
    import csv

    from PIL import Image

    from poscarflow.plots import plot_all

    table = tmp_path / "summary.csv"
    rows = [{"id": f"s{i:04d}", "status": "done", "energy_per_atom": -0.1 - 1e-4 * i,
             "opt_steps": "", "natoms": 4, "volume_initial": 10.0, "volume_final": 10.1}
            for i in range(1000)]  # fmt: skip
    with table.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    pngs = {name: tmp_path / f"{name}.png" for name in ("energies", "convergence", "volumes")}
    plot_all(str(table), **{k: str(v) for k, v in pngs.items()}, log=str(tmp_path / "p.log"))
    for path in pngs.values():
        width, height = Image.open(path).size
        assert width < 2000
        assert height < 1000
