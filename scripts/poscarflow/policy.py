"""The restart policy file (Alchemiscale's TaskRestartPattern) and resource escalation.

A policy maps error patterns (regular expressions searched in a failure's message and
traceback) and failure classes to a number of allowed restarts. The file is named in
config/config.yaml (`restart_policy`), validated against its JSON Schema when the
workflow starts, and reaches jobs in their request like every other setting.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import yaml

from poscarflow.files import atomic_path

SCHEMA = Path(__file__).resolve().parent / "schemas" / "restart_policy.schema.yaml"
# Failure classes a policy can name besides patterns; bad input is never restarted.
CLASSES = (
    "unconverged",
    "oom",
    "timeout",
    "node_failure",
    "infrastructure",
    "custodian",
    "error",
)
NEVER = "bad_input"
HEADER = (
    "# Restart policy (schema: scripts/poscarflow/schemas/restart_policy.schema.yaml):\n"
    "# pattern (regex searched in a failure's message and traceback) or\n"
    f"# class:<{'|'.join(CLASSES)}> -> allowed restarts.\n"
    "# escalation: after oom/timeout, mem_mb/runtime grow by `factor`, up to the caps.\n"
    "# Edit the restarts with `poscarflow policy add|get|remove|clear`.\n"
)


def read_file(path: str | Path) -> dict[str, Any]:
    """The validated policy file with defaults filled in; empty policy if it is missing."""
    from snakemake.utils import validate

    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError:
        data = {}
    validate(data, str(SCHEMA), set_default=True)
    for pattern in data["restarts"]:
        if not pattern.startswith("class:"):
            try:
                re.compile(pattern)
            except re.error as err:
                raise ValueError(f"{path}: pattern {pattern!r} is not a regex: {err}") from err
    return data


def read_policy(path: str | Path) -> dict[str, int]:
    """Pattern or class → allowed restarts."""
    return {str(k): int(v) for k, v in read_file(path)["restarts"].items()}


def read_escalation(path: str | Path) -> dict[str, float]:
    """How resources grow after out-of-memory or out-of-time failures, with their caps."""
    return read_file(path)["escalation"]


def write_policy(policy: dict[str, int], path: str | Path) -> None:
    """Write the policy's restarts (atomically, patterns sorted), keeping its escalation."""
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError:
        data = {}
    data["restarts"] = dict(sorted(policy.items()))
    with atomic_path(path) as tmp:
        tmp.write_text(HEADER + yaml.safe_dump(data, sort_keys=False))


def add(patterns: list[str], allowed: int, path: str | Path) -> dict[str, int]:
    """Add patterns; a pattern already there takes the newest count (Alchemiscale)."""
    for pattern in patterns:
        if pattern.startswith("class:"):
            if pattern[6:] not in CLASSES:
                raise ValueError(f"unknown class {pattern[6:]!r}; known: {', '.join(CLASSES)}")
        else:
            re.compile(pattern)
    policy = read_policy(path) | dict.fromkeys(patterns, allowed)
    write_policy(policy, path)
    return policy


def remove(patterns: list[str], path: str | Path) -> dict[str, int]:
    """Remove patterns (absent ones are ignored)."""
    policy = {k: v for k, v in read_policy(path).items() if k not in patterns}
    write_policy(policy, path)
    return policy


def matching_rule(failure: str, text: str, policy: dict[str, int]) -> str | None:
    """The policy entry that covers a failure: its class, else the first matching pattern."""
    if failure == NEVER:
        return None
    if f"class:{failure}" in policy:
        return f"class:{failure}"
    return next((p for p in policy if not p.startswith("class:") and re.search(p, text)), None)


def escalated(base: int, attempt: int, seen: int, escalation: dict[str, float], cap: str) -> int:
    """A resource grown by the escalation factor once per Snakemake retry (`attempt`) or
    per failure of its kind recorded in the batch's histories (`seen`), whichever is
    more, so the growth survives a restart of Snakemake. Capped by `escalation[cap]`;
    rounded up, since SLURM takes whole minutes and megabytes."""
    grown = base * escalation["factor"] ** max(attempt - 1, seen)
    return math.ceil(min(grown, max(escalation[cap], base)))
