"""poscarflow.slurm.check_request against the real local cluster (scripts/slurm-local.sh,
started by the `partition` fixture of tests/test_slurm.py if it is not up)."""

from __future__ import annotations

import shutil
import subprocess
import time

import pytest

from poscarflow.slurm import _largest, check_request
from tests import test_slurm
from tests.test_slurm import _sh

# The local cluster's default partition; starts the cluster if it is not up (and stops it
# after this module), skips where it cannot be started.
partition = test_slurm.partition


def node(partition: str) -> tuple[int, int]:
    """CPUs and memory (MB) of the local cluster's one node, as sinfo reports them."""
    out = _sh("sinfo", "-h", "-p", partition, "-N", "-o", "%c %m").stdout.split()
    cpus, mem = (int(v.rstrip("+")) for v in out[:2])
    return cpus, mem


def test_largest_node_shapes() -> None:
    shapes = {(64, 256_000), (8, 1_000_000), (32, 128_000), (8, 64_000)}
    assert _largest(shapes) == [(64, 256_000), (8, 1_000_000)]
    assert _largest({(2, 1000)}) == [(2, 1000)]


def test_nothing_checked_without_sinfo(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no sinfo here
    assert shutil.which("sinfo") is None
    check_request("no-such-partition", 10**6, 10**9)


@pytest.mark.slow
def test_request_that_fits_passes(partition: str) -> None:
    cpus, mem = node(partition)
    check_request(partition, 1, 100)
    check_request(partition, cpus, mem)  # the whole node


@pytest.mark.slow
def test_more_cpus_than_the_node_is_refused_with_the_numbers(partition: str) -> None:
    cpus, mem = node(partition)
    with pytest.raises(ValueError, match="group-components") as refused:
        check_request(partition, cpus + 2, 8000)
    message = str(refused.value)
    assert "\n" not in message
    assert f"a job of {cpus + 2} CPUs and 8000 MB cannot run in SLURM partition" in message
    assert f"its largest node has {cpus} CPUs and {mem} MB" in message


@pytest.mark.slow
def test_more_memory_than_the_node_is_refused(partition: str) -> None:
    _, mem = node(partition)
    with pytest.raises(ValueError, match=f"a job of 1 CPUs and {mem + 1} MB cannot run"):
        check_request(partition, 1, mem + 1)


@pytest.mark.slow
def test_unknown_partition_is_refused(partition: str) -> None:
    with pytest.raises(ValueError, match="'no-such-partition' has no nodes"):
        check_request("no-such-partition", 1, 100)


@pytest.mark.slow
def test_refused_request_is_one_slurm_would_hold_forever(partition: str) -> None:
    """What check_request refuses, sbatch accepts and SLURM keeps PENDING (PartitionConfig)
    with no other message: the reason the check exists."""
    cpus, _ = node(partition)
    with pytest.raises(ValueError, match="cannot run"):
        check_request(partition, cpus + 2, 1000)
    submitted = _sh(
        "sbatch", "--parsable", "-p", partition, "-c", str(cpus + 2), "--mem", "1000",
        "-o", "/dev/null", "--wrap", "true",
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip().split(";")[0]
    try:
        state = ""
        for _ in range(30):
            state = _sh("squeue", "-h", "-j", job_id, "-o", "%T %r").stdout.strip()
            if state == "PENDING PartitionConfig":
                break
            time.sleep(0.5)
        assert state == "PENDING PartitionConfig"
    finally:
        subprocess.run(["scancel", job_id], check=False)


@pytest.mark.slow
def test_oversized_group_job_is_refused_before_submitting(workflow, partition: str) -> None:
    """Regression: 4 batches per group job (4 CPUs) on a 2-CPU node sat PENDING forever;
    now `snakemake --profile profiles/slurm` (and -n) says so and submits nothing."""
    cpus, _ = node(partition)
    workflow.config["batch_size"] = 1
    workflow.write_config()
    for i in range(cpus + 1):
        shutil.copy2(test_slurm.REPO / "config/structures/Cu_fcc.vasp",
                     workflow.structures / f"Cu{i}.vasp")  # fmt: skip
    profile = ("--profile", "profiles/slurm", "--group-components", f"calculation={cpus + 1}")
    for dry in ((), ("-n",)):
        proc = workflow.run(
            *profile, *dry, check=False, env={"POSCARFLOW_SLURM_PARTITION": partition}
        )
        assert proc.returncode != 0
        assert f"poscarflow: a job of {cpus + 1} CPUs" in proc.output
        assert "submitted with SLURM jobid" not in proc.output
