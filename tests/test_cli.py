"""The `poscarflow` command: options, help, one-line errors, `-d`, reset, policy, --watch.

Fast: the results are fake calculation folders (tests/test_status.py's FakeRun), the
command runs in this process through `main(argv)`, or as `python -m poscarflow.cli`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
import typer

from poscarflow import cli
from poscarflow.cli import main
from tests.conftest import REPO
from tests.test_status import T0, FakeRun


@pytest.fixture
def fake(tmp_path: Path) -> FakeRun:
    run = FakeRun(tmp_path / "wf", ["Cu_fcc", "Ni_fcc", "Fe_bcc", "Au_fcc"])
    run.finish("Cu_fcc", "relax")
    run.finish("Cu_fcc", "static", T0 + timedelta(seconds=2))
    run.finish("Ni_fcc", "relax", T0 + timedelta(seconds=1))
    run.finish("Fe_bcc", "relax", status="failed", failure="bad_input",
               reason="structures/Fe_bcc.vasp: elements Fe not supported")  # fmt: skip
    return run


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    """Run the command in this process: exit status, stdout, stderr."""
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(err: str) -> str:
    assert err.startswith("poscarflow: "), err
    assert err.count("\n") == 1, err
    assert "Traceback" not in err
    return err


def test_status_counts_relaxes_and_statics(fake: FakeRun, capsys, monkeypatch) -> None:
    """Regression: a relaxed structure waiting for its static was `pending 1/0` and no
    count of finished relaxes moved; now each step has its counts."""
    monkeypatch.chdir(fake.root)
    code, out, _ = run_cli(capsys, "status")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["id", "state", "attempts", "E/atom", "(eV)", "slurm", "reason"]
    assert "1 failed, 2 pending, 1 done (4 total)" in lines
    table = lines[lines.index("1 failed, 2 pending, 1 done (4 total)") + 2 :]
    assert table[0].split() == ["done", "running", "failed", "pending", "total"]
    assert table[1].split() == ["relax", "2", "0", "1", "1", "4"]
    assert table[2].split() == ["static", "1", "0", "0", "3", "4"]
    assert table[3].startswith("elapsed 0:00:0")


def test_status_json_rows(fake: FakeRun, capsys) -> None:
    code, out, _ = run_cli(capsys, "-d", str(fake.root), "status", "--json", "Ni_fcc")
    (row,) = json.loads(out)
    assert code == 0
    assert row["steps"] == {"relax": "done", "static": "pending"}
    assert row["attempts"] == {"relax": 1, "static": 0}


def test_outside_the_workflow_folder(fake: FakeRun, tmp_path: Path, capsys, monkeypatch) -> None:
    """Regression: a raw FileNotFoundError traceback; now one line saying where it looked,
    and -d/--directory names the workflow folder."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code, out, err = run_cli(capsys, "status")
    assert code == 1
    assert out == ""
    assert str(elsewhere / "config" / "config.yaml") in one_line_error(err)
    assert "--directory/-d" in err
    for option in ("-d", "--directory"):
        code, out, _ = run_cli(capsys, option, str(fake.root), "status")
        assert code == 0
        assert "Cu_fcc" in out
    assert Path.cwd() == elsewhere  # the command's chdir ends with it
    code, _, err = run_cli(capsys, "-d", str(tmp_path / "missing"), "status")
    assert code == 1
    assert "no workflow folder" in one_line_error(err)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["status", "Zz_fcc"], "unknown structure ids: Zz_fcc"),
        (["why", "Zz_fcc"], "unknown structure ids: Zz_fcc"),
        (["reset", "Zz_fcc"], "unknown structure ids: Zz_fcc"),
        (["status", "--bogus"], "No such option: --bogus (see poscarflow status --help)"),
        (["reset", "--class", "nope"], "'nope' is not one of"),
        (["status", "--json", "--watch"], "--watch and --json do not go together"),
        (["policy", "add", "Connection reset"], "Missing option '--allowed'"),
        (["policy", "add", "(", "--allowed", "1"], "config/restart_policy.yaml: missing )"),
        (["policy", "add", "class:nope", "--allowed", "1"], "unknown class 'nope'"),
        (["--configfile", "config/other.yaml", "status"], "no config file"),
    ],
)
def test_expected_errors_are_one_line(fake: FakeRun, capsys, args, message) -> None:
    code, _, err = run_cli(capsys, "-d", str(fake.root), *args)
    assert code != 0
    assert message in one_line_error(err)


def test_invalid_config_is_one_line(fake: FakeRun, capsys) -> None:
    (fake.root / "config" / "config.yaml").write_text("structures: structures\nfmax: [\n")
    code, _, err = run_cli(capsys, "-d", str(fake.root), "status")
    assert code == 1
    assert one_line_error(err).startswith("poscarflow: config/config.yaml: ")
    (fake.root / "config" / "config.yaml").write_text("structures: structures\nbogus: 1\n")
    code, _, err = run_cli(capsys, "-d", str(fake.root), "why")
    assert "bogus" in one_line_error(err)
    (fake.root / "config" / "config.yaml").write_text("structures: nowhere\n")
    code, _, err = run_cli(capsys, "-d", str(fake.root), "status")
    assert "nowhere" in one_line_error(err)


