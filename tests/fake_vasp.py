"""A stand-in for the VASP executable (tests only): VASP's files, EMT's numbers.

VASP cannot run where poscarflow is tested. This script is started in its place, the way
VASP is (quacc's `VASP_CMD` setting: `QUACC_VASP_CMD="python tests/fake_vasp.py"`),
by custodian's VaspJob in the folder quacc wrote INCAR, POSCAR, KPOINTS and POTCAR to.
It reads them as VASP does and writes what VASP writes, in VASP's formats and in
VASP's order (vasp.out, OSZICAR, OUTCAR, vasprun.xml and XDATCAR grow one ionic step at
a time, CONTCAR is rewritten after every step), so that a kill leaves what a killed VASP
leaves. The parsers the pipeline really uses read them: ASE's Vasp calculator and
`ase.io` (vasprun.xml, OUTCAR, CONTCAR, XDATCAR), pymatgen's Vasprun, Outcar and Oszicar
(custodian's handlers and validators, emmet's TaskDoc in quacc's summary).

What it honours: NSW, IBRION (-1: no moves; 1, 2, 3: relax; others are refused as VASP
refuses nothing, so the stand-in says so and stops), ISIF (0-2: positions; 3: positions
and cell), EDIFFG (< 0: all forces below |EDIFFG|; > 0: energy change below EDIFFG),
POTIM (the step size), EDIFF, NELMIN and NELM (the number of electronic steps), ISPIN,
and a STOPCAR with LSTOP or LABORT (it stops after the ionic step, as VASP does with
LSTOP). What it is not: the numbers are ASE's EMT (forces and stress exact; the energy
shifted by SHIFT eV per atom so that it is negative as DFT's are, since custodian's
PositiveEnergyErrorHandler reruns VASP on a positive energy), the electronic steps and
eigenvalues are made up, and every IBRION moves the ions by a memoryless steepest-descent
step (positions += 0.2·POTIM·F, cell strain −POTIM·stress), so a relax continued from
its CONTCAR takes exactly the path an uninterrupted one takes (VASP's CG and quasi-Newton
optimizers lose their history on a restart: with real VASP a continued relax reaches the
same minimum within EDIFFG, not the same path to 1e-6 Å).

Faults, from the environment (runs are counted in the FAKE_VASP_LEDGER file):
  FAKE_VASP_LEDGER      file to append one JSON line per run start and per ionic step
  FAKE_VASP_STOP_AFTER  stop after this many ionic steps of a run, without finishing
  FAKE_VASP_STOP_RUNS   which runs stop ("1", "1,3" or "all"; default "1")
  FAKE_VASP_STOP        how: "kill" (VASP is killed alone: SIGKILL to itself; default) or
                        "kill-job" (the job dies with it: SIGKILL to the process that
                        started VASP, i.e. custodian's, then to itself), as SLURM's time
                        limit, a lost node or the OOM killer end a job
  FAKE_VASP_CUT         files to cut to half their size when stopping ("CONTCAR,...")
  FAKE_VASP_ERROR       a VASP error message to print (e.g. "ZBRENT: fatal error in
                        bracketing"), after which VASP stops, as it does
  FAKE_VASP_ERROR_AT    after which ionic step of a run (default 1)
  FAKE_VASP_ERROR_RUNS  which runs print it ("1", "1,2" or "all"; default "1")
  FAKE_VASP_SLEEP       seconds to sleep per ionic step (a slow VASP, for wall times)
  FAKE_VASP_SLEEP_RUNS  which runs sleep ("1", "1,3" or "all"; default "all")
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np

SHIFT = -3.5  # eV per atom added to EMT's energy (see the module docstring)
VERSION = "6.4.2"  # the version the files claim to come from


def main() -> int:
    """Run one 'VASP' calculation in the current folder; return the exit status."""
    from ase.calculators.emt import EMT
    from ase.io import read

    incar = read_incar(Path("INCAR"))
    atoms = read("POSCAR", format="vasp")
    atoms.calc = EMT()
    run = _ledger_start()
    ibrion, nsw, isif = incar.get("IBRION", -1), incar.get("NSW", 0), incar.get("ISIF", 2)
    if nsw <= 0 or ibrion == -1:
        nsw, moves = 1, False
    elif ibrion in (1, 2, 3):
        moves = True
    else:
        print(f"fake_vasp: IBRION = {ibrion} is not supported by the stand-in", flush=True)
        return 1
    if isif not in (0, 1, 2, 3):
        print(f"fake_vasp: ISIF = {isif} is not supported by the stand-in", flush=True)
        return 1
    out = Output(incar, atoms)
    stop_after = _int_env("FAKE_VASP_STOP_AFTER") if _this_run("FAKE_VASP_STOP_RUNS", run) else None
    error = os.environ.get("FAKE_VASP_ERROR") if _this_run("FAKE_VASP_ERROR_RUNS", run) else None
    error_at = _int_env("FAKE_VASP_ERROR_AT") or 1
    previous = None
    for step in range(1, nsw + 1):
        energy, forces, stress = _evaluate(atoms)
        _ledger(
            {
                "run": run,
                "step": step,
                "positions": atoms.positions.tolist(),
                "cell": atoms.cell.array.tolist(),
                "energy": energy,
            }
        )
        converged = moves and _converged(incar, energy, previous, forces)
        last = converged or step == nsw or _stopcar()
        out.ionic_step(step, atoms, energy, forces, stress, last=last)
        if moves and not converged:
            _move(atoms, forces, stress, incar.get("POTIM", 0.5), relax_cell=isif >= 3)
        out.contcar(atoms)
        if stop_after is not None and step >= stop_after:
            _stop_early()
        if error and step >= error_at:
            out.error(error)
            return 1
        if last:
            out.finish(atoms, converged=converged)
            return 0
        previous = energy
        pause = os.environ.get("FAKE_VASP_SLEEP")
        if pause is not None and _this_run("FAKE_VASP_SLEEP_RUNS", run, default="all"):
            time.sleep(float(pause))
    return 0


def read_incar(path: Path) -> dict:
    """INCAR tags (upper case) → int, float, bool or str, as VASP reads them."""
    tags = {}
    for raw in path.read_text().splitlines():
        line = raw.split("#")[0].split("!")[0]
        if "=" not in line:
            continue
        key, value = (part.strip() for part in line.split("=", 1))
        tags[key.upper()] = _value(value)
    return tags


def _value(text: str) -> int | float | bool | str:
    if text.upper() in (".TRUE.", "T", ".T."):
        return True
    if text.upper() in (".FALSE.", "F", ".F."):
        return False
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _evaluate(atoms) -> tuple[float, np.ndarray, np.ndarray]:
    """Energy (eV, shifted), forces (eV/Å) and stress (3×3, eV/Å³) from EMT."""
    from ase.stress import voigt_6_to_full_3x3_stress

    energy = float(atoms.get_potential_energy()) + SHIFT * len(atoms)
    forces = atoms.get_forces()
    stress = voigt_6_to_full_3x3_stress(atoms.get_stress())
    return energy, forces, stress


def _converged(incar: dict, energy: float, previous: float | None, forces) -> bool:
    """VASP's EDIFFG criterion (it ignores the stress, as VASP does)."""
    ediffg = incar.get("EDIFFG", 10 * incar.get("EDIFF", 1e-4))
    if ediffg < 0:
        return bool(np.linalg.norm(forces, axis=1).max() < abs(ediffg))
    return previous is not None and abs(energy - previous) < ediffg


