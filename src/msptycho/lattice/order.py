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

**Why the shell flickers, and what is done about it.** In fluorite [001] projection the {200}
amplitude of a column is ``n_cation f_cation - n_F f_F`` per unit cell; in CaF2 the two nearly
cancel, so one cation or anion layer (spacing a/4 = 1.37 A) more or less in a 12 A slice changes the
shell's {200} by a large fraction. Which layers fall into a slice depends on sub-Angstrom
z-displacements: the core's misfit field (``u ~ eps R^3 / r^2``, up to 0.7 A) moves layers across
slice boundaries, so the shell above and below the core has a different {200} level from the shell
at the particle's edge (on the simulator's true volume a blob of excess 0.2 over a 30 A wide disc
above the core, in a slice that holds at most 3.5 A of core). Three measures, each configurable:

* ``slice_mixing`` ``w`` (default 0.25): the order parameter of slice ``z`` is computed from the
  complex Bragg images of ``w V[z-1] + (1 - 2w) V[z] + w V[z+1]`` (the Fourier filter is linear, so
  this equals mixing the filtered images). A layer that crosses the boundary between two slices
  leaves one and enters the other; with the binomial ``(1/4, 1/2, 1/4)`` its effect on the mixed
  slice drops from 1 to 1/4, while the core's axial profile is blurred by a kernel of 0.7 slice
  (standard deviation). The first and last slice have one neighbour and are left unmixed.
* ``smoothing_A`` (default 2.5 A, half the CaF2 lattice parameter: the spacing of the projected
  cation columns): both magnitudes are smoothed in-plane (normalised Gaussian inside the particle)
  before the ratio, which averages the random Sr/Yb occupancy of the core columns and the
  column-scale ripple of the filtered magnitudes.
* ``edge_exclusion_A`` (default 2 x the filter resolution): the ratio of two Bragg-filtered
  magnitudes is biased where the filter's point spread reaches the vacuum, so pixels that close to
  the particle's edge are not core candidates (a core touching the surface loses that rim).

**Threshold** (``threshold_method="contrast"``, the default). The core/shell contrast of the
excess also flickers (the core's own layers, a = 5.70 A, are counted differently per slice), so a
single Otsu threshold over all slices cuts one slice at 30 % core and the next at 70 %. Instead the
full-core contrast ``C`` is measured as the largest per-slice 99th percentile of the excess (the
excess where a column is entirely core; this needs a core at least as thick as one slice), and each
slice is segmented by hysteresis: a region is core when it reaches ``seed_fraction * C`` somewhere
(a column mostly core) and extends to where the excess falls below ``grow_fraction * C``. The truth
(:mod:`msptycho.simulate.truth`) calls a pixel core when at least two of three planes of the slice
are, i.e. a column at least about half core; ``grow_fraction`` = 0.4 is a little below one half to
make up for the ``slice_mixing`` kernel, which lowers the excess of the slices at the core's top
and bottom. ``threshold_method="otsu"`` is the former single Otsu threshold; a given ``threshold``
overrides both. The mask is then opened per slice with a disc of ``opening_A`` (default twice the
filter resolution, 4.4 A): the order parameter also rises in narrow features around dislocation
cores, where both Bragg magnitudes are distorted over about the filter resolution, and those grew
into the core of the simulator's cracked particle as an appendage 8 A wide (a compact core loses
only detail finer than the filter resolves).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..io.datacube import InputError
from ._common import (as_origin, as_sampling, bragg_filter, check_g_vectors, check_volume, default_mask_sigma,
                      lattice_level, normalized_gaussian, psf_sigma_A)


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
        Threshold used on the order parameter minus the baseline (for ``"contrast"`` the growth
        level of the hysteresis).
    threshold_method : str
        ``"otsu"``, ``"given"`` or ``"contrast: ..."`` (with the full-core excess and fractions).
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


