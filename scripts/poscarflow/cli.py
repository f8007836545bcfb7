"""The `poscarflow` command: look into a run from another shell (no Snakemake needed)."""

from __future__ import annotations

import argparse

from poscarflow.plan import Plan, load_config
from poscarflow.why import why


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `poscarflow` console script."""
    parser = argparse.ArgumentParser(prog="poscarflow", description=__doc__)
    parser.add_argument("--configfile", default="config/config.yaml", help="%(default)s")
    parser.add_argument("--results", default="results", help="%(default)s")
    sub = parser.add_subparsers(dest="command", required=True)
    explain = sub.add_parser("why", help="what changed since results were made")
    explain.add_argument("ids", nargs="*", metavar="ID", help="structure ids (default: all)")
    args = parser.parse_args(argv)
    plan = Plan(load_config(args.configfile))
    if args.command == "why":
        print("\n".join(why(plan, args.results, args.ids)))


if __name__ == "__main__":
    main()
