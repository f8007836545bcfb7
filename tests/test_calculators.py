"""tblite, CHGNet and SevenNet through the workflow's own job code, against direct calls."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from ase.build import bulk, molecule
from ase.io import write

from poscarflow.plan import Plan
from tests.conftest import example_config, run_step


def _run(
    tmp_path: Path, calculator: str, structures: dict, calc_kwargs: dict | None = None
) -> dict[str, dict]:
    """Relax + static of `structures` with one calculator, in-process; the summaries."""
    import json

    folder = tmp_path / "structures"
    folder.mkdir()
    for name, atoms in structures.items():
        write(folder / f"{name}.extxyz", atoms)
    kwargs = {"calc_kwargs": calc_kwargs or {}}
    relax = example_config()["relax"] | {"fmax": 0.05, "max_steps": 50} | kwargs
    config = example_config(
        structures=str(folder), calculator=calculator, relax=relax, static=kwargs
    )
    plan = Plan(config, tmp_path / ".hashes.json")
    for step in ("relax", "static"):
        run_step(plan, step)
    return {
        name: json.loads((tmp_path / f"results/calcs/{name}/static/summary.json").read_text())
        for name in structures
    }


def test_tblite_relax_and_static_match_a_direct_call(tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("tblite")
    from tblite.ase import TBLite

    monkeypatch.chdir(tmp_path)
    water, si = molecule("H2O"), bulk("Si", "diamond", a=5.43)
    water.pbc, water.cell = False, None
    statics = _run(tmp_path, "tblite-gfn2", {"water": water, "Si": si})
    for name, summary in statics.items():
        relaxed = (
            __import__("ase.io", fromlist=["read"]).read(
                tmp_path / f"results/calcs/{name}/relax/final.extxyz"
            )
            if summary["status"] == "done"
            else None
        )
        assert summary["status"] == "done", summary
        relaxed.calc = TBLite(method="GFN2-xTB", verbosity=0)
        assert summary["energy"] == pytest.approx(relaxed.get_potential_energy(), abs=1e-6)


CHGNET_DIRECT = """
import sys
from ase.io import read
from chgnet.model import CHGNet
from chgnet.model.dynamics import CHGNetCalculator
atoms = read(sys.argv[1])
atoms.calc = CHGNetCalculator(model=CHGNet.load(verbose=False), use_device="cpu")
print(float(atoms.get_potential_energy()))
"""


@pytest.mark.slow
def test_chgnet_relax_and_static_offline(tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("chgnet")
    monkeypatch.chdir(tmp_path)
    nacl = bulk("NaCl", "rocksalt", a=5.7)
    fe = bulk("Fe", "bcc", a=2.87, cubic=True)
    fe.rattle(0.02, seed=1)
    statics = _run(tmp_path, "chgnet", {"NaCl": nacl, "Fe": fe})
    if not shutil.which("unshare"):
        pytest.skip("unshare (util-linux) is needed to check CHGNet with no network")
    for name, summary in statics.items():
        assert summary["status"] == "done", summary
        poscar = tmp_path / f"results/calcs/{name}/relax/final.extxyz"
        # A direct call in a process with no network at all (its own network namespace).
        out = subprocess.run(["unshare", "--net", sys.executable, "-c", CHGNET_DIRECT, poscar],
                             capture_output=True, text=True, check=True).stdout  # fmt: skip
        assert summary["energy"] == pytest.approx(float(out.split()[-1]), abs=1e-5)


SEVENNET_DIRECT = """
import sys, warnings
from ase.io import read
from sevenn.calculator import SevenNetCalculator
warnings.simplefilter("ignore")
calc = SevenNetCalculator("7net-0", device="cpu")
for path in sys.argv[1:]:
    atoms = read(path)
    atoms.calc = calc
    print(float(atoms.get_potential_energy()))
"""


@pytest.mark.slow
def test_sevennet_relax_and_static_offline(tmp_path: Path, monkeypatch) -> None:
    """SevenNet-0 from the weights inside the sevenn wheel: never a download, and the
    workflow's energies equal a direct SevenNetCalculator call with no network at all."""
    pytest.importorskip("sevenn")
    import sevenn.util

    def no_download(path: str, url: str) -> str:
        raise AssertionError(f"sevenn tried to download {url}")

    monkeypatch.setattr(sevenn.util, "download_checkpoint", no_download)
    monkeypatch.chdir(tmp_path)
    fe = bulk("Fe", "bcc", a=2.87, cubic=True)
    fe.rattle(0.02, seed=1)
    cells = {"NaCl": bulk("NaCl", "rocksalt", a=5.7), "Si": bulk("Si", a=5.5), "Fe": fe}
    statics = _run(tmp_path, "sevennet", cells, {"device": "cpu"})
    for summary in statics.values():
        assert summary["status"] == "done", summary
        assert summary["device"] == "cpu"
    if not shutil.which("unshare"):
        pytest.skip("unshare (util-linux) is needed to check SevenNet with no network")
    finals = [str(tmp_path / f"results/calcs/{name}/relax/final.extxyz") for name in statics]
    out = subprocess.run(["unshare", "--net", sys.executable, "-c", SEVENNET_DIRECT, *finals],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    direct = [float(line) for line in out.split()[-len(finals) :]]
    for summary, energy in zip(statics.values(), direct, strict=True):
        assert summary["energy"] == pytest.approx(energy, abs=1e-5)


@pytest.mark.parametrize("name", ["chgnet", "sevennet"])
def test_device_is_a_known_setting_of_the_potentials(name: str) -> None:
    from poscarflow.calculators import get_calculator

    pytest.importorskip({"chgnet": "chgnet", "sevennet": "sevenn"}[name])
    calc = get_calculator(name)
    assert calc.unknown_kwargs({"device": "cuda"}) == []
    assert calc.unknown_kwargs({"device": "cpu", "devise": "cpu"}) == ["devise"]


def test_device_auto_picks_the_gpu_only_when_torch_sees_one(monkeypatch) -> None:
    torch = pytest.importorskip("torch")
    from poscarflow.devices import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == resolve_device() == resolve_device("cpu") == "cpu"
    with pytest.raises(ValueError, match=r"device: cuda was asked for, but torch .* no CUDA GPU"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match="'gpu' is not one of auto, cpu, cuda"):
        resolve_device("gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == resolve_device("CUDA") == "cuda"
    assert resolve_device("cpu") == "cpu"


def test_gamma_only_methods_warn_on_narrow_cells() -> None:
    from poscarflow.compute import _too_small_for_gamma

    si = bulk("Si", "diamond", a=5.43)
    assert "Γ point only" in _too_small_for_gamma(si)
    assert "3.1 Å wide" in _too_small_for_gamma(si)
    assert _too_small_for_gamma(bulk("Si", "diamond", a=5.43, cubic=True) * 2) is None
    water = molecule("H2O")
    assert _too_small_for_gamma(water) is None
