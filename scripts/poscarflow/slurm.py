"""What SLURM says: the state and time left of the job a calculation runs in
(scontrol, squeue; sacct when slurmctld does not answer), and whether a partition can
hold a job at all (sinfo): a job that no node of its partition can hold would sit PENDING
(reason PartitionConfig) forever, and SLURM says nothing else about it.

And what Snakemake under profiles/slurm needs to live through a slurmctld that does not
answer for a while: down, restarting, too busy (`tolerate_controller_outages`; README,
"When slurmctld does not answer"). Jobs on the nodes go on running, and those that end
meanwhile are reported once slurmctld is back; but three SLURM clients give up early:

- the SLURM plugin's status query. When none of its attempts in a round answers (squeue;
  or sacct, which the plugin switches to while `scontrol show config` does not answer,
  and which fails at once on a cluster without accounting), the plugin reports none of
  the jobs and stops asking about them: Snakemake then waits for them forever.
  `keep_unanswered_jobs` hands such jobs back to be asked about in the next round.
- srun and sbatch, which give up after SLURM's MessageTimeout (about 10 s): an srun in a
  job (VASP's parallel command) then fails its calculation; a failed sbatch counts as a
  failed attempt of its job and is retried at once, so three in a row end the job for
  good. `use_waiting_wrappers` puts this package's `bin/srun` and `bin/sbatch` first on
  PATH, for Snakemake and (sbatch's --export=ALL) its jobs: they run `python -m
  poscarflow.slurm srun|sbatch`, which waits (at most WAIT_FOR_CONTROLLER seconds) until
  `scontrol ping` answers, then runs SLURM's own command in its place.

And that the batches of one SLURM job run side by side (`run_group_jobs_side_by_side`):
the plugin's Snakemake inside a job runs a group job's batches one at a time, each in an
srun job step it waits for (plugin issue 469); with its local executor instead, they run
`--cores` at a time, in the job's own step, which needs no srun (nor slurmctld) to start.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from poscarflow import settings

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

logger = logging.getLogger("poscarflow.slurm")

SINFO_TIMEOUT = 30  # seconds; sinfo waits for slurmctld, which may be busy or down
ASK_TIMEOUT = 20  # seconds; a command for a down slurmctld gives up after about 18
WAIT_FOR_CONTROLLER = 600  # seconds srun and sbatch wait for slurmctld to answer
WRAPPERS = Path(__file__).resolve().parent / "bin"  # srun and sbatch that wait
JOBSTEP_ARGS = re.compile(r"--executor slurm-jobstep|--jobs \d+|--slurm-jobstep-[\w-]+")
NO_ANSWER = "NO_ANSWER"  # job_state when neither slurmctld nor the accounting answers

# SLURM job states → failure classes of the restart policy.
SLURM_CLASSES = {
    "OUT_OF_MEMORY": "oom",
    "TIMEOUT": "timeout",
    "DEADLINE": "timeout",
    "NODE_FAIL": "node_failure",
    "PREEMPTED": "node_failure",
    "BOOT_FAIL": "node_failure",
}


def _ask(*cmd: str) -> str | None:
    """A SLURM command's output, or None when it fails or does not answer in time
    (slurmctld down or busy, a job it no longer knows, ...; debug-logged)."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=ASK_TIMEOUT,
                              check=False, stdin=subprocess.DEVNULL)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as err:
        logger.debug("%s: no answer (%s)", " ".join(cmd), err)
        return None
    if proc.returncode != 0:
        logger.debug("%s failed: %s", " ".join(cmd), proc.stderr.strip()[-300:])
        return None
    return proc.stdout


