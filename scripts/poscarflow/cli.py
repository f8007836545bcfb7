"""The `poscarflow` command: look into a run from another shell (no Snakemake needed).

```
poscarflow [-d DIR] status [ID...] [--json | --watch [SECONDS]]
poscarflow [-d DIR] why [ID...]
poscarflow [-d DIR] reset [ID...] [--class CLASS] [--dry-run]
poscarflow [-d DIR] policy get | add PATTERN... --allowed N | remove PATTERN... | clear
```

Every path (the config, `results/`, the structures and the restart policy the config
names) is relative to the workflow folder, `-d DIR` or the current folder, as it is for
Snakemake. An expected error (no config here, an unknown id, a bad pattern) is one
`poscarflow: ...` line on stderr and a non-zero exit status, never a traceback.
"""

from __future__ import annotations

import json
import re
import sys
import time
from contextlib import chdir
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, get_args

import typer

from poscarflow.records import Failure

if TYPE_CHECKING:
    from collections.abc import Callable

    from rich.console import RenderableType

    from poscarflow.plan import Plan

WATCH_SECONDS = "2"  # `--watch` without a value
FailureClass = Enum("FailureClass", {name: name for name in get_args(Failure)}, type=str)


class CliError(Exception):
    """An expected error: one `poscarflow: ...` line on stderr, exit status 1."""


@dataclass(frozen=True)
class Options:
    """The options every command shares (paths relative to the workflow folder)."""

    configfile: str
    results: str


app = typer.Typer(
    name="poscarflow",
    help="Look into a poscarflow run from any shell, during or after it: status, why a "
    "calculation would rerun, reset failures, edit the restart policy.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
    context_settings={"help_option_names": ["-h", "--help"]},
)
policy_app = typer.Typer(
    help="Edit the restart policy: the file that the config's `restart_policy` key names "
    "(default config/restart_policy.yaml).",
    no_args_is_help=True,
)
app.add_typer(policy_app, name="policy")

IDS = typer.Argument(metavar="ID", help="Structure ids (default: all).", show_default=False)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            found = version("poscarflow")
        except PackageNotFoundError:
            found = "(not installed)"
        typer.echo(f"poscarflow {found}")
        raise typer.Exit


@app.callback()
def options(
    ctx: typer.Context,
    directory: Annotated[Path, typer.Option(
        "--directory", "-d", metavar="DIR", show_default=False,
        help="The workflow folder (where you run snakemake): the config, results and "
        "structure paths are relative to it. Default: the current folder.",
    )] = Path("."),
    configfile: Annotated[str, typer.Option(
        "--configfile", metavar="FILE",
        help="The workflow's config file, as given to snakemake --configfile.",
    )] = "config/config.yaml",
    results: Annotated[str, typer.Option(
        "--results", metavar="DIR", help="The results folder the workflow writes."
    )] = "results",
    version: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True, help="Print the version and exit."
    )] = False,
) -> None:  # fmt: skip
    """Options shared by every command."""
    if not directory.is_dir():
        raise CliError(f"no workflow folder {directory} (--directory/-d names one)")
    ctx.obj = Options(configfile, results)
    ctx.with_resource(chdir(directory))


# Loading the config and the plan: every problem is a CliError naming the file.


def _config(opts: Options) -> dict:
    """The validated config; a missing or invalid one is a CliError saying where."""
    import yaml

    path = Path(opts.configfile)
    if not path.is_file():
        raise CliError(
            f"no config file {Path.cwd() / path}: run poscarflow in the workflow folder "
            "(where you run snakemake) or name it with --directory/-d DIR"
        )
    from snakemake.exceptions import WorkflowError

    from poscarflow.plan import load_config

    try:
        return load_config(path)
    except (OSError, yaml.YAMLError, WorkflowError) as err:
        raise CliError(f"{path}: {_one_line(err)}") from err


def _plan(opts: Options) -> Plan:
    """The plan of the config: structures found, parameters per calculation."""
    from poscarflow.plan import Plan

    plan = Plan(_config(opts))
    try:
        _ = plan.specs  # finds the structures, checks the overrides
    except (OSError, ValueError) as err:
        raise CliError(_one_line(err)) from err
    return plan


