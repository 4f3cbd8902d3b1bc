"""Multislice engine: hand-derived gradient vs finite differences, analytic cases, constraints,
resume, determinism. Small windows (32 x 32) keep each test to seconds once Numba's cache is warm."""

from __future__ import annotations

import numpy as np
import pytest

from msptycho import physics
from msptycho.io import Calibration, InputError
from msptycho.ptycho import MultisliceEngine, ReconstructionParameters, reconstruct
from msptycho.ptycho import forward as fw

E = 300e3
N_WIN = 32
MPP = 100 / 128 * 4          # mrad per pixel: sampling 0.197 A, 25 mrad aperture = 8 px
SAMPLING = physics.realspace_sampling_A(N_WIN, MPP, E)
SIGMA = physics.interaction_constant(E)
LAM = physics.wavelength_A(E)
DEFOCUS = physics.Aberrations(defocus_A=40.0)


def smooth_random(shape, rng, sigma_px=1.5, amplitude=1.0):
    from scipy.ndimage import gaussian_filter
    return amplitude * gaussian_filter(rng.random(shape), sigma_px, mode="wrap")


def complex_normal(rng, *shape):
    """complex64 array with standard normal real and imaginary parts (drawn in that order)."""
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)


def make_engine(nz=3, scan=(4, 4), step_A=1.5, loss="amplitude", rng_seed=0, obj_amp=600.0, backend=None,
                chunk_size=0):
    """Engine on a random object whose data come from another random object (non-zero residual)."""
    rng = np.random.default_rng(rng_seed)
    pos_A = fw.scan_positions_A(scan, step_A)
    pos_A += rng.normal(0, 0.3, pos_A.shape)
    shape, origin = fw.object_geometry(pos_A, SAMPLING, N_WIN, 3)
    pk = fw.probe_from_aberrations(N_WIN, SAMPLING, E, 25.0, DEFOCUS, 1000.0)
    h = fw.propagator(N_WIN, SAMPLING, LAM, 8.0)
    pp = fw.positions_to_pixels(pos_A, origin, SAMPLING)
    truth = np.stack([smooth_random(shape, rng, amplitude=obj_amp) for _ in range(nz)])
    amps = np.sqrt(fw.reference_patterns(truth, pk.astype(complex), pp, SIGMA, h)).astype(np.float32)
    params = ReconstructionParameters(num_slices=nz, slice_thickness_A=8.0, batch_size=len(pp), loss=loss,
                                      chunk_size=chunk_size)
    eng = MultisliceEngine(amps, pk, pp, shape, SIGMA, h, params, backend=backend)
    eng.V[...] = np.stack([smooth_random(shape, rng, amplitude=obj_amp) for _ in range(nz)])
    eng.refresh()
    # probe slightly wrong too
    eng.Pk *= np.exp(0.2j * rng.standard_normal(pk.shape)).astype(np.complex64)
    return eng, truth, h


def ref_loss(eng, h, V, pk, pos, loss):
    idx = np.arange(eng.N)
    pat = fw.reference_patterns(V.astype(np.float64), pk.astype(np.complex128), pos, SIGMA, h)
    a = eng.amps[idx].astype(np.float64)
    return fw.amplitude_loss(pat, a) if loss == "amplitude" else fw.poisson_loss(pat, a)


@pytest.mark.parametrize("loss", ["amplitude", "poisson"])
def test_gradient_matches_finite_differences(loss):
    eng, _, h = make_engine(loss=loss)
    idx = np.arange(eng.N)
    grads = {}
    eng.batch(idx, gradients=grads)
    V0 = eng.V.astype(np.float64)
    P0 = eng.Pk.astype(np.complex128)
    X0 = eng.pos.copy()
    rng = np.random.default_rng(5)

    # object: directional derivative along a smooth random direction
    D = np.stack([smooth_random(V0.shape[1:], rng) - 0.5 for _ in range(V0.shape[0])])
    eps = 2.0
    fd = (ref_loss(eng, h, V0 + eps * D, P0, X0, loss) - ref_loss(eng, h, V0 - eps * D, P0, X0, loss)) / (2 * eps)
    an = float(np.sum(grads["object"].astype(np.float64) * D))
    assert an == pytest.approx(fd, rel=2e-3), (an, fd)
    # per slice too (the adjoint through each propagation)
    for s in range(V0.shape[0]):
        Ds = np.zeros_like(D)
        Ds[s] = D[s]
        fd = (ref_loss(eng, h, V0 + eps * Ds, P0, X0, loss) - ref_loss(eng, h, V0 - eps * Ds, P0, X0, loss)) / (2 * eps)
        an = float(np.sum(grads["object"][s].astype(np.float64) * D[s]))
        assert an == pytest.approx(fd, rel=5e-3, abs=1e-3 * abs(fd) + 1e-6), (s, an, fd)

    # probe: dL = Re <g, dP>, inside the aperture (outside it the model amplitude is ~0, where the
    # amplitude loss has its cone singularity and finite differences do not converge)
    dP = (rng.standard_normal(P0.shape) + 1j * rng.standard_normal(P0.shape)) * np.abs(P0).max() * 1e-3
    dP *= np.abs(P0) > 0
    fd = (ref_loss(eng, h, V0, P0 + dP, X0, loss) - ref_loss(eng, h, V0, P0 - dP, X0, loss)) / 2
    an = float(np.real(np.sum(np.conj(grads["probe"].astype(np.complex128)) * dP)))
    assert an == pytest.approx(fd, rel=2e-3), (an, fd)

    # positions (sub-pixel, away from the rounding boundary)
    for b in (0, 5, 11):
        for ax in (0, 1):
            d = 1e-3
            Xp, Xm = X0.copy(), X0.copy()
            Xp[b, ax] += d
            Xm[b, ax] -= d
            fd = (ref_loss(eng, h, V0, P0, Xp, loss) - ref_loss(eng, h, V0, P0, Xm, loss)) / (2 * d)
            an = grads["positions"][b, ax]
            assert an == pytest.approx(fd, rel=1e-2, abs=1e-3 * np.abs(grads["positions"]).max()), (b, ax, an, fd)


def test_kernels_match_reference_forward_model():
    eng, _, h = make_engine(nz=4)
    idx = np.arange(eng.N)
    ours = eng.model_patterns(idx)
    ref = fw.reference_patterns(eng.V.astype(np.float64), eng.Pk.astype(complex), eng.pos, SIGMA, h)
    assert np.max(np.abs(ours - ref)) < 2e-5 * ref.max()


def test_vacuum_patterns_equal_the_probe():
    """No object (V = 0, any number of slices): every pattern is the probe's, in the datacube's
    convention |fftshift(fft2(probe))|^2 scaled to the counts."""
    eng, _, h = make_engine(nz=3)
    eng.V[...] = 0
    eng.refresh()
    eng.Pk[...] = fw.probe_from_aberrations(N_WIN, SAMPLING, E, 25.0, DEFOCUS, 1000.0)
    pats = eng.model_patterns(np.arange(eng.N))
    probe = physics.probe_real((N_WIN, N_WIN), SAMPLING, E, 25.0, DEFOCUS)  # unit intensity
    expected = np.abs(np.fft.fftshift(np.fft.fft2(probe))) ** 2
    expected *= 1000.0 / expected.sum()
    for p in pats:
        np.testing.assert_allclose(np.fft.fftshift(p), expected, rtol=0, atol=1e-4 * expected.max())


