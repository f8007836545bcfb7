"""`poscarflow reset`: clear failed calculations so that the next plain run retries them."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from poscarflow.files import read_json
from poscarflow.history import append_history
from poscarflow.layout import STEPS, Layout
from poscarflow.records import reset_record

if TYPE_CHECKING:
    from poscarflow.plan import Plan


def reset(
    plan: Plan,
    results: str = "results",
    ids: list[str] | None = None,
    failure: str | None = None,
    dry_run: bool = False,
) -> list[str]:
    """Clear failed calculations (and their restart budgets) so the next run retries them.

    Only failed (or unconverged) calculations are removed, with the batch manifests that
    list them so that Snakemake reruns those batches (their finished calculations are
    reused, not touched), and the run-wide outputs made from them (table, database,
    plots), which Snakemake would otherwise keep as up to date and never rebuild.

    Parameters
    ----------
    plan
        The plan of the current config (its batches name the manifests to remove).
    results
        The results folder.
    ids
        Structure ids (default: all).
    failure
        Only structures whose first failed step failed with this class.
    dry_run
        Say what would be reset (`would reset ...`), change nothing.

    Returns
    -------
    list[str]
        One line per calculation reset, or `nothing to reset`.

    Raises
    ------
    ValueError
        If an id is not one of the plan's structures.
    """
    ids = plan.select(ids)
    actions = []
    layout = Layout(Path(results))
    for sid in ids:
        summaries = {step: read_json(layout.summary(sid, step)) for step in STEPS}
        failed = [s for s in STEPS if (summaries[s] or {}).get("failure")]
        if not failed or (failure and summaries[failed[0]].get("failure") != failure):
            continue
        for step in failed:
            verb = "would reset" if dry_run else "reset"
            actions.append(f"{verb} {sid} {step}: {summaries[step].get('reason', '')}")
            if not dry_run:
                _clear(plan, layout, sid, step)
    if actions and not dry_run:
        for path in layout.run_outputs():
            path.unlink(missing_ok=True)
    return actions or ["nothing to reset"]


def _clear(plan: Plan, layout: Layout, sid: str, step: str) -> None:
    """Remove one failed calculation and its batch's manifests; zero its budgets."""
    batch = next(b for b, members in plan.batches.items() if sid in members)
    for later in STEPS[STEPS.index(step) :]:
        layout.manifest(later, batch).unlink(missing_ok=True)
    folder = layout.calc_dir(sid, step)
    trash = folder.with_name(f".{step}.reset-{os.getpid()}")
    folder.rename(trash)
    shutil.rmtree(trash)
    append_history(layout.history(sid), reset_record(step))
