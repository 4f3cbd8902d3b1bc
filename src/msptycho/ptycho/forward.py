"""Maths of the multislice forward model shared by every backend.

Conventions (see ``workflow/schemas/datacube.md`` and :mod:`msptycho.physics`):

* Real-space arrays are indexed ``[x, y]``. The object is a stack of slices of projected
  potential ``V`` (V*A), shape ``(nz, Nx, Ny)``, pixel ``sampling_A`` set by the detector
  (:func:`msptycho.physics.realspace_sampling_A`). Object pixel ``[0, 0]`` sits at ``origin_A``
  in the scan frame (detector-aligned axes, see :func:`scan_positions_A`).
* The probe window is ``n x n`` (the detector's size). The real-space probe is stored centred on
  window pixel ``(n // 2, n // 2)``; a position ``p`` (object pixels) uses the window starting at
  ``round(p) - n // 2`` and the probe shifted by ``p - round(p)`` pixels in Fourier space.
* FFTs inside the engine are unitary (``norm="ortho"``) and the probe is scaled so that
  ``sum |probe|^2`` equals the mean number of counts per pattern; the model pattern of one
  position is then ``|FFT_ortho(exit)|^2`` in numpy FFT order, which is the measured pattern
  after ``ifftshift`` (measured patterns are ``|fftshift(fft2(exit))|^2``, zero frequency at
  ``(Qx // 2, Qy // 2)``).
* Forward model per position: ``psi_0 = IFFT(P_k * ramp)``; for each slice ``s``
  ``phi_s = psi_s * exp(i sigma V_s)``, ``psi_{s+1} = IFFT(H * FFT(phi_s))`` with the Fresnel
  propagator ``H`` over ``slice_thickness_A``; pattern ``|FFT(phi_{nz-1})|^2``.
"""

from __future__ import annotations

import numpy as np

from .. import physics


