"""The code a job really runs, as a fingerprint Snakemake's `code` trigger can see.

Snakemake's code trigger sees `shell:` text, `run:` source and a `script:` file's mtime,
never the modules a job imports nor the versions of quacc, ASE and pymatgen. So the
relax and static rules put this fingerprint in their `shell:` command: our modules the
job imports (followed transitively, compared as syntax trees without docstrings, so
comments and formatting do not count) and the versions of the science stack.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import json
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

PACKAGE = "poscarflow"
PACKAGE_DIR = Path(__file__).resolve().parent
# The science stack every calculation depends on (numbers from numpy and scipy too:
# ASE's optimizers and the Frechet cell filter), recorded with every result.
STACK = ("quacc", "ase", "pymatgen", "numpy", "scipy")
JOB_ENTRY = "poscarflow.job"  # the module a relax or static job runs


def _module_file(name: str) -> Path | None:
    """The source file of one of our modules, or None if it is not ours."""
    if name != PACKAGE and not name.startswith(f"{PACKAGE}."):
        return None
    parts = name.split(".")[1:]
    candidate = PACKAGE_DIR.joinpath(*parts)
    for path in (candidate.with_suffix(".py"), candidate / "__init__.py"):
        if path.is_file():
            return path
    return None


def _strip_docstrings(tree: ast.AST) -> ast.AST:
    """Remove docstrings: they document the code, they do not change what it does."""
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (
            isinstance(body, list)
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            node.body = body[1:] or [ast.Pass()]
    return tree


def _imports(tree: ast.AST) -> set[str]:
    """Our module names imported anywhere in a module (also inside functions)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {n for n in names if _module_file(n) is not None}


def module_hashes(*entries: str) -> dict[str, str]:
    """Module name → hash of its normalised syntax tree, for `entries` and what they
    import (names outside our package are skipped)."""
    hashes: dict[str, str] = {}
    todo = [*entries, PACKAGE]  # importing a submodule runs the package's __init__ too
    while todo:
        name = todo.pop()
        if name in hashes or (path := _module_file(name)) is None:
            continue
        stat = path.stat()
        hashes[name], imports = _module_info(str(path), stat.st_mtime_ns, stat.st_size)
        todo.extend(imports)
    return dict(sorted(hashes.items()))


@cache
def _module_info(path: str, mtime_ns: int, size: int) -> tuple[str, tuple[str, ...]]:
    """A module's syntax-tree hash and our modules it imports, cached on disk by its
    path, modification time and size (parsing 20 modules took a second of every
    `snakemake -n`)."""
    from poscarflow.files import read_json, write_json

    stamp = f"{mtime_ns}:{size}"
    cache_file = Path(".snakemake/poscarflow/code-hashes.json")
    known = read_json(cache_file) or {}
    if (entry := known.get(path)) and entry[0] == stamp:
        return entry[1], tuple(entry[2])
    tree = ast.parse(Path(path).read_text(), filename=path)
    digest_ = hashlib.sha256(ast.dump(_strip_docstrings(tree)).encode()).hexdigest()[:12]
    imports = tuple(sorted(_imports(tree)))
    known[path] = [stamp, digest_, list(imports)]
    with contextlib.suppress(OSError):  # a read-only workflow folder: no cache, same answer
        write_json(cache_file, known)
    return digest_, imports


def package_versions(packages: tuple[str, ...]) -> dict[str, str]:
    """Installed versions of the given distributions."""
    found = {}
    for name in dict.fromkeys((*STACK, *packages)):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


@cache
def code_fingerprint(entries: tuple[str, ...], packages: tuple[str, ...] = ()) -> dict:
    """What a job running `entries` executes: module hashes, package versions, a digest."""
    parts = {"modules": module_hashes(*entries), "versions": package_versions(packages)}
    text = json.dumps(parts, sort_keys=True)
    return parts | {"digest": hashlib.sha256(text.encode()).hexdigest()[:16]}


def job_code(calculator: str) -> dict:
    """The code fingerprint of a relax or static job with this calculator."""
    from poscarflow.calculators import get_calculator

    calc = get_calculator(calculator)
    return code_fingerprint((JOB_ENTRY, calc.module), calc.packages)


def digest(data: object) -> str:
    """A short, stable hash of JSON-able data (reuse keys, request and parameter hashes)."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]
