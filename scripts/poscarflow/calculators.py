"""The calculator registry: which quacc recipes compute relax and static for a name.

Adding a calculator is one entry here (plus its extra in pyproject.toml and an enum value
in the config schema): each entry says which recipes compute relax and static, how a
relax's settings become the recipe's arguments, and which quacc settings its jobs need,
so the code that runs a calculation has no per-calculator branch. A recipe module of
ours (poscarflow.chgnet) is part of the jobs' code fingerprint like any module they
import. Recipes are named by import path so that reading the registry at DAG-build time
imports no calculator.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ase.data import chemical_symbols

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

# ASE's EMT has parameters for these elements only (ase.calculators.emt.parameters).
EMT_ELEMENTS = frozenset({"Ag", "Al", "Au", "C", "Cu", "H", "N", "Ni", "O", "Pd", "Pt"})
# GFN1/GFN2-xTB are parametrised for H to Rn; CHGNet was trained on H to Pu.
XTB_ELEMENTS = frozenset(chemical_symbols[1:87])
CHGNET_ELEMENTS = frozenset(chemical_symbols[1:95])
# SevenNet-0's type map: H to Pu without Po, At, Rn, Fr, Ra (no MPtrj data for them).
SEVENNET_ELEMENTS = frozenset(chemical_symbols[1:84] + chemical_symbols[89:95])


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
        Whether relaxes use an ASE optimizer (fmax, max_steps → opt_params, continued
        from the optimizer's restart file); VASP relaxes with its own (fmax → EDIFFG =
        -fmax, max_steps → NSW, less the ionic steps a continued relax already took).
    settings
        "module:function" returning the extra quacc settings of its jobs (VASP:
        custodian, the parallel command, the wall time), or None.
    gamma_only
        Whether it samples the Γ point only (xTB): a small periodic cell is warned about.
    calc_class
        "module:Class" of the ASE calculator its recipes build: `calc_kwargs` keys it does
        not accept are an error before anything runs. None accepts any key (VASP's
        INCAR tags are too many to list).
    own_kwargs
        `calc_kwargs` keys that our recipe takes itself, beyond `calc_class`'s (`device`
        of the machine-learned potentials: poscarflow.devices).
    batched
        Whether a batch's calculations run together as one TorchSim state in one process
        (`module` is poscarflow.batched, `kwargs` name its TorchSim model) rather than
        one at a time through quacc's recipes.
    """

    module: str
    packages: tuple[str, ...]
    elements: frozenset[str] | None
    batch_size: int
    kwargs: tuple[tuple[str, Any], ...] = ()
    ase_optimizer: bool = True
    settings: str | None = None
    calc_class: str | None = None
    gamma_only: bool = False
    own_kwargs: tuple[str, ...] = ()
    batched: bool = False

    def recipe(self, step: str) -> Callable:
        """The quacc job function for `relax` or `static`, with the fixed kwargs bound."""
        function = getattr(importlib.import_module(self.module), f"{step}_job")
        return functools.partial(function, **dict(self.kwargs))

    def quacc_settings(self) -> dict[str, Any]:
        """The quacc settings this calculator's jobs need beyond the checkpoint ones."""
        if self.settings is None:
            return {}
        module, function = self.settings.split(":")
        return getattr(importlib.import_module(module), function)()

    def unknown_kwargs(self, kwargs: dict[str, Any]) -> list[str]:
        """The keys of `kwargs` its calculator does not accept (imports it only if any)."""
        if not kwargs or self.calc_class is None:
            return []
        module, name = self.calc_class.split(":")
        cls = getattr(importlib.import_module(module), name)
        accepted = set(getattr(cls, "default_parameters", {}))
        accepted |= {
            p.name for p in inspect.signature(cls.__init__).parameters.values()
            if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and p.name != "self"
        }  # fmt: skip
        accepted -= set(dict(self.kwargs)) | {"atoms", "restart", "label", "directory"}
        accepted |= set(self.own_kwargs)
        return sorted(set(kwargs) - accepted)

    def relax_kwargs(self, params: dict[str, Any], workdir: Path) -> dict[str, Any]:
        """The relax recipe's keyword arguments for the relax settings `params`."""
        kwargs = dict(params.get("calc_kwargs", {})) | {"relax_cell": params["relax_cell"]}
        if not self.ase_optimizer:
            nsw = _steps_left(params["max_steps"], workdir)
            return kwargs | {"ediffg": -params["fmax"], "nsw": nsw}
        return kwargs | {"opt_params": _opt_params(params, workdir)}