def window_frequencies(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Spatial frequencies of an ``n x n`` window in cycles per pixel (numpy FFT order), float32."""
    k = np.fft.fftfreq(n).astype(np.float32)
    return k, k.copy()


def propagator(n: int, sampling_A: float, wavelength_A: float, dz_A: float) -> np.ndarray:
    """Fresnel propagator over ``dz_A`` on the ``n x n`` window, complex64, numpy FFT order."""
    kx, ky = physics.spatial_frequencies((n, n), sampling_A)
    return physics.fresnel_propagator(kx, ky, wavelength_A, dz_A).astype(np.complex64)


def centring_ramp(n: int) -> np.ndarray:
    """Fourier factor ``c`` with ``FFT(fftshift(p)) = FFT(p) * conj(c)``: multiplying a centred
    probe's Fourier transform by ``c`` removes the ``n // 2`` shift (complex128)."""
    k = np.fft.fftfreq(n)
    ph = 2 * np.pi * (n // 2) * (k[:, None] + k[None, :])
    return np.exp(1j * ph)


def probe_from_aberrations(n: int, sampling_A: float, energy_eV: float, semiangle_mrad: float,
                           aberrations: physics.Aberrations | None, total_counts: float,
                           fourier_amplitude: np.ndarray | None = None) -> np.ndarray:
    """Initial Fourier-space probe (unitary FFT of the centred real-space probe), complex64.

    Parameters
    ----------
    n : int
        Window size, pixels.
    sampling_A : float
        Real-space pixel, Angstrom.
    energy_eV, semiangle_mrad : float
        Beam energy (eV) and convergence semi-angle (mrad).
    aberrations : Aberrations or None
        Initial aberrations (defocus sign of :mod:`msptycho.physics`).
    total_counts : float
        ``sum |probe|^2`` (mean counts per pattern).
    fourier_amplitude : ndarray, optional
        ``(n, n)`` Fourier amplitude in numpy FFT order (e.g. the vacuum probe's) to use instead of
        the hard aperture.
    """
    lam = physics.wavelength_A(energy_eV)
    kx, ky = physics.spatial_frequencies((n, n), sampling_A)
    chi = physics.aberration_function(kx, ky, lam, aberrations or physics.Aberrations())
    if fourier_amplitude is None:
        amp = physics.aperture(kx, ky, lam, semiangle_mrad)
    else:
        amp = np.asarray(fourier_amplitude, dtype=np.float64)
    pk = amp * np.exp(-1j * chi) * np.conj(centring_ramp(n))
    norm = np.sqrt(np.sum(np.abs(pk) ** 2))
    if norm == 0:
        raise ValueError("the probe has no Fourier amplitude on this window")
    return (pk * np.sqrt(total_counts) / norm).astype(np.complex64)


def scan_positions_A(shape_r: tuple[int, int], scan_step_A: float, scan_rotation_deg: float = 0.0) -> np.ndarray:
    """Nominal probe positions ``(Rx * Ry, 2)`` in Angstrom, row-major (Rx outer).

    Position ``(i, j)`` is ``(i, j) * scan_step_A`` rotated by ``scan_rotation_deg`` into the
    detector-aligned frame in which the object is reconstructed (identity for 0 degrees).
    """
    i, j = np.meshgrid(np.arange(shape_r[0]), np.arange(shape_r[1]), indexing="ij")
    p = np.stack([i.ravel(), j.ravel()], axis=1).astype(np.float64) * scan_step_A
    if scan_rotation_deg:
        t = np.deg2rad(scan_rotation_deg)
        rot = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
        p = p @ rot.T
    return p


def object_geometry(positions_A: np.ndarray, sampling_A: float, n: int, margin_px: int = 2):
    """Object shape and origin covering every window with ``margin_px`` to spare.

    Returns
    -------
    shape : (int, int)
        ``(Nx, Ny)`` pixels.
    origin_A : ndarray (2,)
        Scan-frame coordinate of object pixel ``[0, 0]``, Angstrom.
    """
    lo = positions_A.min(axis=0)
    hi = positions_A.max(axis=0)
    off = n // 2 + margin_px
    origin = lo - off * sampling_A
    ext = np.ceil((hi - lo) / sampling_A).astype(int) + 2 * off + 2
    ext = np.maximum(ext, n + 2 * margin_px)
    return (int(ext[0]), int(ext[1])), origin


def positions_to_pixels(positions_A: np.ndarray, origin_A: np.ndarray, sampling_A: float) -> np.ndarray:
    """Scan-frame positions (Angstrom) to object pixel coordinates (float64)."""
    return (np.asarray(positions_A, dtype=np.float64) - origin_A) / sampling_A


def split_positions(pos_px: np.ndarray, n: int, corners: np.ndarray, frac: np.ndarray) -> None:
    """Window corners (int) and sub-pixel remainders of pixel positions, written in place."""
    r = np.floor(pos_px + 0.5)
    corners[:] = r.astype(np.int64) - n // 2
    frac[:] = pos_px - r


def z_order(pos_px: np.ndarray, cell_px: float) -> np.ndarray:
    """Order of positions along a Z (Morton) curve over cells of ``cell_px`` pixels: consecutive
    positions are neighbours in the object (stable, deterministic)."""
    cells = np.floor(np.asarray(pos_px, dtype=np.float64) / cell_px).astype(np.int64)
    cells -= cells.min(axis=0)
    code = np.zeros(len(cells), dtype=np.int64)
    for bit in range(20):
        code |= ((cells[:, 0] >> bit) & 1) << (2 * bit + 1)
        code |= ((cells[:, 1] >> bit) & 1) << (2 * bit)
    return np.argsort(code, kind="stable")


def clip_positions(pos_px: np.ndarray, obj_shape: tuple[int, int], n: int) -> None:
    """Keep every window inside the object (in place)."""
    lo = n // 2 + 0.5
    pos_px[:, 0] = np.clip(pos_px[:, 0], lo, obj_shape[0] - n + n // 2 - 1.5)
    pos_px[:, 1] = np.clip(pos_px[:, 1], lo, obj_shape[1] - n + n // 2 - 1.5)


# -- aberration surface -------------------------------------------------------------------------

def aberration_basis(n: int, sampling_A: float, wavelength_A: float, order: int) -> tuple[np.ndarray, list[tuple[int, int, str]]]:
    """Low-order aberration basis on the window's Fourier grid.

    Terms ``alpha^p cos(m phi)`` and ``alpha^p sin(m phi)`` for ``p = 2 .. order``,
    ``m = p, p - 2, ... >= 0`` (defocus and two-fold astigmatism at ``p = 2``, coma and three-fold
    at 3, spherical aberration and friends at 4), plus a constant; tilt (``p = 1``) is left out
    because it trades with the scan positions. ``alpha`` in radians.

    Returns
    -------
    basis : ndarray (nterms, n, n), float64, scaled to ``2 pi / wavelength`` (chi in radians per
        coefficient in Angstrom)
    terms : list of (p, m, "cos"|"sin")
    """
    kx, ky = physics.spatial_frequencies((n, n), sampling_A)
    alpha = wavelength_A * np.sqrt(kx**2 + ky**2)
    phi = np.arctan2(ky + 0 * kx, kx + 0 * ky)
    terms = [(0, 0, "cos")]
    for p in range(2, order + 1):
        for m in range(p, -1, -2):
            terms.append((p, m, "cos"))
            if m > 0:
                terms.append((p, m, "sin"))
    out = np.empty((len(terms), n, n))
    for t, (p, m, kind) in enumerate(terms):
        f = np.cos(m * phi) if kind == "cos" else np.sin(m * phi)
        out[t] = (2 * np.pi / wavelength_A) * alpha**p / max(p, 1) * f
    out[0] = 1.0
    return out, terms


def fit_aberration_surface(probe_k: np.ndarray, chi: np.ndarray, basis: np.ndarray, mask: np.ndarray,
                           amplitude: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Smooth the probe's Fourier phase by a least-squares fit of the aberration basis.

    The residual phase ``angle(P_c exp(i chi))`` (small once ``chi`` is close) of the centred
    Fourier probe ``P_c`` is fitted, weighted by ``|P_c|^2``, over ``mask``; the new probe is
    ``amplitude * exp(-i chi_new)`` (re-shifted to the window centre).

    Returns
    -------
    probe_k : ndarray complex64 (n, n)
    chi_new : ndarray float64 (n, n)
    """
    n = probe_k.shape[0]
    c = centring_ramp(n)
    pc = probe_k.astype(np.complex128) * c
    r = np.angle(pc * np.exp(1j * chi))
    w = np.abs(pc[mask])
    a = basis[:, mask].T * w[:, None]
    coef, *_ = np.linalg.lstsq(a, r[mask] * w, rcond=None)
    chi_new = chi - np.tensordot(coef, basis, axes=1)
    out = amplitude * np.exp(-1j * chi_new) * np.conj(c)
    return out.astype(np.complex64), chi_new


# -- reference implementation (numpy, complex128) -------------------------------------------------

def reference_patterns(potential_VA: np.ndarray, probe_k: np.ndarray, positions_px: np.ndarray,
                       sigma: float, h: np.ndarray) -> np.ndarray:
    """Model patterns ``|FFT_ortho(exit)|^2`` in numpy FFT order, straight numpy (slow, exact).

    Used by the tests to check the engine's kernels and its hand-derived gradient.
    """
    n = probe_k.shape[0]
    k = np.fft.fftfreq(n)
    out = np.empty((len(positions_px), n, n))
    for b, p in enumerate(positions_px):
        r = np.floor(p + 0.5)
        x0, y0 = (r.astype(int) - n // 2)
        f = p - r
        ramp = np.exp(-2j * np.pi * (k[:, None] * f[0] + k[None, :] * f[1]))
        psi = np.fft.ifft2(probe_k * ramp, norm="ortho")
        for s in range(potential_VA.shape[0]):
            phi = psi * np.exp(1j * sigma * potential_VA[s, x0:x0 + n, y0:y0 + n])
            if s < potential_VA.shape[0] - 1:
                psi = np.fft.ifft2(np.fft.fft2(phi, norm="ortho") * h, norm="ortho")
        out[b] = np.abs(np.fft.fft2(phi, norm="ortho")) ** 2
    return out


def amplitude_loss(model_patterns: np.ndarray, amplitudes: np.ndarray) -> float:
    """``sum (sqrt(model) - a)^2``."""
    return float(np.sum((np.sqrt(model_patterns) - amplitudes) ** 2))


def poisson_loss(model_patterns: np.ndarray, amplitudes: np.ndarray) -> float:
    """``sum (model - a^2 log model)`` (the engine's Poisson loss, constant terms dropped)."""
    return float(np.sum(model_patterns - amplitudes**2 * np.log(model_patterns + 1e-12)))