def _one_line(err: BaseException) -> str:
    """An exception's message on one line (validation errors span several)."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    return "; ".join(lines) or type(err).__name__


def _checked(call: Callable[[], list]) -> list:
    """Run a reader; its ValueError (an unknown id) is a CliError."""
    try:
        return call()
    except ValueError as err:
        raise CliError(str(err)) from err


def _print(text: str) -> None:
    sys.stdout.write(text + "\n")


# Commands


@app.command()
def status(
    ctx: typer.Context,
    ids: Annotated[list[str] | None, IDS] = None,
    as_json: Annotated[bool, typer.Option(
        "--json", help="Print the rows as JSON (a list of objects), for scripts."
    )] = False,
    watch: Annotated[float | None, typer.Option(
        "--watch", "-w", metavar="[SECONDS]", min=0.1, show_default=False,
        help=f"Refresh in place every SECONDS (default {WATCH_SECONDS}) until Ctrl-C.",
    )] = None,
) -> None:  # fmt: skip
    """Every structure's state, attempts (relax/static) and energy, then the run's
    progress: calculations done, running, failed and pending per step, elapsed time,
    rate and ETA. Stale means done, but its parameters, input or code changed (see
    `poscarflow why`)."""
    from poscarflow.layout import Layout
    from poscarflow.progress import calc_states, progress_table, summarise
    from poscarflow.status import format_table
    from poscarflow.status import status as status_rows

    opts: Options = ctx.obj
    if watch is not None and as_json:
        raise CliError("status: --watch and --json do not go together")
    plan = _plan(opts)
    try:
        chosen = plan.select(ids)
    except ValueError as err:
        raise CliError(str(err)) from None
    if watch is not None:
        _watch(plan, opts.results, chosen, watch)
        return
    layout = Layout(Path(opts.results))
    states = {sid: calc_states(layout, sid) for sid in chosen}
    rows = status_rows(plan, opts.results, chosen, states=states)
    if as_json:
        _print(json.dumps(rows, indent=2))
    else:
        _print(format_table(rows) + "\n\n" + progress_table(summarise(states)))


def _watch(plan: Plan, results: str, ids: list[str], seconds: float) -> None:
    """Redraw the worst rows and the progress every `seconds`, until Ctrl-C."""
    from rich.console import Console
    from rich.live import Live

    console = Console()
    try:
        with Live(_frame(plan, results, ids, console.size), console=console,
                  auto_refresh=False) as live:  # fmt: skip
            while True:
                time.sleep(seconds)
                live.update(_frame(plan, results, ids, console.size), refresh=True)
    except KeyboardInterrupt:
        pass


def _frame(plan: Plan, results: str, ids: list[str], size: tuple[int, int]) -> RenderableType:
    """One screen: the rows most in need of attention (failed, running first), as many
    as fit, with reasons cut to the width; then the progress."""
    import socket

    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    from poscarflow.layout import Layout
    from poscarflow.progress import calc_states, progress_table, summarise
    from poscarflow.status import HEADER, ORDER, RIGHT, status, table_cells, totals

    width, height = size
    layout, host = Layout(Path(results)), socket.gethostname()
    states = {sid: calc_states(layout, sid, host=host) for sid in ids}
    worst = sorted(ids, key=lambda sid: min(ORDER.index(c.state) for c in states[sid].values()))
    shown = worst[: max(height - 12, 3)]
    rows = status(plan, results, shown, states={sid: states[sid] for sid in shown})
    cells = [table_cells(row) for row in rows]
    widths = [max(len(c[i]) for c in [HEADER, *cells]) for i in range(len(HEADER) - 1)]
    room = max(width - sum(widths) - 2 * len(widths), 10)  # the reason gets what is left
    for line in cells:
        line[-1] = line[-1] if len(line[-1]) <= room else line[-1][: room - 1] + "…"
    table = Table(box=None, pad_edge=False, header_style="bold")
    for name in HEADER:
        table.add_column(name, justify="right" if name in RIGHT else "left", no_wrap=True)
    style = {"failed": "red", "running": "cyan", "interrupted": "yellow", "stale": "yellow"}
    for row, line in zip(rows, cells, strict=True):
        table.add_row(*line, style=style.get(row["state"]))
    more = len(ids) - len(shown)
    p = summarise(states)
    caption = f"… {more} more, not shown (poscarflow status lists all)" if more else totals(rows)
    return Group(table, Text(caption, style="dim"), Text(""), Text(progress_table(p)))


@app.command()
def why(ctx: typer.Context, ids: Annotated[list[str] | None, IDS] = None) -> None:
    """What changed (parameters, input, code, versions) since each calculation's results
    were made, for those that the next run would recompute."""
    from poscarflow.why import why as why_lines

    plan = _plan(ctx.obj)
    _print("\n".join(_checked(lambda: why_lines(plan, ctx.obj.results, ids))))


@app.command()
def reset(
    ctx: typer.Context,
    ids: Annotated[list[str] | None, IDS] = None,
    failure: Annotated[FailureClass | None, typer.Option(
        "--class", show_default=False,
        help="Reset only structures whose calculation failed with this class.",
    )] = None,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", "-n", help="Say what would be reset; change nothing."
    )] = False,
    failed_only: Annotated[bool, typer.Option(
        "--failed-only", hidden=True, help="Accepted for old scripts: reset resets only failures."
    )] = False,
) -> None:  # fmt: skip
    """Clear failed (and unconverged) calculations, and their restart budgets, so that the
    next plain run retries them. Nothing that finished is touched: the batches that hold
    the failures rerun and reuse their finished calculations."""
    from poscarflow.reset import reset as reset_failures

    del failed_only  # the only thing reset ever does
    plan = _plan(ctx.obj)
    cls = None if failure is None else failure.value
    lines = _checked(lambda: reset_failures(plan, ctx.obj.results, ids, cls, dry_run))
    _print("\n".join(lines))


# The restart policy


def _policy_path(ctx: typer.Context) -> str:
    return _config(ctx.obj)["restart_policy"]


def _policy_call(call: Callable[[], dict[str, int]], path: str) -> None:
    """Run a policy action and print the policy as YAML; file problems are CliErrors."""
    import yaml
    from snakemake.exceptions import WorkflowError

    try:
        current = call()
    except (OSError, ValueError, re.error, yaml.YAMLError, WorkflowError) as err:
        raise CliError(f"{path}: {_one_line(err)}") from err
    _print(yaml.safe_dump(current).strip() if current else "(no restart policy)")


PATTERNS = typer.Argument(
    metavar="PATTERN", show_default=False,
    help="Regular expressions searched in a failure's message and traceback, or "
    "class:<unconverged|oom|timeout|node_failure|infrastructure|error>.",
)  # fmt: skip


@policy_app.command("get")
def policy_get(ctx: typer.Context) -> None:
    """Print the policy: pattern or class → restarts allowed."""
    from poscarflow import policy

    path = _policy_path(ctx)
    _policy_call(lambda: policy.read_policy(path), path)


@policy_app.command("add")
def policy_add(
    ctx: typer.Context,
    patterns: Annotated[list[str], PATTERNS],
    allowed: Annotated[int, typer.Option(
        "--allowed", min=0, show_default=False,
        help="Restarts allowed for a failure matching these patterns (a pattern already "
        "there takes this count).",
    )],
) -> None:  # fmt: skip
    """Allow restarts for failures matching patterns."""
    from poscarflow import policy

    path = _policy_path(ctx)
    _policy_call(lambda: policy.add(patterns, allowed, path), path)


@policy_app.command("remove")
def policy_remove(ctx: typer.Context, patterns: Annotated[list[str], PATTERNS]) -> None:
    """Remove patterns (absent ones are ignored)."""
    from poscarflow import policy

    path = _policy_path(ctx)
    _policy_call(lambda: policy.remove(patterns, path), path)


@policy_app.command("clear")
def policy_clear(ctx: typer.Context) -> None:
    """Remove every pattern: no failure is restarted (the escalation settings stay)."""
    from poscarflow import policy

    path = _policy_path(ctx)
    _policy_call(lambda: policy.write_policy({}, path) or {}, path)


# Entry point


def _watch_value(argv: list[str]) -> list[str]:
    """`--watch` without a number means every WATCH_SECONDS (click options take a value
    or none, not either)."""
    out = []
    for i, arg in enumerate(argv):
        out.append(arg)
        if arg in ("--watch", "-w") and not re.fullmatch(r"[0-9.]+", argv[i + 1] if
                                                         i + 1 < len(argv) else ""):  # fmt: skip
            out.append(WATCH_SECONDS)
    return out


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `poscarflow` console script; returns the exit status.

    Parameters
    ----------
    argv
        The arguments (default: `sys.argv[1:]`), e.g. `["status", "--json"]`.
    """
    args = _watch_value(list(sys.argv[1:] if argv is None else argv))
    try:
        code = app(args=args, prog_name="poscarflow", standalone_mode=False)
    except CliError as err:
        return _fail(str(err), 1)
    except typer.Abort:  # Ctrl-C
        return _fail("interrupted", 130)
    except BrokenPipeError:  # `poscarflow status | head`
        sys.stderr.close()
        return 0
    except typer.TyperException as err:  # click's usage errors: a bad option or value
        if not str(err):  # no command given: the help was printed
            return getattr(err, "exit_code", 2)
        return _fail(_usage(err), getattr(err, "exit_code", 2))
    return code if isinstance(code, int) else 0


def _usage(err: typer.TyperException) -> str:
    """A usage error as one line, naming the command whose --help explains it."""
    ctx = getattr(err, "ctx", None)
    command = ctx.command_path if ctx is not None else "poscarflow"
    message = err.format_message() if hasattr(err, "format_message") else str(err)
    return f"{message} (see {command} --help)"


def _fail(message: str, code: int) -> int:
    sys.stderr.write(f"poscarflow: {message}\n")
    return code


if __name__ == "__main__":
    sys.exit(main())
