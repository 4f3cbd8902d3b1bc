"""Parallax fit (msptycho.parallax) on small 4D-STEM data sets simulated here.

A weak phase object (smooth random phase, 0.3 rad RMS, ~1.2 A features, sampled at the probe
window's pixel) is scanned by a probe of known defocus, astigmatism and scan rotation built with
``msptycho.physics``; the probe is placed at ``R_obj = Rot(rotation) @ T @ (i, j) * step`` (the
convention of ``msptycho.parallax``) with a sub-pixel Fourier shift, and the patterns get Poisson
noise at 5e3 e/A^2.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from msptycho import physics
from msptycho.io import Calibration, InputError, open_datacube, write_datacube
from msptycho.parallax import (fit_shifts, model_shifts_A, object_to_scan, parallax_fit,
                               scan_to_object, shift_basis_A)

E_EV = 300e3
SEMIANGLE = 25.0
N_DET = 48
MRAD_PER_PX = 1.3          # detector spans +-31 mrad
STEP_A = 1.5
N_SCAN = 28
DOSE = 5e3
PHASE_RMS = 0.3          # rad


def make_object(n_px, px_A, seed, phase_rms=PHASE_RMS):
    """Weak phase object exp(i phi): white noise smoothed to ~1.2 A features, phase_rms rad RMS."""
    rng = np.random.default_rng(seed)
    phi = ndimage.gaussian_filter(rng.standard_normal((n_px, n_px)), 1.2 / px_A, mode="wrap")
    phi *= phase_rms / phi.std()
    return np.exp(1j * phi)


def simulate(aberrations, rotation_deg, transpose=False, seed=0, n_scan=N_SCAN, step_A=STEP_A,
             depths_A=(0.0,)):
    """(datacube (Rx, Ry, Qx, Qy) float32, Calibration with scan_rotation_deg = 0).

    ``aberrations`` are those of the probe at z = 0 (the entrance surface); one independent weak
    phase layer (``PHASE_RMS / sqrt(len(depths_A))`` rad RMS each) lies at each depth of
    ``depths_A`` (Angstrom below the entrance, increasing), the wave propagating between them with
    :func:`msptycho.physics.fresnel_propagator` (multislice).
    """
    px = physics.realspace_sampling_A(N_DET, MRAD_PER_PX, E_EV)
    kx, ky = physics.spatial_frequencies((N_DET, N_DET), px)
    lam = physics.wavelength_A(E_EV)
    depths = [float(z) for z in depths_A]
    probe_k = physics.probe_fourier((N_DET, N_DET), px, E_EV, SEMIANGLE, aberrations)
    probe_k = probe_k * physics.fresnel_propagator(kx, ky, lam, depths[0])  # entrance -> first layer
    i, j = np.meshgrid(np.arange(n_scan), np.arange(n_scan), indexing="ij")
    rs = np.stack([i, j], -1).reshape(-1, 2) * step_A
    rs = rs - rs.mean(axis=0)
    r_obj = scan_to_object(rs, rotation_deg, transpose)  # positions, object frame, A
    extent = np.abs(r_obj).max() + N_DET * px
    n_obj = int(2 * extent / px) + 4
    objs = [make_object(n_obj, px, seed + 1000 * m, PHASE_RMS / np.sqrt(len(depths))) for m in range(len(depths))]
    centre = n_obj / 2
    rng = np.random.default_rng(seed + 100)
    cube = np.empty((n_scan * n_scan, N_DET, N_DET), dtype=np.float32)
    counts = DOSE * step_A**2
    for b0 in range(0, len(r_obj), 128):
        r = r_obj[b0:b0 + 128] / px + centre  # probe centre, object pixels
        corner = np.floor(r).astype(int) - N_DET // 2
        frac = r - np.floor(r)
        ramp = np.exp(-2j * np.pi * ((N_DET // 2 + frac[:, 0, None, None]) * kx[None] * px
                                     + (N_DET // 2 + frac[:, 1, None, None]) * ky[None] * px))
        probes = np.fft.ifft2(probe_k[None] * ramp)
        ii = corner[:, 0, None, None] + np.arange(N_DET)[None, :, None]
        jj = corner[:, 1, None, None] + np.arange(N_DET)[None, None, :]
        exit_ = probes * objs[0][ii, jj]
        for m in range(1, len(depths)):
            h = physics.fresnel_propagator(kx, ky, lam, depths[m] - depths[m - 1])
            exit_ = np.fft.ifft2(np.fft.fft2(exit_) * h) * objs[m][ii, jj]
        pat = np.abs(np.fft.fftshift(np.fft.fft2(exit_), axes=(1, 2))) ** 2
        pat *= counts / pat.sum(axis=(1, 2), keepdims=True)
        cube[b0:b0 + 128] = rng.poisson(pat)
    cal = Calibration(energy_eV=E_EV, semiangle_mrad=SEMIANGLE, scan_step_A=step_A,
                      mrad_per_pixel=MRAD_PER_PX, scan_rotation_deg=0.0,
                      detector_center_px=(N_DET // 2, N_DET // 2), dose_e_per_A2=DOSE)
    return cube.reshape(n_scan, n_scan, N_DET, N_DET), cal


def angle_diff(a, b):
    return (a - b + 180.0) % 360.0 - 180.0


def report(name, truth, res, rot_true, transpose_true):
    print(f"\n{name}: defocus {res.defocus_A:8.2f} A (truth {truth.defocus_A:8.2f}), "
          f"C12 {res.C12_A:6.2f} A at {np.rad2deg(res.phi12_rad):6.1f} deg "
          f"(truth {truth.C12_A:6.2f} A at {np.rad2deg(truth.phi12_rad):6.1f} deg), "
          f"rotation {res.scan_rotation_deg:7.2f} deg (truth {rot_true:7.2f}), "
          f"transpose {res.transpose} (truth {transpose_true}), residual {res.residual_rms_A:.3f} A, "
          f"R^2 {res.explained_fraction:.3f}; "
          f"levels {[(h['bin'], h['n_images'], round(h['defocus_A'], 1)) for h in res.history]}")


def test_shift_model_is_the_chi_gradient():
    """d = wavelength * defocus * k for pure defocus (sign of physics.py), and the round trip of
    the scan/object frames."""
    k = np.random.default_rng(0).normal(size=(50, 2)) * 0.5
    lam = physics.wavelength_A(E_EV)
    b = shift_basis_A(k, lam)
    assert np.allclose(b[0], lam * k, rtol=1e-6, atol=1e-12)
    d = model_shifts_A(k, E_EV, physics.Aberrations(defocus_A=100.0), 30.0, True)
    assert np.allclose(scan_to_object(d, 30.0, True), 100 * lam * k, atol=1e-9)
    assert np.allclose(object_to_scan(scan_to_object(k, 17.0, True), 17.0, True), k)


def test_fit_shifts_noise_free_with_coma():
    k = np.stack(np.meshgrid(np.linspace(-1, 1, 15), np.linspace(-1, 1, 15)), -1).reshape(-1, 2)
    k = k[np.hypot(*k.T) < 1] * physics.mrad_to_inv_A(25, E_EV)
    ab = physics.Aberrations(defocus_A=-250.0, C12_A=30.0, phi12_rad=0.4, C21_A=800.0, phi21_rad=-1.0)
    s = model_shifts_A(k, E_EV, ab, -37.0, False)
    f = fit_shifts(k, s, np.ones(len(k)), E_EV, fit_coma=True)
    assert abs(f["defocus_A"] + 250) < 1e-3 and abs(f["scan_rotation_deg"] + 37) < 1e-3
    assert abs(f["C12_A"] - 30) < 1e-3 and abs(f["phi12_rad"] - 0.4) < 1e-4
    assert abs(f["C21_A"] - 800) < 1e-2 and abs(f["phi21_rad"] + 1.0) < 1e-4
    assert f["transpose"] is False


@pytest.mark.parametrize("case", [
    dict(name="over-focus + astigmatism", ab=physics.Aberrations(defocus_A=120.0, C12_A=12.0, phi12_rad=0.6),
         rot=14.0, transpose=False, seed=1),
    dict(name="under-focus (negative defocus)", ab=physics.Aberrations(defocus_A=-120.0), rot=-23.0,
         transpose=False, seed=2),
    dict(name="transposed scan", ab=physics.Aberrations(defocus_A=150.0, C12_A=8.0, phi12_rad=-0.3),
         rot=35.0, transpose=True, seed=3),
])
def test_parallax_recovers_defocus_and_rotation(case):
    cube, cal = simulate(case["ab"], case["rot"], case["transpose"], seed=case["seed"])
    res = parallax_fit(cube, cal)
    report(case["name"], case["ab"], res, case["rot"], case["transpose"])
    assert np.sign(res.defocus_A) == np.sign(case["ab"].defocus_A)
    assert abs(res.defocus_A / case["ab"].defocus_A - 1) < 0.05
    assert abs(angle_diff(res.scan_rotation_deg, case["rot"])) < 1.0
    assert res.transpose == case["transpose"]
    assert res.explained_fraction > 0.9
    assert res.image.shape == (2 * N_SCAN, 2 * N_SCAN) and np.all(np.isfinite(res.image))


def test_parallax_streams_from_hdf5(tmp_path):
    ab = physics.Aberrations(defocus_A=120.0)
    cube, cal = simulate(ab, 5.0, seed=4, n_scan=20)
    p = tmp_path / "datacube.h5"
    write_datacube(p, cube, cal)
    with open_datacube(p) as (dset, cal2):
        res_h5 = parallax_fit(dset, cal2, rows_per_block=3)
    res_np = parallax_fit(cube, cal)
    assert abs(res_h5.defocus_A - res_np.defocus_A) < 1e-6 * abs(res_np.defocus_A)


def test_bad_input():
    with pytest.raises(InputError, match="4-D"):
        parallax_fit(np.zeros((10, 10, 16)), Calibration(300e3, 25, 1, 1))
    cube = np.ones((10, 10, 16, 16), dtype=np.float32)
    with pytest.raises(InputError, match="bright-field disk"):
        parallax_fit(cube, Calibration(300e3, 1.0, 1.0, 1.0))
    cube[2, 3, 0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        parallax_fit(cube, Calibration(300e3, 25, 1, 1))
    with pytest.raises(InputError, match="multiples"):
        parallax_fit(np.ones((10, 10, 16, 16)), Calibration(300e3, 25, 1, 1), bin_factors=(3, 2))


def test_parallax_h5_roundtrip_and_figure(tmp_path):
    import h5py

    from msptycho.figures.calibration import plot_parallax
    from msptycho.io import Provenance, read_provenance
    from msptycho.io.calib_io import read_parallax, write_parallax

    cube, cal = simulate(physics.Aberrations(defocus_A=120.0), 5.0, seed=5, n_scan=20)
    res = parallax_fit(cube, cal, fit_coma=True)
    p = tmp_path / "parallax.h5"
    write_parallax(p, res, Provenance(rule="parallax"))
    back = read_parallax(p)
    for k in ("defocus_A", "C12_A", "phi12_rad", "C21_A", "scan_rotation_deg", "transpose", "image_sampling_A"):
        assert getattr(back, k) == getattr(res, k)
    assert np.array_equal(back.shifts_A, res.shifts_A) and np.array_equal(back.inliers, res.inliers)
    assert back.history == res.history and back.aberrations.defocus_A == res.defocus_A
    assert read_provenance(p).rule == "parallax"
    with h5py.File(p, "a") as f:
        del f.attrs["defocus_A"]
    with pytest.raises(InputError, match="defocus_A"):
        read_parallax(p)
    png = plot_parallax(res, tmp_path / "parallax.png", truth={"defocus_A": 120.0, "scan_rotation_deg": 5.0})
    assert png.stat().st_size > 10_000


def test_structureless_data_is_flagged_unreliable():
    """Pure shot noise on a bright-field disk: no level is accepted and the low R^2 says so."""
    rng = np.random.default_rng(9)
    n_det = 32
    q = np.hypot(*np.meshgrid(np.arange(n_det) - 16, np.arange(n_det) - 16, indexing="ij"))
    disk = (q * 1.5 <= 25).astype(float)
    cube = rng.poisson(50 * disk, size=(16, 16, n_det, n_det)).astype(np.float32)
    res = parallax_fit(cube, Calibration(300e3, 25.0, 2.0, 1.5))
    print(f"\nnoise only: R^2 {res.explained_fraction:.3f}, levels {[(h['bin'], h['accepted']) for h in res.history]}")
    assert res.explained_fraction < 0.8
    assert not any(h["accepted"] for h in res.history) and sum(h["used"] for h in res.history) == 1


def parallax_plane_A(entrance_A, depths_A, weights=None):
    """Defocus a parallax fit measures for weak layers at ``depths_A`` (the formula of
    :func:`msptycho.simulate.truth.defocus_reference_planes`): ``sum v d^3 / sum v d^2``, d = D - z."""
    d = entrance_A - np.asarray(depths_A, dtype=float)
    v = np.ones_like(d) if weights is None else np.asarray(weights, dtype=float)
    return float(np.sum(v * d**3) / np.sum(v * d**2))


@pytest.mark.parametrize("depths_A", [(60.0,), (0.0, 60.0)])
def test_parallax_measures_defocus_at_the_object_depth(depths_A):
    """Reference plane: the probe has defocus 180 A at the entrance surface (z = 0). A thin object
    at depth z sees ``180 - z`` (physics: ``defocus_A = -C10`` and Fresnel propagation over z), and
    parallax must return that; two equal independent layers at 0 and 60 A give the contrast-weighted
    plane ``sum d^3 / sum d^2`` = 161.5 A (each layer's BF contrast grows with its defocus d), not
    the entrance's 180 A nor the centroid's 150 A."""
    entrance = 180.0
    expected = parallax_plane_A(entrance, depths_A)
    centroid = entrance - float(np.mean(depths_A))
    cube, cal = simulate(physics.Aberrations(defocus_A=entrance), 0.0, seed=11, depths_A=depths_A)
    res = parallax_fit(cube, cal)
    print(f"\nlayers at {depths_A} A, entrance defocus {entrance:.1f} A: parallax {res.defocus_A:.1f} A "
          f"(expected {expected:.1f} A, centroid {centroid:.1f} A), rotation {res.scan_rotation_deg:.2f} deg (truth 0)")
    assert abs(res.defocus_A - expected) < 0.02 * expected
    assert abs(angle_diff(res.scan_rotation_deg, 0.0)) < 1.0


def test_truth_reference_planes():
    """defocus_reference_planes on a hand-made truth: two slabs of 12 A, the second with three
    times the first's mean potential, inside the scanned field."""
    from msptycho.simulate.truth import GroundTruth, defocus_reference_planes

    pot = np.zeros((2, 20, 20), dtype=np.float32)
    pot[0], pot[1] = 1.0, 3.0
    pot[:, :2] = 50.0  # outside the scanned field: ignored
    z = np.zeros((2, 20, 20), dtype=np.float32)
    m = np.zeros((2, 20, 20), dtype=bool)
    scan = np.stack(np.meshgrid(np.arange(5, 15.0), np.arange(0, 19.0), indexing="ij"), -1)
    truth = GroundTruth(sampling_A=1.0, origin_A=(0.0, 0.0), slice_thickness_A=12.0,
                        slice_edges_A=np.array([0.0, 12.0, 24.0]), potential_VA=pot, exx=z, eyy=z, exy=z,
                        dilation=z, rotation_rad=z, particle_mask=m, core_mask=m, crack_mask=m,
                        dislocations=np.zeros(0), reference_lattice_A=5.46, misfit=0.0,
                        particle_center_A=np.zeros(3), core_center_A=np.zeros(3), core_radius_A=1.0,
                        probe={"defocus_A": 100.0}, scan_positions_A=scan)
    r = defocus_reference_planes(truth)
    assert r["defocus_entrance_A"] == 100.0 and r["defocus_first_slab_A"] == 94.0
    assert abs(r["centroid_depth_A"] - (6 * 1 + 18 * 3) / 4) < 1e-9
    assert abs(r["defocus_centroid_A"] - 85.0) < 1e-9
    assert abs(r["defocus_parallax_A"] - parallax_plane_A(100.0, [6.0, 18.0], [1.0, 3.0])) < 1e-9
