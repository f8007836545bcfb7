"""SevenNet relax and static as quacc jobs of ours (quacc has no SevenNet ASE recipe).

Shaped like quacc's own EMT recipes and poscarflow.chgnet: pick the calculator, then
quacc's Runner and Summarize. The `sevenn` wheel ships the SevenNet-0 checkpoint
(`model: 7net-0`, the default; also 7net-0_22may2024, 7net-l3i5 and 7net-mf-0), so
nothing is downloaded; the newer 7net-omat, 7net-mf-ompa and 7net-omni are downloaded by
sevenn on first use and need a network. `device:` (auto | cpu | cuda) picks where it runs
(poscarflow.devices).
"""

from __future__ import annotations

import json
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
def _cached(settings: str) -> Calculator:
    """A SevenNet calculator, built once per process and settings: importing sevenn and
    building the model from its checkpoint takes seconds, longer than most relaxes."""
    import warnings

    from sevenn.calculator import SevenNetCalculator

    with warnings.catch_warnings():  # "no tensor product accelerator": said once, in docs
        warnings.simplefilter("ignore", UserWarning)
        return SevenNetCalculator(**json.loads(settings))


def _calculator(device: str = "auto", **calc_kwargs: Any) -> Calculator:
    """The calculator for these settings, with no results of an earlier structure."""
    settings = {"model": "7net-0"} | calc_kwargs | {"device": resolve_device(device)}
    calc = _cached(json.dumps(settings, sort_keys=True))
    calc.reset()
    return calc


@job
def static_job(atoms: Atoms, **calc_kwargs: Any) -> dict:
    """A SevenNet single point (quacc's RunSchema)."""
    calc = _calculator(**calc_kwargs)
    final_atoms = Runner(atoms, calc).run_calc()
    fields = {"name": "SevenNet Static", "device": str(calc.device)}
    return Summarize(additional_fields=fields).run(final_atoms, atoms)


@job
def relax_job(
    atoms: Atoms, relax_cell: bool = False, opt_params: dict | None = None, **calc_kwargs: Any
) -> dict:
    """A SevenNet relaxation with an ASE optimizer (quacc's OptSchema)."""
    calc = _calculator(**calc_kwargs)
    dyn = Runner(atoms, calc).run_opt(relax_cell=relax_cell, **(opt_params or {}))
    fields = {"name": "SevenNet Relax", "device": str(calc.device)}
    return Summarize(additional_fields=fields).opt(dyn)