def test_single_slice_phase_grating_gives_bessel_orders():
    """Analytic single-slice case: a plane wave through V0 cos(2 pi x / d) diffracts into orders
    of intensity J_m(sigma V0)^2."""
    from scipy.special import jv
    nz, q = 1, 4                                  # grating period = window / q
    pos_A = fw.scan_positions_A((1, 1), 1.0)
    shape, origin = fw.object_geometry(pos_A, SAMPLING, N_WIN, 0)
    x = np.arange(shape[0])
    V0 = 1.3 / SIGMA                              # 1.3 rad peak phase
    V = np.broadcast_to(V0 * np.cos(2 * np.pi * q * x / N_WIN)[:, None], shape)[None].astype(np.float32)
    pk = np.zeros((N_WIN, N_WIN), np.complex64)
    pk[0, 0] = np.sqrt(500.0)                     # plane wave, 500 counts
    params = ReconstructionParameters(num_slices=nz, batch_size=1)
    pp = fw.positions_to_pixels(pos_A, origin, SAMPLING)
    pp = np.floor(pp + 0.5)                       # integer position: no sub-pixel phase
    eng = MultisliceEngine(np.zeros((1, N_WIN, N_WIN), np.float32), pk, pp, shape, SIGMA,
                           fw.propagator(N_WIN, SAMPLING, LAM, 10.0), params)
    eng.pos[...] = pp
    eng.V[...] = V
    eng.refresh()
    pat = eng.model_patterns(np.array([0]))[0]
    # exp(i a cos t) = sum_m i^m J_m(a) exp(i m t); on the window, orders m and m + N_WIN / q land on
    # the same pixel (the discrete grating aliases), so sum the amplitudes that share a pixel
    amp = np.zeros(N_WIN, complex)
    for m in range(-60, 61):
        amp[(m * q) % N_WIN] += 1j ** m * jv(m, 1.3)
    for m in range(-3, 4):
        k = (m * q) % N_WIN
        assert pat[k, 0] == pytest.approx(500.0 * abs(amp[k]) ** 2, rel=1e-4, abs=1e-3)
    assert pat[q, 0] == pytest.approx(500.0 * jv(1, 1.3) ** 2, rel=1e-3)   # first order, no alias to speak of
    assert np.all(pat[:, 1:] < 1e-6)
    assert pat.sum() == pytest.approx(500.0, rel=1e-5)


def _dataset(scan=(6, 6), nz=2, rng_seed=3, jitter_A=0.0):
    rng = np.random.default_rng(rng_seed)
    pos_true = fw.scan_positions_A(scan, 2.0) + rng.normal(0, jitter_A, (scan[0] * scan[1], 2))
    pos_nom = fw.scan_positions_A(scan, 2.0)
    shape, origin = fw.object_geometry(pos_nom, SAMPLING, N_WIN, 6)
    truth = np.stack([smooth_random(shape, rng, amplitude=300.0) for _ in range(nz)])
    pk = fw.probe_from_aberrations(N_WIN, SAMPLING, E, 25.0, DEFOCUS, 2000.0)
    h = fw.propagator(N_WIN, SAMPLING, LAM, 10.0)
    pat = fw.reference_patterns(truth, pk.astype(complex), fw.positions_to_pixels(pos_true, origin, SAMPLING), SIGMA, h)
    dc = np.fft.fftshift(pat, axes=(1, 2)).reshape(scan + (N_WIN, N_WIN)).astype(np.float32)
    cal = Calibration(energy_eV=E, semiangle_mrad=25.0, scan_step_A=2.0, mrad_per_pixel=MPP)
    vac = np.fft.fftshift(np.abs(pk) ** 2)
    return dc, cal, vac, truth, pos_true


FAST = dict(num_slices=2, slice_thickness_A=10.0, batch_size=8, num_iterations=4,
            probe_update_start_iteration=1, position_correction_start_iteration=2, tv_xy_weight_VA=0.05,
            tv_z_weight_VA=0.05)


def test_constraints_positivity_and_fourier_amplitude():
    dc, cal, vac, _, _ = _dataset()
    params = ReconstructionParameters(**FAST, positivity=True, probe_fourier_amplitude_constraint=True,
                                      probe_aberration_fit_order=0)
    res = reconstruct(dc, cal, params, initial_aberrations=physics.Aberrations(defocus_A=50.0),
                      vacuum_probe_intensity=vac)
    assert res.potential_VA.min() >= 0
    famp = np.abs(np.fft.fft2(res.probe.astype(complex), norm="ortho"))
    target = np.sqrt(np.fft.ifftshift(vac) * (dc.sum() / (dc.shape[0] * dc.shape[1])) / vac.sum())
    np.testing.assert_allclose(famp, target, atol=1e-4 * target.max())
    # and the same run without the constraints does leave them
    params2 = ReconstructionParameters(**FAST, positivity=False, probe_fourier_amplitude_constraint=False,
                                       probe_aberration_fit_order=0)
    res2 = reconstruct(dc, cal, params2, initial_aberrations=physics.Aberrations(defocus_A=50.0),
                       vacuum_probe_intensity=vac)
    famp2 = np.abs(np.fft.fft2(res2.probe.astype(complex), norm="ortho"))
    assert np.abs(famp2 - target).max() > 2e-3 * target.max()
    assert res2.potential_VA.min() < 0


def test_aberration_fit_keeps_a_smooth_probe():
    dc, cal, vac, _, _ = _dataset()
    params = ReconstructionParameters(**FAST, probe_aberration_fit_order=2)
    res = reconstruct(dc, cal, params, initial_aberrations=physics.Aberrations(defocus_A=50.0),
                      vacuum_probe_intensity=vac)
    # the probe is exactly amplitude * exp(-i chi) with chi in the fitted span: a defocus fit
    assert set(res.aberrations_fit) == {"0,0,cos", "2,2,cos", "2,2,sin", "2,0,cos"}
    # initial defocus 50 A, true 40 A: C10 = -defocus changes by about +10 A
    assert 0 < res.aberrations_fit["2,0,cos"] < 20