def job_state(job_id: str | None) -> str | None:
    """The state SLURM reports for a job (kept for MinJobAge after it ends), or None
    for no job; NO_ANSWER when neither slurmctld nor the accounting (sacct) answers.

    A job one of whose job steps the cgroup killed for memory (say, VASP's srun, while
    the job's own step lived on) ends FAILED, not OUT_OF_MEMORY; SLURM then says
    so only in the job's log ("Detected 1 oom-kill event(s)"), which is read here.
    While slurmctld is down (or has forgotten the job) the state comes from sacct,
    which names no log: such a FAILED stays FAILED.
    """
    if not job_id:
        return None
    fields = _job_fields(job_id)
    if fields is None:
        accounted = _ask("sacct", "-j", job_id, "-X", "-n", "-P", "-o", "State")
        words = (accounted or "").split()  # "CANCELLED by 0": the state is the first word
        return words[0] if words else NO_ANSWER
    state = fields.get("JobState")
    if state == "FAILED" and "oom-kill event" in _tail(fields.get("StdErr")):
        return "OUT_OF_MEMORY"
    return state


def job_ending(job_id: str | None) -> bool:
    """Whether SLURM is ending a job (time limit, scancel, preemption: no longer RUNNING;
    COMPLETING during the KillWait seconds before SIGKILL); False outside SLURM or
    when slurmctld does not answer."""
    fields = _job_fields(job_id) if job_id else None
    return fields is not None and fields.get("JobState") not in (None, "RUNNING")


def _job_fields(job_id: str) -> dict[str, str] | None:
    """`scontrol show job`'s fields of a job, or None when slurmctld does not answer."""
    out = _ask("scontrol", "show", "job", "-o", job_id)
    return None if out is None else dict(f.split("=", 1) for f in out.split() if "=" in f)


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
    out = _ask("squeue", "-h", "-j", job_id, "-o", "%L")
    if out is None:
        logger.warning(
            "squeue does not answer for job %s: its time limit is unknown, so a relax does "
            "not stop cleanly before it (an attempt SLURM ends continues in the next)",
            job_id,
        )
        return None
    days, _, clock = out.strip().rpartition("-")
    try:
        parts = [int(p) for p in clock.split(":")]
    except ValueError:
        return None  # UNLIMITED, NOT_SET, INVALID, or nothing
    seconds = sum(p * 60**i for i, p in enumerate(reversed(parts)))
    return seconds + int(days or 0) * 86400


def controller_answers() -> bool:
    """Whether slurmctld (or a backup controller) answers `scontrol ping`."""
    return "is UP" in (_ask("scontrol", "ping") or "")


def wait_for_controller(limit: float = WAIT_FOR_CONTROLLER, pause: float = 5.0) -> bool:
    """Wait until slurmctld answers, at most `limit` seconds; whether it does."""
    deadline = time.monotonic() + limit
    waited = False
    while not controller_answers():
        if time.monotonic() >= deadline:
            logger.warning("slurmctld still does not answer after %.0f s: going on", limit)
            return False
        if not waited:
            logger.warning("slurmctld does not answer: waiting (at most %.0f s)", limit)
            waited = True
        time.sleep(pause)
    if waited:
        logger.warning("slurmctld answers again")
    return True


def run_when_controller_answers(command: str, args: list[str]) -> NoReturn:
    """Replace this process with SLURM's own `command` (srun or sbatch) and `args`, once
    slurmctld answers or WAIT_FOR_CONTROLLER seconds have passed (then SLURM's command
    fails as it would have). Standard input is left for it (sbatch may read its script
    there)."""
    path = os.pathsep.join(
        p for p in os.environ.get("PATH", "").split(os.pathsep)
        if p and Path(p).resolve() != WRAPPERS
    )  # fmt: skip
    real = shutil.which(command, path=path)
    if real is None:
        raise SystemExit(f"poscarflow: SLURM's {command} is not on PATH")
    if shutil.which("scontrol"):  # else nothing can tell whether slurmctld answers
        wait_for_controller()
    os.execv(real, [real, *args])


def use_waiting_wrappers() -> None:
    """Put the srun and sbatch that wait for slurmctld (WRAPPERS) first on this process's
    PATH, for the commands it starts and the SLURM jobs they submit (the SLURM plugin
    submits with --export=ALL); they run `python -m poscarflow.slurm` with this Python."""
    paths = os.environ.get("PATH", "").split(os.pathsep)
    if str(WRAPPERS) not in paths:
        os.environ["PATH"] = os.pathsep.join([str(WRAPPERS), *paths])
    os.environ[settings.PYTHON] = sys.executable


