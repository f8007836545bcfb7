"""quacc relax and static jobs for an ASE calculator that quacc has no recipe for.

Shaped like quacc's own EMT recipes: the calculator, then quacc's Runner and Summarize,
with the device the model ran on in the result (CHGNet and SevenNet use it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from quacc import job
from quacc.runners.ase import Runner
from quacc.schemas.ase import Summarize

if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from ase import Atoms
    from ase.calculators.calculator import Calculator


def ase_jobs(name: str, calculator: Callable[..., Calculator]) -> tuple[Callable, Callable]:
    """(static_job, relax_job) for `calculator(**calc_kwargs)`, named `name` in results."""

    @job
    def static_job(atoms: Atoms, **calc_kwargs: Any) -> dict:
        """A single point (quacc's RunSchema)."""
        calc = calculator(**calc_kwargs)
        final_atoms = Runner(atoms, calc).run_calc()
        fields = {"name": f"{name} Static", "device": str(calc.device)}
        return Summarize(additional_fields=fields).run(final_atoms, atoms)

    @job
    def relax_job(
        atoms: Atoms, relax_cell: bool = False, opt_params: dict | None = None,
        **calc_kwargs: Any,
    ) -> dict:  # fmt: skip
        """A relaxation with an ASE optimizer (quacc's OptSchema)."""
        calc = calculator(**calc_kwargs)
        dyn = Runner(atoms, calc).run_opt(relax_cell=relax_cell, **(opt_params or {}))
        fields = {"name": f"{name} Relax", "device": str(calc.device)}
        return Summarize(additional_fields=fields).opt(dyn)

    return static_job, relax_job
