"""CHGNet relax and static as quacc jobs of ours (quacc has no CHGNet recipe).

Shaped like quacc's own EMT recipes: pick the calculator, then quacc's Runner and
Summarize. The `chgnet` package ships its pretrained weights, so nothing is downloaded.
`device:` (auto | cpu | cuda) picks where it runs (poscarflow.devices).
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING

from quacc import job
from quacc.runners.ase import Runner
from quacc.schemas.ase import Summarize

from poscarflow.devices import resolve_device

if TYPE_CHECKING:
    from typing import Any

    from ase import Atoms
    from ase.calculators.calculator import Calculator


@cache
def _model() -> Any:
    """The pretrained CHGNet model, loaded once per process from the package's files."""
    from chgnet.model import CHGNet

    return CHGNet.load(verbose=False)


def _calculator(device: str = "auto", **calc_kwargs: Any) -> Calculator:
    from chgnet.model.dynamics import CHGNetCalculator

    use_device = resolve_device(calc_kwargs.pop("use_device", device))  # CHGNet's own name
    return CHGNetCalculator(model=_model(), use_device=use_device, **calc_kwargs)


@job
def static_job(atoms: Atoms, **calc_kwargs: Any) -> dict:
    """A CHGNet single point (quacc's RunSchema)."""
    calc = _calculator(**calc_kwargs)
    final_atoms = Runner(atoms, calc).run_calc()
    fields = {"name": "CHGNet Static", "device": str(calc.device)}
    return Summarize(additional_fields=fields).run(final_atoms, atoms)


@job
def relax_job(
    atoms: Atoms, relax_cell: bool = False, opt_params: dict | None = None, **calc_kwargs: Any
) -> dict:
    """A CHGNet relaxation with an ASE optimizer (quacc's OptSchema)."""
    calc = _calculator(**calc_kwargs)
    dyn = Runner(atoms, calc).run_opt(relax_cell=relax_cell, **(opt_params or {}))
    fields = {"name": "CHGNet Relax", "device": str(calc.device)}
    return Summarize(additional_fields=fields).opt(dyn)
