"""The finishing jobs: `python -m poscarflow.finish RUN LOG` and `... --check TABLE FLAG LOG`.

Table, relaxed structures, database and plots are made in one process, so one
interpreter pays the imports of ASE and matplotlib (before: three fresh processes, each
also importing Snakemake for its `script:`, about 5 s on every run); `--check` then
fails the run, listing the failed structures, if any failed.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
from pathlib import Path

from poscarflow.files import read_json
from poscarflow.layout import Layout


def finish(run: str, log: str) -> None:
    """Every run-wide output of the run file's structures (see Plan.run_file)."""
    from poscarflow.collect import collect
    from poscarflow.database import write_database
    from poscarflow.plots import plot_all

    info = read_json(run)
    layout = Layout(Path(info["results"]))
    collect(info["ids"], str(layout.table), str(layout.relaxed), log,
            table_json=str(layout.table_json), table_html=str(layout.table_html),
            overview=str(layout.overview))  # fmt: skip
    table = str(layout.table_json)
    # The database in a forked process while this one draws: two cores, half the time.
    database = multiprocessing.get_context("fork").Process(
        target=write_database, args=(table, str(layout.database), log)
    )
    database.start()
    plots = {name: str(layout.plot(name)) for name in ("energy_per_atom", "convergence",
                                                       "volume_change")}  # fmt: skip
    plot_all(table, plots["energy_per_atom"], plots["convergence"], plots["volume_change"], log)
    database.join()
    if database.exitcode != 0:
        raise RuntimeError(f"the database was not written (exit {database.exitcode}); see {log}")


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