def test_determinism_and_resume(tmp_path):
    dc, cal, vac, _, _ = _dataset()
    kw = dict(initial_aberrations=physics.Aberrations(defocus_A=45.0), vacuum_probe_intensity=vac)
    p4 = ReconstructionParameters(**FAST, seed=7)
    a = reconstruct(dc, cal, p4, **kw)
    b = reconstruct(dc, cal, p4, **kw)
    for f in ("potential_VA", "probe", "positions_A", "error_history"):
        assert np.array_equal(getattr(a, f), getattr(b, f)), f
    c = reconstruct(dc, cal, ReconstructionParameters(**FAST, seed=8), **kw)
    assert not np.array_equal(a.potential_VA, c.potential_VA)
    # interrupted after 2 iterations (checkpoint every 2), then resumed to 4
    ck = tmp_path / "ck.h5"
    FAST2 = dict(FAST, num_iterations=2)
    reconstruct(dc, cal, ReconstructionParameters(**FAST2, seed=7, checkpoint_every=2), checkpoint_path=ck, **kw)
    assert ck.exists()
    r = reconstruct(dc, cal, ReconstructionParameters(**FAST, seed=7, checkpoint_every=2), checkpoint_path=ck, **kw)
    for f in ("potential_VA", "probe", "positions_A"):
        assert np.array_equal(getattr(a, f), getattr(r, f)), f
    np.testing.assert_array_equal(a.error_history, r.error_history)

    # the reconstruct rule leaves the datacube on disk: reading it row by row from the file gives
    # the same reconstruction as the array in memory
    from msptycho.io import open_datacube, write_datacube
    write_datacube(tmp_path / "dc.h5", dc, cal)
    with open_datacube(tmp_path / "dc.h5") as (dset, cal_file):
        f = reconstruct(dset, cal_file, p4, **kw)
    for fld in ("potential_VA", "probe", "positions_A", "error_history"):
        assert np.array_equal(getattr(a, fld), getattr(f, fld)), fld
    assert a.engine_GiB > 0 and a.engine_GiB == f.engine_GiB


def test_bad_input_is_named():
    dc, cal, vac, _, _ = _dataset()
    with pytest.raises(InputError, match="datacube"):
        reconstruct(dc[0], cal, ReconstructionParameters(**FAST))
    bad = dc.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(InputError, match="datacube"):
        reconstruct(bad, cal, ReconstructionParameters(**FAST))
    with pytest.raises(InputError, match="batch_size"):
        reconstruct(dc, cal, ReconstructionParameters(**dict(FAST, batch_size=0)))
    with pytest.raises(InputError, match="vacuum_probe_intensity"):
        reconstruct(dc, cal, ReconstructionParameters(**FAST), vacuum_probe_intensity=vac[:5])
    with pytest.raises(InputError, match="initial_positions_A"):
        reconstruct(dc, cal, ReconstructionParameters(**FAST), initial_positions_A=np.zeros((3, 2)))
    with pytest.raises(InputError, match="loss"):
        ReconstructionParameters(loss="l2").validate()
    with pytest.raises(InputError, match="field 'backend' is 'tpu'"):
        reconstruct(dc, cal, ReconstructionParameters(**FAST), backend="tpu")


def test_reconstruction_file_round_trip_and_figure(tmp_path):
    from msptycho.figures.convergence import plot_convergence
    from msptycho.io import Provenance, read_provenance
    from msptycho.io.reconstruction import read_reconstruction, write_reconstruction
    dc, cal, vac, _, _ = _dataset()
    res = reconstruct(dc, cal, ReconstructionParameters(**FAST), vacuum_probe_intensity=vac,
                      initial_aberrations=DEFOCUS)
    path = tmp_path / "reconstruction.h5"
    write_reconstruction(path, res, Provenance(rule="reconstruct", params=res.parameters.to_dict(), seed=0))
    back = read_reconstruction(path)
    for f in ("potential_VA", "probe", "positions_A", "positions_initial_A", "error_history", "origin_A"):
        assert np.array_equal(getattr(back, f), getattr(res, f)), f
    assert back.parameters == res.parameters
    assert back.sampling_A == res.sampling_A and back.scan_shape == (6, 6)
    assert read_provenance(path).rule == "reconstruct"
    assert [p.name for p in tmp_path.iterdir()] == ["reconstruction.h5"]     # no temporary left
    with pytest.raises(InputError, match="reconstruction"):
        read_reconstruction(tmp_path / "missing.h5")
    png = tmp_path / "convergence.png"
    plot_convergence(back, png)
    assert png.stat().st_size > 10_000


def test_tv_step_smooths_along_z_and_in_xy_separately():
    from msptycho.ptycho.kernels_cpu import tv_step
    rng = np.random.default_rng(2)
    V = rng.random((4, 20, 20)).astype(np.float32) * 10
    work = np.empty_like(V)
    tv_xy = lambda a: float(np.sum(np.abs(np.diff(a, axis=1))) + np.sum(np.abs(np.diff(a, axis=2))))
    tv_z = lambda a: float(np.sum(np.abs(np.diff(a, axis=0))))
    a = V.copy()
    tv_step(a, work, 0.0, 0.0, 0.1)
    assert np.array_equal(a, V)                        # zero weights: no change
    a = V.copy()
    tv_step(a, work, 0.0, 0.2, 0.1)
    assert tv_xy(a) < 0.9 * tv_xy(V) and np.allclose(a.mean(), V.mean(), rtol=1e-3)
    assert np.abs(a - V).max() <= 4 * 0.2 + 1e-5       # largest change bounded by 4 x weight
    b = V.copy()
    tv_step(b, work, 0.2, 0.0, 0.1)
    assert tv_z(b) < 0.9 * tv_z(V) and np.abs(b - V).max() <= 2 * 0.2 + 1e-5
    # z-only smoothing leaves a z-constant object alone
    c = np.broadcast_to(V[:1], V.shape).copy()
    c0 = c.copy()
    tv_step(c, work, 0.2, 0.0, 0.1)
    assert np.array_equal(c, c0)


def test_affine_position_fit_and_iteration_log(caplog):
    import logging
    dc, cal, vac, _, _ = _dataset(jitter_A=0.1)
    params = ReconstructionParameters(**FAST, position_affine_fit=True)
    with caplog.at_level(logging.INFO, logger="msptycho.ptycho"):
        res = reconstruct(dc, cal, params, vacuum_probe_intensity=vac, initial_aberrations=DEFOCUS)
    a = np.hstack([res.positions_initial_A, np.ones((len(res.positions_A), 1))])
    coef, *_ = np.linalg.lstsq(a, res.positions_A, rcond=None)
    assert np.abs(a @ coef - res.positions_A).max() < 1e-9       # an exact affine map of the grid
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("iteration ")]
    assert len(lines) == FAST["num_iterations"]
    assert all(" error " in l and " step " in l and " seconds " in l for l in lines)


def test_a_slab_acts_at_its_mid_plane():
    """The reference plane of the probe's defocus (msptycho.simulate.truth.defocus_reference_planes):
    two weak-phase layers at 2 and 10 A below the entrance surface (defocus D there), modelled as
    the engine does, by one 12 A slab whose summed potential acts at its top plane, fit the data
    best with the probe's defocus at the slab's mid-plane, D - 6 A."""
    rng = np.random.default_rng(3)
    pos_A = fw.scan_positions_A((4, 4), 1.0)
    shape, origin = fw.object_geometry(pos_A, SAMPLING, N_WIN, 3)
    pp = fw.positions_to_pixels(pos_A, origin, SAMPLING)
    layers = [smooth_random(shape, rng, 1.0, 1.0) for _ in range(2)]
    layers = [0.15 / SIGMA * (v - v.mean()) / v.std() for v in layers]   # 0.15 rad RMS phase each

    def probe(defocus_A):
        return fw.probe_from_aberrations(N_WIN, SAMPLING, E, 25.0, physics.Aberrations(defocus_A=defocus_A),
                                         1000.0).astype(complex)

    D, z1, z2, dz = 100.0, 2.0, 10.0, 12.0
    # data: the probe propagated to the first layer (defocus D - z1 there), the second 8 A below it
    amps = np.sqrt(fw.reference_patterns(np.stack(layers), probe(D - z1), pp, SIGMA,
                                         fw.propagator(N_WIN, SAMPLING, LAM, z2 - z1)))
    slab = np.stack([layers[0] + layers[1]])
    trial = np.arange(D - dz, D + 0.1, 1.0)
    loss = [fw.amplitude_loss(fw.reference_patterns(slab, probe(d), pp, SIGMA,
                                                    fw.propagator(N_WIN, SAMPLING, LAM, dz)), amps) for d in trial]
    k = int(np.argmin(loss))
    assert 0 < k < len(trial) - 1
    # vertex of the parabola through the minimum and its neighbours
    l0, l1, l2 = loss[k - 1:k + 2]
    best = trial[k] + 0.5 * (l0 - l2) / (l0 - 2 * l1 + l2)
    assert abs(best - (D - dz / 2)) < 0.5, best


