"""A batch's share of the run-wide outputs, made where its static job ran.

The table rows, relaxed structures and database rows of a batch are made by its static
job right after its calculations, in parallel with other batches and in a process that
has ASE imported (the pool's, or the SLURM job's), so that the finishing job only joins
them: at 10,000 structures it reads a few hundred files instead of 30,000 and copies
database rows in SQL instead of writing each through ase.db (about 1 ms a row).

A part records the reuse keys it was made from and the code that made it. The finishing
job remakes a part whose keys differ from the batch manifest's, or that older code made
(an upgrade, a folder from another version), so a part is a cache that cannot go stale.
"""

from __future__ import annotations

import io
import logging
from collections import Counter
from functools import cache
from typing import TYPE_CHECKING

from poscarflow.collect import relax_versions, structure_row, summaries
from poscarflow.database import write_rows
from poscarflow.files import atomic_path, read_json, write_json
from poscarflow.fingerprint import digest, module_hashes, package_versions
from poscarflow.layout import Layout

if TYPE_CHECKING:
    from poscarflow.records import Part

logger = logging.getLogger("poscarflow.parts")


@cache
def part_format() -> str:
    """A digest of the code that makes a part and of the ASE version its database
    tables come from."""
    return digest([module_hashes(__name__), package_versions(("ase",))["ase"]])


def make_part(layout: Layout, batch: str, keys: dict[str, str]) -> Part:
    """Make and write the part of a batch whose structures' static reuse keys are `keys`
    (id → key, in the batch's order)."""
    from ase.io import read

    layout.part(batch).unlink(missing_ok=True)  # written last: a part without it is none
    rows, versions, frames, texts, db_rows = [], Counter(), [], [], []
    for sid in keys:
        relax, static = summaries(layout, sid)
        row = structure_row(sid, relax, static)
        rows.append(row)
        versions.update(relax_versions(relax))
        if row["status"] != "failed":
            text = layout.final_structure(sid).read_text()
            texts.append(text)
            frames.append((sid, text.count("\n")))
            db_rows.append((row, relax, read(io.StringIO(text), format="extxyz")))
    with atomic_path(layout.part(batch, ".extxyz")) as tmp:
        tmp.write_text("".join(texts))
    write_rows(layout.part(batch, ".db"), db_rows)
    part: Part = {"format": part_format(), "keys": dict(keys), "rows": rows,
                  "versions": dict(versions), "frames": frames}  # fmt: skip
    write_json(layout.part(batch), part)
    return part


def load_part(layout: Layout, batch: str, ids: list[str]) -> Part:
    """A batch's part as its static job left it, or made again here if it is missing or
    stale (its keys are not the manifest's, or other code made it)."""
    manifest = read_json(layout.manifest("static", batch)) or {}
    keys = {sid: (manifest.get(sid) or {}).get("key", "") for sid in ids}
    part = read_json(layout.part(batch))
    if part is not None and part["format"] == part_format() and part["keys"] == keys:
        return part
    logger.info("part of %s made again (%s)", batch, "missing" if part is None else "stale")
    return make_part(layout, batch, keys)


def make_part_of_request(task: tuple[str, str, dict[str, str]]) -> None:
    """The part of a batch (results folder, batch, keys) as a picklable task for the
    pool. A part that cannot be written is made again by the finishing job: the batch
    does not fail for it."""
    results, batch, keys = task
    try:
        make_part(Layout(results), batch, keys)
    except Exception:
        logger.warning("part of %s not written; the finishing job makes it", batch,
                       exc_info=True)  # fmt: skip
