"""The physics conventions of msptycho.physics, each tested once against an analytic case."""
import numpy as np
import pytest

from msptycho import physics


def test_wavelength_and_interaction_constant_at_300kV():
    # Kirkland, Advanced Computing in Electron Microscopy (2010), table 2.1: 300 kV
    assert physics.wavelength_A(300e3) == pytest.approx(0.019687, rel=1e-4)
    assert physics.interaction_constant(300e3) == pytest.approx(6.5262e-4, rel=1e-3)
    # non-relativistic limit at low energy: lambda = h / sqrt(2 m e E)
    assert physics.wavelength_A(100.0) == pytest.approx(12.2643 / np.sqrt(100.0), rel=1e-4)


def test_probe_is_normalised_and_fills_the_aperture():
    shape, dx = (256, 256), 0.1
    psi_k = physics.probe_fourier(shape, dx, 300e3, 25.0)
    psi = np.fft.ifft2(psi_k)
    assert np.sum(np.abs(psi) ** 2) == pytest.approx(1.0, rel=1e-10)
    kx, ky = physics.spatial_frequencies(shape, dx)
    alpha_mrad = physics.wavelength_A(300e3) * np.hypot(kx, ky) * 1e3
    inside = np.abs(psi_k) > 0
    assert alpha_mrad[inside].max() <= 25.0
    assert alpha_mrad[~inside].min() > 25.0 - 1.0


def test_defocus_sign_equals_backward_propagation():
    """defocus_A = d is the focused probe propagated by -d: propagating it forward by d refocuses."""
    shape, dx, E, d = (256, 256), 0.1, 300e3, 150.0
    lam = physics.wavelength_A(E)
    kx, ky = physics.spatial_frequencies(shape, dx)
    focused_k = physics.probe_fourier(shape, dx, E, 25.0)
    defocused_k = physics.probe_fourier(shape, dx, E, 25.0, physics.Aberrations(defocus_A=d))
    np.testing.assert_allclose(defocused_k, focused_k * physics.fresnel_propagator(kx, ky, lam, -d), atol=1e-12)
    refocused = np.fft.ifft2(defocused_k * physics.fresnel_propagator(kx, ky, lam, +d))
    assert np.abs(refocused).max() == pytest.approx(np.abs(np.fft.ifft2(focused_k)).max(), rel=1e-9)
    # geometric optics: at the entrance plane the beam radius is |d| * alpha
    intensity = np.abs(np.fft.ifft2(defocused_k)) ** 2
    x = np.fft.fftfreq(shape[0], 1 / (shape[0] * dx))[:, None]
    y = np.fft.fftfreq(shape[1], 1 / (shape[1] * dx))[None, :]
    r2 = np.sum(intensity * (x**2 + y**2))
    # uniform disk of radius R has <r^2> = R^2 / 2
    assert np.sqrt(2 * r2) == pytest.approx(d * 25e-3, rel=0.15)


def test_astigmatism_and_spherical_aberration_terms():
    lam = physics.wavelength_A(300e3)
    k = 20e-3 / lam  # 20 mrad
    ab = physics.Aberrations(C12_A=10.0, phi12_rad=0.0, C30_A=1e4)
    chi_x = physics.aberration_function(np.array(k), np.array(0.0), lam, ab)
    chi_y = physics.aberration_function(np.array(0.0), np.array(k), lam, ab)
    a = 20e-3
    assert chi_x == pytest.approx(2 * np.pi / lam * (0.5 * a**2 * 10.0 + a**4 / 4 * 1e4))
    assert chi_y == pytest.approx(2 * np.pi / lam * (-0.5 * a**2 * 10.0 + a**4 / 4 * 1e4))


def test_realspace_sampling_of_the_detector_window():
    # a 128-pixel detector spanning +-50 mrad at 300 kV gives lambda / (2 * 0.05) per pixel
    dx = physics.realspace_sampling_A(128, 100.0 / 128, 300e3)
    assert dx == pytest.approx(physics.wavelength_A(300e3) / 0.1, rel=1e-12)
