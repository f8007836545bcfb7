"""Every path under `results/`: rules, jobs and readers ask here, nobody builds one by hand.

```
results/
  calcs/<id>/history.jsonl        task history of both steps (attempts, resets)
  calcs/<id>/<step>/              a finished calculation (published whole, see files.py)
  calcs/<id>/.<step>.tmp-<pid>/   an attempt in progress, or one a kill left behind
  batches/<step>/<batch>.json     a batch job's manifest: each id's key and status
  requests/<step>-<batch>-<hash>.json   what a batch job is asked to do (its parameters)
  parts/<batch>.json, .extxyz, .db      a batch's share of the run-wide outputs
  summary.csv, summary.json, relaxed.extxyz, results.db, plots/, .complete
```
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

STEPS = ("relax", "static")
SUMMARY = "summary.json"
FINAL = "final.extxyz"
RESULT = "result.json.gz"
TRAJECTORY = "opt.traj"
PATH = "path.traj"  # in an attempt folder: the optimizer path of the attempts it continues
ATTEMPT_MARKER = "attempt.json"
OPT_STATE = "optimizer-state.pkl"  # the ASE optimizer's restart file, in an attempt folder
START = "start.traj"  # in an attempt folder: where a continued VASP relax goes on from
HISTORY = "history.jsonl"
PLOTS = ("energy_per_atom", "convergence", "volume_change")


@dataclass(frozen=True)
class Layout:
    """The results folder of one workflow (default `results`)."""

    root: Path = Path("results")

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    # One structure's calculations
    def structure_dir(self, sid: str) -> Path:
        """Everything of one structure: both steps and their task history."""
        return self.root / "calcs" / sid

    def calc_dir(self, sid: str, step: str) -> Path:
        """The published folder of one calculation."""
        return self.structure_dir(sid) / step

    def summary(self, sid: str, step: str) -> Path:
        """A finished calculation's summary (written last: its presence means finished)."""
        return self.calc_dir(sid, step) / SUMMARY

    def final_structure(self, sid: str, step: str = "relax") -> Path:
        """The final structure of a calculation, as extxyz with energy and forces."""
        return self.calc_dir(sid, step) / FINAL

    def trajectory(self, sid: str) -> Path:
        """The relax's optimizer trajectory (every attempt's frames, in order)."""
        return self.calc_dir(sid, "relax") / TRAJECTORY

    def history(self, sid: str) -> Path:
        """The task history of one structure (both steps)."""
        return self.structure_dir(sid) / HISTORY

    def attempt_dir(self, sid: str, step: str, pid: int | None = None) -> Path:
        """The folder an attempt computes in, beside the published one."""
        return self.structure_dir(sid) / f".{step}.tmp-{pid or os.getpid()}"

    def attempt_dirs(self, sid: str, step: str) -> list[Path]:
        """Attempt folders left by earlier (killed) processes."""
        return sorted(self.structure_dir(sid).glob(f".{step}.tmp-*"))

    # Batch jobs
    def manifest(self, step: str, batch: str) -> Path:
        """A batch job's output: each id's key and status."""
        return self.root / "batches" / step / f"{batch}.json"

    def request(self, step: str, batch: str, digest: str) -> Path:
        """A batch job's request file, named by its content so it never changes."""
        return self.root / "requests" / f"{step}-{batch}-{digest}.json"

    def part(self, batch: str, suffix: str = ".json") -> Path:
        """A batch's share of the run-wide outputs (see poscarflow.parts)."""
        return self.root / "parts" / f"{batch}{suffix}"

    # Run-wide outputs
    @property
    def table(self) -> Path:
        """The results table (CSV, rounded, with units)."""
        return self.root / "summary.csv"

    @property
    def table_json(self) -> Path:
        """The results table at full precision."""
        return self.root / "summary.json"

    @property
    def table_html(self) -> Path:
        """The results table as HTML, for the Snakemake report."""
        return self.root / "summary.html"

    @property
    def overview(self) -> Path:
        """What was run and how it went, included in the report's description page."""
        return self.root / "overview.rst"

    @property
    def relaxed(self) -> Path:
        """Every relaxed structure, extxyz with energies and forces."""
        return self.root / "relaxed.extxyz"

    @property
    def database(self) -> Path:
        """The ASE database (`ase db results/results.db`)."""
        return self.root / "results.db"

    def plot(self, name: str) -> Path:
        """One of the PLOTS as PNG."""
        return self.root / "plots" / f"{name}.png"

    @property
    def complete(self) -> Path:
        """Written when every structure finished without failure."""
        return self.root / ".complete"

    def run_outputs(self) -> list[Path]:
        """Everything made from all calculations together (stale after a reset)."""
        plots = [self.plot(name) for name in PLOTS]
        tables = [self.table, self.table_json, self.table_html, self.overview]
        return [*tables, self.relaxed, self.database, *plots, self.complete]
