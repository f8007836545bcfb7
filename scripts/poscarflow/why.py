"""`poscarflow why`: what changed since each calculation's results were made.

It compares the plan for the current config, code and structure files with the
provenance recorded in each `summary.json`, not with Snakemake's metadata, so it also
explains calculations inside a batch that Snakemake sees only as a whole.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from poscarflow.files import read_json
from poscarflow.fingerprint import job_code
from poscarflow.layout import STEPS, Layout

if TYPE_CHECKING:
    from poscarflow.plan import Plan
    from poscarflow.records import Summary


def _flat(data: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as dotted keys: {"relax": {"fmax": 0.01}} → {"relax.fmax": 0.01}."""
    if not isinstance(data, dict) or not data:
        return {prefix: data}
    flat = {}
    for key, value in data.items():
        flat |= _flat(value, f"{prefix}.{key}" if prefix else str(key))
    return flat


def _changes(old: dict, new: dict) -> list[str]:
    """Lines `key: old → new` for every key whose value differs."""
    old, new = _flat(old), _flat(new)
    missing = "(unset)"
    return [
        f"{key}: {old.get(key, missing)!r} → {new.get(key, missing)!r}"
        for key in sorted(set(old) | set(new))
        if old.get(key, missing) != new.get(key, missing)
    ]


class Staleness:
    """Why calculations would be recomputed, for one plan and results folder.

    The jobs' code fingerprint is computed once, and each calculation's reasons once (a
    static asks for its relax's), so that `poscarflow status` and `why` on 10,000
    structures read each summary once and hash our modules once.
    """

    def __init__(self, plan: Plan, results: str | Path = "results") -> None:
        self.plan = plan
        self.layout = Layout(Path(results))
        self.code = job_code(plan.config["calculator"])
        self._known: dict[tuple[str, str], list[str]] = {}

    def reasons(self, sid: str, step: str) -> list[str]:
        """Why one calculation would be recomputed; empty if it would be reused."""
        if (sid, step) not in self._known:
            return self.compare(sid, step, read_json(self.layout.summary(sid, step)))
        return self._known[(sid, step)]

    def compare(self, sid: str, step: str, recorded: Summary | None) -> list[str]:
        """`reasons`, for a caller that has read the calculation's summary already."""
        if (sid, step) not in self._known:
            self._known[(sid, step)] = self._reasons(sid, step, recorded)
        return self._known[(sid, step)]

    def _reasons(self, sid: str, step: str, recorded: Summary | None) -> list[str]:
        spec = self.plan.specs[sid][step]
        if recorded is None:
            return ["not computed yet"]
        lines = []
        old_spec = recorded.get("parameters", {})
        if old_spec != spec:
            old_hash = old_spec.get("structure_hash")
            if step == "relax" and old_hash != spec["structure_hash"]:
                lines.append(f"input {spec['path']} changed (structure hash {old_hash} → "
                             f"{spec['structure_hash']})")  # fmt: skip
            skip = {"structure_hash"}
            lines += [f"parameter {c}" for c in _changes(
                {k: v for k, v in old_spec.items() if k not in skip},
                {k: v for k, v in spec.items() if k not in skip},
            )]  # fmt: skip
        old_code, code = recorded.get("code", {}), self.code
        if old_code.get("digest") != code["digest"]:
            lines += [f"code {c}" for c in _changes(old_code.get("modules", {}), code["modules"])]
            lines += [f"version {c}" for c in _changes(old_code.get("versions", {}),
                                                         code["versions"])]  # fmt: skip
        if step == "static" and self.reasons(sid, "relax"):
            lines.append("its relax is recomputed")
        return lines


def reasons(plan: Plan, results: str, sid: str, step: str) -> list[str]:
    """Why one calculation would be recomputed; empty if it would be reused."""
    return Staleness(plan, results).reasons(sid, step)


def why(plan: Plan, results: str = "results", ids: list[str] | None = None) -> list[str]:
    """Report lines for the given structure ids (default: all).

    Raises
    ------
    ValueError
        If an id is not one of the plan's structures.
    """
    ids = plan.select(ids)
    staleness = Staleness(plan, results)
    lines, stale = [], 0
    for sid in ids:
        found = [(step, r) for step in STEPS for r in staleness.reasons(sid, step)]
        stale += bool(found)
        lines += [f"{sid} {step}: {reason}" for step, reason in found]
    total = len(ids)
    lines.append(f"{stale} of {total} structures would be recomputed.")
    return lines