def _steps_left(max_steps: int, workdir: Path) -> int:
    """The ionic steps a relax has left: max_steps less those of the attempts it continues
    (their path is in the attempt folder); all of them again when a restart the policy
    granted finds none left, as an ASE relax's restart does."""
    from poscarflow.files import read_frames
    from poscarflow.layout import PATH

    left = max_steps - max(0, len(read_frames(workdir / PATH)) - 1)
    return left if left > 0 else max_steps


def _opt_params(params: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """quacc's opt_params for an ASE optimizer that can be continued: its state at every
    step where a later attempt finds it, and a clean stop before the job's time limit."""
    import ase.optimize

    from poscarflow.layout import OPT_STATE
    from poscarflow.resume import deadline, resumable

    opt_params: dict[str, Any] = {
        "fmax": params["fmax"],
        "max_steps": params["max_steps"],
        "optimizer": resumable(getattr(ase.optimize, params["optimizer"])),
        "optimizer_kwargs": {"restart": str(workdir.resolve() / OPT_STATE)},
    }
    if (stop_at := deadline()) is not None:
        opt_params["stop_condition"] = lambda _: time.time() > stop_at
    return opt_params


CALCULATORS: dict[str, Calculator] = {
    "emt": Calculator(
        "quacc.recipes.emt.core",
        ("ase",),
        EMT_ELEMENTS,
        50,
        calc_class="ase.calculators.emt:EMT",
    ),
    "lj": Calculator(
        "quacc.recipes.lj.core", ("ase",), None, 200, calc_class="ase.calculators.lj:LennardJones"
    ),
    "tblite-gfn2": Calculator(
        "quacc.recipes.tblite.core",
        ("tblite",),
        XTB_ELEMENTS,
        10,
        (("method", "GFN2-xTB"),),
        calc_class="tblite.ase:TBLite",
        gamma_only=True,
    ),
    "tblite-gfn1": Calculator(
        "quacc.recipes.tblite.core",
        ("tblite",),
        XTB_ELEMENTS,
        10,
        (("method", "GFN1-xTB"),),
        calc_class="tblite.ase:TBLite",
        gamma_only=True,
    ),
    "chgnet": Calculator(
        "poscarflow.chgnet",
        ("chgnet", "torch"),
        CHGNET_ELEMENTS,
        20,
        calc_class="chgnet.model.dynamics:CHGNetCalculator",
        own_kwargs=("device",),
    ),
    "sevennet": Calculator(
        "poscarflow.sevennet",
        ("sevenn", "torch"),
        SEVENNET_ELEMENTS,
        20,
        calc_class="sevenn.calculator:SevenNetCalculator",
    ),
    # TorchSim's batched engine (poscarflow.batched): FIRE on one state per batch.
    "torchsim-lj": Calculator(
        "poscarflow.batched",
        ("torch-sim-atomistic", "torch"),
        None,
        200,
        (("potential", "lj"),),
        calc_class="torch_sim.models.lennard_jones:LennardJonesModel",
        batched=True,
    ),
    "torchsim-sevennet": Calculator(
        "poscarflow.batched",
        ("torch-sim-atomistic", "sevenn", "torch"),
        SEVENNET_ELEMENTS,
        100,
        (("potential", "sevennet"),),
        calc_class="sevenn.calculator:SevenNetCalculator",  # its model, modal, device
        batched=True,
    ),
    "vasp": Calculator(
        "poscarflow.vasp",  # quacc.recipes.vasp.core, with the ionic path and custodian's log
        ("custodian",),
        None,
        1,
        (("preset", "DefaultSetGGA"),),
        ase_optimizer=False,
        settings="poscarflow.vasp:vasp_settings",
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
