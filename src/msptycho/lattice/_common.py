"""Shared helpers of :mod:`msptycho.lattice`: input checks, the real/reciprocal grid, Bragg filters.

Grid convention (as ``workflow/schemas/datacube.md``): a volume is indexed ``[z, x, y]`` (slice,
then the two real-space axes); pixel ``(i, j)`` of a slice sits at
``(origin_A[0] + i * dx_A, origin_A[1] + j * dy_A)``. Spatial frequencies follow numpy
(``numpy.fft.fftfreq``), in cycles per Angstrom (1/A), so a lattice fringe ``cos(2 pi g . r)``
puts peaks at ``+g`` and ``-g``.
"""

from __future__ import annotations

import numpy as np

from ..io.datacube import InputError


def as_sampling(sampling_A) -> tuple[float, float]:
    """``(dx_A, dy_A)`` from a scalar or a pair; raises :class:`InputError` unless positive and finite."""
    s = np.atleast_1d(np.asarray(sampling_A, dtype=np.float64)).ravel()
    if s.size == 1:
        s = np.repeat(s, 2)
    if s.size != 2 or not np.all(np.isfinite(s)) or np.any(s <= 0):
        raise InputError(f"lattice analysis: sampling_A must be one or two positive finite numbers "
                         f"(Angstrom per pixel), got {sampling_A!r}.")
    return float(s[0]), float(s[1])


def as_origin(origin_A) -> tuple[float, float]:
    o = np.asarray(origin_A, dtype=np.float64).ravel()
    if o.size != 2 or not np.all(np.isfinite(o)):
        raise InputError(f"lattice analysis: origin_A must be two finite numbers (x, y in Angstrom), got {origin_A!r}.")
    return float(o[0]), float(o[1])


def check_volume(volume, name: str = "volume") -> np.ndarray:
    """Return ``volume`` as a float64 array ``(nz, nx, ny)`` (a 2-D image becomes one slice).

    Raises :class:`InputError` for the wrong number of dimensions, tiny slices, NaN/inf, or a
    constant volume (nothing to analyse).
    """
    v = np.asarray(volume)
    if v.ndim == 2:
        v = v[None]
    if v.ndim != 3:
        raise InputError(f"lattice analysis: {name} must be a potential volume (nz, nx, ny) or one slice "
                         f"(nx, ny), got an array of shape {np.shape(volume)}.")
    if v.shape[0] < 1 or v.shape[1] < 16 or v.shape[2] < 16:
        raise InputError(f"lattice analysis: {name} must have at least one slice of 16 x 16 pixels, got shape {v.shape}.")
    if np.iscomplexobj(v):
        raise InputError(f"lattice analysis: {name} must be a real potential (V*A), got complex values.")
    v = v.astype(np.float64, copy=False)
    if not np.all(np.isfinite(v)):
        raise InputError(f"lattice analysis: {name} contains NaN or infinite values; expected a finite potential.")
    if float(np.ptp(v)) == 0.0:
        raise InputError(f"lattice analysis: {name} is constant; it holds no lattice to analyse.")
    return v


def check_g_vectors(g_vectors_inv_A, n: int | None = 2, name: str = "g_vectors_inv_A") -> np.ndarray:
    """``(n, 2)`` float array of reciprocal-lattice vectors (1/A), non-zero and finite."""
    g = np.asarray(g_vectors_inv_A, dtype=np.float64)
    if g.ndim == 1 and g.size == 2:
        g = g[None]
    if g.ndim != 2 or g.shape[1] != 2 or (n is not None and g.shape[0] != n):
        want = f"{n} vectors (gx, gy)" if n is not None else "vectors (gx, gy)"
        raise InputError(f"lattice analysis: {name} must be {want} in 1/A, got shape {np.shape(g_vectors_inv_A)}.")
    if not np.all(np.isfinite(g)) or np.any(np.hypot(g[:, 0], g[:, 1]) == 0):
        raise InputError(f"lattice analysis: {name} must be finite and non-zero, got {g.tolist()}.")
    if g.shape[0] == 2 and abs(np.linalg.det(g)) < 1e-3 * np.prod(np.hypot(g[:, 0], g[:, 1])):
        raise InputError(f"lattice analysis: {name} must be two non-collinear vectors, got {g.tolist()}.")
    return g


def frequencies(shape: tuple[int, int], sampling_A) -> tuple[np.ndarray, np.ndarray]:
    """Spatial frequencies ``(kx[:, None], ky[None, :])`` in 1/A of the numpy FFT of an ``[x, y]`` image."""
    dx, dy = as_sampling(sampling_A)
    kx = np.fft.fftfreq(shape[0], dx)[:, None]
    ky = np.fft.fftfreq(shape[1], dy)[None, :]
    return kx, ky


