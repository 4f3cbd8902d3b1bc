"""Sublattice order parameter and the core's 3-D position.

The order parameter of the paper's Methods is the ratio of the magnitudes of Fourier-filtered
images from the first- and second-neighbour reflections. For fluorite [001] those are ``{200}``
(``4 f_cation - 8 f_F``: nearly zero in CaF2, strong where Sr/Yb dominate) and ``{220}``
(``4 f_cation + 8 f_F``, strong everywhere):

``order(r) = (|B_200| + |B_020|) / (|B_220| + |B_-220|)`` per slice,

defined where the ``{220}`` amplitude is above ``amplitude_threshold`` times its typical lattice
level (elsewhere NaN). The core is where the order parameter exceeds a threshold (Otsu's over all
particle pixels of all slices, or a configured value).

**Per-slice baseline** (``baseline="edge"``, the default): the shell's ``{200}`` is a near
cancellation of cation and anion columns, so it changes strongly from slice to slice when the slice
thickness is not a multiple of the stacking period (a 12 A slice holds 2 or 3 cations and 4 or 5
F per column: on the simulator's true volume the shell's order parameter is 0.05 in one slice and
0.33 in the next, the core's 0.35-0.46). The threshold is therefore applied to the *excess* over
each slice's shell level, the median order parameter in a ring ``baseline_band_A`` (A) inside the
particle's edge, which is shell wherever the shell is thicker than the ring. ``baseline="none"``
thresholds the order parameter itself, as the paper.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..io.datacube import InputError
from ._common import (as_origin, as_sampling, bragg_filter, check_g_vectors, check_volume, lattice_level,
                      psf_sigma_A)


@dataclass
class CoreResult:
    """Order parameter and core of a volume (maps ``(nz, nx, ny)``).

    Attributes
    ----------
    order : float32 ndarray
        Order parameter (dimensionless), NaN outside the particle.
    particle_mask : bool ndarray
        Where the {220} amplitude is above ``amplitude_threshold`` of its lattice level.
    core_mask : bool ndarray
        ``order >= threshold`` (then cleaned, see :func:`core_from_volume`).
    threshold : float
        Threshold used on the order parameter.
    threshold_method : str
        ``"otsu"`` or ``"given"``.
    baseline : ndarray (nz,)
        Per-slice shell level subtracted before thresholding (zeros with ``baseline="none"``; NaN
        where a slice has no particle).
    centroid_A : (float, float)
        Core centroid (x, y), A.
    centroid_slice : float
        Core centroid along the slices (fractional slice index, 0-based).
    n_voxels : int
        Voxels in the core.
    g200_inv_A, g220_inv_A : (2, 2)
        Reflections used, 1/A.
    mask_sigma_inv_A, resolution_A : float
    sampling_A, origin_A : (float, float)
    """

    order: np.ndarray
    particle_mask: np.ndarray
    core_mask: np.ndarray
    threshold: float
    threshold_method: str
    baseline: np.ndarray
    centroid_A: tuple[float, float]
    centroid_slice: float
    n_voxels: int
    g200_inv_A: np.ndarray
    g220_inv_A: np.ndarray
    mask_sigma_inv_A: float
    resolution_A: float
    sampling_A: tuple[float, float]
    origin_A: tuple[float, float] = (0.0, 0.0)


def order_parameter(volume, sampling_A, g200_inv_A, g220_inv_A, *, mask_sigma_inv_A: float | None = None,
                    amplitude_threshold: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """Order parameter per slice (module doc).

    Parameters
    ----------
    volume : ndarray (nz, nx, ny)
        Projected potential, V*A.
    sampling_A : float or (float, float)
        Pixel size, A.
    g200_inv_A, g220_inv_A : (2, 2)
        The two first-neighbour and two second-neighbour reflections, 1/A.
    mask_sigma_inv_A : float, optional
        Gaussian Bragg-mask width, 1/A (default 20 % of ``|g200|``, a resolution of about 2.2 A).
    amplitude_threshold : float
        Fraction of the typical {220} amplitude below which a pixel is outside the particle.

    Returns
    -------
    order : ndarray (nz, nx, ny) float64, NaN outside the particle
    particle : ndarray of bool (nz, nx, ny)
    """
    v = check_volume(volume)
    g2 = check_g_vectors(g200_inv_A, name="g200_inv_A")
    g4 = check_g_vectors(g220_inv_A, name="g220_inv_A")
    sigma = 0.2 * float(np.min(np.hypot(g2[:, 0], g2[:, 1]))) if mask_sigma_inv_A is None else float(mask_sigma_inv_A)
    a200 = np.empty(v.shape)
    a220 = np.empty(v.shape)
    for z in range(v.shape[0]):
        spec = np.fft.fft2(v[z])
        a200[z] = sum(np.abs(bragg_filter(spec, g, sigma, sampling_A)) for g in g2)
        a220[z] = sum(np.abs(bragg_filter(spec, g, sigma, sampling_A)) for g in g4)
    level = lattice_level(a220)
    if not level > 0:
        raise InputError("lattice analysis: the {220} reflections have no amplitude; the volume shows no lattice.")
    particle = a220 >= amplitude_threshold * level
    if not particle.any():
        raise InputError("lattice analysis: no pixel has {220} amplitude above amplitude_threshold; the volume shows no lattice.")
    order = np.where(particle, a200 / np.maximum(a220, np.finfo(np.float64).tiny), np.nan)
    return order, particle


def slice_baseline(order, particle, sampling_A, band_A=(3.0, 10.0)) -> np.ndarray:
    """Per-slice shell level of the order parameter: its median over particle pixels between
    ``band_A[0]`` and ``band_A[1]`` (A) inside the particle's edge (NaN for slices without any)."""
    dx, dy = as_sampling(sampling_A)
    out = np.full(order.shape[0], np.nan)
    for z in range(order.shape[0]):
        if not particle[z].any():
            continue
        dist = ndimage.distance_transform_edt(np.pad(particle[z], 1), sampling=(dx, dy))[1:-1, 1:-1]
        ring = particle[z] & (dist > band_A[0]) & (dist <= band_A[1])
        vals = order[z][ring]
        vals = vals[np.isfinite(vals)]
        if vals.size:
            out[z] = float(np.median(vals))
    return out


