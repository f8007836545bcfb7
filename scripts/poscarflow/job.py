"""The relax and static rules' entry point: `python -m poscarflow.job REQUEST --code X`.

The command line names the job's request file (its batch and every parameter, written by
the planner, see plan.py), so `snakemake -n`, `-p` and failure messages stay one short
line. `--code` is the code fingerprint the run was planned with: it is part of the rule's
shell command so that Snakemake's `code` trigger sees it, and a job refuses to run if the
installed code differs. The job hands its request to this run's pool when there is one,
else computes it itself (jobs on SLURM), and fails with a short `poscarflow:` message that
names the structures that could not run.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from poscarflow import log_to, settings
from poscarflow.batch import run_batch
from poscarflow.fingerprint import STACK, job_code

log = logging.getLogger("poscarflow")


class JobError(RuntimeError):
    """An expected reason for a job to fail, said in one line."""


def run(request_file: str, log_file: str, code: str) -> None:
    """Run one batch request, in this run's pool or in this process; log to `log_file`."""
    from poscarflow.pool import PoolError, submit

    request = json.loads(Path(request_file).read_text()) | {"log": log_file}
    log_to(log_file)
    calculator = next(iter(request["calcs"].values()))["calculator"]
    installed = job_code(calculator)["digest"]
    if installed != code:
        raise JobError(
            f"poscarflow's code or the versions of {', '.join(STACK)} changed after this "
            f"run was planned (planned {code}, installed {installed}); start Snakemake "
            "again so that it plans with the code that will run"
        )
    address = settings.pool_address()
    if address is None:
        log.info("%s %s: computing in this process (no pool: not a local run)",
                 request["step"], request["batch"])  # fmt: skip
        lost = run_batch(request)
    else:
        try:
            lost = submit(request, address)
        except PoolError as err:
            raise JobError(str(err)) from err
    if lost:
        raise JobError(f"{request['step']}: {_grouped(lost)}; the next run retries them "
                       f"(see {log_file})")  # fmt: skip


def _grouped(lost: dict[str, str]) -> str:
    """Ids grouped by reason: "No space left on device: a, b, c (and 3 more)"."""
    by_reason: dict[str, list[str]] = {}
    for sid, reason in sorted(lost.items()):
        by_reason.setdefault(reason, []).append(sid)
    parts = []
    for reason, ids in by_reason.items():
        more = f" (and {len(ids) - 3} more)" if len(ids) > 3 else ""
        parts.append(f"{reason}: {', '.join(ids[:3])}{more}")
    return "; ".join(parts)


def main(argv: list[str] | None = None) -> None:
    """Parse the command line, run, and turn expected failures into one line."""
    parser = argparse.ArgumentParser(prog="python -m poscarflow.job", description=__doc__)
    parser.add_argument("request", help="the job's request file (results/requests/...)")
    parser.add_argument("log", help="the rule's log file")
    parser.add_argument("--code", required=True, help="code fingerprint digest planned")
    args = parser.parse_args(argv)
    engine = settings.neutralise_workflow_engine()
    try:
        if engine:
            log_to(args.log)
            log.info("QUACC_WORKFLOW_ENGINE=%s ignored: Snakemake is the workflow engine", engine)
        run(args.request, args.log, args.code)
    except JobError as err:
        log.error("%s", err)
        sys.exit(f"poscarflow: {err}")
    except Exception as err:  # unexpected: the traceback goes to the log, one line here
        log.exception("job failed")
        sys.exit(f"poscarflow: {type(err).__name__}: {err} (traceback in the job's log)")


if __name__ == "__main__":
    main()