def mix_slices(volume, weight: float) -> np.ndarray:
    """``weight * V[z-1] + (1 - 2 weight) * V[z] + weight * V[z+1]`` per slice (float64); the first
    and last slice are returned unmixed."""
    v = np.asarray(volume, dtype=np.float64)
    w = float(weight)
    if not 0.0 <= w <= 1.0 / 3.0:
        raise InputError(f"lattice analysis: slice_mixing must be between 0 and 1/3, got {weight!r}.")
    if w == 0.0 or v.shape[0] < 2:
        return v
    out = (1.0 - 2.0 * w) * v
    out[1:] += w * v[:-1]
    out[:-1] += w * v[1:]
    out[0] = v[0]  # the end slices have one neighbour: left as they are (an asymmetric mix
    out[-1] = v[-1]  # would move their content by w / (1 - w) slice towards the inside)
    return out


def _smooth_in(values, mask, sigma_px):
    """Normalised in-plane Gaussian smoothing of ``values`` inside ``mask`` (per slice); NaN outside."""
    if min(sigma_px) > 0:
        values = normalized_gaussian(np.where(mask, values, 0.0), mask, (0, sigma_px[0], sigma_px[1]))
    return np.where(mask, values, np.nan)


def order_parameter(volume, sampling_A, g200_inv_A, g220_inv_A, *, mask_sigma_inv_A: float | None = None,
                    amplitude_threshold: float = 0.3, smoothing_A: float = 0.0,
                    slice_mixing: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
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
    smoothing_A : float
        In-plane Gaussian smoothing (standard deviation, A) of both magnitudes inside the particle
        before their ratio (0: none).
    slice_mixing : float
        Weight ``w`` of each neighbouring slice in the volume the magnitudes are computed from
        (:func:`mix_slices`; 0: none, 0.25: binomial). The particle mask is that of the mixed
        {220} magnitude, the support of the ratio.

    Returns
    -------
    order : ndarray (nz, nx, ny) float64, NaN outside the particle
    particle : ndarray of bool (nz, nx, ny)
    """
    v = check_volume(volume)
    g2 = check_g_vectors(g200_inv_A, name="g200_inv_A")
    g4 = check_g_vectors(g220_inv_A, name="g220_inv_A")
    sampling = as_sampling(sampling_A)
    if not (np.isfinite(smoothing_A) and smoothing_A >= 0):
        raise InputError(f"lattice analysis: smoothing_A must be a non-negative length in Angstrom, got {smoothing_A!r}.")
    sigma = default_mask_sigma(g2, mask_sigma_inv_A, fraction=0.2)
    vm = mix_slices(v, slice_mixing)
    a200 = np.empty(v.shape)
    a220 = np.empty(v.shape)
    for z in range(v.shape[0]):
        spec = np.fft.fft2(vm[z])
        a200[z] = sum(np.abs(bragg_filter(spec, g, sigma, sampling)) for g in g2)
        a220[z] = sum(np.abs(bragg_filter(spec, g, sigma, sampling)) for g in g4)
    level = lattice_level(a220)
    if not level > 0:
        raise InputError("lattice analysis: the {220} reflections have no amplitude; the volume shows no lattice.")
    particle = a220 >= amplitude_threshold * level
    if not particle.any():
        raise InputError("lattice analysis: no pixel has {220} amplitude above amplitude_threshold; the volume shows no lattice.")
    px = (float(smoothing_A) / sampling[0], float(smoothing_A) / sampling[1])
    a200 = _smooth_in(a200, particle, px)
    a220 = _smooth_in(a220, particle, px)
    order = np.where(particle, a200 / np.maximum(np.nan_to_num(a220), np.finfo(np.float64).tiny), np.nan)
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


def _largest_component(core):
    lab, n = ndimage.label(core)
    if n > 1:
        sizes = ndimage.sum_labels(core, lab, index=np.arange(1, n + 1))
        core = lab == (1 + int(np.argmax(sizes)))
    return np.stack([ndimage.binary_fill_holes(c) for c in core])


def core_from_volume(volume, sampling_A, g200_inv_A, g220_inv_A, *, threshold: float | None = None,
                     threshold_method: str = "contrast", grow_fraction: float = 0.4, seed_fraction: float = 0.7,
                     baseline: str = "edge", baseline_band_A=(3.0, 10.0), mask_sigma_inv_A: float | None = None,
                     amplitude_threshold: float = 0.3, smoothing_A: float = 2.5, slice_mixing: float = 0.25,
                     edge_exclusion_A: float | None = None, opening_A: float | None = None,
                     largest_component: bool = True, origin_A=(0.0, 0.0)) -> CoreResult:
    """3-D core mask and centroid from the order parameter (module doc).

    Parameters
    ----------
    volume, sampling_A, g200_inv_A, g220_inv_A, mask_sigma_inv_A, amplitude_threshold, smoothing_A, slice_mixing
        As :func:`order_parameter`.
    threshold : float, optional
        A single threshold on the order parameter (minus the baseline); overrides ``threshold_method``.
    threshold_method : {"contrast", "otsu"}
        ``"contrast"``: per-slice hysteresis between ``grow_fraction`` and ``seed_fraction`` of the
        full-core contrast (module doc; needs ``baseline="edge"``); ``"otsu"``: Otsu's threshold
        over all candidate voxels (with ``baseline="none"`` the paper's method).
    grow_fraction, seed_fraction : float
        Fractions of the full-core contrast (dimensionless, ``0 < grow <= seed``).
    baseline : {"edge", "none"}
        Subtract each slice's shell level (module doc) before thresholding, or not (the paper).
    baseline_band_A : (float, float)
        Ring inside the particle's edge (A) whose median order parameter is the shell level.
    edge_exclusion_A : float, optional
        Pixels closer than this (A, in-plane) to the particle's edge are not core candidates
        (default twice the filter resolution; 0: none).
    opening_A : float, optional
        Radius (A) of the disc of a per-slice morphological opening of the core mask, which removes
        features narrower than about twice that (default twice the filter resolution; 0: none).
    largest_component : bool
        Keep only the largest 3-D connected component (face connectivity) and fill its holes per slice.
    origin_A : (float, float)
        Position of pixel (0, 0), A.

    Returns
    -------
    CoreResult
        ``order`` is the (smoothed, slice-mixed) order parameter; ``threshold`` the growth level on
        the excess (``grow_fraction * C`` for ``"contrast"``).

    Raises
    ------
    InputError
        No lattice, bad settings, or the order parameter does not separate a core (empty core mask).
    """
    sampling = as_sampling(sampling_A)
    origin = as_origin(origin_A)
    sigma = default_mask_sigma(check_g_vectors(g200_inv_A, name="g200_inv_A"), mask_sigma_inv_A, fraction=0.2)
    order, particle = order_parameter(volume, sampling, g200_inv_A, g220_inv_A, mask_sigma_inv_A=mask_sigma_inv_A,
                                      amplitude_threshold=amplitude_threshold, smoothing_A=smoothing_A,
                                      slice_mixing=slice_mixing)
    if baseline == "edge":
        base = slice_baseline(order, particle, sampling, baseline_band_A)
        # a slice without a shell ring (too small a section) has no baseline: no core candidate there
        score = np.where(np.isfinite(base)[:, None, None], order - np.nan_to_num(base, nan=0.0)[:, None, None], np.nan)
    elif baseline == "none":
        base = np.zeros(order.shape[0])
        score = order
    else:
        raise InputError(f"lattice analysis: baseline must be 'edge' or 'none', got {baseline!r}.")
    edge = 2.0 * psf_sigma_A(sigma) if edge_exclusion_A is None else float(edge_exclusion_A)
    if not (np.isfinite(edge) and edge >= 0):
        raise InputError(f"lattice analysis: edge_exclusion_A must be a non-negative length in Angstrom, got {edge_exclusion_A!r}.")
    cand = particle & np.isfinite(score)
    if edge > 0:
        for z in range(cand.shape[0]):
            if cand[z].any():
                d = ndimage.distance_transform_edt(np.pad(particle[z], 1), sampling=sampling)[1:-1, 1:-1]
                cand[z] &= d > edge
    if not cand.any():
        raise InputError(f"lattice analysis: no particle pixel lies deeper than edge_exclusion_A={edge:.3g} A; "
                         "no core candidate.")
    vals = score[cand]
    filled = np.where(cand, score, -np.inf)
    if threshold is not None:
        thr, method = float(threshold), "given"
        core = filled >= thr
    elif threshold_method == "otsu":
        from skimage.filters import threshold_otsu
        if np.ptp(vals) == 0:
            raise InputError("lattice analysis: the order parameter is uniform over the particle; no core to separate.")
        thr, method = float(threshold_otsu(vals)), "otsu"
        core = filled >= thr
    elif threshold_method == "contrast":
        if baseline != "edge":
            raise InputError("lattice analysis: threshold_method='contrast' measures the excess over the shell level "
                             "and needs baseline='edge'; use threshold_method='otsu' or a given threshold with "
                             f"baseline={baseline!r}.")
        if not 0 < grow_fraction <= seed_fraction:
            raise InputError(f"lattice analysis: need 0 < grow_fraction <= seed_fraction, got {grow_fraction!r} "
                             f"and {seed_fraction!r}.")
        full = max(float(np.percentile(score[z][cand[z]], 99)) for z in range(score.shape[0]) if cand[z].any())
        if not full > 0:
            raise InputError("lattice analysis: the order parameter nowhere exceeds the shell level; no core to separate.")
        from skimage.filters import apply_hysteresis_threshold
        thr = grow_fraction * full
        seed = seed_fraction * full
        method = f"contrast: full-core excess {full:.4g}, grow {grow_fraction:g} x, seed {seed_fraction:g} x"
        core = np.stack([apply_hysteresis_threshold(np.where(np.isfinite(f), f, -1e30), thr, seed) for f in filled])
    else:
        raise InputError(f"lattice analysis: threshold_method must be 'contrast' or 'otsu', got {threshold_method!r}.")
    core &= cand
    rad = 2.0 * psf_sigma_A(sigma) if opening_A is None else float(opening_A)
    if not (np.isfinite(rad) and rad >= 0):
        raise InputError(f"lattice analysis: opening_A must be a non-negative length in Angstrom, got {opening_A!r}.")
    if rad > 0 and core.any():
        ri, rj = rad / sampling[0], rad / sampling[1]
        ni, nj = int(np.floor(ri)), int(np.floor(rj))
        di, dj = np.ogrid[-ni:ni + 1, -nj:nj + 1]
        disc = (di / max(ri, 1e-9)) ** 2 + (dj / max(rj, 1e-9)) ** 2 <= 1.0
        core = np.stack([ndimage.binary_opening(c, structure=disc) if c.any() else c for c in core])
    if largest_component and core.any():
        core = _largest_component(core)
    if not core.any():
        raise InputError(f"lattice analysis: no voxel has an order parameter above the threshold {thr:.4g}; no core found.")
    idx = np.argwhere(core)
    cx = origin[0] + sampling[0] * float(idx[:, 1].mean())
    cy = origin[1] + sampling[1] * float(idx[:, 2].mean())
    return CoreResult(order=order.astype(np.float32), particle_mask=particle, core_mask=core, threshold=thr,
                      threshold_method=method, baseline=base, centroid_A=(cx, cy), centroid_slice=float(idx[:, 0].mean()),
                      n_voxels=int(core.sum()), g200_inv_A=np.asarray(g200_inv_A, dtype=np.float64),
                      g220_inv_A=np.asarray(g220_inv_A, dtype=np.float64),
                      mask_sigma_inv_A=sigma, resolution_A=psf_sigma_A(sigma), sampling_A=sampling, origin_A=origin)
