"""The code fingerprint: real changes count, comments and formatting do not."""

from __future__ import annotations

from pathlib import Path

import pytest

from poscarflow import fingerprint
from poscarflow.fingerprint import code_fingerprint, module_hashes


@pytest.fixture
def package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A throwaway copy of a tiny `poscarflow` package for the fingerprint to read."""
    pkg = tmp_path / "poscarflow"
    pkg.mkdir()
    (pkg / "__init__.py").write_text('"""Package."""\n')
    (pkg / "entry.py").write_text(
        '"""Entry."""\nfrom poscarflow.helper import f\n\n\ndef g():\n    return f() + 1\n'
    )
    (pkg / "helper.py").write_text("def f():\n    import poscarflow.deep\n    return 1\n")
    (pkg / "deep.py").write_text("X = 1\n")
    (pkg / "unused.py").write_text("Y = 1\n")
    monkeypatch.setattr(fingerprint, "PACKAGE_DIR", pkg)
    return pkg


def test_follows_imports_transitively(package: Path) -> None:
    assert sorted(module_hashes("poscarflow.entry")) == [
        "poscarflow", "poscarflow.deep", "poscarflow.entry", "poscarflow.helper",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("change", "counts"),
    [
        (lambda t: t + "# a comment\n", False),
        (lambda t: t.replace('"""Entry."""', '"""Entry, documented better."""'), False),
        (lambda t: t.replace("return f() + 1", "return (f()  +  1)"), False),
        (lambda t: t.replace("+ 1", "+ 2"), True),
    ],
)
def test_only_real_changes_count(package: Path, change, counts: bool) -> None:
    before = module_hashes("poscarflow.entry")
    entry = package / "entry.py"
    entry.write_text(change(entry.read_text()))
    assert (module_hashes("poscarflow.entry") != before) is counts


def test_change_in_an_imported_module_counts(package: Path) -> None:
    before = module_hashes("poscarflow.entry")
    (package / "deep.py").write_text("X = 2\n")
    after = module_hashes("poscarflow.entry")
    assert [m for m in after if after[m] != before[m]] == ["poscarflow.deep"]
    (package / "unused.py").write_text("Y = 2\n")
    assert module_hashes("poscarflow.entry") == after


def test_fingerprint_of_the_real_job_has_versions() -> None:
    code = code_fingerprint(("poscarflow.job", "poscarflow.chgnet"), ("ase",))
    assert "poscarflow.chgnet" in code["modules"]
    assert "poscarflow.compute" in code["modules"]
    assert "poscarflow.structures" in code["modules"]
    assert set(code["versions"]) == {"quacc", "ase", "pymatgen", "numpy", "scipy"}
    assert len(code["digest"]) == 16


def test_a_new_version_of_any_stack_package_shows_in_why(tmp_path: Path, monkeypatch) -> None:
    """quacc, ASE, pymatgen, numpy and scipy (and the calculator's packages) are recorded
    with every result; an upgrade of any of them is named by `poscarflow why`."""
    import json

    from poscarflow.testing import argon_plan, run_step
    from poscarflow.why import why

    monkeypatch.chdir(tmp_path)
    plan = argon_plan(tmp_path)
    run_step(plan, "relax")
    assert why(plan, "results", ["Ar"])[0].startswith("Ar static: not computed yet")
    summary = Path("results/calcs/Ar/relax/summary.json")
    recorded = json.loads(summary.read_text())
    assert {"quacc", "ase", "pymatgen", "numpy", "scipy"} <= set(recorded["code"]["versions"])
    recorded["code"]["versions"]["scipy"] = "0.1"
    recorded["code"]["digest"] = "0" * 16
    summary.write_text(json.dumps(recorded))
    assert any(line.startswith("Ar relax: version scipy: '0.1' → ")
               for line in why(plan, "results", ["Ar"]))  # fmt: skip
