"""Quality of the multislice engine on data it did not make (DESIGN.md section 5).

The data come from the numpy reference forward model run on a finer grid (half the engine's pixel,
a 64 x 64 window cropped to the engine's 32 x 32 detector) with 12 slices of 5 A, atoms rendered
analytically, jittered scan positions and Poisson noise; the engine reconstructs 3 slices of 20 A
from the nominal positions. Two atom layers sit at depths 0-20 A and 40-60 A.
"""

from __future__ import annotations

import numpy as np
import pytest

from msptycho import physics
from msptycho.io import Calibration
from msptycho.ptycho import ReconstructionParameters, reconstruct
from msptycho.ptycho import forward as fw

E = 300e3
N_WIN = 32
MPP = 100 / 128 * 4
SAMPLING = physics.realspace_sampling_A(N_WIN, MPP, E)
DEFOCUS = physics.Aberrations(defocus_A=40.0)


def render(atoms, origin_A, sampling_A, shape, z0, z1, peak_VA=50.0, width_A=0.35):
    """Gaussian atoms (x, y, z in A) with z in [z0, z1) projected onto a grid, V*A."""
    x = origin_A[0] + sampling_A * np.arange(shape[0])
    y = origin_A[1] + sampling_A * np.arange(shape[1])
    out = np.zeros(shape)
    for ax, ay, az in atoms:
        if z0 <= az < z1:
            out += peak_VA * np.exp(-((x[:, None] - ax) ** 2 + (y[None, :] - ay) ** 2) / (2 * width_A**2))
    return out


@pytest.fixture(scope="module")
def synthetic():
    rng = np.random.default_rng(0)
    scan, step = (14, 14), 0.5
    pos_nom = fw.scan_positions_A(scan, step)
    pos_true = pos_nom + rng.normal(0, 0.15, pos_nom.shape)
    layer = lambda z0, z1: np.column_stack([rng.uniform(-3, 10, (40, 2)), rng.uniform(z0, z1, 40)])
    atoms = np.vstack([layer(0, 20), layer(40, 60)])
    nf, sf, dzf, nzf = 2 * N_WIN, SAMPLING / 2, 5.0, 12
    shape_f, origin_f = fw.object_geometry(pos_nom, sf, nf, 8)
    Vf = np.stack([render(atoms, origin_f, sf, shape_f, k * dzf, (k + 1) * dzf) for k in range(nzf)])
    pkf = fw.probe_from_aberrations(nf, sf, E, 25.0, DEFOCUS, 1.0)
    lam = physics.wavelength_A(E)
    pat = fw.reference_patterns(Vf, pkf.astype(complex), fw.positions_to_pixels(pos_true, origin_f, sf),
                                physics.interaction_constant(E), fw.propagator(nf, sf, lam, dzf))
    crop = slice(nf // 2 - N_WIN // 2, nf // 2 + N_WIN // 2)
    pat = np.fft.fftshift(pat, axes=(1, 2))[:, crop, crop]
    counts = 1e8 * step**2                      # e/A^2 times the area per position
    dc = rng.poisson(pat * counts).astype(np.float32).reshape(scan + (N_WIN, N_WIN))
    vac = np.fft.fftshift(np.abs(pkf) ** 2)[crop, crop]
    cal = Calibration(energy_eV=E, semiangle_mrad=25.0, scan_step_A=step, mrad_per_pixel=MPP)
    params = ReconstructionParameters(num_slices=3, slice_thickness_A=20.0, batch_size=20, num_iterations=25,
                                      position_correction_start_iteration=3, position_step_size=0.3,
                                      position_max_update_A=0.05)
    res = reconstruct(dc, cal, params, initial_aberrations=DEFOCUS, vacuum_probe_intensity=vac)
    return res, atoms, pos_true


def test_error_decreases(synthetic):
    res, _, _ = synthetic
    e = res.error_history
    print("error history", e)
    assert e[-1] < 0.2 * e[0]
    assert np.all(np.diff(e[3:]) < 1e-3 * e[0])       # no divergence once the probe and positions move


def test_slices_correlate_with_their_layer(synthetic):
    res, atoms, _ = synthetic
    shape = res.potential_VA.shape[1:]
    args = (atoms, res.origin_A, res.sampling_A, shape)
    top, mid, bottom = render(*args, 0, 20), render(*args, 20, 40), render(*args, 40, 60)
    x = res.origin_A[0] + res.sampling_A * np.arange(shape[0])
    y = res.origin_A[1] + res.sampling_A * np.arange(shape[1])
    m = (x[:, None] >= 0.5) & (x[:, None] <= 6) & (y[None, :] >= 0.5) & (y[None, :] <= 6)  # scanned
    c = lambda a, b: float(np.corrcoef(a[m], b[m])[0, 1])
    r = [(c(s, top), c(s, bottom)) for s in res.potential_VA]
    proj = c(res.potential_VA.sum(0), top + mid + bottom)
    print("per-slice Pearson r (top layer, bottom layer):", r, "projected:", proj)
    assert r[0][0] > 0.9 and r[0][1] < 0.2
    assert r[2][1] > 0.85 and r[2][0] < 0.2
    assert proj > 0.95
    # the amplitude scale is about right (potential in V*A, not arbitrary units)
    ratio = res.potential_VA.sum(0)[m].std() / (top + mid + bottom)[m].std()
    assert 0.6 < ratio < 1.3, ratio


def test_position_correction_recovers_jitter(synthetic):
    res, _, pos_true = synthetic
    rms = lambda p: float(np.sqrt(np.mean(np.sum((p - pos_true) ** 2, axis=1))))
    before, after = rms(res.positions_initial_A), rms(res.positions_A)
    print(f"RMS position error {before:.3f} A -> {after:.3f} A")
    assert after < 0.5 * before
