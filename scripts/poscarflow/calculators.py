"""The calculator registry: which quacc recipes compute relax and static for a name.

Adding a calculator is one entry here (plus its extra in pyproject.toml and an enum value
in the config schema). Recipes are named by import path so that reading the registry at
DAG-build time imports nothing heavy.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

# ASE's EMT has parameters for these elements only (ase.calculators.emt.parameters).
EMT_ELEMENTS = frozenset({"Ag", "Al", "Au", "C", "Cu", "H", "N", "Ni", "O", "Pd", "Pt"})


@dataclass(frozen=True)
class Calculator:
    """How to run one calculator through quacc.

    Attributes
    ----------
    module
        The quacc recipe module holding `relax_job` and `static_job`.
    packages
        Distributions whose versions are part of the calculations' provenance.
    elements
        Elements it can handle, or None for any.
    batch_size
        Structures per Snakemake job by default: many for cheap calculators (the job
        start-up dominates), one for expensive ones.
    """

    module: str
    packages: tuple[str, ...]
    elements: frozenset[str] | None
    batch_size: int

    def recipe(self, step: str) -> Callable:
        """The quacc job function for `relax` or `static`."""
        return getattr(importlib.import_module(self.module), f"{step}_job")


CALCULATORS: dict[str, Calculator] = {
    "emt": Calculator("quacc.recipes.emt.core", ("ase",), EMT_ELEMENTS, batch_size=50),
    "lj": Calculator("quacc.recipes.lj.core", ("ase",), None, batch_size=200),
}


def get_calculator(name: str) -> Calculator:
    """Look up a calculator by its config name, with the known names on error."""
    try:
        return CALCULATORS[name]
    except KeyError:
        raise ValueError(
            f"unknown calculator {name!r}; known: {', '.join(sorted(CALCULATORS))}"
        ) from None