def _move(atoms, forces, stress, potim: float, *, relax_cell: bool) -> None:
    """One memoryless steepest-descent step: the next geometry from this one alone."""
    if relax_cell:
        strain = -potim * stress
        atoms.set_cell(atoms.cell.array @ (np.eye(3) + strain), scale_atoms=True)
    atoms.positions = atoms.positions + 0.2 * potim * forces
    atoms.calc.reset()


def _stopcar() -> bool:
    """A STOPCAR asks VASP to stop after this ionic step (LSTOP) or at once (LABORT)."""
    try:
        text = Path("STOPCAR").read_text().upper()
    except FileNotFoundError:
        return False
    return ("LSTOP" in text or "LABORT" in text) and ".TRUE." in text


def _stop_early() -> None:
    """End without finishing, as a killed VASP does: files stay as they are."""
    for name in filter(None, os.environ.get("FAKE_VASP_CUT", "").split(",")):
        path = Path(name.strip())
        if path.exists():
            data = path.read_bytes()
            path.write_bytes(data[: len(data) // 2])
    sys.stdout.flush()
    if os.environ.get("FAKE_VASP_STOP", "kill") == "kill-job":
        os.kill(os.getppid(), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)


def _int_env(name: str) -> int | None:
    value = os.environ.get(name)
    return int(value) if value else None


def _this_run(name: str, run: int, default: str = "1") -> bool:
    """Whether the fault named by `name` ("1", "1,3" or "all") applies to run `run`."""
    which = os.environ.get(name, default).strip()
    return which == "all" or str(run) in which.replace(" ", "").split(",")


def _ledger_start() -> int:
    """Record a run's start; its number (1 for the first run the ledger sees)."""
    path = os.environ.get("FAKE_VASP_LEDGER")
    if not path:
        return 1
    try:
        lines = Path(path).read_text().splitlines()
    except FileNotFoundError:
        lines = []
    run = 1 + sum('"start"' in line for line in lines)
    _ledger({"run": run, "start": str(Path.cwd())})
    return run


def _ledger(record: dict) -> None:
    if path := os.environ.get("FAKE_VASP_LEDGER"):
        with Path(path).open("a") as handle:
            handle.write(json.dumps(record) + "\n")


class Output:
    """VASP's output files of one run, written as VASP writes them."""

    def __init__(self, incar: dict, atoms) -> None:
        self.incar = incar
        self.natoms = len(atoms)
        self.symbols = atoms.get_chemical_symbols()
        self.species = list(dict.fromkeys(self.symbols))
        self.counts = [self.symbols.count(s) for s in self.species]
        self.potcars = _potcar_titles()
        self.zval = _potcar_zvals()
        self.nelect = float(
            sum(self.zval.get(s, 1.0) * n for s, n in zip(self.species, self.counts, strict=True))
        )
        self.ispin = int(incar.get("ISPIN", 1))
        self.nbands = int(incar.get("NBANDS", max(8, math.ceil(self.nelect / 2 * 1.2))))
        self.kpoints = _kpoints(atoms)
        nelmin = int(incar.get("NELMIN", 2))
        nelm = int(incar.get("NELM", 60))
        need = math.ceil(-math.log10(float(incar.get("EDIFF", 1e-4)))) + 1
        self.nelec = max(1, min(max(nelmin, need), nelm - 1))
        self.initial = atoms.copy()
        self.started = time.time()
        self.stdout = sys.stdout
        Path("OSZICAR").write_text("")
        Path("XDATCAR").write_text("")
        Path("OUTCAR").write_text(self._outcar_header(atoms))
        Path("vasprun.xml").write_text(self._vasprun_header(atoms))
        print(
            f" running on    1 total cores\n vasp.{VERSION} (stand-in: tests/fake_vasp.py)\n"
            f" POSCAR found :  {len(self.species)} types and {self.natoms} ions",
            flush=True,
        )

    # per ionic step
    def ionic_step(self, step: int, atoms, energy: float, forces, stress, *, last: bool) -> None:
        """Append one ionic step to OSZICAR, OUTCAR, vasp.out, vasprun.xml and XDATCAR."""
        scf = [energy + 10.0 ** (2 - i) * (-1) ** i for i in range(1, self.nelec)] + [energy]
        osz, out = [], []
        header = (
            "       N       E                     dE             d eps       ncg     "
            "rms          rms(c)"
        )
        osz.append(header)
        previous = 0.0
        for i, e in enumerate(scf, start=1):
            de = e - previous
            previous = e
            osz.append(
                f"DAV: {i:3d}    {e: .12E}   {de: .5E}   {-abs(de) / 10: .5E}   "
                f"{16 * self.natoms:5d}   {abs(de) ** 0.5 / 10: .3E}"
            )
            out.append(self._outcar_scf(step, i, e, i == len(scf)))
        mag = "  mag=     0.0000" if self.ispin == 2 else ""
        delta = energy - getattr(self, "_last_energy", 0.0)
        ionic = f"{step:4d} F= {_vasp_e(energy)} E0= {_vasp_e(energy)}  d E ={_vasp_e(delta)}{mag}"
        osz.append(ionic)
        self._last_energy = energy
        _append("OSZICAR", "\n".join(osz) + "\n")
        print("\n".join(osz[1:]), flush=True)
        out.append(self._outcar_ionic(atoms, energy, forces, stress, step))
        _append("OUTCAR", "".join(out))
        _append("vasprun.xml", self._vasprun_step(atoms, energy, forces, stress, scf, last=last))
        self._xdatcar(atoms, step)

    def contcar(self, atoms) -> None:
        """Rewrite CONTCAR with the next geometry (positions, then zero velocities)."""
        lines = [_title(self.symbols), "   1.00000000000000"]
        lines += [" " + "".join(f"{x:22.16f}" for x in row) for row in atoms.cell.array]
        lines += ["   " + "   ".join(self.species), "   " + "   ".join(map(str, self.counts))]
        lines.append("Direct")
        lines += ["".join(f"{x:20.16f}" for x in row) for row in atoms.get_scaled_positions(False)]
        lines.append("")
        lines += ["  0.00000000E+00  0.00000000E+00  0.00000000E+00"] * self.natoms
        Path("CONTCAR").write_text("\n".join(lines) + "\n")

    def error(self, message: str) -> None:
        """Print a VASP error message, as VASP does before it stops."""
        text = f" {message}\n please rerun with smaller EDIFF, or copy CONTCAR\n"
        text += " to POSCAR and continue\n"
        print(text, flush=True)
        _append("OUTCAR", text)

    def finish(self, atoms, *, converged: bool) -> None:
        """Close the files the way VASP does at the end of a run."""
        if converged:
            _append(
                "OUTCAR", "\n reached required accuracy - stopping structural energy minimisation\n"
            )
            print(" reached required accuracy - stopping structural energy minimisation")
        elapsed = time.time() - self.started
        _append(
            "OUTCAR",
            (
                "\n\n General timing and accounting informations for this job:\n"
                " ========================================================\n\n"
                f"                  Total CPU time used (sec):{elapsed:15.3f}\n"
                f"                            User time (sec):{elapsed:15.3f}\n"
                "                          System time (sec):          0.000\n"
                f"                         Elapsed time (sec):{elapsed:15.3f}\n\n"
                "                   Maximum memory used (kb):       40000.\n"
                "                   Average memory used (kb):          N/A\n\n"
                "                          Minor page faults:            0\n"
                "                          Major page faults:            0\n"
                "                 Voluntary context switches:            0\n"
            ),
        )
        _append("vasprun.xml", _structure_xml(atoms, "finalpos", indent=1) + "</modeling>\n")
        sys.stdout.flush()

    # file pieces
    def _outcar_header(self, atoms) -> str:
        lines = [
            f" vasp.{VERSION} 22Feb23 (build Jan 01 2024 00:00:00) complex   serial",
            " executed on             LinuxGNU date 2024.01.01  00:00:00",
            " running on    1 total cores",
            "",
            " INCAR:",
        ]
        potcars = [f" POTCAR:    {self.potcars.get(s, 'PAW_PBE ' + s)}" for s in self.species]
        lines += potcars  # VASP lists them twice: when it reads them, and in the header
        lines += [f"   {k} = {v}" for k, v in self.incar.items()]
        lines += ["", *potcars]
        nkpts, npw = len(self.kpoints), 1000 * self.natoms
        lines += [
            "",
            "-" * 104,
            "",
            "",
            "",
            "",
            " Dimension of arrays:",
            f"   k-points           NKPTS = {nkpts:6d}   k-points in BZ     NKDIM = {nkpts:6d}"
            f"   number of bands    NBANDS= {self.nbands:6d}",
            f"   number of dos      NEDOS = {int(self.incar.get('NEDOS', 301)):6d}"
            f"   number of ions     NIONS = {self.natoms:6d}",
            f"   total plane-waves  NPLWV = {8 * npw:6d}",
            "   ions per type =  " + "".join(f"{n:5d}" for n in self.counts),
            "",
            f"   NELECT = {self.nelect:12.4f}    total number of electrons",
            f"   ISPIN  = {self.ispin:6d}    spin polarized calculation?",
            *self._echo(),
            "",
            f"  volume of cell : {atoms.get_volume():12.2f}",
            "      direct lattice vectors                 reciprocal lattice vectors",
        ]
        recip = atoms.cell.reciprocal()
        lines += [
            "   " + "".join(f"{x:13.9f}" for x in (*a, *b))
            for a, b in zip(atoms.cell.array, recip, strict=True)
        ]
        lines += ["", " k-points in reciprocal lattice and weights: KPOINTS"]
        lines += [
            "  " + "".join(f"{x:12.8f}" for x in kp) + f"{1 / nkpts:16.9f}" for kp in self.kpoints
        ]
        lines += ["", "", "", "-" * 104, "", ""]
        lines += [
            f" k-point {n:2d} :   " + " ".join(f"{x:.4f}" for x in kp) + f"  plane waves: {npw:7d}"
            for n, kp in enumerate(self.kpoints, start=1)
        ]
        lines += ["", f" maximum number of plane-waves: {npw:8d}", ""]
        return "\n".join(lines) + "\n\n"

    def _echo(self) -> list[str]:
        """The ionic-relaxation parameters, as VASP echoes them in OUTCAR."""
        get = self.incar.get
        return [
            f"   NSW    = {int(get('NSW', 0)):6d}    number of steps for IOM",
            f"   IBRION = {int(get('IBRION', -1)):6d}    ionic relax: 0-MD 1-quasi-New 2-CG",
            f"   ISIF   = {int(get('ISIF', 2)):6d}    stress and relaxation",
            f"   EDIFF  = {float(get('EDIFF', 1e-4)):.1E}   stopping-criterion for ELM",
            f"   EDIFFG = {float(get('EDIFFG', -0.02)):.1E}   stopping-criterion for IOM",
            f"   POTIM  = {float(get('POTIM', 0.5)):8.4f}    time-step for ionic-motion",
        ]

    def _outcar_scf(self, step: int, i: int, energy: float, last: bool) -> str:
        text = (
            f"\n----------------------------------------- Iteration {step:4d}({i:4d})  "
            "---------------------------------------\n\n"
            "      LOOP:  cpu time      0.01: real time      0.01\n\n"
            f" number of electron {self.nelect:15.7f} magnetization       0.0000000\n"
            "  entropy T*S    EENTRO =        -0.00000000\n"
            f"  free energy    TOTEN  = {energy:18.8f} eV\n\n"
            f"  energy without entropy = {energy:18.8f}  energy(sigma->0) = {energy:18.8f}\n\n"
        )
        if last:
            text += (
                "\n------------------------ aborting loop because EDIFF is reached "
                "----------------------------------------\n\n"
            )
        return text

    def _outcar_ionic(self, atoms, energy: float, forces, stress, step: int) -> str:
        from ase.units import GPa

        kb = -stress * atoms.get_volume()  # FORCE on cell = -STRESS, eV
        kbar = -stress / GPa * 10  # VASP prints the pressure (−stress) in kB
        order = [(0, 0), (1, 1), (2, 2), (0, 1), (1, 2), (2, 0)]
        lines = [
            "  FORCE on cell =-STRESS in cart. coord.  units (eV):",
            "  Direction    XX          YY          ZZ          XY          YZ          ZX",
            "  " + "-" * 86,
            "  Total   " + "".join(f"{kb[i, j]:12.5f}" for i, j in order),
            "  in kB   " + "".join(f"{kbar[i, j]:12.5f}" for i, j in order),
            f"  external pressure = {np.trace(kbar) / 3:11.2f} kB  Pullay stress =        0.00 kB",
            "",
            "",
            " VOLUME and BASIS-vectors are now :",
            " " + "-" * 77,
            f"  energy-cutoff  : {float(self.incar.get('ENCUT', 520)):11.2f}",
            f"  volume of cell : {atoms.get_volume():11.2f}",
            "      direct lattice vectors                 reciprocal lattice vectors",
            *(
                "   " + "".join(f"{x:13.9f}" for x in (*a, *b))
                for a, b in zip(atoms.cell.array, atoms.cell.reciprocal(), strict=True)
            ),
            "",
            "",
            " POSITION                                       TOTAL-FORCE (eV/Angst)",
            " " + "-" * 83,
        ]
        lines += [
            " " + "".join(f"{x:13.5f}" for x in p) + "    " + "".join(f"{f:14.6f}" for f in g)
            for p, g in zip(atoms.positions, forces, strict=True)
        ]
        drift = forces.sum(axis=0)
        lines += [
            " " + "-" * 83,
            "    total drift:                         " + "".join(f"{d:14.6f}" for d in drift),
            "",
            "",
            "-" * 104,
            "",
            "",
            "  FREE ENERGIE OF THE ION-ELECTRON SYSTEM (eV)",
            "  ---------------------------------------------------",
            f"  free  energy   TOTEN  = {energy:18.8f} eV",
            "",
            f"  energy  without entropy= {energy:18.8f}  energy(sigma->0) = {energy:18.8f}",
            "",
            "",
            "-" * 104,
            "",
        ]
        if self.ispin == 2:
            lines += [
                " magnetization (x)",
                "",
                "# of ion       s       p       d       tot",
                "------------------------------------------",
            ]
            lines += [
                f"{i:5d}        0.000   0.000   0.000   0.000" for i in range(1, self.natoms + 1)
            ]
            lines += [
                "--------------------------------------------------",
                "tot          0.000   0.000   0.000   0.000",
                "",
            ]
        efermi = self._efermi()
        lines += [
            f" E-fermi : {efermi:10.4f}     XC(G=0):  -9.0000     alpha+bet : -10.0000",
            "",
            "     LOOP+:  cpu time      0.05: real time      0.05",
            "",
            f" ----- ionic step {step} done -----",
            "",
        ]
        return "\n".join(lines) + "\n"

    def _vasprun_header(self, atoms) -> str:
        gen, divisions = _kpoint_generation()
        k = "\n".join(f"   <v>{_vec(kp)}</v>" for kp in self.kpoints)
        w = "\n".join(f"   <v>{1 / len(self.kpoints):16.8f} </v>" for _ in self.kpoints)
        species_rows = "\n".join(
            f"    <rc><c>{s:2s}</c><c>{self.species.index(s) + 1:4d}</c></rc>" for s in self.symbols
        )
        type_rows = "\n".join(
            f"    <rc><c>{n:4d}</c><c>{s:2s}</c><c>{_mass(s):16.8f}</c>"
            f"<c>{self.zval.get(s, 1.0):16.8f}</c>"
            f"<c>  {self.potcars.get(s, 'PAW_PBE ' + s):38s}</c></rc>"
            for s, n in zip(self.species, self.counts, strict=True)
        )
        incar = "\n".join(_xml_item(k, v, 2) for k, v in self.incar.items())
        return f"""<?xml version="1.0" encoding="ISO-8859-1"?>
<modeling>
 <generator>
  <i name="program" type="string">vasp </i>
  <i name="version" type="string">{VERSION}  </i>
  <i name="subversion" type="string">22Feb23 (build Jan 01 2024 00:00:00) complex serial </i>
  <i name="platform" type="string">LinuxGNU </i>
  <i name="date" type="string">2024 01 01 </i>
  <i name="time" type="string">00:00:00 </i>
 </generator>
 <incar>
{incar}
 </incar>
 <kpoints>
  <generation param="{gen}">
   <v type="int" name="divisions">{"".join(f"{d:8d}" for d in divisions)} </v>
   <v name="usershift">      0.00000000       0.00000000       0.00000000 </v>
   <v name="genvec1">{_vec([1 / divisions[0], 0, 0])}</v>
   <v name="genvec2">{_vec([0, 1 / divisions[1], 0])}</v>
   <v name="genvec3">{_vec([0, 0, 1 / divisions[2]])}</v>
   <v name="shift">      0.00000000       0.00000000       0.00000000 </v>
  </generation>
  <varray name="kpointlist" >
{k}
  </varray>
  <varray name="weights" >
{w}
  </varray>
 </kpoints>
 <parameters>
{self._parameters()}
 </parameters>
 <atominfo>
  <atoms>{self.natoms:8d} </atoms>
  <types>{len(self.species):8d} </types>
  <array name="atoms" >
   <dimension dim="1">ion</dimension>
   <field type="string">element</field>
   <field type="int">atomtype</field>
   <set>
{species_rows}
   </set>
  </array>
  <array name="atomtypes" >
   <dimension dim="1">type</dimension>
   <field type="int">atomspertype</field>
   <field type="string">element</field>
   <field>mass</field>
   <field>valence</field>
   <field type="string">pseudopotential</field>
   <set>
{type_rows}
   </set>
  </array>
 </atominfo>
{_structure_xml(atoms, "initialpos", indent=1)}"""

    def _parameters(self) -> str:
        """VASP echoes every parameter it used, the INCAR's and its defaults."""
        used = {
            "PREC": "accurate",
            "ENMAX": 520.0,
            "EDIFF": 1e-4,
            "NELM": 60,
            "NELMIN": 2,
            "NELMDL": -5,
            "ISPIN": 1,
            "NELECT": self.nelect,
            "NBANDS": self.nbands,
            "ISMEAR": 1,
            "SIGMA": 0.2,
            "LREAL": False,
            "LSORBIT": False,
            "LNONCOLLINEAR": False,
            "NSW": 0,
            "IBRION": -1,
            "ISIF": 2,
            "POTIM": 0.5,
            "EDIFFG": -0.02,
            "NEDOS": 301,
            "LORBIT": 0,
            "ALGO": "Normal",
            "GGA": "--",
            "METAGGA": "--",
            "LHFCALC": False,
            "LDAU": False,
            "LEPSILON": False,
            "LCALCEPS": False,
            "LOPTICS": False,
            "IVDW": 0,
            "KSPACING": 0.5,
            "ISYM": 2,
        }
        renamed = {"ENCUT": "ENMAX"}
        for key, value in self.incar.items():
            used[renamed.get(key, key)] = value
        if "MAGMOM" in used:
            used["MAGMOM"] = [float(x) for x in _expand(str(used["MAGMOM"]))]
        return "\n".join(_xml_item(k, v, 2) for k, v in used.items())

    def _vasprun_step(self, atoms, energy, forces, stress, scf, *, last: bool) -> str:
        from ase.units import GPa

        steps = "\n".join(
            f"""  <scstep>
   <time name="dav">    0.01    0.01</time>
   <time name="total">    0.01    0.01</time>
   <energy>
    <i name="e_fr_energy">{e:18.8f} </i>
    <i name="e_wo_entrp">{e:18.8f} </i>
    <i name="e_0_energy">{e:18.8f} </i>
   </energy>
  </scstep>"""
            for e in scf
        )
        kbar = stress / GPa * -10  # vasprun.xml has VASP's stress in kB, pressure positive
        text = f""" <calculation>
{steps}
{_structure_xml(atoms, None, indent=2)}
  <varray name="forces" >
{chr(10).join(f"   <v>{_vec(f)}</v>" for f in forces)}
  </varray>
  <varray name="stress" >
{chr(10).join(f"   <v>{_vec(s)}</v>" for s in kbar)}
  </varray>
  <energy>
   <i name="e_fr_energy">{energy:18.8f} </i>
   <i name="e_wo_entrp">{energy:18.8f} </i>
   <i name="e_0_energy">{energy:18.8f} </i>
  </energy>
  <time name="totalsc">    0.05    0.05</time>
"""
        if last:
            text += self._eigenvalues() + self._dos()
        return text + " </calculation>\n"

    def _efermi(self) -> float:
        return 5.0

    def _eigenvalues(self) -> str:
        """A made-up metal: NBANDS bands 1 eV apart, dispersing across the Fermi level."""
        efermi = self._efermi()
        spins = []
        for spin in range(1, self.ispin + 1):
            kpts = []
            for n, kp in enumerate(self.kpoints, start=1):
                shift = 0.8 * math.cos(2 * math.pi * float(np.sum(kp)))
                rows = []
                for band in range(self.nbands):
                    e = efermi - self.nelect / 2 + 0.5 + band + shift  # nelect/2 bands full
                    occ = 1.0 if e < efermi else 0.0
                    rows.append(f"       <r>{e:10.4f}{occ:10.4f} </r>")
                kpts.append(
                    f'      <set comment="kpoint {n}">\n' + "\n".join(rows) + "\n      </set>"
                )
            spins.append(f'     <set comment="spin {spin}">\n' + "\n".join(kpts) + "\n     </set>")
        return (
            '  <eigenvalues>\n   <array>\n    <dimension dim="1">band</dimension>\n'
            '    <dimension dim="2">kpoint</dimension>\n'
            '    <dimension dim="3">spin</dimension>\n    <field>eigene</field>\n'
            "    <field>occ</field>\n    <set>\n"
            + "\n".join(spins)
            + "\n    </set>\n   </array>\n  </eigenvalues>\n"
        )

    def _dos(self) -> str:
        efermi = self._efermi()
        grid = np.linspace(efermi - 15, efermi + 10, int(self.incar.get("NEDOS", 301)))
        spins = []
        for spin in range(1, self.ispin + 1):
            rows = "\n".join(
                f"       <r>{e:10.4f}{0.5:10.4f}{0.5 * (e - grid[0]) * len(grid) / 25:10.4f} </r>"
                for e in grid
            )
            spins.append(f'      <set comment="spin {spin}">\n{rows}\n      </set>')
        return (
            f'  <dos>\n   <i name="efermi">{efermi:16.8f} </i>\n   <total>\n    <array>\n'
            '     <dimension dim="1">gridpoints</dimension>\n'
            '     <dimension dim="2">spin</dimension>\n     <field>energy</field>\n'
            "     <field>total</field>\n     <field>integrated</field>\n     <set>\n"
            + "\n".join(spins)
            + "\n     </set>\n    </array>\n   </total>\n  </dos>\n"
        )

    def _xdatcar(self, atoms, step: int) -> None:
        """XDATCAR: the header again whenever the cell may change (ISIF ≥ 3), as VASP does."""
        text = ""
        if step == 1 or int(self.incar.get("ISIF", 2)) >= 3:
            text += f"{_title(self.symbols)}\n           1\n"
            text += "".join(
                " " + "".join(f"{x:12.6f}" for x in row) + "\n" for row in atoms.cell.array
            )
            text += (
                "   "
                + "   ".join(self.species)
                + "\n   "
                + "   ".join(map(str, self.counts))
                + "\n"
            )
        text += f"Direct configuration= {step:5d}\n"
        text += "".join(
            " " + "".join(f"{x:12.8f}" for x in row) + "\n"
            for row in atoms.get_scaled_positions(False)
        )
        _append("XDATCAR", text)


def _append(name: str, text: str) -> None:
    with Path(name).open("a") as handle:
        handle.write(text)


def _vasp_e(value: float) -> str:
    """VASP's OSZICAR number format: '-.12345678E+02' (no leading zero)."""
    mantissa, exponent = f"{value:.8E}".split("E")
    number = float(mantissa) / 10
    exp = int(exponent) + 1
    digits = f"{abs(number):.8f}"[1:]
    return f"{'-' if value < 0 else ' '}{digits}E{exp:+03d}"


def _vec(values) -> str:
    return "".join(f"{float(x):17.8f}" for x in values) + " "


def _title(symbols: list[str]) -> str:
    return " ".join(dict.fromkeys(symbols))


def _expand(text: str) -> list[str]:
    """INCAR shorthand '8*2.0 1.0' → ['2.0'] * 8 + ['1.0']."""
    values = []
    for token in text.split():
        if "*" in token:
            count, value = token.split("*")
            values += [value] * int(count)
        else:
            values.append(token)
    return values


def _xml_item(key: str, value, indent: int) -> str:
    pad = " " * indent
    if isinstance(value, bool):
        return f'{pad}<i type="logical" name="{key}"> {"T" if value else "F"}  </i>'
    if isinstance(value, int):
        return f'{pad}<i type="int" name="{key}">{value:6d}</i>'
    if isinstance(value, float):
        return f'{pad}<i name="{key}">{value:16.8f}</i>'
    if isinstance(value, list):
        return f'{pad}<v name="{key}">' + "".join(f"{x:16.8f}" for x in value) + "</v>"
    return f'{pad}<i type="string" name="{key}">{value}</i>'


def _structure_xml(atoms, name: str | None, indent: int) -> str:
    pad = " " * indent
    label = f' name="{name}"' if name else ""
    recip = atoms.cell.reciprocal()
    basis = "\n".join(f"{pad}   <v>{_vec(v)}</v>" for v in atoms.cell.array)
    rec = "\n".join(f"{pad}   <v>{_vec(v)}</v>" for v in recip)
    pos = "\n".join(f"{pad}  <v>{_vec(v)}</v>" for v in atoms.get_scaled_positions(False))
    return f"""{pad}<structure{label} >
{pad} <crystal>
{pad}  <varray name="basis" >
{basis}
{pad}  </varray>
{pad}  <i name="volume">{atoms.get_volume():16.8f} </i>
{pad}  <varray name="rec_basis" >
{rec}
{pad}  </varray>
{pad} </crystal>
{pad} <varray name="positions" >
{pos}
{pad} </varray>
{pad}</structure>
"""


def _potcar_titles() -> dict[str, str]:
    """Element → its POTCAR's TITEL ('PAW_PBE Cu 05Jan2001'), as VASP reads them."""
    titles = {}
    try:
        text = Path("POTCAR").read_text()
    except FileNotFoundError:
        return titles
    for line in text.splitlines():
        if "TITEL" in line:
            title = line.split("=", 1)[1].strip()
            titles[title.split()[1].split("_")[0]] = title
    return titles


def _potcar_zvals() -> dict[str, float]:
    zvals, element = {}, None
    try:
        lines = Path("POTCAR").read_text().splitlines()
    except FileNotFoundError:
        return zvals
    for line in lines:
        if "TITEL" in line:
            element = line.split("=", 1)[1].split()[1].split("_")[0]
        if "ZVAL" in line and element:
            zvals[element] = float(line.split("ZVAL")[1].split("=")[1].split()[0])
    return zvals


def _kpoint_generation() -> tuple[str, list[int]]:
    """KPOINTS' automatic mesh: its kind and divisions (Γ-only if there is no KPOINTS)."""
    try:
        lines = Path("KPOINTS").read_text().splitlines()
    except FileNotFoundError:
        return "Gamma", [1, 1, 1]
    kind = "Gamma" if lines[2].strip().lower().startswith("g") else "Monkhorst-Pack"
    return kind, [int(x) for x in lines[3].split()[:3]]


def _kpoints(atoms) -> list[list[float]]:
    """The k-point list of the mesh (no symmetry reduction: quacc's relaxes use ISYM = 0)."""
    kind, (n1, n2, n3) = _kpoint_generation()
    points = []
    for i in range(n1):
        for j in range(n2):
            for k in range(n3):
                frac = []
                for idx, n in zip((i, j, k), (n1, n2, n3), strict=True):
                    shift = 0.0 if kind == "Gamma" or n % 2 else 0.5
                    value = (idx + shift) / n
                    frac.append(value - 1 if value >= 0.5 else value)
                points.append(frac)
    return points


def _mass(symbol: str) -> float:
    from ase.data import atomic_masses, atomic_numbers

    return float(atomic_masses[atomic_numbers[symbol]])


if __name__ == "__main__":
    sys.exit(main())
