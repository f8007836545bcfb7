"""What SLURM says: the state and time left of the job a calculation runs in
(scontrol, squeue), and whether a partition can hold a job at all (sinfo): a job that no
node of its partition can hold would sit PENDING (reason PartitionConfig) forever, and
SLURM says nothing else about it.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
from typing import Any

logger = logging.getLogger("poscarflow.slurm")

SINFO_TIMEOUT = 30  # seconds; sinfo waits for slurmctld, which may be busy or down

# SLURM job states → failure classes of the restart policy.
SLURM_CLASSES = {
    "OUT_OF_MEMORY": "oom",
    "TIMEOUT": "timeout",
    "DEADLINE": "timeout",
    "NODE_FAIL": "node_failure",
    "PREEMPTED": "node_failure",
    "BOOT_FAIL": "node_failure",
}


def _ask(*cmd: str) -> str:
    """A SLURM command's output, or "" when SLURM does not answer."""
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=20,
                              check=False).stdout  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return ""


def job_state(job_id: str | None) -> str | None:
    """The state SLURM reports for a job (kept for MinJobAge after it ends), or None.

    A job one of whose processes the cgroup killed for memory (say, the calculation,
    while Snakemake in the job lived on) ends FAILED, not OUT_OF_MEMORY; SLURM then says
    so only in the job's log ("Detected 1 oom-kill event(s)"), which is read here.
    """
    if not job_id:
        return None
    out = _ask("scontrol", "show", "job", "-o", job_id)
    fields = dict(f.split("=", 1) for f in out.split() if "=" in f)
    state = fields.get("JobState")
    if state == "FAILED" and "oom-kill event" in _tail(fields.get("StdErr")):
        return "OUT_OF_MEMORY"
    return state


def _tail(path: str | None, size: int = 20_000) -> str:
    """The end of a text file, or "" if it cannot be read."""
    try:
        with open(path or "", "rb") as handle:
            handle.seek(max(0, os.fstat(handle.fileno()).st_size - size))
            return handle.read().decode(errors="replace")
    except OSError:
        return ""


def time_left(job_id: str | None) -> float | None:
    """Seconds left in a SLURM job (`squeue %L`: M:SS, H:MM:SS or D-HH:MM:SS)."""
    if not job_id:
        return None
    out = _ask("squeue", "-h", "-j", job_id, "-o", "%L").strip()
    days, _, clock = out.rpartition("-")
    try:
        parts = [int(p) for p in clock.split(":")]
    except ValueError:
        return None  # UNLIMITED, NOT_SET, INVALID, or no answer
    seconds = sum(p * 60**i for i, p in enumerate(reversed(parts)))
    return seconds + int(days or 0) * 86400


def submits_to_slurm(workflow: Any) -> str | None:
    """The partition a Snakemake run submits to (profiles/slurm sets `slurm_partition`
    among the default resources), or None for a local run or a job inside SLURM."""
    if workflow.remote_exec or not workflow.resource_settings.default_resources:
        return None
    for arg in workflow.resource_settings.default_resources.args or []:
        name, _, value = arg.partition("=")
        if name == "slurm_partition":
            return value.strip("'\"")
    return None


def check_request(partition: str, cpus: int, mem_mb: int) -> None:
    """Raise if no node of `partition` can hold a job of `cpus` CPUs and `mem_mb` MB.

    Reads the CPUs and memory of every node of the partition from `sinfo -h -p PART -N
    -o "%c %m"`; the job fits if one node has both. Does nothing where SLURM's `sinfo` is
    not installed, or does not answer (logged: sbatch will then say what is wrong).

    Parameters
    ----------
    partition : str
        The SLURM partition (sbatch -p), or several, comma-separated: the job then fits
        if it fits one of them.
    cpus : int
        CPUs one job asks for (for a group job: the sum of its jobs' threads).
    mem_mb : int
        Memory in MB one job asks for (sbatch --mem).

    Raises
    ------
    ValueError
        One line that says what was asked, what the partition offers and what to
        change; also when the partition has no nodes (or does not exist).
    """
    shapes = _node_shapes(partition)
    if shapes is None:
        return
    if not shapes:
        raise ValueError(
            f"SLURM partition {partition!r} has no nodes (`sinfo -p {partition}` lists "
            "none): is it spelt right? `sinfo -s` lists the partitions"
        )
    if any(c >= cpus and m >= mem_mb for c, m in shapes):
        return
    largest = _largest(shapes)
    offers = ", or ".join(f"{c} CPUs and {m} MB" for c, m in largest)
    node = "node has" if len(largest) == 1 else "nodes have"
    raise ValueError(
        f"a job of {cpus} CPUs and {mem_mb} MB cannot run in SLURM partition "
        f"{partition!r} (it would stay PENDING): its largest {node} {offers}; lower "
        "`group-components` in profiles/slurm/config.yaml (batches per job), or "
        "`batch_size` in config/config.yaml, or the rules' `threads`/`mem_mb`, until "
        "a job fits one node"
    )


def _node_shapes(partition: str) -> set[tuple[int, int]] | None:
    """(CPUs, memory in MB) of the partition's nodes; None if sinfo cannot tell."""
    sinfo = shutil.which("sinfo")
    if sinfo is None:
        return None
    cmd = [sinfo, "-h", "-p", partition, "-N", "-o", "%c %m"]
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, check=False, timeout=SINFO_TIMEOUT
        )
    except subprocess.TimeoutExpired:
        logger.warning("%s: no answer in %d s; request not checked", " ".join(cmd), SINFO_TIMEOUT)
        return None
    if proc.returncode != 0:
        logger.warning("%s failed; request not checked: %s", " ".join(cmd), proc.stderr.strip())
        return None
    shapes = set()
    for line in proc.stdout.splitlines():
        numbers = re.findall(r"\d+", line)  # memory can read "22900+" in some versions
        if len(numbers) == 2:
            shapes.add((int(numbers[0]), int(numbers[1])))
    return shapes


def _largest(shapes: set[tuple[int, int]]) -> list[tuple[int, int]]:
    """The node shapes that no other has more CPUs and more memory than, most CPUs first."""
    return sorted(
        (
            (c, m)
            for c, m in shapes
            if not any(c2 >= c and m2 >= m and (c2, m2) != (c, m) for c2, m2 in shapes)
        ),
        reverse=True,
    )
