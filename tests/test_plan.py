"""Batches and per-structure parameters planned at DAG-build time."""

from __future__ import annotations

from pathlib import Path

import pytest

from poscarflow.plan import Plan, assign_batches
from tests.conftest import example_config


def _plan(tmp_path: Path, ids: list[str], **changes: object) -> Plan:
    for sid in ids:
        (tmp_path / f"{sid}.vasp").write_text("x")
    return Plan(example_config(structures=str(tmp_path), **changes), tmp_path / ".hashes.json")


def test_adding_one_structure_changes_one_batch() -> None:
    ids = [f"s{i:04d}" for i in range(1000)]
    before = assign_batches(ids, 50)
    after = assign_batches([*ids, "new"], 50)
    assert len(before) == 32
    assert sum(len(b) for b in before.values()) == 1000
    changed = [name for name in after if after[name] != before.get(name)]
    assert len(changed) == 1
    assert "new" in after[changed[0]]


def test_batch_size_one_is_one_job_per_structure() -> None:
    assert assign_batches(["a", "b"], 1) == {"a": ["a"], "b": ["b"]}


def test_override_changes_one_structure_only(tmp_path: Path) -> None:
    base = _plan(tmp_path, ["a", "b"])
    overrides = {"a": {"relax": {"fmax": 0.001}}}
    tight = Plan(base.config | {"overrides": overrides}, base.hash_cache)
    assert tight.specs["a"]["relax"]["relax"]["fmax"] == 0.001
    assert tight.specs["b"] == base.specs["b"]
    assert tight.specs["a"]["static"] == base.specs["a"]["static"]


def test_equal_values_spelled_differently_give_equal_params(tmp_path: Path) -> None:
    one = _plan(tmp_path, ["a"], relax=example_config()["relax"] | {"fmax": 1})
    relax = example_config()["relax"] | {"fmax": 1.0}
    one_point_zero = Plan(one.config | {"relax": relax}, one.hash_cache)
    assert repr(one.batch_params("relax", "batch0")) == repr(
        one_point_zero.batch_params("relax", "batch0")
    )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"nope": {"relax": {"fmax": 0.1}}}, "unknown structure ids: nope"),
        ({"a": {"relax": {"fmx": 0.1}}}, r"overrides\.a\.relax: unknown key\(s\) fmx"),
    ],
)
def test_bad_overrides_are_named(tmp_path: Path, overrides: dict, message: str) -> None:
    plan = _plan(tmp_path, ["a"], overrides=overrides)
    with pytest.raises(ValueError, match=message):
        _ = plan.specs
