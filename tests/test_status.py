"""`poscarflow status` and `reset` on a real run, and a second run refused."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from poscarflow.history import read_history
from tests.conftest import SNAKEMAKE, Workflow


@pytest.mark.slow
def test_status_reset_and_a_second_run_refused(workflow: Workflow) -> None:
    workflow.add_examples("Cu_fcc", "Ni_fcc")
    (workflow.structures / "Fe_bcc.vasp").write_text(
        (workflow.structures / "Cu_fcc.vasp").read_text().replace("Cu", "Fe")
    )
    first = subprocess.Popen([*SNAKEMAKE, "--cores", "2"], cwd=workflow.root, env=workflow.env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    time.sleep(2.5)  # the first run holds the lock now
    second = workflow.run(check=False)
    assert second.returncode != 0
    assert "Directory cannot be locked" in second.output
    assert first.wait(timeout=300) != 0  # Fe_bcc failed; the others finished
    status = workflow.cli("status")
    assert status.splitlines()[-1] == "1 failed, 2 done (3 total)"
    assert "elements Fe not supported" in status
    rows = {r["id"]: r for r in json.loads(workflow.cli("status", "--json"))}
    assert rows["Cu_fcc"]["attempts"] == {"relax": 1, "static": 1}
    assert rows["Fe_bcc"]["failure"] == "bad_input"
    # reset: dry run changes nothing; a real reset clears only the failure.
    done_before = (workflow.root / "results/calcs/Cu_fcc/relax/summary.json").read_text()
    assert "reset Fe_bcc relax" in workflow.cli("reset", "--failed-only", "--dry-run")
    assert (workflow.root / "results/calcs/Fe_bcc/relax").exists()
    assert (workflow.root / "results/summary.csv").exists()
    workflow.cli("reset", "--failed-only")
    assert not (workflow.root / "results/calcs/Fe_bcc/relax").exists()
    assert (workflow.root / "results/calcs/Cu_fcc/relax/summary.json").read_text() == done_before
    rows = {r["id"]: r for r in json.loads(workflow.cli("status", "--json"))}
    assert (rows["Fe_bcc"]["state"], rows["Cu_fcc"]["state"]) == ("pending", "done")
    events = [
        r["event"] for r in read_history(workflow.root / "results/calcs/Fe_bcc" / "history.jsonl")
    ]
    assert events[-2:] == ["reset", "reset"]
    # Regression: with results/summary.csv present, the next plain run did nothing but
    # `check`; now the reset batches rerun, the failure is retried, the rest reused.
    assert (workflow.root / "results/summary.csv").exists() is False
    again = workflow.run(check=False)
    assert "relax Fe_bcc: computing" in workflow.log("relax")
    assert "relax Cu_fcc: reused" in workflow.log("relax")
    events = [
        r["event"] for r in read_history(workflow.root / "results/calcs/Fe_bcc" / "history.jsonl")
    ]
    assert events[-2:] == ["start", "end"]
    assert "1 of 3 structures failed" in again.output