def keep_unanswered_jobs(check: Callable[..., AsyncIterator[Any]]) -> Callable[..., Any]:
    """The SLURM plugin's `check_active_jobs`, changed to yield (keep asking about) every
    active job it neither yields (still running) nor reports (ended): the jobs of a round
    in which no status query answered. Logs a warning for such a round."""
    if getattr(check, "keeps_unanswered_jobs", False):
        return check

    async def check_active_jobs(self: Any, active_jobs: list[Any]) -> AsyncIterator[Any]:
        answered: set[int] = set()

        def noting(report: Callable[..., Any]) -> Callable[..., Any]:
            def noted(job_info: Any, *args: Any, **kwargs: Any) -> Any:
                answered.add(id(job_info))
                return report(job_info, *args, **kwargs)

            return noted

        self.report_job_success = noting(self.report_job_success)
        self.report_job_error = noting(self.report_job_error)
        try:
            async for job_info in check(self, active_jobs):
                answered.add(id(job_info))
                yield job_info
        finally:
            del self.report_job_success, self.report_job_error
        unanswered = [j for j in active_jobs if id(j) not in answered]
        if unanswered:
            self.logger.warning(
                f"poscarflow: SLURM did not answer about {len(unanswered)} job(s) (is "
                "slurmctld down or busy?); they are kept and asked about again"
            )
        for job_info in unanswered:
            yield job_info

    check_active_jobs.keeps_unanswered_jobs = True  # type: ignore[attr-defined]
    return check_active_jobs


def without_jobstep(args: Callable[[Any], str]) -> Callable[[Any], str]:
    """The SLURM plugin's `additional_general_args` (options of the Snakemake that runs a
    job's rules inside the job) without `--executor slurm-jobstep --jobs 1`: that executor
    runs a group job's batches one at a time, each in a job step it waits for (plugin
    issue 469), while the local executor runs them side by side, `--cores` at a time."""
    if getattr(args, "without_jobstep", False):
        return args

    def additional_general_args(self: Any) -> str:
        return JOBSTEP_ARGS.sub("", args(self)).strip()

    additional_general_args.without_jobstep = True  # type: ignore[attr-defined]
    return additional_general_args


def tolerate_controller_outages() -> None:
    """For Snakemake submitting to SLURM: keep the jobs of unanswered status queries
    (`keep_unanswered_jobs`, in the SLURM plugin) and let srun and sbatch wait for
    slurmctld (`use_waiting_wrappers`)."""
    try:
        from snakemake_executor_plugin_slurm import Executor
    except ImportError:  # not installed: this run does not submit with it
        pass
    else:
        Executor.check_active_jobs = keep_unanswered_jobs(Executor.check_active_jobs)
    use_waiting_wrappers()


def run_group_jobs_side_by_side() -> None:
    """For Snakemake submitting to SLURM: the batches of one SLURM job run at the same
    time, on the CPUs it asked for (`without_jobstep`, in the SLURM plugin)."""
    try:
        from snakemake_executor_plugin_slurm import Executor
    except ImportError:  # not installed: this run does not submit with it
        return
    Executor.additional_general_args = without_jobstep(Executor.additional_general_args)


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


def main(argv: list[str] | None = None) -> NoReturn:
    """`python -m poscarflow.slurm srun|sbatch ARGS...`: SLURM's command, once slurmctld
    answers (what bin/srun and bin/sbatch run)."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] not in {"srun", "sbatch"}:
        raise SystemExit("usage: python -m poscarflow.slurm srun|sbatch [ARGS...]")
    logging.basicConfig(level=logging.WARNING, format="poscarflow: %(message)s")
    run_when_controller_answers(args[0], args[1:])


if __name__ == "__main__":
    main()
