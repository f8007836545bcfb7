"""Turn the validated config and the structure folder into batches and job requests.

Runs at DAG-build time for every structure, so it must stay cheap: file names, and the
content hashes of new or changed files only (cached), never quacc. Every parameter of a
batch's calculations goes into its request file (named by its content), and a digest of
them into the job's `params:`, where Snakemake's params trigger sees any change (see
workflow/rules/common.smk).
"""

from __future__ import annotations

import copy
import zlib
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from poscarflow.calculators import get_calculator
from poscarflow.files import write_json
from poscarflow.fingerprint import digest
from poscarflow.layout import STEPS, Layout
from poscarflow.records import Request
from poscarflow.structures import StructureFile, cached_contents, discover

NUMBER_TYPES = {"fmax": float, "max_steps": int, "min_distance": float}
HASH_CACHE = Path(".snakemake/poscarflow/structure-hashes.json")
SCHEMA = Path(__file__).resolve().parent / "schemas" / "config.schema.yaml"


def load_config(path: str | Path = "config/config.yaml") -> dict:
    """Read a config file and fill in the schema's defaults, as the Snakefile does."""
    import yaml
    from snakemake.utils import validate

    config = yaml.safe_load(Path(path).read_text()) or {}
    validate(config, str(SCHEMA))
    return config


