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

from poscarflow.devices import resolve_device
from poscarflow.mlip_jobs import ase_jobs

if TYPE_CHECKING:
    from typing import Any

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


static_job, relax_job = ase_jobs("SevenNet", _calculator)
