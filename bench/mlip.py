"""Machine-learned potentials: one structure at a time (ASE) against one batched state.

The same N rattled cells are relaxed by
  ase      poscarflow's job code with calculator `sevennet` (or `lj`): quacc's Runner,
           one structure after another, ASE's FIRE and FrechetCellFilter (the baseline)
  batched  poscarflow's job code with `torchsim-sevennet` (or `torchsim-lj`): the whole
           batch as one TorchSim state, FIRE with the Frechet cell (poscarflow.batched)
  quacc    quacc's TorchSim recipe, `quacc.recipes.torchsim.core.relax_job`, called
           directly (needs torch-sim-atomistic >= 0.5, so Python >= 3.12; reported as
           unavailable where it cannot run)
and each prints structures per second, microseconds per atom per force evaluation
(steps + 1 per structure, from the summaries) and its ratio to the baseline measured in
the same run. Each engine is warmed up first (model built, imports done) on one cell;
times are for relax only. No assertion: a GPU machine is where the ratio matters.

Usage: python bench/mlip.py [--potential sevennet|lj] [--device auto|cpu|cuda] [--n 4]
       e.g. on a GPU node: python bench/mlip.py --device cuda --n 500
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

ARGON = {"sigma": 3.405, "epsilon": 0.0104}
ENGINES = {  # potential -> engine -> (calculator, calc_kwargs without device)
    "sevennet": {"ase": ("sevennet", {}), "batched": ("torchsim-sevennet", {})},
    "lj": {"ase": ("lj", ARGON | {"rc": 8.5}), "batched": ("torchsim-lj", ARGON | {"cutoff": 8.5})},
}


def make_cells(n: int, potential: str, seed: int = 0) -> list:
    """N rattled cells of 2 to 16 atoms (argon for lj)."""
    from ase.build import bulk

    if potential == "lj":
        kinds = [bulk("Ar", "fcc", a=5.3, cubic=True)]
    else:
        kinds = [bulk("Si", a=5.45), bulk("NaCl", "rocksalt", a=5.6), bulk("Cu", a=3.62),
                 bulk("MgO", "rocksalt", a=4.2), bulk("Al", a=4.05, cubic=True)]  # fmt: skip
    sizes = [(1, 1, 1), (2, 1, 1), (2, 2, 1), (2, 2, 2)]
    cells = []
    for i in range(n):
        atoms = kinds[i % len(kinds)].repeat(sizes[(i // len(kinds)) % len(sizes)])
        if len(atoms) > 16:
            atoms = kinds[i % len(kinds)].repeat((2, 1, 1))
        atoms.rattle(0.03, seed=seed + i)
        cells.append(atoms)
    return cells


def run_engine(root: Path, calculator: str, kwargs: dict, cells: list, *, fmax: float,
               max_steps: int) -> tuple[float, list[dict]]:  # fmt: skip
    """Relax `cells` with poscarflow's job code in `root`; wall time and summaries."""
    from ase.io import write

    from poscarflow.plan import Plan
    from poscarflow.testing import example_config, run_step

    (root / "structures").mkdir(parents=True)
    for i, atoms in enumerate(cells):
        write(root / "structures" / f"c{i:04d}.extxyz", atoms)
    relax = example_config()["relax"] | {"fmax": fmax, "max_steps": max_steps,
                                          "optimizer": "FIRE", "calc_kwargs": kwargs}  # fmt: skip
    config = example_config(structures=str(root / "structures"), calculator=calculator,
                            relax=relax, batch_size=len(cells))  # fmt: skip
    cwd = Path.cwd()
    os.chdir(root)
    try:
        plan = Plan(config, root / ".hashes.json")
        start = time.perf_counter()
        run_step(plan, "relax")
        seconds = time.perf_counter() - start
    finally:
        os.chdir(cwd)
    summaries = [json.loads(p.read_text()) for p in root.glob("results/calcs/*/relax/summary.json")]
    return seconds, summaries


