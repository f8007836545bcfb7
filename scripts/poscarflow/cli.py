"""The `poscarflow` command: look into a run from another shell (no Snakemake needed)."""

from __future__ import annotations

import argparse
import json

import yaml

from poscarflow import policy
from poscarflow.plan import Plan, load_config
from poscarflow.policy import CLASSES, NEVER
from poscarflow.reset import reset
from poscarflow.status import format_table, status
from poscarflow.why import why


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `poscarflow` console script."""
    parser = argparse.ArgumentParser(prog="poscarflow", description=__doc__)
    parser.add_argument("--configfile", default="config/config.yaml", help="%(default)s")
    parser.add_argument("--results", default="results", help="%(default)s")
    sub = parser.add_subparsers(dest="command", required=True)
    ids = {"nargs": "*", "metavar": "ID", "help": "structure ids (default: all)"}
    sub.add_parser("why", help="what changed since results were made").add_argument("ids", **ids)
    show = sub.add_parser("status", help="every structure's state, attempts and energy")
    show.add_argument("ids", **ids)
    show.add_argument("--json", action="store_true", help="machine-readable output")
    clear = sub.add_parser("reset", help="clear failures so that the next run retries them")
    clear.add_argument("ids", **ids)
    clear.add_argument("--failed-only", action="store_true", required=True,
                       help="required: only failed calculations are ever reset")  # fmt: skip
    clear.add_argument("--class", dest="failure", choices=(NEVER, *CLASSES))
    clear.add_argument("--dry-run", action="store_true", help="say what, change nothing")
    pol = sub.add_parser("policy", help="edit the restart policy (the file config.yaml names)")
    pol.add_argument("action", choices=("add", "get", "remove", "clear"))
    pol.add_argument("patterns", nargs="*", help="regexes, or class:<name>")
    pol.add_argument("--allowed", type=int, help="restarts allowed (with add)")
    args = parser.parse_args(argv)
    config = load_config(args.configfile)
    if args.command == "policy":
        print(_policy(args.action, args.patterns, args.allowed, config["restart_policy"]))
        return
    plan = Plan(config)
    if args.command == "why":
        print("\n".join(why(plan, args.results, args.ids)))
    elif args.command == "status":
        rows = status(plan, args.results, args.ids)
        print(json.dumps(rows, indent=2) if args.json else format_table(rows))
    else:
        print("\n".join(reset(plan, args.results, args.ids, args.failure, args.dry_run)))


def _policy(action: str, patterns: list[str], allowed: int | None, path: str) -> str:
    """Run a `policy` action; return the policy as YAML (Alchemiscale's get)."""
    if action == "add":
        if allowed is None or not patterns:
            raise SystemExit("poscarflow policy add: give PATTERN... and --allowed N")
        current = policy.add(patterns, allowed, path)
    elif action == "remove":
        current = policy.remove(patterns, path)
    elif action == "clear":
        policy.write_policy({}, path)
        current = {}
    else:
        current = policy.read_policy(path)
    return yaml.safe_dump(current).strip() if current else "(no restart policy)"


if __name__ == "__main__":
    main()
