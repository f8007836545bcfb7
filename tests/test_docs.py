"""The documentation keeps up with the code: a key or calculator that exists is documented."""

from __future__ import annotations

import re

import yaml

from poscarflow.calculators import CALCULATORS
from tests.conftest import REPO

SCHEMA = yaml.safe_load((REPO / "scripts/poscarflow/schemas/config.schema.yaml").read_text())


def _keys(schema: dict, prefix: str = "") -> set[str]:
    """Every config key of the schema, dotted (`relax.fmax`)."""
    keys = set()
    for name, given in schema.get("properties", {}).items():
        prop = SCHEMA["$defs"][given["$ref"].rsplit("/", 1)[1]] if "$ref" in given else given
        nested = _keys(prop, f"{prefix}{name}.") if name != "overrides" else set()
        keys |= nested or {prefix + name}  # a section is documented by its keys
    return keys


def test_every_config_key_is_in_config_readme() -> None:
    documented = set(re.findall(r"^\| `([\w.]+)` \|", (REPO / "config/README.md").read_text(),
                                re.MULTILINE))  # fmt: skip
    assert _keys(SCHEMA) == documented


def test_every_calculator_is_in_the_schema_and_documented() -> None:
    enum = SCHEMA["properties"]["calculator"]["enum"]
    assert sorted(enum) == sorted(CALCULATORS)
    readme = (REPO / "README.md").read_text()
    config_readme = (REPO / "config/README.md").read_text()
    for name in CALCULATORS:
        assert f"`{name}`" in readme, name
        assert f"`{name}`" in config_readme, name


def test_every_documented_poscarflow_command_and_option_exists() -> None:
    """Each `$ poscarflow ...` line of the README names a command the CLI has, and its
    options are in that command's help."""
    import shlex

    from typer.testing import CliRunner

    from poscarflow.cli import app

    lines = re.findall(r"^\$ poscarflow ([^#\n]*)", (REPO / "README.md").read_text(), re.M)
    assert len(lines) >= 10
    runner = CliRunner()
    for line in lines:
        words = [w for w in shlex.split(line) if w not in ("-d", "~/poscarflow")]
        path = [w for w in words[:2] if not w.startswith("-") and w in _COMMANDS]
        result = runner.invoke(app, [*path, "--help"])
        assert result.exit_code == 0, (line, result.output)
        for option in (w for w in words if w.startswith("--")):
            assert option in result.output, (line, option)


_COMMANDS = {"status", "why", "reset", "policy", "add", "get", "remove", "clear"}
