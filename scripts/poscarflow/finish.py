"""The finishing jobs: `python -m poscarflow.finish RUN LOG` and `... --check TABLE FLAG LOG`.

Table, relaxed structures, database and plots are joined from the batches' parts
(poscarflow.parts: made by the static jobs, in parallel) in one process, so one
interpreter pays the imports of ASE and matplotlib; `--check` then fails the run,
listing the failed structures, if any failed.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import sys
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from poscarflow import log_to
from poscarflow.files import atomic_path, read_json
from poscarflow.layout import Layout

if TYPE_CHECKING:
    from collections.abc import Callable


def finish(run: str, log: str) -> None:
    """Every run-wide output of the run file's structures (see Plan.run_file)."""
    info = read_json(run)
    finish_results(Layout(Path(info["results"])), info["ids"], info["batches"], log)


def finish_results(layout: Layout, ids: list[str], batches: dict[str, list[str]], log: str) -> None:
    """Table, relaxed structures, database and plots of the structures `ids` (in this
    order), which `batches` (name → ids) group."""
    from poscarflow import plots
    from poscarflow.collect import write_tables
    from poscarflow.parts import load_part

    log_to(log)
    parts = {batch: load_part(layout, batch, members) for batch, members in batches.items()}
    order = {sid: place for place, sid in enumerate(ids)}
    rows = sorted((row for part in parts.values() for row in part["rows"]),
                  key=lambda row: order[row["id"]])  # fmt: skip
    versions = sum((Counter(part["versions"]) for part in parts.values()), Counter())
    write_tables(rows, versions, layout)
    # Three processes on two cores: structures and database, the convergence plot (it
    # reads trajectories), and here the other two plots.
    plt = plots.pyplot()
    forked = [
        _fork(_join_structures, layout, parts, order, log),
        _fork(plots.plot_convergence, plt, layout, rows, str(layout.plot("convergence"))),
    ]
    plots.plot_energies(plt, rows, str(layout.plot("energy_per_atom")))
    plots.plot_volumes(plt, rows, str(layout.plot("volume_change")))
    for process in forked:
        process.join()
        if process.exitcode != 0:
            raise RuntimeError(f"{process.name} failed (exit {process.exitcode}); see {log}")
    logging.info("plotted %d structures", len(rows))


def _fork(target: Callable, *args: object) -> multiprocessing.Process:
    """Start `target(*args)` in a forked process named after it."""
    process = multiprocessing.get_context("fork").Process(target=target, args=args,
                                                          name=target.__name__)  # fmt: skip
    process.start()
    return process


def _join_structures(layout: Layout, parts: dict, order: dict[str, int], log: str) -> None:
    """`relaxed.extxyz` and the database from the parts, in the table's order."""
    from poscarflow.database import merge

    log_to(log)
    frames = {}
    for batch, part in parts.items():
        lines = layout.part(batch, ".extxyz").read_text().splitlines(keepends=True)
        start = 0
        for sid, count in part["frames"]:
            frames[sid] = "".join(lines[start : start + count])
            start += count
    with atomic_path(layout.relaxed) as tmp, tmp.open("w") as out:
        out.writelines(frames[sid] for sid in sorted(frames, key=order.__getitem__))
    merge([(layout.part(batch, ".db"), [order[sid] + 1 for sid, _ in part["frames"]])
           for batch, part in parts.items()], layout.database)  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    """Parse the command line of the finishing rules."""
    parser = argparse.ArgumentParser(prog="python -m poscarflow.finish", description=__doc__)
    parser.add_argument("--check", action="store_true", help="check TABLE, write FLAG")
    parser.add_argument("paths", nargs="+", help="RUN LOG, or with --check TABLE FLAG LOG")
    args = parser.parse_args(argv)
    if args.check:
        from poscarflow.collect import check

        check(*args.paths)
    else:
        finish(*args.paths)


if __name__ == "__main__":
    main(sys.argv[1:])
