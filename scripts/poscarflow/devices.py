"""Where a machine-learned potential runs: the `device` setting of its calc_kwargs.

`device: auto` (the default, also when the key is absent) picks the GPU when torch sees
one (`torch.cuda.is_available()`), else the CPU; `cpu` and `cuda` force one. A job that
asks for `cuda` on a machine without a CUDA GPU fails with one line saying so, instead
of running slowly on the CPU.

The setting is a calc_kwarg, so an explicit value is part of the reuse key (switching
`cpu` → `cuda` recomputes); leaving it out (auto) keeps the key the same wherever the
job ran, and the summary records the device used (`device`).
"""

from __future__ import annotations

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(device: str = "auto") -> str:
    """The torch device to run on ("cpu" or "cuda") for the setting `device`.

    Raises
    ------
    ValueError
        For a setting other than auto, cpu or cuda, or cuda where torch finds no GPU.
    """
    import torch

    name = str(device).lower()
    if name not in DEVICES:
        raise ValueError(f"device: {device!r} is not one of {', '.join(DEVICES)}")
    available = torch.cuda.is_available()
    if name == "auto":
        return "cuda" if available else "cpu"
    if name == "cuda" and not available:
        raise ValueError(
            f"device: cuda was asked for, but torch {torch.__version__} finds no CUDA GPU "
            "on this machine (torch.cuda.is_available() is False); use device: auto or cpu"
        )
    return name
