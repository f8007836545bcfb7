"""The results table, from the per-calculation summaries.

One row per structure, in three forms: `summary.json` (full precision, for programs:
the plots read it), `summary.csv` (rounded to what the calculations can tell apart, units
in the column names) and `summary.html` (the same, readable, for the Snakemake report),
plus a short overview of the run for the report's first page. Rows are made per batch
(poscarflow.parts) and written here.
"""

from __future__ import annotations

import csv
import html
import logging
import sys
from collections import Counter
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from poscarflow import log_to
from poscarflow.files import atomic_path, read_json, write_json
from poscarflow.layout import Layout

COLUMNS = (
    "id", "formula", "natoms", "status", "relaxed_energy_eV", "static_energy_eV",
    "static_free_energy_eV", "energy_per_atom_eV", "volume_initial_A3", "volume_final_A3",
    "max_force_eV_per_A", "max_stress_GPa", "converged", "opt_steps", "wall_time_s",
    "reason", "warnings", "calculator", "input",
)  # fmt: skip
# Decimals in summary.csv and summary.html: energies to 1e-6 eV, volumes to 1e-3 Å³,
# forces to 1e-4 eV/Å, stresses to 1e-4 GPa, times to 0.1 s. summary.json keeps all.
DECIMALS = {
    "relaxed_energy_eV": 6, "static_energy_eV": 6, "static_free_energy_eV": 6,
    "energy_per_atom_eV": 6, "volume_initial_A3": 3, "volume_final_A3": 3,
    "max_force_eV_per_A": 4, "max_stress_GPa": 4, "wall_time_s": 1,
}  # fmt: skip
STATUSES = ("done", "unconverged", "failed")
MOST_LISTED = 5  # failures named on the report's first page (Snakemake centres it
# vertically: a page taller than the window loses its top)
MOST_HTML_ROWS = 1000  # the report's table: problems first, then done rows up to this many


def summaries(layout: Layout, sid: str) -> tuple[dict, dict]:
    """A structure's relax and static summaries (a failed stand-in for a missing one)."""
    relax = read_json(layout.summary(sid, "relax")) or {
        "status": "failed",
        "reason": "no relax result",
    }
    static = read_json(layout.summary(sid, "static")) or {
        "status": "failed",
        "reason": "no static result",
    }
    return relax, static


def structure_row(sid: str, relax: dict, static: dict) -> dict:
    """One structure's row of the summary table from its relax and static summaries, at
    full precision (`warnings` a list). Keys the compute side added later (`free_energy`,
    `max_stress`, `warnings`) are read with `.get`, so older summaries still work."""
    failed = next((s for s in (relax, static) if s["status"] == "failed"), None)
    warnings = [f"{step}: {text}" for step, summary in (("relax", relax), ("static", static))
                for text in summary.get("warnings") or []]  # fmt: skip
    return {
        "id": sid,
        "formula": relax.get("formula"),
        "natoms": relax.get("natoms"),
        "status": "failed" if failed else relax["status"],
        "relaxed_energy_eV": relax.get("energy"),
        "static_energy_eV": static.get("energy"),
        "static_free_energy_eV": static.get("free_energy"),
        "energy_per_atom_eV": static.get("energy_per_atom"),
        "volume_initial_A3": relax.get("volume_initial"),
        "volume_final_A3": relax.get("volume"),
        "max_force_eV_per_A": relax.get("max_force"),
        "max_stress_GPa": relax.get("max_stress"),
        "converged": relax.get("converged"),
        "opt_steps": relax.get("opt_steps"),
        "wall_time_s": relax.get("wall_time", 0) + static.get("wall_time", 0),
        "reason": (failed or relax).get("reason", ""),
        "warnings": warnings,
        "calculator": relax.get("calculator") or static.get("calculator"),
        "input": relax.get("input", {}).get("path"),
    }


def rounded(row: dict) -> dict:
    """A row as the CSV and HTML tables show it: numbers rounded (`DECIMALS`), no `-0`,
    warnings joined with "; "."""
    shown = dict(row)
    for column, decimals in DECIMALS.items():
        value = row.get(column)
        if value is not None:
            text = f"{value:.{decimals}f}"
            shown[column] = text.lstrip("-") if float(text) == 0 else text
    shown["warnings"] = "; ".join(row.get("warnings") or [])
    return shown


def relax_versions(relax: dict) -> Counter:
    """What computed a relax, for the overview: "name version" → 1 (the science stack and
    poscarflow's code digest), and "relaxes" → 1 if the relax recorded them."""
    versions = Counter()
    if code := relax.get("code"):
        found = code.get("versions", {}) | {"poscarflow code": code.get("digest")}
        versions.update(f"{name} {value}" for name, value in found.items() if value)
        versions["relaxes"] += 1
    return versions


