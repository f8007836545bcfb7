"""The restart policy file: Alchemiscale's add/get/remove, its schema, escalation."""

from __future__ import annotations

from pathlib import Path

import pytest

from poscarflow import policy
from poscarflow.history import append_history, failures, read_history


def test_policy_add_get_remove_clear_like_alchemiscale(tmp_path: Path) -> None:
    path = tmp_path / "restart_policy.yaml"
    policy.add(["string1", "string2", "string3"], 5, path)
    assert policy.add(["string1", "string4", "string5"], 3, path) == {
        "string1": 3, "string2": 5, "string3": 5, "string4": 3, "string5": 3,
    }  # fmt: skip
    assert policy.remove(["string2", "string3"], path) == {
        "string1": 3, "string4": 3, "string5": 3,
    }  # fmt: skip
    assert policy.read_policy(path) == {"string1": 3, "string4": 3, "string5": 3}
    policy.write_policy({}, path)
    assert policy.read_policy(path) == {}
    with pytest.raises(ValueError, match="unknown class 'oops'"):
        policy.add(["class:oops"], 1, path)


def test_policy_file_is_validated_against_its_schema(tmp_path: Path) -> None:
    path = tmp_path / "restart_policy.yaml"
    path.write_text("restarts: {class:oops: 1}\n")
    with pytest.raises(Exception, match="class:oops"):
        policy.read_policy(path)
    path.write_text("restarts: {'[unclosed': 1}\n")
    with pytest.raises(ValueError, match="is not a regex"):
        policy.read_policy(path)
    path.write_text("escalation: {factor: 2}\n")
    assert policy.read_escalation(path) == {"factor": 2, "max_mem_mb": 256000, "max_runtime": 10080}
    assert policy.read_policy(tmp_path / "missing.yaml") == {}


def test_resources_escalate_with_recorded_failures_and_reset(tmp_path: Path) -> None:
    escalation = policy.read_escalation(tmp_path / "none.yaml")
    histories = [tmp_path / "a.jsonl", tmp_path / "b.jsonl"]

    def mem(attempt: int, esc: dict = escalation) -> int:
        seen = max(failures(read_history(h), "oom") for h in histories)
        return policy.escalated(1000, attempt, seen, esc, "max_mem_mb")

    assert mem(1) == 1000
    assert mem(3) == 2250  # Snakemake's 3rd attempt
    # rounded up: a 1-minute job is retried with 2 minutes, not 1.5 truncated to 1
    assert policy.escalated(1, 2, 0, escalation, "max_runtime") == 2
    for _ in range(2):  # two out-of-memory ends recorded for b (a restart of Snakemake)
        append_history(histories[1], {"event": "end", "step": "relax", "failure": "oom"})
    assert mem(1) == 2250
    assert failures(read_history(histories[1]), "timeout") == 0
    assert mem(1, escalation | {"factor": 2, "max_mem_mb": 3000}) == 3000  # capped
    append_history(histories[1], {"event": "reset", "step": "relax"})
    assert mem(1) == 1000