@pytest.mark.parametrize("library", ["fftw", "fftw-measure", "pocketfft", "pocketfft-public", "numpy"])
def test_cpu_ffts_are_unnormalised_in_place_and_batched(library, monkeypatch):
    """Every CPU FFT path is numpy's unnormalised transform (within float32 rounding), in place,
    and scipy's public entry (scipy >= 1.18, where the private in-place one is gone) gives the
    private entry's result bit for bit."""
    from msptycho.ptycho import kernels_cpu as kc
    if library.startswith("fftw") and kc._pyfftw() is None:
        pytest.skip("pyfftw is not installed")
    if library == "pocketfft-public":
        monkeypatch.setattr(kc, "_pocketfft", lambda: kc._ScipyPocketfft())
    be = kc.CPUBackend(workers=2, fft_library=library.split("-")[0],
                       fft_planning="measure" if library == "fftw-measure" else "estimate")
    assert be.fft_library == library.split("-")[0]
    rng = np.random.default_rng(4)
    a = be.zeros((5, 24, 20))
    a[...] = rng.standard_normal(a.shape) + 1j * rng.standard_normal(a.shape)
    ref = np.fft.fft2(a.astype(np.complex128))
    addr = a.__array_interface__["data"][0]
    be.fft2(a)
    assert a.dtype == np.complex64 and a.__array_interface__["data"][0] == addr
    assert np.abs(a - ref).max() <= 1e-5 * np.abs(ref).max()
    forward = a.copy()
    be.ifft2(a)
    back = np.fft.ifft2(ref) * 24 * 20
    assert np.abs(a - back).max() <= 1e-5 * np.abs(back).max()
    # out of place (the engine's forward pass): the input is kept, the result is the same
    src, dst = be.zeros(a.shape), be.zeros(a.shape)
    src[...] = forward
    be.ifft2(src, out=dst)
    assert np.array_equal(src, forward) and np.abs(dst - back).max() <= 1e-5 * np.abs(back).max()
    be.fft2(dst, out=src)
    assert np.abs(src - 480 * forward).max() <= 1e-5 * 480 * np.abs(forward).max()   # gain^2
    if library == "pocketfft-public":
        b = forward.copy()
        try:
            from scipy.fft._pocketfft import pypocketfft
        except ImportError:
            return
        pypocketfft.c2c(b, (-2, -1), False, 0, b, 2)
        assert np.array_equal(a, b)


def test_measured_fftw_plans_come_from_the_wisdom_file(tmp_path, monkeypatch):
    """A transform is timed once (on scratch: the data survive planning); a fresh process, here a
    backend after FFTW forgot its wisdom, makes the same plan from the file without timing again,
    and gives the same bits; so does an out-of-place transform."""
    pyfftw = pytest.importorskip("pyfftw")
    from msptycho.ptycho import fftw_wisdom, kernels_cpu as kc
    path = tmp_path / "wisdom.pickle"
    monkeypatch.setenv("MSPTYCHO_FFTW_WISDOM", str(path))
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((3, 40, 40)) + 1j * rng.standard_normal((3, 40, 40))).astype(np.complex64)
    pyfftw.forget_wisdom()
    be = kc.CPUBackend(workers=1, fft_library="fftw", fft_planning="measure")
    a = be.zeros(x.shape)
    a[...] = x
    be.fft2(a)
    assert path.exists()
    np.testing.assert_allclose(a, np.fft.fft2(x.astype(np.complex128)), rtol=0, atol=1e-4 * np.abs(a).max())
    stamp = path.stat().st_mtime_ns
    pyfftw.forget_wisdom()
    measured = []
    monkeypatch.setattr(fftw_wisdom, "_export", lambda *args: measured.append(args))
    be2 = kc.CPUBackend(workers=1, fft_library="fftw", fft_planning="measure")
    b = be2.zeros(x.shape)
    b[...] = x
    be2.fft2(b)
    assert measured == [] and path.stat().st_mtime_ns == stamp
    assert np.array_equal(a, b)
    # out of place (the forward pass): timed too, on scratch, and the plan comes from the wisdom,
    # not from the FFTW_ESTIMATE safety net
    c, d = be2.zeros(x.shape), be2.zeros(x.shape)
    c[...] = x
    be2.fft2(c, out=d)
    assert len(measured) == 1 and np.array_equal(c, x)
    np.testing.assert_allclose(d, b, rtol=0, atol=1e-5 * np.abs(b).max())   # another plan: other rounding
    for key, plan in be2._plans.items():
        assert "FFTW_WISDOM_ONLY" in plan.flags, key
    with pytest.raises(ValueError, match="fft_planning"):
        kc.CPUBackend(fft_planning="patient")


def test_an_unwritable_wisdom_file_still_plans(tmp_path, monkeypatch, caplog):
    """Where the cache folder cannot be written the plan is timed for the process alone, with one
    warning that names the file, and the transform is still right."""
    pytest.importorskip("pyfftw")
    from msptycho.ptycho import kernels_cpu as kc
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("")
    monkeypatch.setenv("MSPTYCHO_FFTW_WISDOM", str(blocker / "wisdom.pickle"))
    be = kc.CPUBackend(workers=1, fft_library="fftw", fft_planning="measure")
    x = np.random.default_rng(6).standard_normal((2, 36, 36)).astype(np.complex64)
    a = be.zeros(x.shape)
    a[...] = x
    with caplog.at_level("WARNING", logger="msptycho.ptycho"):
        be.fft2(a)
    assert "cannot be written" in caplog.text and "not_a_folder" in caplog.text
    np.testing.assert_allclose(a, np.fft.fft2(x.astype(np.complex128)), rtol=0, atol=1e-4 * np.abs(a).max())


