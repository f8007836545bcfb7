"""The Snakemake report: a description page first, the results table readable in it."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess

import pytest

from tests.conftest import Workflow

pytestmark = pytest.mark.slow


def _embedded(report: str, path: str) -> str:
    """A result file as the report embeds it (a base64 data URI in its `results`)."""
    results = json.loads(re.search(r"var results = (\{.*?\});\n", report).group(1))
    return base64.b64decode(results[path]["data_uri"].split("base64,", 1)[1]).decode()


def test_report_opens_on_the_description_and_holds_the_table(workflow: Workflow, tmp_path) -> None:
    """Regression: the report opened on the rule graph, with the table only as CSV."""
    workflow.add_examples("Cu_fcc", "Al_fcc")
    workflow.run()
    workflow.run("--report", "report.html")
    report = (workflow.root / "report.html").read_text()
    description = json.loads(re.search(r"var workflow_desc = (\".*?\");\n", report).group(1))
    assert "poscarflow: relax, then static" in description
    assert "<strong>2 structures</strong>: 2 done; computed with emt." in description
    assert "BFGS to fmax 0.01" in description
    assert re.search(r"quacc \d", description)  # the versions that computed it
    table = _embedded(report, "results/summary.html")
    assert "<th>static energy (eV)</th>" in table
    assert re.search(r"<td[^>]*>Cu_fcc</td>", table)
    assert "results/plots/convergence.png" in report
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed: the rendered page was not checked")
    url = (workflow.root / "report.html").as_uri()
    browse = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1400,1000",
              "--virtual-time-budget=10000"]  # fmt: skip
    dom = subprocess.run([*browse, "--dump-dom", url], capture_output=True, text=True,
                         timeout=120, check=True).stdout  # fmt: skip
    assert "poscarflow: relax, then static" in dom  # the first page the app renders
    assert "2 done" in dom
    assert "E/atom (eV)" in dom  # the first rows of the table, on the first page
    shot = tmp_path / "report.png"
    subprocess.run([*browse, f"--screenshot={shot}", url], capture_output=True, timeout=120,
                   check=True)  # fmt: skip
    from PIL import Image

    colours = Image.open(shot).convert("RGB").getcolors(maxcolors=1 << 16)
    assert colours is None or len(colours) > 50  # not a blank page