def test_version(capsys) -> None:
    code, out, _ = run_cli(capsys, "--version")
    assert code == 0
    assert out.startswith("poscarflow ")


def test_every_option_has_help() -> None:
    """Regression: `--configfile` said only `config/config.yaml`, `--class` nothing."""
    import click

    def walk(command: click.Command, path: str) -> list[str]:
        missing = [f"{path} {p.name}" for p in command.params
                   if isinstance(p, click.Option) and not p.help]  # fmt: skip
        for name, sub in getattr(command, "commands", {}).items():
            assert sub.help, f"{path} {name} has no help"
            missing += walk(sub, f"{path} {name}")
        return missing

    root = typer.main.get_command(cli.app)
    assert set(root.commands) == {"status", "why", "reset", "policy"}
    assert set(root.commands["policy"].commands) == {"add", "get", "remove", "clear"}
    assert walk(root, "poscarflow") == []


def test_reset_resets_failures_without_a_flag(fake: FakeRun, capsys) -> None:
    """Regression: `reset` required `--failed-only`; now that is what reset means (the
    flag is still accepted), with --class and --dry-run."""
    wf = str(fake.root)
    failed = fake.layout.calc_dir("Fe_bcc", "relax")
    code, out, _ = run_cli(capsys, "-d", wf, "reset", "--dry-run")
    assert (code, out.splitlines()) == (
        0, ["would reset Fe_bcc relax: structures/Fe_bcc.vasp: elements Fe not supported"]
    )  # fmt: skip
    assert failed.exists()
    assert run_cli(capsys, "-d", wf, "reset", "--class", "oom")[1] == "nothing to reset\n"
    code, out, _ = run_cli(capsys, "-d", wf, "reset", "--failed-only", "--class", "bad_input")
    assert (code, out.splitlines()[0]) == (0, "reset Fe_bcc relax: " + out.split(": ", 1)[1][:-1])
    assert not failed.exists()
    assert fake.layout.summary("Cu_fcc", "static").exists()  # what finished stays
    assert run_cli(capsys, "-d", wf, "reset")[1] == "nothing to reset\n"


def test_policy_commands(fake: FakeRun, capsys) -> None:
    wf = str(fake.root)
    code, out, _ = run_cli(capsys, "-d", wf, "policy", "add", "Connection reset", "Segfault",
                           "--allowed", "3")  # fmt: skip
    assert code == 0
    assert "Connection reset: 3\nSegfault: 3\n" in out
    out = run_cli(capsys, "-d", wf, "policy", "remove", "Segfault")[1]
    assert "Segfault" not in out
    assert "Connection reset: 3" in run_cli(capsys, "-d", wf, "policy", "get")[1]
    assert run_cli(capsys, "-d", wf, "policy", "clear")[1] == "(no restart policy)\n"
    assert "escalation" in (fake.root / "config" / "restart_policy.yaml").read_text()


def test_watch_value_is_optional() -> None:
    assert cli._watch_value(["status", "--watch"]) == ["status", "--watch", "2"]
    assert cli._watch_value(["status", "-w", "0.5", "Cu"]) == ["status", "-w", "0.5", "Cu"]
    assert cli._watch_value(["status", "--watch", "Cu"]) == ["status", "--watch", "2", "Cu"]


def test_watch_redraws_until_ctrl_c(fake: FakeRun, capsys, monkeypatch) -> None:
    """`status --watch` redraws; Ctrl-C (here: during the second wait) ends it, status 0."""
    waits = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(cli.time, "sleep", sleep)
    code, out, err = run_cli(capsys, "-d", str(fake.root), "status", "--watch", "0.5")
    assert (code, waits, err) == (0, [0.5, 0.5], "")
    assert "Fe_bcc" in out  # whole, though the reasons are longer than the screen is wide
    assert ["relax", "2", "0", "1", "1", "4"] in [line.split() for line in out.splitlines()]


def test_python_m_and_ctrl_c_during_watch(fake: FakeRun) -> None:
    """`python -m poscarflow.cli` in a terminal: --watch draws, a real SIGINT ends it with
    status 0 and nothing on stderr."""
    import pty
    import select

    master, terminal = pty.openpty()
    env = os.environ | {"PYTHONPATH": str(REPO / "scripts"), "COLUMNS": "100", "LINES": "40"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "poscarflow.cli", "-d", str(fake.root), "status", "-w", "0.2"],
        stdin=terminal, stdout=terminal, stderr=subprocess.PIPE, env=env,
    )  # fmt: skip
    os.close(terminal)
    shown, deadline = b"", time.monotonic() + 60
    while b"total" not in shown and time.monotonic() < deadline:
        if select.select([master], [], [], 1)[0]:
            shown += os.read(master, 1 << 16)
    proc.send_signal(signal.SIGINT)
    while True:  # drain the terminal until the command has closed it
        try:
            if not select.select([master], [], [], 10)[0] or not os.read(master, 1 << 16):
                break
        except OSError:  # EIO: the other end is closed
            break
    os.close(master)
    assert proc.wait(timeout=60) == 0
    assert proc.stderr.read() == b""
    assert b"Cu_fcc" in shown