def test_chunks_of_a_batch_give_the_batch_update():
    """Carrying a batch through the slices a few positions at a time (``chunk_size``) accumulates
    the same object, probe and position gradients and makes the same once-per-batch update as
    carrying it whole. Without probe updates the iterations are bit-identical (object, positions,
    TV, positivity) where the FFT computes each transform of a batch the same way whatever the
    batch's size (FFTW_ESTIMATE plans here; measured plans are timed per batch size and may pick
    another algorithm, which changes the last bits); with probe updates the probe gradient is
    summed chunk by chunk, which rounds differently: after 4 iterations the potential differs by
    2.5e-5 of its maximum, as much as it moves when the data are scaled by 1 + 1e-6 (2.7e-5)."""
    dc, cal, vac, _, _ = _dataset(jitter_A=0.2)
    kw = dict(initial_aberrations=physics.Aberrations(defocus_A=45.0), vacuum_probe_intensity=vac)

    def run(chunk, **extra):
        return reconstruct(dc, cal, ReconstructionParameters(**{**FAST, "loss": "poisson", **extra},
                                                             chunk_size=chunk, fft_planning="estimate"), **kw)
    whole, chunked = run(8, probe_update_start_iteration=10), run(3, probe_update_start_iteration=10)
    for f in ("potential_VA", "probe", "positions_A", "error_history"):
        assert np.array_equal(getattr(whole, f), getattr(chunked, f)), f
    whole, chunked = run(8), run(3)
    for f in ("potential_VA", "probe", "positions_A"):
        a, b = getattr(whole, f), getattr(chunked, f)
        assert np.abs(a - b).max() <= 1e-4 * np.abs(a).max(), f
    # gradients of one batch, whole against three chunks
    eng, _, _ = make_engine(nz=3, scan=(4, 4), chunk_size=16)
    eng3, _, _ = make_engine(nz=3, scan=(4, 4), chunk_size=5)
    assert eng.C == eng.B == 16 and eng3.C == 5 and not eng.slots and not eng3.slots
    idx = np.arange(eng.N)
    ga, gb = {}, {}
    ea = eng.batch(idx, gradients=ga)
    eb = eng3.batch(idx, gradients=gb)
    np.testing.assert_allclose(ea, eb, rtol=1e-5)
    for k in ("object", "probe", "positions"):
        assert np.abs(ga[k] - gb[k]).max() <= 2e-5 * np.abs(ga[k]).max(), k


def test_z_order_keeps_chunks_compact():
    """Positions in Z order: every run of 4 on an 8 x 8 grid is a 2 x 2 block of neighbours, and
    the order is a permutation whatever the input order."""
    grid = np.stack(np.meshgrid(np.arange(8), np.arange(8), indexing="ij"), -1).reshape(-1, 2) * 10.0 + 3.0
    shuffled = grid[np.random.default_rng(0).permutation(64)]
    o = fw.z_order(shuffled, 10.0)
    assert sorted(o) == list(range(64))
    for c in range(0, 64, 4):
        block = shuffled[o[c:c + 4]]
        assert np.ptp(block[:, 0]) == 10.0 and np.ptp(block[:, 1]) == 10.0