def core_from_volume(volume, sampling_A, g200_inv_A, g220_inv_A, *, threshold: float | None = None,
                     baseline: str = "edge", baseline_band_A=(3.0, 10.0), mask_sigma_inv_A: float | None = None,
                     amplitude_threshold: float = 0.3, largest_component: bool = True,
                     origin_A=(0.0, 0.0)) -> CoreResult:
    """3-D core mask and centroid from the order parameter.

    Parameters
    ----------
    volume, sampling_A, g200_inv_A, g220_inv_A, mask_sigma_inv_A, amplitude_threshold
        As :func:`order_parameter`.
    threshold : float, optional
        Threshold on the order parameter (minus the baseline); default Otsu's threshold over all
        particle voxels.
    baseline : {"edge", "none"}
        Subtract each slice's shell level (module doc) before thresholding, or not (the paper).
    baseline_band_A : (float, float)
        Ring inside the particle's edge (A) whose median order parameter is the shell level.
    largest_component : bool
        Keep only the largest 3-D connected component (face connectivity) and fill its holes per slice.
    origin_A : (float, float)
        Position of pixel (0, 0), A.

    Returns
    -------
    CoreResult

    Raises
    ------
    InputError
        No lattice, or the order parameter does not separate a core (empty core mask).
    """
    sampling = as_sampling(sampling_A)
    origin = as_origin(origin_A)
    order, particle = order_parameter(volume, sampling, g200_inv_A, g220_inv_A, mask_sigma_inv_A=mask_sigma_inv_A,
                                      amplitude_threshold=amplitude_threshold)
    if baseline == "edge":
        base = slice_baseline(order, particle, sampling, baseline_band_A)
        score = order - np.nan_to_num(base, nan=0.0)[:, None, None]
    elif baseline == "none":
        base = np.zeros(order.shape[0])
        score = order
    else:
        raise InputError(f"lattice analysis: baseline must be 'edge' or 'none', got {baseline!r}.")
    vals = score[particle]
    if threshold is None:
        from skimage.filters import threshold_otsu
        if np.ptp(vals) == 0:
            raise InputError("lattice analysis: the order parameter is uniform over the particle; no core to separate.")
        thr, method = float(threshold_otsu(vals)), "otsu"
    else:
        thr, method = float(threshold), "given"
    core = particle & (np.nan_to_num(score, nan=-np.inf) >= thr)
    if largest_component and core.any():
        lab, n = ndimage.label(core)
        if n > 1:
            sizes = ndimage.sum_labels(core, lab, index=np.arange(1, n + 1))
            core = lab == (1 + int(np.argmax(sizes)))
        core = np.stack([ndimage.binary_fill_holes(c) for c in core])
    if not core.any():
        raise InputError(f"lattice analysis: no voxel has an order parameter above the threshold {thr:.4g}; no core found.")
    idx = np.argwhere(core)
    cx = origin[0] + sampling[0] * float(idx[:, 1].mean())
    cy = origin[1] + sampling[1] * float(idx[:, 2].mean())
    g2 = np.asarray(g200_inv_A, dtype=np.float64)
    sigma = 0.2 * float(np.min(np.hypot(g2[:, 0], g2[:, 1]))) if mask_sigma_inv_A is None else float(mask_sigma_inv_A)
    return CoreResult(order=order.astype(np.float32), particle_mask=particle, core_mask=core, threshold=thr,
                      threshold_method=method, baseline=base, centroid_A=(cx, cy), centroid_slice=float(idx[:, 0].mean()),
                      n_voxels=int(core.sum()), g200_inv_A=g2, g220_inv_A=np.asarray(g220_inv_A, dtype=np.float64),
                      mask_sigma_inv_A=sigma, resolution_A=psf_sigma_A(sigma), sampling_A=sampling, origin_A=origin)
