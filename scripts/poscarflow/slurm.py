"""What SLURM says about the job a calculation runs in (scontrol, squeue)."""

from __future__ import annotations

import os
import subprocess

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