def test_transmission_in_place_and_into_another_array_agree():
    """The forward pass multiplies each slice's wave by its transmission in place (the wave stack
    holds exit waves); that kernel gives the same bits as the out-of-place one."""
    from msptycho.ptycho import kernels_cpu as kc
    rng = np.random.default_rng(8)
    psi = complex_normal(rng, 3, 16, 12)
    trans = np.exp(1j * rng.standard_normal((40, 30))).astype(np.complex64)
    corners = np.array([[0, 0], [5, 7], [24, 18]], dtype=np.int64)
    out = np.zeros_like(psi)
    kc.transmit(psi, trans, corners, out)
    inplace = psi.copy()
    kc.transmit(inplace, trans, corners, inplace)
    assert np.array_equal(inplace, out)
    want = np.stack([psi[b] * trans[x:x + 16, y:y + 12] for b, (x, y) in enumerate(corners)])
    np.testing.assert_allclose(out, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("n", [16, 18, 13])
def test_simd_kernels_match_numpy_in_blocks_and_tails(n):
    """The explicitly vectorised kernels (:mod:`msptycho.ptycho.simd`: 4 or 8 pixels per
    step) agree with numpy in float64 to float32 rounding, for windows whose rows are whole blocks
    (16) and ones with a tail of scalar pixels (18, 13), windows at the object's edge included;
    the back-propagation writes only its windows' pixels."""
    from msptycho.ptycho import kernels_cpu as kc
    rng = np.random.default_rng(9)

    nb, obj = 3, (40, 37)
    corners = np.array([[0, 0], [7, 5], [obj[0] - n, obj[1] - n]], dtype=np.int64)
    trans = np.exp(1j * rng.standard_normal(obj)).astype(np.complex64)
    win = [np.s_[x:x + n, y:y + n] for x, y in corners]
    psi, h = complex_normal(rng, nb, n, n), complex_normal(rng, n, n)
    a = psi.copy()
    kc.multiply(a, h)
    np.testing.assert_allclose(a, psi.astype(complex) * h, rtol=0, atol=3e-7 * np.abs(a).max())
    a = psi.copy()
    kc.transmit(a, trans, corners, a)
    want = np.stack([psi[b] * trans[win[b]].astype(complex) for b in range(nb)])
    np.testing.assert_allclose(a, want, rtol=0, atol=3e-7 * np.abs(want).max())
    g, ex = complex_normal(rng, nb, n, n), complex_normal(rng, nb, n, n)
    grad, illum = np.zeros(obj, np.float32), np.zeros(obj, np.float32)
    lo, hi, mx = np.zeros(obj[0], np.int64), np.zeros(obj[0], np.int64), np.zeros(obj[0], np.float32)
    sigma = 0.0073
    g_out = g.copy()
    kc.back_slice(g_out, ex, trans, corners, nb, sigma, grad, illum, lo, hi, mx)
    want_grad, want_illum = np.zeros(obj), np.zeros(obj)
    for b in range(nb):
        want_grad[win[b]] += sigma * np.imag(np.conj(ex[b].astype(complex)) * g[b])
        want_illum[win[b]] += np.abs(ex[b].astype(complex)) ** 2
        np.testing.assert_allclose(g_out[b], np.conj(trans[win[b]].astype(complex)) * g[b], rtol=0,
                                   atol=3e-7 * np.abs(g).max())
    np.testing.assert_allclose(grad, want_grad, rtol=0, atol=1e-6 * np.abs(want_grad).max())
    np.testing.assert_allclose(illum, want_illum, rtol=0, atol=1e-6 * want_illum.max())
    np.testing.assert_allclose(mx, want_illum.max(axis=1), rtol=1e-6)


@pytest.mark.parametrize("n", [16, 18, 13])
def test_simd_per_position_kernels_match_numpy(n):
    """The per-position kernels vectorised by hand (incident wave, amplitude and Poisson residuals
    (with an eight-lane logarithm), probe and position gradients, the exit wave's shift derivatives and the position curvature: eight
    pixels at a time, then a scalar tail) agree with numpy in float64 to float32 rounding, for
    rows of whole blocks (16) and rows with a tail (18, 13); windows at the object's edge take the
    scalar path of the shift derivative, and pixels where the wave is zero add no curvature."""
    from msptycho.ptycho import kernels_cpu as kc
    rng = np.random.default_rng(11)

    def close(got, want, tol=2e-6):
        np.testing.assert_allclose(got, want, rtol=0, atol=tol * np.abs(want).max())

    nb = 3
    probe_k, g, wave = complex_normal(rng, n, n), complex_normal(rng, nb, n, n), complex_normal(rng, nb, n, n)
    rampx, rampy = np.zeros((nb, n), np.complex64), np.zeros((nb, n), np.complex64)
    kx, ky = fw.window_frequencies(n)
    kc.ramps(rng.uniform(-0.5, 0.5, (nb, 2)), kx, ky, rampx, rampy)
    ramp = rampx[:, :, None].astype(complex) * rampy[:, None, :]
    q = probe_k * ramp                                   # the shifted probes, Fourier space
    out = np.zeros((nb, n, n), np.complex64)
    kc.incident(probe_k, rampx, rampy, 0.5, out)
    close(out, 0.5 * q)
    # amplitude residual, detector scale 1/n
    amps = np.abs(rng.standard_normal((nb, n, n))).astype(np.float32)
    res, err, loss = g.copy(), np.zeros(nb), np.zeros(nb)
    kc.residual(res, amps, np.arange(nb), 0, 1.0 / n, err, loss)
    psi = g.astype(complex) / n
    close(res, 2 / n * (psi - amps * psi / np.abs(psi)))
    np.testing.assert_allclose(err, ((np.abs(psi) - amps) ** 2).sum(axis=(1, 2)), rtol=1e-5)
    np.testing.assert_array_equal(loss, err)
    # Poisson residuals (exact and preconditioned), the detector wave over 12 orders of magnitude
    # in intensity so that the loss's logarithm is tested across many exponents
    wave_k = (g * np.float32(n) * np.logspace(-5, 1, n * n).reshape(n, n).astype(np.float32)).astype(np.complex64)
    psi = wave_k.astype(complex) / n
    m2 = np.abs(psi) ** 2
    a2 = amps.astype(float) ** 2
    want_loss = (m2 - a2 * np.log(m2 + 1e-12)).sum(axis=(1, 2))
    for mode, factor in ((1, 1 - a2 / (m2 + 1e-12)), (2, (m2 - a2) / (m2 + a2 + 1e-12))):
        res = wave_k.copy()
        kc.residual(res, amps, np.arange(nb), mode, 1.0 / n, err, loss)
        close(res, 2 / n * psi * factor, 1e-5)
        np.testing.assert_allclose(err, ((np.sqrt(m2) - amps) ** 2).sum(axis=(1, 2)), rtol=1e-5)
        np.testing.assert_allclose(loss, want_loss, rtol=2e-6, atol=1e-6 * np.abs(a2 * np.log(m2 + 1e-12)).sum())
    # probe and position gradients
    gp = np.zeros((n, n), np.complex64)
    kc.probe_gradient(g, rampx, rampy, nb, gp)
    close(gp, (np.conj(ramp) * g).sum(axis=0))
    gpos = np.zeros((nb, 2))
    kc.position_gradient(g, probe_k, rampx, rampy, kx, ky, nb, gpos)
    im = np.imag(np.conj(g.astype(complex)) * q)
    want = 2 * np.pi * np.stack([(kx[:, None] * im).sum(axis=(1, 2)), (ky[None, :] * im).sum(axis=(1, 2))], 1)
    np.testing.assert_allclose(gpos, want, rtol=0, atol=1e-5 * np.abs(want).max())
    # shift derivatives of the exit wave: inside the object and at its edges
    obj = (n + 9, n + 7)
    vproj = rng.standard_normal(obj).astype(np.float32)
    corners = np.array([[4, 3], [0, 0], [obj[0] - n, obj[1] - n]], dtype=np.int64)
    dx, dy = np.zeros_like(wave), np.zeros_like(wave)
    sigma = 0.0073
    kc.exit_shift_derivative(wave, vproj, corners, nb, sigma, dx, dy)
    padded = np.pad(vproj.astype(float), 1, mode="edge")
    for b, (x0, y0) in enumerate(corners):
        win = np.s_[x0 + 1:x0 + 1 + n, y0 + 1:y0 + 1 + n]
        gx = 0.5 * sigma * (np.roll(padded, -1, 0) - np.roll(padded, 1, 0))[win]
        gy = 0.5 * sigma * (np.roll(padded, -1, 1) - np.roll(padded, 1, 1))[win]
        close(dx[b], wave[b] * 1j * gx)
        close(dy[b], wave[b] * 1j * gy)
    # Gauss-Newton curvature, with some pixels of zero wave (of a detector wave and derivatives
    # that are not in quadrature with it, unlike the exit wave's above)
    wave[:, ::5, ::3] = 0
    dx, dy = complex_normal(rng, nb, n, n), complex_normal(rng, nb, n, n)
    curv = np.zeros((nb, 2))
    kc.position_curvature(wave, dx, dy, nb, curv)
    w = wave.astype(complex)
    m2 = np.abs(w) ** 2
    inv = np.divide(1.0, m2, out=np.zeros_like(m2), where=m2 > 0)
    want = 2 * np.stack([((np.real(np.conj(w) * d) ** 2) * inv).sum(axis=(1, 2)) for d in (dx, dy)], 1)
    np.testing.assert_allclose(curv, want, rtol=1e-5)


def test_eight_lane_logarithm_is_within_one_ulp():
    """The Poisson loss's eight-lane logarithm (Cephes' ``logf`` in LLVM vector IR) is within one
    float32 ulp of the float64 logarithm over the positive normal numbers, near 1 included, and
    passes infinity and NaN through."""
    from numba import njit
    from msptycho.ptycho import kernels_cpu as kc

    @njit
    def log_all(x, out):
        for i in range(0, x.size, 8):
            kc.log8(x, i, out, i)

    x = np.concatenate([np.logspace(-37.9, 38.4, 40000), np.linspace(0.5, 2.0, 40000),
                        [np.inf, np.nan, 1.0, 2.0 ** -126, 0.5, 0.70710677, 0.70710683, 3.4e38]]).astype(np.float32)
    out = np.empty_like(x)
    log_all(x, out)
    want = np.log(x[:-8].astype(np.float64))
    ulp = np.spacing(np.abs(want).astype(np.float32)).astype(np.float64)
    assert (np.abs(out[:-8] - want) / ulp).max() <= 1.0
    assert out[-8] == np.inf and np.isnan(out[-7]) and out[-6] == 0.0
    np.testing.assert_allclose(out[-5:], np.log(x[-5:].astype(np.float64)), rtol=1e-7)


def test_fused_window_kernels_give_the_batched_result():
    """The fused CPU kernels (each window through its FFTW transforms and products while in cache,
    FFTW called from Numba) compute the batched sequence: the forward pass's incident and exit
    waves, detector wave, residual and its inverse FFT, the backward propagation and out-of-place
    fft2/ifft2 agree to float32 rounding, leave windows beyond ``nb`` alone, and engine batches
    with them agree with batches without them."""
    pytest.importorskip("pyfftw")
    from msptycho.ptycho import kernels_cpu as kc
    be = kc.CPUBackend(workers=2, fft_planning="estimate")
    n, C, nz, nb = 24, 4, 3, 3
    waves, g = be.zeros((nz, C, n, n)), be.zeros((C, n, n))
    plans = be.window_plans(waves, g)
    if plans is None:
        pytest.skip("pyfftw's FFTW library cannot be called from Numba here")
    # windows whose byte size is not a multiple of the SIMD alignment keep the batched FFTs
    assert be.window_plans(be.zeros((2, 2, 30, 30)), be.zeros((2, 30, 30))) is None
    rng = np.random.default_rng(10)
    psi = complex_normal(rng, C, n, n)
    probe_k = complex_normal(rng, n, n)
    rampx, rampy = np.zeros((C, n), np.complex64), np.zeros((C, n), np.complex64)
    kx, ky = fw.window_frequencies(n)
    kc.ramps(rng.uniform(-0.5, 0.5, (C, 2)), kx, ky, rampx, rampy)
    trans = np.exp(1j * rng.standard_normal((nz, 50, 45))).astype(np.complex64)
    h = (np.exp(1j * rng.standard_normal((n, n))) / n**2).astype(np.complex64)
    corners = np.array([[0, 0], [10, 3], [26, 21], [5, 5]], dtype=np.int64)
    amps = rng.uniform(0, 2, (6, n, n)).astype(np.float32)
    index = np.array([4, 0, 2], dtype=np.int64)
    err, loss = np.zeros(nb), np.zeros(nb)
    g_real, wave_k = be.zeros((C, n, n)), be.zeros((C, n, n))
    be.forward_pass(plans, probe_k, rampx, rampy, 0.5, waves, g, trans, corners, h, nb,
                    (amps, index, 0, 1.0 / n, err, loss, g_real, wave_k))
    ref = np.fft.ifft2(0.5 * probe_k * rampx[:nb, :, None] * rampy[:nb, None, :]) * n * n
    for s in range(nz):
        ref = ref * np.stack([trans[s, x:x + n, y:y + n] for x, y in corners[:nb]])
        np.testing.assert_allclose(waves[s, :nb], ref, rtol=0, atol=2e-6 * np.abs(ref).max())
        ref_k = np.fft.fft2(ref)
        if s < nz - 1:
            ref = np.fft.ifft2(ref_k * h) * n * n
    np.testing.assert_allclose(wave_k[:nb], ref_k, rtol=0, atol=2e-6 * np.abs(ref_k).max())
    res_k, e, lo = ref_k.astype(np.complex64).copy(), np.zeros(nb), np.zeros(nb)
    kc.residual(res_k, amps, index, 0, 1.0 / n, e, lo)      # the batched kernel, as the reference
    np.testing.assert_allclose(err, e, rtol=1e-5)
    np.testing.assert_allclose(g[:nb], res_k, rtol=0, atol=2e-5 * np.abs(res_k).max())
    np.testing.assert_allclose(g_real[:nb], np.fft.ifft2(res_k) * n * n, rtol=0, atol=2e-5 * np.abs(res_k).max() * n)
    assert not g[nb:].any() and not waves[:, nb:].any() and not g_real[nb:].any()
    g_real = be.zeros((C, n, n))
    g_real[...] = psi
    be.propagate_back(plans, g_real, g, np.conj(h), nb)
    want = np.fft.ifft2(np.fft.fft2(psi[:nb].astype(complex)) * np.conj(h)) * n * n
    np.testing.assert_allclose(g_real[:nb], want, rtol=0, atol=2e-6 * np.abs(want).max())
    assert np.array_equal(g_real[nb:], psi[nb:])
    out = be.zeros((C, n, n))
    be.fft2(g_real, out=out)                       # through the window plans (same shape)
    np.testing.assert_allclose(out, np.fft.fft2(g_real.astype(complex)), rtol=0,
                               atol=2e-6 * np.abs(out).max())
    # two whole engine batches with probe and position updates, fused (forward pass, backward
    # propagation, and the per-window tail: FFT, position gradient, shift derivatives and
    # curvature) and batched. They give the same bits where FFTW picks the same algorithm for the
    # single-window and the batched plans; it need not (wisdom measured earlier in the process,
    # other SIMD), so float32 rounding is allowed.
    results = []
    for fused in (True, False):
        eng, _, _ = make_engine(nz=3, backend=kc.CPUBackend(workers=2, fft_planning="estimate", fused_kernels=fused))
        assert (eng.window_plans is not None) == fused
        for _ in range(2):
            eng.batch(np.arange(eng.N), update_probe=True, update_positions=True)
        results.append((eng.V.copy(), eng.Pk.copy(), eng.pos.copy(), eng.pcurv.copy()))
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * np.abs(b).max())
    assert not np.array_equal(results[0][2], make_engine(nz=3)[0].pos)      # the positions moved


