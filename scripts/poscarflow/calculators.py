"""The calculator registry: which quacc recipes compute relax and static for a name.

Adding a calculator is one entry here (plus its extra in pyproject.toml and an enum value
in the config schema). A recipe module of ours (poscarflow.chgnet) is part of the jobs'
code fingerprint like any module they import. Recipes are named by import path so that
reading the registry at DAG-build time imports no calculator.
"""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ase.data import chemical_symbols

if TYPE_CHECKING:
    from collections.abc import Callable

# ASE's EMT has parameters for these elements only (ase.calculators.emt.parameters).
EMT_ELEMENTS = frozenset({"Ag", "Al", "Au", "C", "Cu", "H", "N", "Ni", "O", "Pd", "Pt"})
# GFN1/GFN2-xTB are parametrised for H to Rn; CHGNet was trained on H to Pu.
XTB_ELEMENTS = frozenset(chemical_symbols[1:87])
CHGNET_ELEMENTS = frozenset(chemical_symbols[1:95])


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
    kwargs
        Fixed keyword arguments of its recipes (e.g. the xTB method).
    ase_optimizer
        Whether relaxes use an ASE optimizer (fmax, max_steps → opt_params); VASP
        relaxes with its own (fmax → EDIFFG = -fmax, max_steps → NSW).
    """

    module: str
    packages: tuple[str, ...]
    elements: frozenset[str] | None
    batch_size: int
    kwargs: tuple[tuple[str, Any], ...] = ()
    ase_optimizer: bool = True

    def recipe(self, step: str) -> Callable:
        """The quacc job function for `relax` or `static`, with the fixed kwargs bound."""
        function = getattr(importlib.import_module(self.module), f"{step}_job")
        return functools.partial(function, **dict(self.kwargs))


CALCULATORS: dict[str, Calculator] = {
    "emt": Calculator("quacc.recipes.emt.core", ("ase",), EMT_ELEMENTS, batch_size=50),
    "lj": Calculator("quacc.recipes.lj.core", ("ase",), None, batch_size=200),
    "tblite-gfn2": Calculator(
        "quacc.recipes.tblite.core", ("tblite",), XTB_ELEMENTS, 10, (("method", "GFN2-xTB"),)
    ),
    "tblite-gfn1": Calculator(
        "quacc.recipes.tblite.core", ("tblite",), XTB_ELEMENTS, 10, (("method", "GFN1-xTB"),)
    ),
    "chgnet": Calculator("poscarflow.chgnet", ("chgnet", "torch"), CHGNET_ELEMENTS, 20),
    "vasp": Calculator(
        "quacc.recipes.vasp.core",
        ("custodian",),
        None,
        1,
        (("preset", "DefaultSetGGA"),),
        ase_optimizer=False,
    ),
}


def get_calculator(name: str) -> Calculator:
    """Look up a calculator by its config name, with the known names on error."""
    try:
        return CALCULATORS[name]
    except KeyError:
        raise ValueError(
            f"unknown calculator {name!r}; known: {', '.join(sorted(CALCULATORS))}"
        ) from None
