"""Electron-optical physics shared by the simulator and the reconstruction.

Conventions (decided once here, tested once in ``tests/test_physics.py``):

* Lengths in Angstrom (``_A``), energies in eV (``_eV``), angles in mrad (``_mrad``), spatial
  frequencies in 1/Angstrom (``_inv_A``), projected potentials in V*Angstrom (``_VA``).
* Fourier transforms follow numpy: ``psi_k = fft2(psi_r)``; spatial frequencies come from
  :func:`spatial_frequencies` (cycles per Angstrom, ``k = theta / wavelength``).
* A wave travelling a distance ``dz_A`` through vacuum is multiplied in Fourier space by the
  Fresnel propagator ``exp(-i pi wavelength k^2 dz_A)`` (:func:`fresnel_propagator`).
* The probe in Fourier space is ``A(k) exp(-i chi(k))`` with the aberration function
  ``chi = 2 pi / wavelength * sum_{n,m} C_nm alpha^(n+1)/(n+1) cos(m (phi - phi_nm))``
  (Krivanek notation: ``C10`` defocus, ``C12`` two-fold astigmatism, ``C21`` axial coma,
  ``C23`` three-fold astigmatism, ``C30`` spherical aberration).
* **Defocus sign**: ``defocus_A = -C10`` (as abTEM and py4DSTEM). With the propagator above,
  ``exp(-i chi)`` for ``C10`` equals propagation by ``dz = C10``; hence a probe with
  ``defocus_A = d > 0`` is the focused probe propagated *backwards* by ``d``: its crossover lies
  ``d`` Angstrom downstream of the entrance surface, inside or below the sample. The paper's
  "about 30 nm of defocus" is ``defocus_A = 300`` in this convention.
* A slice of projected potential ``V`` (V*A) transmits ``exp(i sigma V)`` with the relativistic
  interaction constant :func:`interaction_constant` (rad / (V*A)).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# CODATA 2018
ELECTRON_MASS_KG = 9.1093837015e-31
ELEMENTARY_CHARGE_C = 1.602176634e-19
PLANCK_JS = 6.62607015e-34
SPEED_OF_LIGHT_M_PER_S = 299792458.0
ELECTRON_REST_ENERGY_EV = ELECTRON_MASS_KG * SPEED_OF_LIGHT_M_PER_S**2 / ELEMENTARY_CHARGE_C


def wavelength_A(energy_eV: float) -> float:
    """Relativistic electron wavelength.

    Parameters
    ----------
    energy_eV : float
        Kinetic energy of the electron (beam voltage times e), eV.

    Returns
    -------
    float
        Wavelength in Angstrom (0.01969 A at 300 keV).
    """
    if not energy_eV > 0:
        raise ValueError(f"energy_eV must be positive, got {energy_eV!r}")
    e, m, c, h = ELEMENTARY_CHARGE_C, ELECTRON_MASS_KG, SPEED_OF_LIGHT_M_PER_S, PLANCK_JS
    p = np.sqrt(2 * m * e * energy_eV * (1 + e * energy_eV / (2 * m * c**2)))
    return float(h / p * 1e10)


def interaction_constant(energy_eV: float) -> float:
    """Relativistic interaction constant sigma.

    ``sigma = 2 pi m e lambda / h^2`` with the relativistic mass ``m``; a projected potential
    ``V`` (V*A) shifts the phase by ``sigma * V``.

    Returns
    -------
    float
        sigma in rad / (V * Angstrom) (about 6.5e-4 at 300 keV).
    """
    e, m0, c, h = ELEMENTARY_CHARGE_C, ELECTRON_MASS_KG, SPEED_OF_LIGHT_M_PER_S, PLANCK_JS
    lam_m = wavelength_A(energy_eV) * 1e-10
    m = m0 * (1 + e * energy_eV / (m0 * c**2))
    sigma_per_V_m = 2 * np.pi * m * e * lam_m / h**2
    return float(sigma_per_V_m * 1e-10)


def spatial_frequencies(shape: tuple[int, int], sampling_A: tuple[float, float] | float):
    """Spatial frequencies of a 2-D grid in numpy FFT order.

    Parameters
    ----------
    shape : (int, int)
        Grid shape (nx, ny).
    sampling_A : float or (float, float)
        Real-space pixel size, Angstrom.

    Returns
    -------
    kx, ky : ndarray
        Broadcastable arrays of shape (nx, 1) and (1, ny), in 1/Angstrom.
    """
    sx, sy = (sampling_A, sampling_A) if np.isscalar(sampling_A) else sampling_A
    kx = np.fft.fftfreq(shape[0], d=sx)[:, None]
    ky = np.fft.fftfreq(shape[1], d=sy)[None, :]
    return kx, ky


@dataclass(frozen=True)
class Aberrations:
    """Probe aberration coefficients in Krivanek notation.

    Attributes
    ----------
    defocus_A : float
        ``-C10`` in Angstrom (positive: crossover below the entrance surface, see module doc).
    C12_A, phi12_rad : float
        Two-fold astigmatism magnitude (A) and azimuth (rad).
    C21_A, phi21_rad : float
        Axial coma (A, rad).
    C23_A, phi23_rad : float
        Three-fold astigmatism (A, rad).
    C30_A : float
        Spherical aberration (A).
    """

    defocus_A: float = 0.0
    C12_A: float = 0.0
    phi12_rad: float = 0.0
    C21_A: float = 0.0
    phi21_rad: float = 0.0
    C23_A: float = 0.0
    phi23_rad: float = 0.0
    C30_A: float = 0.0
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        d = {k: float(getattr(self, k)) for k in (
            "defocus_A", "C12_A", "phi12_rad", "C21_A", "phi21_rad", "C23_A", "phi23_rad", "C30_A")}
        return d


def aberration_function(kx, ky, wavelength: float, aberrations: Aberrations):
    """Aberration phase chi(k) in radians.

    Parameters
    ----------
    kx, ky : ndarray
        Spatial frequencies, 1/Angstrom (broadcastable).
    wavelength : float
        Electron wavelength, Angstrom.
    aberrations : Aberrations
        Coefficients (Angstrom, radians).

    Returns
    -------
    ndarray
        chi in radians; the probe's Fourier transform carries ``exp(-i chi)``.
    """
    alpha = wavelength * np.sqrt(kx**2 + ky**2)
    phi = np.arctan2(ky, kx)
    a = aberrations
    C10 = -a.defocus_A
    chi = (
        0.5 * alpha**2 * (C10 + a.C12_A * np.cos(2 * (phi - a.phi12_rad)))
        + alpha**3 / 3 * (a.C21_A * np.cos(phi - a.phi21_rad) + a.C23_A * np.cos(3 * (phi - a.phi23_rad)))
        + alpha**4 / 4 * a.C30_A
    )
    return 2 * np.pi / wavelength * chi


def aperture(kx, ky, wavelength: float, semiangle_mrad: float, edge_mrad: float = 0.0):
    """Condenser aperture transmission (0..1) with an optional soft cosine edge.

    Parameters
    ----------
    kx, ky : ndarray
        Spatial frequencies, 1/Angstrom.
    wavelength : float
        Angstrom.
    semiangle_mrad : float
        Convergence semi-angle, mrad.
    edge_mrad : float
        Width of a raised-cosine roll-off centred on the semi-angle, mrad (0 = hard edge).
    """
    alpha_mrad = wavelength * np.sqrt(kx**2 + ky**2) * 1e3
    if edge_mrad <= 0:
        return (alpha_mrad <= semiangle_mrad).astype(np.float64)
    t = np.clip((alpha_mrad - (semiangle_mrad - edge_mrad / 2)) / edge_mrad, 0.0, 1.0)
    return 0.5 * (1 + np.cos(np.pi * t))


def fresnel_propagator(kx, ky, wavelength: float, dz_A: float):
    """Fresnel free-space propagator ``exp(-i pi wavelength k^2 dz_A)`` (complex128)."""
    return np.exp(-1j * np.pi * wavelength * (kx**2 + ky**2) * dz_A)


def probe_fourier(shape, sampling_A, energy_eV, semiangle_mrad, aberrations=None, edge_mrad=0.0):
    """Probe wave in Fourier space, normalised so that ``sum |psi_r|^2 = 1``.

    Returns
    -------
    ndarray (complex128)
        ``A(k) exp(-i chi(k))`` in numpy FFT order (zero frequency at [0, 0]), scaled so that
        ``ifft2`` of it has unit total intensity.
    """
    aberrations = aberrations or Aberrations()
    lam = wavelength_A(energy_eV)
    kx, ky = spatial_frequencies(shape, sampling_A)
    A = aperture(kx, ky, lam, semiangle_mrad, edge_mrad)
    psi_k = A * np.exp(-1j * aberration_function(kx, ky, lam, aberrations))
    n = shape[0] * shape[1]
    # Parseval: sum|ifft2(x)|^2 = sum|x|^2 / n
    norm = np.sqrt(np.sum(np.abs(psi_k) ** 2) / n)
    if norm == 0:
        raise ValueError("the aperture passes no spatial frequency: semiangle_mrad too small for the grid")
    return psi_k / norm


def probe_real(shape, sampling_A, energy_eV, semiangle_mrad, aberrations=None, edge_mrad=0.0):
    """Probe wave in real space, centred on pixel (0, 0), unit total intensity (complex128)."""
    return np.fft.ifft2(probe_fourier(shape, sampling_A, energy_eV, semiangle_mrad, aberrations, edge_mrad))


def mrad_to_inv_A(angle_mrad: float, energy_eV: float) -> float:
    """Scattering angle (mrad) to spatial frequency (1/A): ``k = theta / lambda``."""
    return angle_mrad * 1e-3 / wavelength_A(energy_eV)


def inv_A_to_mrad(k_inv_A: float, energy_eV: float) -> float:
    """Spatial frequency (1/A) to scattering angle (mrad)."""
    return k_inv_A * wavelength_A(energy_eV) * 1e3


def realspace_sampling_A(n_pixels: int, mrad_per_pixel: float, energy_eV: float) -> float:
    """Real-space pixel size of the reconstruction window set by the detector.

    A detector of ``n_pixels`` with ``mrad_per_pixel`` spans ``n * dk`` in 1/A, so the window's
    pixel is ``1 / (n * dk)`` Angstrom.
    """
    dk = mrad_to_inv_A(mrad_per_pixel, energy_eV)
    return 1.0 / (n_pixels * dk)