@pytest.mark.parametrize("workers", [1, 2, 3, 5])
def test_a_batch_in_one_call_gives_the_chunked_result(workers):
    """The whole batch in one kernel call (``CPUBackend.batch_windows``: a slot of positions per
    thread, each slot owning a strip of object rows and keeping the rows beyond it apart until
    they are added in slot order) gives the object, probe and position gradients, the touched
    rows and the update of the chunked path, for any number of slots, and leaves its overhang
    buffers zero for the next batch."""
    pytest.importorskip("pyfftw")
    from msptycho.ptycho import kernels_cpu as kc

    def engine(**kw):
        return make_engine(nz=3, scan=(5, 5), backend=kc.CPUBackend(workers=workers, fft_planning="estimate"),
                           **kw)[0]
    ref, eng = engine(chunk_size=7), engine()
    if eng.window_plans is None:
        pytest.skip("pyfftw's FFTW library cannot be called from Numba here")
    assert eng.slots == workers and not ref.slots
    idx = np.arange(eng.N)
    ga, gb = {}, {}
    np.testing.assert_allclose(ref.batch(idx, gradients=ga), eng.batch(idx, gradients=gb), rtol=1e-5)
    for k in ("object", "probe", "positions"):
        assert np.abs(ga[k] - gb[k]).max() <= 2e-5 * np.abs(ga[k]).max(), k
    np.testing.assert_array_equal(ref.row_lo, eng.row_lo)
    np.testing.assert_array_equal(ref.row_hi, eng.row_hi)
    # each slice's largest illumination (the object step's floor), without a second pass
    np.testing.assert_allclose(ref.slice_max, eng.slice_max, rtol=1e-5)
    assert ref.slice_max.min() > 0
    assert not eng.overhang[0].any() and not eng.overhang[1].any()
    # prefetching rows ahead changes no bit
    gc = {}
    prefetch, kc.PREFETCH_ROWS = kc.PREFETCH_ROWS, 0
    try:
        eng.batch(idx, gradients=gc)
    finally:
        kc.PREFETCH_ROWS = prefetch
    for k in ("object", "probe", "positions"):
        np.testing.assert_array_equal(gb[k], gc[k])
    # a batch of fewer positions than slots (as the last of an iteration may be)
    ga, gb = {}, {}
    ref.batch(idx[:3], gradients=ga)
    eng.batch(idx[:3], gradients=gb)
    for k in ("object", "probe", "positions"):
        assert np.abs(ga[k] - gb[k]).max() <= 2e-5 * np.abs(ga[k]).max(), k
    for e in (ref, eng):
        for _ in range(2):
            e.batch(idx, update_probe=True, update_positions=True)
    for a, b in ((ref.V, eng.V), (ref.Pk, eng.Pk), (ref.pos, eng.pos), (ref.pcurv, eng.pcurv)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * np.abs(b).max())
    if workers > 1:
        # slots whose windows are not in row order would write past their overhang: refused
        # before anything is written
        assert not eng.grad.any()
        with pytest.raises(ValueError, match="outside its slot's strip"):
            eng._batch_windows(idx[::-1].copy(), np.array([0, 10, eng.N]), 0, False, False, False)
        assert not eng.grad.any() and not eng.overhang[0].any()
    # buffers laid out otherwise than the planned ones (here shifted by one complex number) are
    # refused, not handed to FFTW
    eng.g_real = np.zeros(eng.g_real.size + 1, np.complex64)[1:].reshape(eng.g_real.shape)
    with pytest.raises(ValueError, match="do not apply"):
        eng._batch_windows(idx, np.array([0, eng.N]), 0, False, False, False)
    assert not eng.grad.any()