def run_quacc(cells: list, potential: str, device: str, fmax: float, max_steps: int) -> float:
    """quacc's TorchSim relax_job on all cells at once; its wall time."""
    import torch_sim as ts
    from quacc import change_settings
    from quacc.recipes.torchsim.core import relax_job

    if potential == "lj":
        model = ("LennardJonesModel", "", ARGON | {"cutoff": 8.5, "compute_stress": True})
    else:
        model = ("SevenNetModel", "7net-0", {})
    with tempfile.TemporaryDirectory() as tmp, change_settings({"RESULTS_DIR": tmp}):
        start = time.perf_counter()
        relax_job(cells, model[0], model[1], ts.Optimizer.fire, max_steps=max_steps,
                  model_kwargs=model[2] | {"device": device},
                  convergence_fn_kwargs={"force_tol": fmax})  # fmt: skip
        return time.perf_counter() - start


def report(label: str, seconds: float, summaries: list[dict], base: float | None) -> float:
    """Print one engine's line; return its structures per second."""
    rate = len(summaries) / seconds
    evaluations = sum(s.get("natoms", 0) * (s.get("opt_steps", 0) + 1) for s in summaries)
    steps = [s.get("opt_steps", 0) for s in summaries]
    done = sum(s.get("status") == "done" for s in summaries)
    per_atom = f"{1e6 * seconds / evaluations:9.1f} µs/atom/step" if evaluations else " " * 22
    ratio = f"   x{rate / base:.2f} vs ase" if base else ""
    print(f"{label:<9} {seconds:7.1f} s {rate:8.2f} structures/s {per_atom}  "
          f"steps {min(steps, default=0)}-{max(steps, default=0)}, {done}/{len(summaries)} "
          f"converged{ratio}", flush=True)  # fmt: skip
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--potential", choices=sorted(ENGINES), default="sevennet")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--n", type=int, default=4, help="structures (default 4)")
    parser.add_argument("--fmax", type=float, default=0.05)
    parser.add_argument("--max-steps", type=int, default=200)
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    from poscarflow.devices import resolve_device

    device = resolve_device(args.device)
    cells = make_cells(args.n, args.potential)
    atoms = sum(len(a) for a in cells)
    load = os.getloadavg()[0]
    print(
        f"{args.n} cells, {atoms} atoms, {args.potential} on {device}, fmax {args.fmax} "
        f"(load average {load:.1f} on {os.cpu_count()} cores: other work skews timings)"
    )
    with tempfile.TemporaryDirectory() as tmp:
        base = None
        for engine, (calculator, fixed) in ENGINES[args.potential].items():
            if engine == "batched" and not _has("torch_sim"):
                print(f"{engine:<9} unavailable: torch-sim-atomistic is not installed")
                continue
            kwargs = fixed | ({"device": device} if calculator != "lj" else {})  # ASE's LJ: none
            warm = time.perf_counter()
            one = make_cells(1, args.potential, seed=99)
            run_engine(Path(tmp) / f"{engine}-warm", calculator, kwargs, one, fmax=args.fmax,
                       max_steps=5)  # fmt: skip
            print(f"{engine:<9} warm-up (imports, model) {time.perf_counter() - warm:.1f} s")
            seconds, summaries = run_engine(Path(tmp) / engine, calculator, kwargs, cells,
                                            fmax=args.fmax, max_steps=args.max_steps)  # fmt: skip
            rate = report(engine, seconds, summaries, base)
            base = base or rate
        try:
            seconds = run_quacc(cells, args.potential, device, args.fmax, args.max_steps)
        except Exception as err:  # not installable here: say why, in one line
            print(f"quacc     unavailable: {type(err).__name__}: {str(err).splitlines()[0]}")
        else:
            rate = args.n / seconds
            print(f"quacc     {seconds:7.1f} s {rate:8.2f} structures/s"
                  + (f"   x{rate / base:.2f} vs ase" if base else ""))  # fmt: skip


def _has(module: str) -> bool:
    from importlib.util import find_spec

    return find_spec(module) is not None


if __name__ == "__main__":
    main()
