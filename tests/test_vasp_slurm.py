"""A VASP relax on the local SLURM cluster, cut by its time limit, continued by the retry.

The stand-in for VASP (tests/fake_vasp.py, as in tests/test_vasp_standin.py) sleeps
SLEEP seconds per ionic step in its first run, so the Cu8 relax (12 ionic steps) needs
longer than the one minute this copy's relax rule asks for: SLURM ends the first job
(TIMEOUT) after a few ionic steps, and Snakemake's retry, with 4 minutes (the
escalation), goes on from that attempt's CONTCAR (at full speed: the SLURM plugin polls
less and less often while a job runs, so a short retry is noticed sooner). As in
tests/test_slurm.py's TIMEOUT scenario, a far POSCARFLOW_DEADLINE turns off the clean
stop before the limit (custodian's wall time), so that SLURM itself ends the job.
About 3 minutes, mostly waiting.

Whether custodian sees VASP die of SLURM's SIGTERM before SIGKILL comes (KillWait, 5 s
here) depends on when it next looks (every 10 s); either way the retry continues the
attempt (tests/test_vasp_standin.py replays the custodian side deterministically).
"""

from __future__ import annotations

import re
import subprocess

import numpy as np
import pytest
from ase.io import read, write

from poscarflow.history import read_history
from tests import test_slurm
from tests.conftest import SNAKEMAKE, Workflow
from tests.test_slurm import FAST_POLLING, PARTITION, SUBMITTED, minutes, slurm_job, small_limits
from tests.test_vasp_standin import (
    RELAX,
    SID,
    cu8,
    ledger_steps,
    same_structure,
    stand_in_env,
    uninterrupted,
)

# The local cluster's default partition (started if it is not up; skips without one).
partition = test_slurm.partition
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning")]
SLEEP = 8  # seconds per ionic step: the first job's minute ends mid-relax


def test_vasp_relax_cut_by_slurm_time_limit_continues_from_its_last_ionic_step(
    partition: str, tmp_path
) -> None:
    workflow = Workflow(tmp_path / "wf")
    small_limits(workflow, "runtime", {"relax": 1}, factor=4)
    write(workflow.structures / f"{SID}.vasp", cu8(), format="vasp")
    relax = workflow.config["relax"] | RELAX
    workflow.config |= {"calculator": "vasp", "batch_size": 1, "relax": relax}
    workflow.write_config()
    vasp = tmp_path / "vasp"
    vasp.mkdir()
    slow_first_run = {"FAKE_VASP_SLEEP": str(SLEEP), "FAKE_VASP_SLEEP_RUNS": "1"}
    env = stand_in_env(vasp) | slow_first_run | {
        PARTITION: partition, "POSCARFLOW_DEADLINE": "4102444800"}  # fmt: skip
    args = ["--retries", "1", "--set-resources", "static:runtime=0"]
    log = workflow.root / "snakemake-output.txt"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [*SNAKEMAKE, "--profile", "profiles/slurm", "--cores", "2", *FAST_POLLING, *args],
            cwd=workflow.root, env=workflow.env | env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        reference = uninterrupted(tmp_path / "reference")  # meanwhile, here
        proc.wait(timeout=540)
    finally:
        if proc.poll() is None:
            proc.kill()
            if run_id := re.search(r"SLURM run ID: (\S+)", log.read_text()):
                subprocess.run(["scancel", "--name", run_id.group(1)], check=False)
    output = log.read_text()
    assert proc.returncode == 0, output[-5000:]

    first, retry = SUBMITTED.findall(output)
    assert "DUE TO TIME LIMIT ***" in output
    timed_out, done = slurm_job(first), slurm_job(retry)
    assert (timed_out["state"], minutes(timed_out["limit"])) == ("TIMEOUT", 1)
    assert (done["state"], minutes(done["limit"])) == ("COMPLETED", 4)
    # The task history: attempt 1 ended by SLURM's time limit, attempt 2 continued it.
    history = read_history(workflow.root / f"results/calcs/{SID}/history.jsonl", "relax")
    ends = [r for r in history if r["event"] == "end"]
    assert [(r["attempt"], r["failure"]) for r in ends] == [(1, "timeout"), (2, None)]
    assert "SLURM: TIMEOUT" in ends[0]["reason"]
    assert ends[0]["restarted"]
    total = reference["summary"]["opt_steps"]
    zero, k = (r["continued_from"] for r in history if r["event"] == "start")
    assert zero == 0
    assert 0 < k < total
    summary = workflow.summary(SID, "relax")
    assert (summary["status"], summary["attempts"], summary["slurm_job_id"]) == ("done", 2, retry)
    # It ends where an uninterrupted relax ends, with as many ionic steps: the retry's
    # VASP started from the geometry after step k (CONTCAR) and computed only the rest.
    assert summary["opt_steps"] == total
    same_structure(read(workflow.root / f"results/calcs/{SID}/relax/final.extxyz"),
                   reference["final"])  # fmt: skip
    steps = ledger_steps(vasp / "ledger.jsonl")
    assert k <= [s["run"] for s in steps].count(1) <= k + 1  # k whole, maybe one cut
    continued = [s for s in steps if s["run"] == 2]
    assert len(continued) == total - k
    for ours, theirs in zip(continued, reference["steps"][k:], strict=True):
        assert np.abs(np.subtract(ours["positions"], theirs["positions"])).max() < 1e-6
    assert workflow.summary(SID, "static")["status"] == "done"
