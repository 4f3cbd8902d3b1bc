"""Cross-check of the simulator against abTEM 1.0.11 (run in its own interpreter).

CaF2 [001], 5 x 5 x 6 cells (27.3 A x 27.3 A x 32.8 A, periodic), 300 kV, 25 mrad, defocus 50 A,
no thermal displacements, Kirkland potentials in both, slices one atomic plane thick (a/4) in both.
abTEM runs at 0.05 A sampling (its antialiasing limit at 131 mrad); msptycho at its own default
discretisation (216 pixels over the cell = 0.126 A, limit 52 mrad). Both patterns are integrated
onto the same 128 x 128 detector (+-50 mrad).

Tolerances, and why: the two codes differ in how they sample the potential (abTEM integrates the
real-space potential, msptycho builds it from the scattering factor in Fourier space) and, above
all, in the band limit: msptycho removes, at every slice, what scatters beyond 52 mrad, so it cannot
scatter back into the detector. At this thickness that costs ~1.5 % of the detector's total and
~4-7 % of the dark field beyond the disk; the bright-field disk agrees within 1.5 %. So, at the
default sampling: total relative L1 difference of the detector patterns < 6 %, bright-field disk
within 2 %, dark field within 10 %, and the fine structure (Pearson correlation of the
dark-field pixels) > 0.98. At 0.095 A (limit 70 mrad) the dark-field deficit shrinks to < 2 % and
the tolerances tighten to 4.5 % (L1), 1.5 % (bright field), 5 % (dark field); what remains is the
different construction of the potential.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from msptycho import physics
from msptycho.simulate import PatternSimulator, fluorite_crystal
from msptycho.simulate.multislice import binning_matrix, transmission_functions
from msptycho.simulate.potentials import project_atoms_fourier

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tools" / "abtem_crosscheck" / "run_abtem.py"
E, SEMI, DEFOCUS, A = 300e3, 25.0, 50.0, 5.46
CELLS = (5, 5, 6)
POSITIONS = np.array([[13.65, 13.65], [14.9, 12.2]])  # on a Ca column; off-axis between columns


def _abtem_python():
    cands = [os.environ.get("MSPTYCHO_ABTEM_PYTHON"), str(ROOT / "tools/abtem_crosscheck/.venv/bin/python"),
             "/work/venvs/abtem/bin/python"]
    for c in cands:
        if c and Path(c).is_file():
            return c
    try:
        import abtem  # noqa: F401
        return sys.executable
    except ImportError:
        return None


PY = _abtem_python()


@pytest.fixture(scope="module")
def patterns(tmp_path_factory):
    if PY is None:
        pytest.skip("abTEM 1.0.11 is not installed (see tools/abtem_crosscheck/README.md for the venv)")
    pos, Z = fluorite_crystal(A, CELLS)
    pos[:, 2] += A / 8  # atomic planes in the middle of their slice
    L = CELLS[0] * A
    d = tmp_path_factory.mktemp("abtem")
    np.savez(d / "in.npz", positions_A=pos, Z=Z, cell_A=np.array(CELLS) * A, energy_eV=E, semiangle_mrad=SEMI,
             defocus_A=DEFOCUS, sampling_A=0.05, slice_thickness_A=A / 4, probe_positions_A=POSITIONS)
    r = subprocess.run([PY, str(SCRIPT), str(d / "in.npz"), str(d / "out.npz")], capture_output=True, text=True,
                       timeout=900)
    if r.returncode != 0:
        pytest.fail(f"abTEM run failed: {r.stderr[-2000:]}")
    o = np.load(d / "out.npz")
    ab = o["patterns"]
    dk_det = physics.mrad_to_inv_A(100 / 128, E)
    Mab = binning_matrix(ab.shape[-1], float(o["k_sampling_inv_A"][0]), 128, dk_det)
    ab_det = np.stack([Mab @ x @ Mab.T for x in ab])
    # msptycho at its default discretisation (216 px over the cell) and at a finer one (288 px)
    mine = {}
    for W in (216, 288):
        s = L / W
        dz = A / 4
        nsl = CELLS[2] * 4
        pot = project_atoms_fourier(pos[:, :2], Z, np.floor(pos[:, 2] / dz).astype(int), nsl, (W, W), s, periodic=True)
        sim = PatternSimulator(transmission_functions(pot, E, s), np.full(nsl, dz), s, (0.0, 0.0), W, E, SEMI,
                               physics.Aberrations(defocus_A=DEFOCUS), 128, 100 / 128, periodic=True)
        mine[W] = sim.patterns(POSITIONS).astype(np.float64)
    return mine, ab_det


@pytest.mark.slow
@pytest.mark.parametrize("W, tol_l1, tol_bf, tol_df", [(216, 0.06, 0.02, 0.10), (288, 0.045, 0.015, 0.05)],
                         ids=["default-0.126A", "fine-0.095A"])
@pytest.mark.parametrize("i", [0, 1], ids=["on-column", "off-axis"])
def test_diffraction_patterns_agree_with_abtem(patterns, i, W, tol_l1, tol_bf, tol_df):
    mine, ab = patterns[0][W][i], patterns[1][i]
    q = (np.arange(128) - 64) * 100 / 128
    r = np.hypot(q[:, None], q[None, :])
    bf, df = r < SEMI, r > SEMI + 2
    l1 = np.abs(mine - ab).sum() / ab.sum()
    print(f"W {W} position {i}: L1 {l1:.4f}, BF ratio {mine[bf].sum() / ab[bf].sum():.4f}, "
          f"DF ratio {mine[df].sum() / ab[df].sum():.4f}, DF corr {np.corrcoef(mine[df], ab[df])[0, 1]:.4f}")
    assert l1 < tol_l1
    assert mine[bf].sum() == pytest.approx(ab[bf].sum(), rel=tol_bf)
    assert mine[df].sum() == pytest.approx(ab[df].sum(), rel=tol_df)
    assert np.corrcoef(mine[df], ab[df])[0, 1] > 0.98