def merge(base: dict, override: dict) -> dict:
    """Recursively merge `override` into a copy of `base` (quacc's recursive_dict_merge
    semantics, without importing quacc at DAG-build time)."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def assign_batches(ids: list[str], batch_size: int) -> dict[str, list[str]]:
    """Group structure ids into batches whose membership is stable as ids come and go.

    An id's batch is a hash of the id modulo a power of two, so adding or removing one
    structure changes one batch only (until the count of batches doubles). With
    `batch_size` 1 every structure is its own batch, named by its id.
    """
    if batch_size == 1:
        return {sid: [sid] for sid in ids}
    wanted = -(-len(ids) // batch_size)
    buckets = 1 << max(0, wanted - 1).bit_length()
    width = len(str(buckets - 1))
    batches: dict[str, list[str]] = {}
    for sid in ids:
        name = f"batch{zlib.crc32(sid.encode()) % buckets:0{width}d}"
        batches.setdefault(name, []).append(sid)
    return dict(sorted(batches.items()))


def _normalise(params: dict) -> dict:
    """Give equal values one spelling (1 and 1.0 for a float setting) so that they do
    not look like a parameter change to Snakemake."""
    return {key: NUMBER_TYPES.get(key, _same)(value) for key, value in params.items()}


def _same(value: Any) -> Any:
    return value


@dataclass
class Plan:
    """Structures, batches and per-calculation parameters for one config."""

    config: dict
    hash_cache: Path = HASH_CACHE
    layout: Layout = field(default_factory=Layout)

    @cached_property
    def structures(self) -> dict[str, StructureFile]:
        """Structure id → file, from the configured folder."""
        return {s.id: s for s in discover(self.config["structures"])}

    @cached_property
    def contents(self) -> dict[str, tuple[str, list[str]]]:
        """Structure id → (content hash, elements), cached in `.snakemake/`."""
        return cached_contents(list(self.structures.values()), self.hash_cache)

    @cached_property
    def elements(self) -> set[str]:
        """Every element of every readable structure."""
        return {el for _, elements in self.contents.values() for el in elements}

    @property
    def vasp_presets(self) -> set[str]:
        """The VASP presets relax and static use (registry default or calc_kwargs)."""
        default = dict(get_calculator("vasp").kwargs)["preset"]
        return {self.config[step]["calc_kwargs"].get("preset", default) for step in STEPS}

    @cached_property
    def batches(self) -> dict[str, list[str]]:
        """Batch name → structure ids."""
        size = self.config["batch_size"] or get_calculator(self.config["calculator"]).batch_size
        return assign_batches(list(self.structures), size)

    @cached_property
    def specs(self) -> dict[str, dict[str, dict]]:
        """Structure id → {step: the parameters its calculation runs with}."""
        overrides = self.config["overrides"]
        unknown = sorted(set(overrides) - set(self.structures))
        if unknown:
            raise ValueError(f"config overrides name unknown structure ids: {', '.join(unknown)}")
        for sid, override in overrides.items():
            for step, keys in override.items():
                bad = sorted(set(keys) - set(self.config[step]))
                if bad:
                    raise ValueError(
                        f"config overrides.{sid}.{step}: unknown key(s) {', '.join(bad)}; "
                        f"known: {', '.join(sorted(self.config[step]))}"
                    )
        # The settings without overrides, normalised once and shared (read-only) by every
        # structure without an override: 100,000 structures need no 100,000 copies.
        shared = {step: _normalise(self.config[step]) for step in STEPS}
        checks = _normalise(self.config["checks"])
        specs = {}
        for sid, structure in self.structures.items():
            settings = shared
            if sid in overrides:
                merged = merge({step: self.config[step] for step in STEPS}, overrides[sid])
                settings = {step: _normalise(merged[step]) for step in STEPS}
            common = {"id": sid, "calculator": self.config["calculator"]}
            specs[sid] = {
                "relax": common
                | {
                    "path": structure.path,
                    "structure_hash": self.contents[sid][0],
                    "format": structure.format,
                    **({"problem": structure.problem} if structure.problem else {}),
                    "checks": checks,
                    "relax": settings["relax"],
                },
                "static": common | {"static": settings["static"]},
            }
        return specs

    def select(self, ids: list[str] | None) -> list[str]:
        """The given structure ids, or all when none are given; ValueError naming any id
        that is not one of the plan's structures (the readers' common check)."""
        if unknown := sorted(set(ids or []) - set(self.structures)):
            raise ValueError(f"unknown structure ids: {', '.join(unknown)}")
        return list(ids) if ids else list(self.structures)

    def run_file(self) -> Path:
        """A file naming this run's results folder, structure ids and batches (for the
        pool's progress lines and the finishing job), named by its content."""
        run = {"results": str(self.layout.root), "ids": list(self.structures),
               "batches": self.batches}  # fmt: skip
        path = self.layout.root / "requests" / f"run-{digest(run)}.json"
        if not path.exists():
            write_json(path, run)
        return path

    def check(self) -> None:
        """Plan everything now, so that a bad folder or config is one ValueError."""
        _ = self.batches
        calculator = get_calculator(self.config["calculator"])
        checked: set[tuple[str, ...]] = set()
        for sid, specs in self.specs.items():
            for step in STEPS:
                keys = tuple(sorted(specs[step][step]["calc_kwargs"]))
                if keys in checked:
                    continue
                checked.add(keys)
                if unknown := calculator.unknown_kwargs(dict.fromkeys(keys)):
                    where = f"overrides.{sid}.{step}" if sid in self.config["overrides"] else step
                    raise ValueError(
                        f"config {where}.calc_kwargs: {', '.join(unknown)} not accepted by "
                        f"the {self.config['calculator']} calculator"
                    )

    def batch_params(self, step: str, batch: str) -> dict[str, Any]:
        """The parameters of one batch job: id → that calculation's spec."""
        return {sid: self.specs[sid][step] for sid in self.batches[batch]}

    def parameters_digest(self, step: str, batch: str) -> str:
        """A hash of every parameter of a batch: the value Snakemake's params trigger sees."""
        return digest(self.batch_params(step, batch))

    def request(
        self, step: str, batch: str, *, rerun_on_code: bool, policy: dict[str, int]
    ) -> Path:
        """Write a batch job's request file (once: its name is its content's hash)."""
        request = Request(
            step=step, batch=batch, results=str(self.layout.root),
            manifest=str(self.layout.manifest(step, batch)),
            rerun_on_code=rerun_on_code, policy=policy, calcs=self.batch_params(step, batch),
        )  # fmt: skip
        path = self.layout.request(step, batch, digest(request))
        if not path.exists():
            write_json(path, request)
        return path
