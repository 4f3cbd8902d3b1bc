"""Physics checks of the simulator (msptycho.simulate), against analytic results, not against itself."""

import dataclasses

import numpy as np
import pytest

from msptycho import physics
from msptycho.simulate import (PatternSimulator, aberrations_of, estimate_cost, fluorite_crystal, preset,
                               scan_positions, simulate_sample, vacuum_probe_pattern)
from msptycho.simulate.multislice import binning_matrix, transmission_functions
from msptycho.simulate.potentials import (A0_E_VA2, integrated_projected_potential, project_atoms_fourier,
                                          scattering_factor)

E = 300e3


def test_vacuum_probe_unit_norm_and_bright_field_disk():
    """Through vacuum the probe keeps unit norm on the detector (which reaches 2 alpha) and shows
    a disk of the configured semi-angle: its area equals pi alpha^2 within one pixel ring."""
    for defocus in (0.0, 120.0):
        p = dataclasses.replace(preset("pristine"), defocus_A=defocus)
        v = vacuum_probe_pattern(p).astype(np.float64)
        assert v.sum() == pytest.approx(1.0, abs=1e-4)
        n, d = p.detector_pixels, p.detector_mrad_per_pixel
        q = (np.arange(n) - n // 2) * d
        r = np.hypot(q[:, None], q[None, :])
        disk = v > 0.5 * np.median(v[r < 0.8 * p.semiangle_mrad])
        alpha_measured = np.sqrt(disk.sum() * d**2 / np.pi)
        assert alpha_measured == pytest.approx(p.semiangle_mrad, abs=d)
        # flat inside (pure phase aberrations do not change the amplitude), dark outside
        assert v[r < p.semiangle_mrad - 2 * d].std() / v[r < p.semiangle_mrad - 2 * d].mean() < 0.05
        assert v[r > p.semiangle_mrad + 2 * d].sum() < 1e-4
        # centred on the detector centre
        cx = (v * q[:, None]).sum() / v.sum()
        cy = (v * q[None, :]).sum() / v.sum()
        assert abs(cx) < 0.05 * d and abs(cy) < 0.05 * d


def _vacuum_sim(defocus_A, n_slices, dz_A, occupied=None, W=192, s=0.125):
    t = np.ones((n_slices, W, W), np.complex64)
    return PatternSimulator(t, np.full(n_slices, dz_A), s, (0.0, 0.0), W, E, 25.0,
                            physics.Aberrations(defocus_A=defocus_A), 128, 100 / 128, occupied=occupied)


def test_free_space_propagation_equals_defocus_change():
    """Propagating a probe of defocus d by dz through empty slices gives the probe of defocus
    d - dz (physics.py: defocus = -C10, propagation by dz adds dz to C10), to float32 precision;
    the slices skipped as empty (merged propagation) give the same wave."""
    W, s = 192, 0.125
    pos = np.array([[W // 2 * s + 0.03, W // 2 * s - 0.05]])
    ref = _vacuum_sim(70.0, 0, 1.0).exit_waves_k(pos)
    # slices of 5 A: the last propagation is not applied by the engine (far field only), so the
    # wave at the exit of slice n has travelled (n - 1) * dz
    got = _vacuum_sim(120.0, 11, 5.0).exit_waves_k(pos)
    assert np.abs(got - ref).max() / np.abs(ref).max() < 1e-4
    empty = np.tile([1, 0, 1, 0], (11, 1))
    got2 = _vacuum_sim(120.0, 11, 5.0, occupied=empty).exit_waves_k(pos)
    assert np.abs(got2 - ref).max() / np.abs(ref).max() < 1e-4
    # and the sign: 120 A of defocus focuses 120 A downstream, so the peak intensity rises
    a = np.fft.ifft2(_vacuum_sim(120.0, 0, 1.0).exit_waves_k(pos)[0])
    b = np.fft.ifft2(_vacuum_sim(120.0, 25, 5.0).exit_waves_k(pos)[0])
    assert np.abs(b).max() > 3 * np.abs(a).max()


@pytest.mark.parametrize("Z_atom, rel", [(9, 0.01), (20, 0.03)])
def test_thin_weak_phase_crystal_gives_kinematic_intensities(Z_atom, rel):
    """One atomic plane of CaF2 [001] (2 x 2 cells; the F plane at z = a/4, or the same sites
    filled with Ca) under plane-wave illumination: every Bragg intensity equals the kinematic
    |sigma V_g|^2 with V_g = 2 pi a0 e f_e(g) F_g / A_cell (Kirkland's scattering factor, F_g the
    structure factor). The tolerance is the second order of the phase that the weak-phase
    approximation drops: 1 % for F (peak phase 0.33 rad), 3 % for Ca (0.73 rad)."""
    a, cells, per_cell = 5.46, 2, 44
    W = cells * per_cell
    s = a / per_cell
    pos, Z = fluorite_crystal(a, (cells, cells, 1))
    pos = pos[(np.abs(pos[:, 2] - a / 4) < 0.1) & (Z == 9)]
    Z = np.full(len(pos), Z_atom)
    pot = project_atoms_fourier(pos[:, :2], Z, np.zeros(len(Z), int), 1, (W, W), s, periodic=True)
    t = transmission_functions(pot, E, s)
    # an aperture that passes only k = 0: a unit plane wave
    sim = PatternSimulator(t, [2.0], s, (0.0, 0.0), W, E, 0.5 * physics.inv_A_to_mrad(1 / (W * s), E),
                           physics.Aberrations(), 128, 100 / 128)
    psi_k = sim.exit_waves_k(np.array([[W // 2 * s, W // 2 * s]]))[0]
    inten = np.abs(psi_k) ** 2 / W**2
    # unit norm up to what the antialiasing band limit removes (scattering beyond 2/3 Nyquist)
    assert inten.sum() == pytest.approx(1.0, abs=5e-4)
    sigma = physics.interaction_constant(E)
    area = (cells * a) ** 2
    for h, k in [(2, 0), (2, 2), (4, 0), (4, 2), (4, 4), (6, 0), (8, 0)]:
        g = np.hypot(h, k) / a
        F = np.sum(np.exp(-2j * np.pi * (h * pos[:, 0] + k * pos[:, 1]) / a))
        Vg = 2 * np.pi * A0_E_VA2 * float(scattering_factor(Z_atom, g)) * F / area
        kin = abs(sigma * Vg) ** 2
        assert inten[h * cells % W, k * cells % W] == pytest.approx(kin, rel=rel), (h, k)
    # reflections forbidden for the square a/2 net stay dark
    assert inten[1 * cells, 0] < 1e-9 and inten[0, 1 * cells] < 1e-9


def test_fourier_potential_has_the_kirkland_coefficients():
    """The simulation's potential (built in Fourier space) has Fourier coefficients equal to
    2 pi a0 e f_e(g) F_g / A_cell within 0.2 % up to 1.5 1/A, and integrates to the analytic value."""
    a, cells, per_cell = 5.46, 2, 44
    W = cells * per_cell
    s = a / per_cell
    pos, Z = fluorite_crystal(a, (cells, cells, 1))
    sel = (pos[:, 2] < 0.1) & (Z == 20)
    pos = pos[sel] + [0.037, 0.061, 0.0]
    pot = project_atoms_fourier(pos[:, :2], Z[sel], np.zeros(sel.sum(), int), 1, (W, W), s, periodic=True)[0]
    Vk = np.fft.fft2(pot.astype(np.float64)) / W**2
    area = (cells * a) ** 2
    for h, k in [(0, 0), (2, 0), (2, 2), (4, 0), (4, 4), (8, 0)]:
        g = np.hypot(h, k) / a
        F = np.sum(np.exp(-2j * np.pi * (h * pos[:, 0] + k * pos[:, 1]) / a))
        Vg = 2 * np.pi * A0_E_VA2 * float(scattering_factor(20, g)) * F / area
        assert abs(Vk[h * cells, k * cells]) == pytest.approx(abs(Vg), rel=2e-3), (h, k)
    assert pot.sum() * s**2 == pytest.approx(len(pos) * integrated_projected_potential(20), rel=1e-4)


def test_mean_counts_per_pattern_equal_dose_times_step_squared():
    """Small sample: each pattern receives dose * step^2 electrons minus the small fraction
    scattered outside the detector; the mean over positions agrees within 4 Poisson standard
    errors plus that fraction (measured from the noise-free intensities, < 3 %)."""
    p = dataclasses.replace(preset("pristine"), scan_shape_px=(4, 4), scan_step_A=8.0, dose_e_per_A2=200.0,
                            particle_radius_A=12.0, particle_thickness_A=12.0, core_radius_A=5.0,
                            core_offset_A=(1.0, 0.0, 1.0), carbon_thickness_A=6.0, haadf_shape_px=(32, 32),
                            tilt_mrad=0.0, twist_top_deg=0.0)
    r = simulate_sample(p, recon_slice_thickness_A=6.0)
    n_e = p.dose_e_per_A2 * p.scan_step_A**2
    counts = r.datacube.sum(axis=(2, 3))
    assert r.datacube.shape == (4, 4, 128, 128)
    assert np.all(r.datacube == np.round(r.datacube)) and r.datacube.min() >= 0
    se = np.sqrt(n_e / counts.size)
    assert abs(counts.mean() - n_e) < 4 * se + 0.03 * n_e
    assert counts.mean() <= n_e + 4 * se
    vac = r.vacuum_probe.sum()
    assert abs(vac - p.vacuum_probe_electrons) < 5 * np.sqrt(p.vacuum_probe_electrons)


def test_scan_positions_jitter_is_known_and_seeded():
    p = preset("pristine")
    nom, true = scan_positions(p, np.random.default_rng(p.seed))
    nom2, true2 = scan_positions(p, np.random.default_rng(p.seed))
    assert np.array_equal(true, true2)
    d = true - nom
    assert d.std() == pytest.approx(p.scan_jitter_A, rel=0.1)
    assert nom[1, 0, 0] == pytest.approx(p.scan_step_A) and nom[0, 1, 1] == pytest.approx(p.scan_step_A)


def test_binning_matrix_conserves_intensity_inside_detector():
    M = binning_matrix(216, 1 / 27.0, 128, physics.mrad_to_inv_A(100 / 128, E))
    inside = np.abs((np.arange(216) - 108) / 27.0) < 0.9 * 64 * physics.mrad_to_inv_A(100 / 128, E)
    assert np.allclose(M.sum(axis=0)[inside], 1.0, atol=1e-6)
    assert M.min() >= 0


def test_parameters_are_checked():
    with pytest.raises(ValueError, match="sim_sampling_A"):
        dataclasses.replace(preset("pristine"), sim_sampling_A=0.2).validate()
    with pytest.raises(ValueError, match="dose_e_per_A2"):
        dataclasses.replace(preset("pristine"), dose_e_per_A2=-1.0).validate()
    with pytest.raises(ValueError, match="unknown simulation preset"):
        preset("nope")
    assert aberrations_of(preset("paper")).defocus_A == 300.0


def test_paper_preset_is_constructible_and_costed():
    """The paper-sized preset validates and its cost is estimated without simulating."""
    p = preset("paper").validate()
    assert p.defocus_A == 300.0 and p.scan_shape_px == (100, 100)
    assert 2 * p.particle_radius_A == pytest.approx(170.0)
    assert int(np.ceil(max(p.sample_thickness_A, p.truth_depth_A) / 12.0)) == 36
    c = estimate_cost(p, seconds_per_fft=1e-3)
    assert c["positions"] == 10000 and c["slices"] == 100
    assert c["ffts"] == 10000 * 201
    assert c["multislice_s_estimate"] == pytest.approx(1.6 * c["ffts"] * 1e-3)
    assert c["transmission_bytes"] > 1e9  # a cluster job: several GB
    d = estimate_cost(preset("pristine"), seconds_per_fft=1e-3)
    assert d["positions"] == 1600 and d["slices"] == 36 and d["window_px"] == 216


def test_simulate_sample_rejects_bad_input():
    with pytest.raises(ValueError, match="recon_slice_thickness_A"):
        simulate_sample(preset("pristine"), recon_slice_thickness_A=-1.0)
    with pytest.raises(ValueError, match="scan_shape_px"):
        simulate_sample(dataclasses.replace(preset("pristine"), scan_shape_px=(1, 4)))
    with pytest.raises(ValueError, match="core_radius_A"):
        simulate_sample(dataclasses.replace(preset("pristine"), core_radius_A=40.0))


def test_configured_sample_parameters():
    """A config sample: the preset, the config's overrides (YAML lists to tuples) and the seed
    offset per preset, unless the config gives one."""
    from msptycho.simulate import configured, preset
    p = configured("mine", "cracked", {"defocus_A": 300.0, "core_offset_A": [1.0, 2.0, 3.0],
                                       "dislocations": [[1, 2, 3, 4, 0, 10]]}, 100)
    assert p.name == "mine" and p.defocus_A == 300.0 and p.core_offset_A == (1.0, 2.0, 3.0)
    assert p.dislocations == ((1, 2, 3, 4, 0, 10),)
    assert p.seed == 100 + preset("cracked").seed
    assert p.crack_tip_A == preset("cracked").crack_tip_A
    assert configured("x", "pristine", {"seed": 7}, 100).seed == 7
    assert configured("x", "pristine", None, 0) == preset("pristine").__class__(
        **{**preset("pristine").__dict__, "name": "x", "seed": preset("pristine").seed})
