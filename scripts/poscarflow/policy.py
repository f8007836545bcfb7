"""Restart policy (Alchemiscale's TaskRestartPattern) and the task history it counts.

A policy maps error patterns (regular expressions searched in a failure's message and
traceback) and failure classes to a number of allowed restarts. Every attempt of every
calculation is appended to `results/calcs/<id>/history.jsonl`, beside its results and
never deleted by a rerun, so budgets survive a restart of Snakemake.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import yaml

from poscarflow.files import atomic_path
from poscarflow.resume import interrupted

POLICY_FILE = Path("config/restart_policy.yaml")
# Failure classes a policy can name besides patterns; bad input is never restarted.
CLASSES = ("unconverged", "oom", "timeout", "node_failure", "error")
NEVER = "bad_input"


ESCALATION = {"factor": 1.5, "max_mem_mb": 256_000, "max_runtime": 7 * 24 * 60}


def _read_file(path: str | Path) -> dict:
    try:
        return yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError:
        return {}


def read_escalation(path: str | Path = POLICY_FILE) -> dict[str, float]:
    """How resources grow after out-of-memory or out-of-time failures, with their caps."""
    return ESCALATION | _read_file(path).get("escalation", {})


def read_policy(path: str | Path = POLICY_FILE) -> dict[str, int]:
    """Pattern or class → allowed restarts; empty if there is no policy file."""
    policy = _read_file(path).get("restarts", {})
    for pattern in policy:
        if not pattern.startswith("class:"):
            re.compile(pattern)  # a bad regex is an error here, not at failure time
    return {str(k): int(v) for k, v in policy.items()}


def write_policy(policy: dict[str, int], path: str | Path = POLICY_FILE) -> None:
    """Write the policy file (atomically), patterns sorted."""
    text = (
        "# Restart policy: pattern (regex searched in a failure's message and traceback)\n"
        "# or class:<unconverged|oom|timeout|node_failure|error> -> allowed restarts.\n"
        "# escalation: after oom/timeout, mem_mb/runtime grow by `factor`, up to the caps.\n"
        "# Edit with `poscarflow policy add|get|remove|clear`.\n"
    )
    data = _read_file(path) | {"restarts": dict(sorted(policy.items()))}
    with atomic_path(path) as tmp:
        tmp.write_text(text + yaml.safe_dump(data, sort_keys=False))


def add(patterns: list[str], allowed: int, path: str | Path = POLICY_FILE) -> dict[str, int]:
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


def remove(patterns: list[str], path: str | Path = POLICY_FILE) -> dict[str, int]:
    """Remove patterns (absent ones are ignored)."""
    policy = {k: v for k, v in read_policy(path).items() if k not in patterns}
    write_policy(policy, path)
    return policy


def history_file(calc_parent: Path) -> Path:
    """The history of one structure's calculations (both steps)."""
    return calc_parent / "history.jsonl"


def read_history(calc_parent: Path, step: str | None = None) -> list[dict[str, Any]]:
    """Attempts recorded for a structure (optionally one step), oldest first."""
    try:
        lines = history_file(calc_parent).read_text().splitlines()
    except FileNotFoundError:
        return []
    records = [json.loads(line) for line in lines if line.strip()]
    return [r for r in records if step is None or r.get("step") == step]


def append_history(calc_parent: Path, record: dict[str, Any]) -> None:
    """Append one record; a single short write, so concurrent readers see whole lines."""
    calc_parent.mkdir(parents=True, exist_ok=True)
    with history_file(calc_parent).open("a") as handle:
        handle.write(json.dumps(record, sort_keys=True) + "\n")


def matching_rule(failure: str, text: str, policy: dict[str, int]) -> str | None:
    """The policy entry that covers a failure: its class, else the first matching pattern."""
    if failure == NEVER:
        return None
    if f"class:{failure}" in policy:
        return f"class:{failure}"
    return next((p for p in policy if not p.startswith("class:") and re.search(p, text)), None)


def restarts_used(history: list[dict[str, Any]], rule: str) -> int:
    """Restarts already spent on `rule` since the last reset."""
    used = 0
    for record in history:
        if record.get("event") == "reset":
            used = 0
        elif record.get("rule") == rule and record.get("restarted"):
            used += 1
    return used


def escalated(base: int, failure: str, attempt: int, folders: list[Path]) -> int:
    """A resource for a batch job: `base` grown by the escalation factor once per retry
    (Snakemake's `attempt`) or per `failure` recorded for any of the batch's structures
    since its last reset, whichever is more, so it survives a restart of Snakemake.
    Rounded up: SLURM takes whole minutes and megabytes."""
    settings = read_escalation()
    seen = 0
    for folder in folders:
        count = 0
        records = read_history(folder)
        dead = interrupted(records)  # an attempt SLURM ended, not yet recorded
        for record in records + ([dead] if dead else []):
            if record.get("event") == "reset":
                count = 0
            elif record.get("event") == "end" and record.get("failure") == failure:
                count += 1
        seen = max(seen, count)
    cap = settings["max_mem_mb"] if failure == "oom" else settings["max_runtime"]
    grown = base * settings["factor"] ** max(attempt - 1, seen)
    return math.ceil(min(grown, max(cap, base)))