def coordinates(shape: tuple[int, int], sampling_A, origin_A=(0.0, 0.0)) -> tuple[np.ndarray, np.ndarray]:
    """Pixel positions ``(x[:, None], y[None, :])`` in Angstrom."""
    dx, dy = as_sampling(sampling_A)
    ox, oy = as_origin(origin_A)
    return ox + dx * np.arange(shape[0])[:, None], oy + dy * np.arange(shape[1])[None, :]


def default_mask_sigma(g_vectors_inv_A, given: float | None = None, fraction: float = 0.1) -> float:
    """Gaussian Bragg-mask width (1/A): ``given`` if it is not None, else ``fraction`` (default
    10 %) of the shortest ``|g|``."""
    if given is not None:
        return float(given)
    g = np.atleast_2d(np.asarray(g_vectors_inv_A, dtype=np.float64))
    return fraction * float(np.min(np.hypot(g[:, 0], g[:, 1])))


def normalized_gaussian(values, weights, sigma_px):
    """Normalised convolution: ``G * (weights values) / G * weights`` with a Gaussian ``G`` of
    standard deviations ``sigma_px`` (pixels, one per axis; 0 leaves an axis alone), so that
    pixels of small or zero weight neither pull the average down nor count."""
    from scipy import ndimage
    w = np.asarray(weights, dtype=np.float64)
    num = ndimage.gaussian_filter(np.asarray(values, dtype=np.float64) * w, sigma_px)
    return num / np.maximum(ndimage.gaussian_filter(w, sigma_px), np.finfo(np.float64).tiny)


def psf_sigma_A(mask_sigma_inv_A: float) -> float:
    """Real-space standard deviation (A) of the point spread of a Gaussian Bragg mask of width
    ``mask_sigma_inv_A`` (1/A): ``1 / (2 pi sigma_k)``. This is the resolution of GPA maps."""
    return 1.0 / (2.0 * np.pi * float(mask_sigma_inv_A))


def bragg_filter(spectrum: np.ndarray, g_inv_A, mask_sigma_inv_A: float, sampling_A) -> np.ndarray:
    """Complex Bragg-filtered images of one reflection.

    Parameters
    ----------
    spectrum : complex ndarray (..., nx, ny)
        ``numpy.fft.fft2`` of the slices (over the last two axes).
    g_inv_A : (2,) array
        Centre of the Gaussian mask, 1/A.
    mask_sigma_inv_A : float
        Standard deviation of the Gaussian mask, 1/A.
    sampling_A : float or (float, float)
        Real-space pixel size, A.

    Returns
    -------
    complex ndarray (..., nx, ny)
        ``ifft2(spectrum * exp(-|k - g|^2 / (2 sigma^2)))``: the ``+g`` Fourier component of the
        image, ``H_g(r) exp(2 pi i g . r + i P_g(r))``.
    """
    kx, ky = frequencies(spectrum.shape[-2:], sampling_A)
    g = np.asarray(g_inv_A, dtype=np.float64)
    mask = np.exp(-((kx - g[0]) ** 2 + (ky - g[1]) ** 2) / (2.0 * mask_sigma_inv_A**2))
    return np.fft.ifft2(spectrum * mask, axes=(-2, -1))


def local_frequency(bragg: np.ndarray, sampling_A) -> tuple[np.ndarray, np.ndarray]:
    """Local spatial frequency ``(kx, ky)`` (1/A) of complex Bragg-filtered images ``(..., nx, ny)``.

    Central differences of the phase taken as ``angle(B[i+1] * conj(B[i-1])) / (2 * 2 pi dx)``:
    no phase unwrapping is needed (exact for a plane wave as long as the phase advances by less than
    pi over two pixels, i.e. ``|g| * 2 * dx < 0.5``). The edges wrap around (periodic FFT images).
    """
    dx, dy = as_sampling(sampling_A)
    kx = np.angle(np.roll(bragg, -1, axis=-2) * np.conj(np.roll(bragg, 1, axis=-2))) / (4.0 * np.pi * dx)
    ky = np.angle(np.roll(bragg, -1, axis=-1) * np.conj(np.roll(bragg, 1, axis=-1))) / (4.0 * np.pi * dy)
    return kx, ky


def lattice_level(amplitude: np.ndarray, percentile: float = 50.0) -> float:
    """A robust "typical lattice amplitude": the ``percentile`` of the amplitude over pixels above
    Otsu's threshold (so vacuum does not count). Zero if the amplitude is identically zero."""
    a = np.asarray(amplitude, dtype=np.float64).ravel()
    if not np.any(a > 0):
        return 0.0
    from skimage.filters import threshold_otsu
    t = threshold_otsu(a)
    sel = a[a > t]
    if sel.size == 0:
        sel = a
    return float(np.percentile(sel, percentile))