def test_transmission_is_exp_i_sigma_v_to_float32_rounding():
    """The object's transmission, written from the potential eight pixels at a time (Cephes'
    sine and cosine on eight lanes) and in the rows' tails, is ``exp(i sigma V)`` to float32
    rounding for phases from 1e-6 to 1e3 rad, whether refreshed whole or followed by the object
    step (which then writes it without reading it)."""
    from msptycho.ptycho import kernels_cpu as kc
    rng = np.random.default_rng(3)
    sigma = np.float32(SIGMA)
    # 13 columns: one block of eight and a tail of five in every row
    V = (rng.choice([1e-6, 1e-2, 1.0, 30.0, 1e3], (3, 40, 13)) * rng.uniform(-1, 1, (3, 40, 13)) / sigma)
    V = V.astype(np.float32)
    T = np.zeros(V.shape, np.complex64)
    kc.refresh_transmission(V, SIGMA, T)

    def exact(v):
        return np.exp(1j * (sigma * v).astype(np.float64))
    assert np.abs(T - exact(V)).max() < 2.5e-7
    # a step in rows 5..30, columns 2..12: V and T follow; grad and illum are zeroed there
    grad = rng.uniform(-50, 50, V.shape[1:]).astype(np.float32)
    illum = rng.uniform(0.5, 2.0, V.shape[1:]).astype(np.float32)
    lo, hi = np.full(40, 13, np.int64), np.zeros(40, np.int64)
    lo[5:30], hi[5:30] = 2, 13
    v0, t0 = V[1].copy(), T[1].copy()
    step = np.where(np.arange(13) >= 2, grad / (illum + 0.1), 0) * (np.arange(40) >= 5)[:, None] * (
        np.arange(40) < 30)[:, None]
    kc.update_object(V[1], T[1], grad, illum, lo, hi, 1.0, 0.1, SIGMA)
    np.testing.assert_allclose(V[1], v0 - step.astype(np.float32), rtol=1e-6, atol=1e-3)
    assert np.abs(T[1] - exact(V[1])).max() < 2.5e-7
    np.testing.assert_array_equal(T[1][:5], t0[:5])          # untouched rows keep their values
    assert not grad[5:30, 2:].any() and not illum[5:30, 2:].any()


def test_object_step_skips_only_what_nothing_reached():
    """The object step, eight pixels at a time, against its definition: where the illumination is
    positive ``V -= coef grad / (illum + floor)``; elsewhere ``V`` keeps its value, also in blocks
    of eight that no window reached (skipped) and in lit blocks' unlit pixels; the transmission is
    ``exp(i sigma V)`` everywhere and both maps are zero in the span afterwards, NaN included."""
    from msptycho.ptycho import kernels_cpu as kc
    rng = np.random.default_rng(4)
    nx, ny = 24, 45                        # five blocks of eight and a tail of five per row
    V = rng.uniform(-20, 20, (nx, ny)).astype(np.float32)
    T = np.zeros(V.shape, np.complex64)
    kc.refresh_transmission(V[None], SIGMA, T[None])
    grad = rng.uniform(-5, 5, V.shape).astype(np.float32)
    illum = rng.uniform(0.5, 2.0, V.shape).astype(np.float32)
    lo, hi = np.full(nx, 3, np.int64), np.full(nx, 43, np.int64)
    illum[:, 3:11] = grad[:, 3:11] = 0     # a block of eight that nothing reached: skipped
    illum[:, 11:19] = 0                    # a block with a gradient but no light: step 0, cleared
    illum[::3, 20] = 0                     # single unlit pixels inside lit blocks
    illum[5, 30] = np.nan                  # a broken pixel: no step, still cleared
    v0, g0, i0 = V.copy(), grad.copy(), illum.copy()
    coef, floor = np.float32(0.7), np.float32(0.1)
    kc.update_object(V, T, grad, illum, lo, hi, coef, floor, SIGMA)
    cols = np.zeros(ny, bool)
    cols[3:43] = True
    lit = (i0 > 0) & cols[None, :]
    expect = np.where(lit, v0 - coef * g0 / (i0 + floor), v0).astype(np.float32)
    np.testing.assert_allclose(V, expect, rtol=1e-6, atol=1e-5)
    np.testing.assert_array_equal(V[~lit], v0[~lit])
    assert np.abs(T - np.exp(1j * (np.float32(SIGMA) * V).astype(np.float64))).max() < 2.5e-7
    assert not grad[:, cols].any() and not np.isnan(illum).any() and not illum[:, cols].any()
    np.testing.assert_array_equal(grad[:, ~cols], g0[:, ~cols])   # outside the span: untouched


def test_vectorised_kernels_refuse_windows_outside_the_object():
    """The SIMD kernels read and write without bounds checks, so a window reaching past the
    object is refused before any memory is touched."""
    from msptycho.ptycho import kernels_cpu as kc
    psi = np.ones((1, 8, 8), np.complex64)
    trans = np.ones((20, 20), np.complex64)
    for corner in ([13, 0], [0, 13], [-1, 0]):
        with pytest.raises(ValueError, match="outside the object"):
            kc.transmit(psi, trans, np.array([corner], dtype=np.int64), psi)
        with pytest.raises(ValueError, match="outside the object"):
            kc.back_slice(psi.copy(), psi, trans, np.array([corner], dtype=np.int64), 1, 0.01,
                          np.zeros((20, 20), np.float32), np.zeros((20, 20), np.float32), np.zeros(20, np.int64),
                          np.zeros(20, np.int64), np.zeros(20, np.float32))
    kc.transmit(psi, trans, np.array([[12, 12]], dtype=np.int64), psi)     # the last corner that fits


def test_kernels_writing_flat_views_refuse_non_contiguous_arrays():
    """Kernels that work on a flat view of their output would write into a copy of a
    non-contiguous array and lose the result: they refuse it."""
    from msptycho.ptycho import kernels_cpu as kc
    wave = np.ones((2, 8, 16), np.complex64)[:, :, ::2]
    with pytest.raises(ValueError, match="C-contiguous"):
        kc.residual(wave, np.ones((2, 8, 8), np.float32), np.arange(2), 0, 1.0, np.zeros(2), np.zeros(2))
    with pytest.raises(ValueError, match="C-contiguous"):
        kc.incident(np.ones((8, 8), np.complex64), np.ones((2, 8), np.complex64), np.ones((2, 8), np.complex64), 1.0,
                    wave)
