"""Orthogonal HAADF scan pair with known drift (input of the drift-correction rule).

The HAADF image is modelled as incoherent Z contrast: every atom contributes ``Z**exponent``
spread by a Gaussian point-spread function (the in-focus probe intensity plus source size), no
channelling. Two frames are scanned one after the other, the first with its fast axis along x
(0 deg), the second along y (90 deg). The specimen drifts during both by a linear velocity plus a
smooth non-linear term (two sinusoids per axis with seeded phases), so pixel ``(i, j)`` of a frame
records the object at ``origin + (i, j) * pixel + drift(t_ij)``. Shot noise is Poisson at
``haadf_peak_counts`` for the brightest column.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter, map_coordinates

from .presets import SimulationParameters

_FINE_A = 0.1


@dataclass
class ScanPair:
    """Two HAADF frames of the same area with orthogonal fast axes.

    Attributes
    ----------
    images : ndarray (2, nx, ny), float32
        Counts; ``images[k][i, j]`` is the pixel at nominal position ``origin_A + (i, j) * pixel_size_A``.
    fast_axis_deg : (float, float)
        0 (fast axis along x, index i) and 90 (along y, index j).
    pixel_size_A : float
    origin_A : (float, float)
        Nominal position of pixel [0, 0] in the scan frame, Angstrom.
    dwell_s : float
        Dwell time per pixel, seconds.
    time_s : ndarray (2, nx, ny)
        Acquisition time of each pixel from the start of the first frame, seconds.
    drift_A : ndarray (2, nx, ny, 2)
        True drift (x, y) at each pixel: where the object point recorded there actually sat
        relative to the nominal position (the truth; not for the correction itself).
    """

    images: np.ndarray
    fast_axis_deg: tuple[float, float]
    pixel_size_A: float
    origin_A: tuple[float, float]
    dwell_s: float
    time_s: np.ndarray
    drift_A: np.ndarray


def drift_function(params: SimulationParameters, rng: np.random.Generator):
    """Return ``drift(t_frames) -> (N, 2)`` Angstrom, with ``t_frames`` in units of one frame time."""
    v = np.asarray(params.haadf_drift_A_per_frame, dtype=float)
    amp = params.haadf_drift_nonlinear_A
    freqs = np.array([0.6, 1.7])  # cycles per frame
    phases = rng.uniform(0, 2 * np.pi, size=(2, 2))
    weights = np.array([1.0, 0.4])

    def drift(t):
        t = np.asarray(t, dtype=float)
        out = v[None, :] * t[:, None]
        for axis in range(2):
            s = np.sum(weights[None, :] * (np.sin(2 * np.pi * freqs[None, :] * t[:, None] + phases[axis][None, :])
                                           - np.sin(phases[axis][None, :])), axis=1)
            out[:, axis] += amp * s / weights.sum()
        return out

    return drift


def incoherent_image(positions_xy_A, Z, origin_A, shape, sampling_A, fwhm_A, exponent):
    """Noise-free incoherent Z-contrast image on a grid (arbitrary units, [x, y])."""
    img = np.zeros(shape, dtype=np.float64)
    px = (positions_xy_A[:, 0] - origin_A[0]) / sampling_A
    py = (positions_xy_A[:, 1] - origin_A[1]) / sampling_A
    i0 = np.floor(px).astype(int)
    j0 = np.floor(py).astype(int)
    fx = px - i0
    fy = py - j0
    w = np.asarray(Z, dtype=float) ** exponent
    for di, wx in ((0, 1 - fx), (1, fx)):
        for dj, wy in ((0, 1 - fy), (1, fy)):
            ii = i0 + di
            jj = j0 + dj
            ok = (ii >= 0) & (ii < shape[0]) & (jj >= 0) & (jj < shape[1])
            np.add.at(img, (ii[ok], jj[ok]), (w * wx * wy)[ok])
    sigma_px = fwhm_A / 2.3548 / sampling_A
    return gaussian_filter(img, sigma_px, mode="constant")


def simulate_scan_pair(params: SimulationParameters, positions_A: np.ndarray, Z: np.ndarray,
                       rng: np.random.Generator) -> ScanPair:
    """Simulate the orthogonal HAADF pair of a sample.

    Parameters
    ----------
    params : SimulationParameters
    positions_A : ndarray (N, 3)
        Atom positions, Angstrom.
    Z : ndarray (N,)
    rng : numpy Generator

    Returns
    -------
    ScanPair
    """
    p = params
    nx, ny = (int(n) for n in p.haadf_shape_px)
    cx, cy, _ = p.particle_center_A
    origin = (cx - (nx - 1) / 2 * p.haadf_pixel_A, cy - (ny - 1) / 2 * p.haadf_pixel_A)
    drift = drift_function(p, rng)
    # drift stays within a few A: image a field with margin on a fine grid
    vmax = float(np.abs(p.haadf_drift_A_per_frame).max()) * 2 + 2 * p.haadf_drift_nonlinear_A + 5.0
    f_origin = (origin[0] - vmax, origin[1] - vmax)
    f_shape = (int(np.ceil(((nx - 1) * p.haadf_pixel_A + 2 * vmax) / _FINE_A)) + 1,
               int(np.ceil(((ny - 1) * p.haadf_pixel_A + 2 * vmax) / _FINE_A)) + 1)
    fine = incoherent_image(positions_A[:, :2], Z, f_origin, f_shape, _FINE_A, p.haadf_probe_fwhm_A, p.haadf_z_exponent)
    scale = p.haadf_peak_counts / np.percentile(fine, 99.9)
    ii, jj = np.meshgrid(np.arange(nx), np.arange(ny), indexing="ij")
    npx = nx * ny
    images, times, drifts = [], [], []
    for frame, fast in enumerate((0, 1)):
        order = (jj * nx + ii) if fast == 0 else (ii * ny + jj)
        t_frames = frame + order.ravel() / npx
        d = drift(t_frames).reshape(nx, ny, 2)
        xs = origin[0] + ii * p.haadf_pixel_A + d[..., 0]
        ys = origin[1] + jj * p.haadf_pixel_A + d[..., 1]
        coords = np.stack([(xs - f_origin[0]) / _FINE_A, (ys - f_origin[1]) / _FINE_A])
        expected = map_coordinates(fine, coords, order=1, mode="nearest") * scale
        images.append(rng.poisson(np.clip(expected, 0, None)).astype(np.float32))
        times.append((t_frames * npx * p.haadf_dwell_s).reshape(nx, ny))
        drifts.append(d)
    return ScanPair(images=np.stack(images), fast_axis_deg=(0.0, 90.0), pixel_size_A=float(p.haadf_pixel_A),
                    origin_A=(float(origin[0]), float(origin[1])), dwell_s=float(p.haadf_dwell_s),
                    time_s=np.stack(times), drift_A=np.stack(drifts).astype(np.float32))
