"""CHGNet relax and static as quacc jobs of ours (quacc has no CHGNet recipe).

Shaped like quacc's own EMT recipes: pick the calculator, then quacc's Runner and
Summarize. The `chgnet` package ships its pretrained weights, so nothing is downloaded.
`device:` (auto | cpu | cuda) picks where it runs (poscarflow.devices).
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING

from poscarflow.devices import resolve_device
from poscarflow.mlip_jobs import ase_jobs

if TYPE_CHECKING:
    from typing import Any

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


static_job, relax_job = ase_jobs("CHGNet", _calculator)