def write_tables(rows: list[dict], versions: Counter, layout: Layout) -> None:
    """The summary table as `summary.json` (full precision), `summary.csv` (rounded,
    units in the column names) and `summary.html`, and the report's overview."""
    write_json(layout.table_json, rows)
    with atomic_path(layout.table) as tmp, tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rounded(row) for row in rows)
    write_html_table(rows, str(layout.table_html))
    write_overview(rows, versions, str(layout.overview))
    logging.info("collected %d structures: %s", len(rows), dict(status_counts(rows)))


def status_counts(rows: list[dict]) -> Counter:
    """How many structures have each status (in `STATUSES` order)."""
    counts = Counter(row["status"] for row in rows)
    return Counter({status: counts[status] for status in STATUSES if counts[status]})


def write_html_table(rows: list[dict], path: str) -> None:
    """The results table as a standalone HTML page for the Snakemake report: rounded
    numbers right-aligned, units in the header, failed and unconverged rows first and
    marked. Above `MOST_HTML_ROWS` rows only those are shown (all problems, then done
    rows), with a note: the CSV and JSON hold all."""
    order = {status: i for i, status in enumerate(("failed", "unconverged", "done"))}
    shown = sorted(rows, key=lambda r: order.get(r["status"], 0))[:MOST_HTML_ROWS]
    left_out = len(rows) - len(shown)
    counts = ", ".join(f"{n} {status}" for status, n in status_counts(rows).items())
    note = f"{len(rows)} structures: {counts}."
    if left_out:
        note += f" Showing the first {len(shown)} (failed and unconverged first); "
        note += "summary.csv and summary.json hold every row."
    columns = [c for c in COLUMNS if any(row[c] not in (None, "", []) for row in shown)]
    if len(columns) < len(COLUMNS):
        note += " Columns without a value in any row are left out."
    header = "".join(f"<th>{html.escape(_title(c))}</th>" for c in columns)
    body = "\n".join(_html_row(rounded(row), columns) for row in shown)
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>poscarflow results</title>
<style>
body {{ font-family: system-ui, sans-serif; font-size: 13px; margin: 8px; }}
table {{ border-collapse: collapse; }}
th, td {{ padding: 3px 8px; border-bottom: 1px solid #ddd; white-space: nowrap; }}
th {{ position: sticky; top: 0; background: #f0f0f0; text-align: left; vertical-align: bottom;
      white-space: normal; min-width: 4em; }}
td.num {{ text-align: right; font-variant-numeric: tabular-nums; }}
td.text {{ white-space: normal; min-width: 16em; }}
tr.failed td {{ background: #fde2e2; }}
tr.unconverged td {{ background: #fff1d6; }}
</style></head><body>
<p>{html.escape(note)} Energies in eV, volumes in Å³, forces in eV/Å, stress in GPa,
wall time (relax + static) in s. Red rows failed, orange rows did not converge.</p>
<table><thead><tr>{header}</tr></thead>
<tbody>
{body}
</tbody></table></body></html>
"""
    with atomic_path(path) as tmp:  # ASCII (Å as &#197;): right under any charset
        tmp.write_bytes(page.encode("ascii", "xmlcharrefreplace"))


def _title(column: str) -> str:
    """A column's header in the HTML table: its unit in brackets."""
    units = {"_eV_per_A": " (eV/Å)", "_eV": " (eV)", "_A3": " (Å³)", "_GPa": " (GPa)",
             "_s": " (s)"}  # fmt: skip
    for suffix, unit in units.items():
        if column.endswith(suffix):
            return column.removesuffix(suffix).replace("_", " ") + unit
    return column.replace("_", " ")


def _html_row(row: dict, columns: list[str]) -> str:
    cells = []
    for column in columns:
        value = "" if row[column] is None else str(row[column])
        kind = "num" if column in DECIMALS or column in ("natoms", "opt_steps") else ""
        kind = "text" if column in ("reason", "warnings") else kind
        cells.append(f'<td class="{kind}">{html.escape(value)}</td>')
    return f'<tr class="{html.escape(row["status"])}">{"".join(cells)}</tr>'


def write_overview(rows: list[dict], versions: Counter, path: str) -> None:
    """What the report's first page says about the results (reStructuredText): counts by
    status, calculators, the versions that computed them (`versions`: "name version" →
    structures), total wall time."""
    counts = status_counts(rows)
    calculators = Counter(row["calculator"] for row in rows if row["calculator"])
    lines = [
        f"**{len(rows)} structures**: "
        + ", ".join(f"{n} {status}" for status, n in counts.items())
        + f"; computed with {_listed(calculators, len(rows))}.",
        "",
        f"**Versions** (of the relaxes): {_versions(versions)}; report made "
        f"with Snakemake {_version('snakemake')}.",
        "",
        f"**Wall time**: {sum(r['wall_time_s'] for r in rows):.1f} s in calculations "
        "(relax + static, summed over structures; a reused calculation counts its first "
        "run).",
    ]
    lines += ["", *_first_rows(rows)]
    failed = [row for row in rows if row["status"] == "failed"]
    if failed:
        lines += ["", "**Failed**:", ""]
        lines += [f"- ``{r['id']}``: {_rst(r['reason'])}" for r in failed[:MOST_LISTED]]
        if len(failed) > MOST_LISTED:
            lines.append(f"- ... and {len(failed) - MOST_LISTED} more (see summary.html)")
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")


def _first_rows(rows: list[dict], most: int = 6) -> list[str]:
    """A few rows of the table as an rst table for the report's first page: failed and
    unconverged first, then the lowest energies per atom."""
    order = {"failed": 0, "unconverged": 1}
    chosen = sorted(rows, key=lambda r: (order.get(r["status"], 2),
                                         r["energy_per_atom_eV"] or 0.0))[:most]  # fmt: skip
    header = ("id", "status", "E/atom (eV)", "dV (%)", "steps")
    cells = [header] + [
        (r["id"], r["status"], _number(r["energy_per_atom_eV"], "{:.6f}"),
         _number(_volume_change(r), "{:+.2f}"), _number(r["opt_steps"], "{:d}"))
        for r in chosen
    ]  # fmt: skip
    widths = [max(len(c[i]) for c in cells) for i in range(len(header))]
    rule = "  ".join("=" * w for w in widths)
    table = [rule, "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)), rule]
    table += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True))
              for row in cells[1:]]  # fmt: skip
    shown = f"{len(chosen)} of {len(rows)} rows" if len(rows) > len(chosen) else "all rows"
    return [f"**Results** ({shown}; the whole table is summary.html):", "", *table, rule]


def _number(value: object, fmt: str) -> str:
    """A number formatted, or an empty cell."""
    return "" if value is None or value == "" else fmt.format(value)


def _volume_change(row: dict) -> float | None:
    """Volume change on relaxation, %, or None without volumes."""
    before, after = row.get("volume_initial_A3"), row.get("volume_final_A3")
    return 100 * (after / before - 1) if before and after else None


def _versions(versions: Counter) -> str:
    """`ase 3.29.0, quacc 1.8.2` (`versions`: "name version" → relaxes, and "relaxes" →
    how many recorded theirs), with the number of relaxes where not all share one."""
    total = versions.get("relaxes", 0)
    if not total:
        return "not recorded"
    return ", ".join(name if n == total else f"{name} ({n} of {total} relaxes)"
                     for name, n in sorted(versions.items()) if name != "relaxes")  # fmt: skip


def _listed(counts: Counter, total: int) -> str:
    """`a` if every structure has `a`; else `a (3), b (2)`."""
    if len(counts) == 1 and next(iter(counts.values())) == total:
        return next(iter(counts))
    return ", ".join(f"{name} ({n})" for name, n in counts.most_common())


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "(not installed)"


def _rst(text: str) -> str:
    """Plain text safe inside reStructuredText (no markup characters at work)."""
    return "".join(f"\\{c}" if c in "*`|_[]\\" else c for c in text.replace("\n", " "))


def check(table: str, flag: str, log: str) -> None:
    """Exit non-zero with a short list of failed structures; else write `flag`.

    `table` is the results table, `summary.json` (or the CSV)."""
    log_to(log)
    if table.endswith(".json"):
        rows = read_json(table)
    else:
        with open(table, newline="") as handle:
            rows = list(csv.DictReader(handle))
    failed = [r for r in rows if r["status"] == "failed"]
    unconverged = [r["id"] for r in rows if r["status"] == "unconverged"]
    if unconverged:
        print(
            f"poscarflow: not converged (see max_steps): {', '.join(unconverged)}", file=sys.stderr
        )
    if failed:
        lines = [f"  {r['id']}: {r['reason']}" for r in failed]
        logging.error("failed: %s", lines)
        print(
            f"poscarflow: {len(failed)} of {len(rows)} structures failed:",
            *lines,
            sep="\n",
            file=sys.stderr,
        )
        sys.exit(1)
    Path(flag).write_text(f"{len(rows)} structures done\n")
