"""Accuracy of the lattice analyses against a ground truth (the simulator's ``truth.h5`` or a
:class:`~msptycho.lattice.synthetic.SyntheticParticle`). Every function returns a flat dict of
plain floats/ints, ready for ``validation.json``.

Strain is compared twice: against the raw truth, and against the truth blurred to the GPA
resolution (a Gaussian of ``StrainResult.resolution_A``, normalised inside the particle). A sharp
jump of the true strain (e.g. at the core/shell interface) cannot be resolved below that
resolution by any Fourier-filter method; the resolution-matched error measures the method's own
bias, the raw error includes the resolution loss. ``resolution_A`` is the maps' full point spread:
for the two-stage GPA (:mod:`msptycho.lattice.gpa`) the Bragg mask's and the local-frequency
smoothing's standard deviations in quadrature (4.0 A by default), so the comparison blurs the truth
as much as the method blurs the lattice.

Definitions: the simulator's truth is the linear strain of the distortion ``G = grad u``
(``exx = G_xx``, rotation ``(G_yx - G_xy) / 2``); GPA reports the polar decomposition of
``F = I + G``. They differ at second order (``theta^2``, ``theta e``): on the simulator's particles,
away from dislocation cores, by less than 0.01 % dilation RMS after resolution matching (0.216 vs
0.223 % pristine, 0.269 vs 0.275 % cracked), so the truth is compared as it is.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.optimize import linear_sum_assignment

from ..io.datacube import InputError
from ._common import as_sampling


def iou(a, b) -> float:
    """Intersection over union of two boolean arrays of the same shape (NaN if both are empty)."""
    a = np.asarray(a, dtype=bool)
    b = np.asarray(b, dtype=bool)
    if a.shape != b.shape:
        raise InputError(f"validation: masks must have the same shape, got {a.shape} and {b.shape}.")
    u = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / u) if u else float("nan")


def rms(values) -> float:
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    return float(np.sqrt(np.mean(v**2))) if v.size else float("nan")


def _edt(m, dx, dy):
    """Per-slice Euclidean distance (A) of True pixels to the nearest False pixel (the array border
    counts as False)."""
    out = np.zeros(m.shape)
    for z, mz in enumerate(m):
        if mz.any():
            out[z] = ndimage.distance_transform_edt(np.pad(mz, 1), sampling=(dx, dy))[1:-1, 1:-1]
    return out


def inner_mask(particle_mask, band_A: float, sampling_A) -> np.ndarray:
    """The particle without a band of ``band_A`` (A) at its edge: pixels of ``particle_mask``
    (nz, nx, ny) farther than ``band_A`` from any pixel outside it, per slice."""
    dx, dy = as_sampling(sampling_A)
    pm = np.asarray(particle_mask, dtype=bool)
    if pm.ndim == 2:
        pm = pm[None]
    return _edt(pm, dx, dy) > band_A


def blur_in_mask(values, mask, sigma_A: float, sampling_A) -> np.ndarray:
    """Gaussian blur (in-plane, ``sigma_A``) of ``values`` restricted to ``mask`` (normalised
    convolution), per slice; NaN outside ``mask``."""
    dx, dy = as_sampling(sampling_A)
    m = np.asarray(mask, dtype=bool)
    a = np.where(m, np.nan_to_num(np.asarray(values, dtype=np.float64)), 0.0)
    s = (0, sigma_A / dx, sigma_A / dy) if a.ndim == 3 else (sigma_A / dx, sigma_A / dy)
    num = ndimage.gaussian_filter(a, s)
    den = ndimage.gaussian_filter(m.astype(np.float64), s)
    return np.where(m, num / np.maximum(den, 1e-12), np.nan)


def validate_strain(result, truth_dilation, truth_rotation_deg, particle_mask, *, edge_band_A: float = 10.0,
                    slices=None, exclude_mask=None) -> dict:
    """RMS errors of dilation (fraction) and rotation (degrees) inside the particle without an edge band.

    Parameters
    ----------
    result : StrainResult
    truth_dilation, truth_rotation_deg : ndarray (nz, nx, ny)
        True dilation (fraction) and rotation (degrees, counter-clockwise positive).
    particle_mask : bool ndarray (nz, nx, ny)
        True particle.
    edge_band_A : float
        Band at the particle edge left out, A.
    slices : sequence of int, optional
        Slices evaluated (default all).
    exclude_mask : bool ndarray (nz, nx, ny), optional
        Pixels also left out (e.g. a band around the core/shell interface, see :func:`interface_band`).

    Returns
    -------
    dict: ``dilation_rms``, ``dilation_rms_resolution_matched`` (fractions), ``rotation_rms_deg``,
    ``rotation_rms_resolution_matched_deg``, ``dilation_bias``, ``rotation_bias_deg``, ``coverage``
    (fraction of evaluated pixels the strain mask kept), ``n_pixels``, ``resolution_A``.
    """
    pm = np.asarray(particle_mask, dtype=bool)
    inner = inner_mask(pm, edge_band_A, result.sampling_A)
    if slices is not None:
        keep = np.zeros(pm.shape[0], bool)
        keep[np.asarray(slices)] = True
        inner &= keep[:, None, None]
    if exclude_mask is not None:
        inner &= ~np.asarray(exclude_mask, dtype=bool)
    sel = inner & result.mask
    if not sel.any():
        raise InputError("validation: no particle pixel left inside the edge band and the strain mask.")
    out = {"n_pixels": int(sel.sum()), "coverage": float(sel.sum() / max(inner.sum(), 1)),
           "resolution_A": float(result.resolution_A), "edge_band_A": float(edge_band_A)}
    for name, meas, truth, unit in (("dilation", result.dilation, truth_dilation, ""),
                                    ("rotation", result.rotation_deg, truth_rotation_deg, "_deg")):
        truth = np.asarray(truth, dtype=np.float64)
        d = np.asarray(meas, dtype=np.float64)[sel] - truth[sel]
        out[f"{name}_rms{unit}"] = rms(d)
        out[f"{name}_bias{unit}"] = float(np.nanmean(d))
        matched = blur_in_mask(truth, pm, result.resolution_A, result.sampling_A)
        out[f"{name}_rms_resolution_matched{unit}"] = rms(np.asarray(meas, dtype=np.float64)[sel] - matched[sel])
    return out


def interface_band(mask, half_width_A: float, sampling_A) -> np.ndarray:
    """Pixels within ``half_width_A`` (A, in-plane) of the boundary of ``mask`` (nz, nx, ny), per
    slice (on either side)."""
    m = np.asarray(mask, dtype=bool)
    if m.ndim == 2:
        m = m[None]
    dx, dy = as_sampling(sampling_A)
    d_in = _edt(m, dx, dy)
    d_out = np.stack([ndimage.distance_transform_edt(~mz, sampling=(dx, dy)) if mz.any() else np.full(mz.shape, np.inf)
                      for mz in m])
    return (m & (d_in <= half_width_A)) | (~m & (d_out <= half_width_A))


def near_points_mask(shape, point_slice, x_A, y_A, radius_A: float, sampling_A, origin_A=(0.0, 0.0)) -> np.ndarray:
    """Boolean ``shape`` = (nz, nx, ny) mask of the pixels within ``radius_A`` (A) of points
    ``(x_A, y_A)`` in their slice (e.g. true dislocation cores, whose singular strain no Fourier
    method resolves; pass it as ``exclude_mask`` of :func:`validate_strain`)."""
    dx, dy = as_sampling(sampling_A)
    out = np.zeros(shape, dtype=bool)
    x = origin_A[0] + dx * np.arange(shape[1])[:, None]
    y = origin_A[1] + dy * np.arange(shape[2])[None, :]
    for s, px, py in zip(np.asarray(point_slice, dtype=np.int64), np.asarray(x_A, float), np.asarray(y_A, float)):
        if 0 <= s < shape[0]:
            out[s] |= (x - px) ** 2 + (y - py) ** 2 <= radius_A**2
    return out


def validate_core(result, truth_core_mask, truth_centroid_slice: float | None = None,
                  truth_centroid_A=None) -> dict:
    """IoU of the core mask, and the centroid's errors (slices and A)."""
    tm = np.asarray(truth_core_mask, dtype=bool)
    out = {"core_iou": iou(result.core_mask, tm)}
    if truth_centroid_slice is None and tm.any():
        truth_centroid_slice = float(np.argwhere(tm)[:, 0].mean())
    if truth_centroid_A is None and tm.any():
        idx = np.argwhere(tm)
        truth_centroid_A = (result.origin_A[0] + result.sampling_A[0] * idx[:, 1].mean(),
                            result.origin_A[1] + result.sampling_A[1] * idx[:, 2].mean())
    if truth_centroid_slice is not None:
        out["centroid_slice_error"] = float(result.centroid_slice - truth_centroid_slice)
    if truth_centroid_A is not None:
        out["centroid_xy_error_A"] = float(np.hypot(result.centroid_A[0] - truth_centroid_A[0],
                                                    result.centroid_A[1] - truth_centroid_A[1]))
    return out


def match_points(found_slice, found_xy_A, true_slice, true_xy_A, radius_A: float = 3.0) -> dict:
    """Precision and recall of per-slice positions: within each slice, found and true points are
    paired by optimal assignment; a pair closer than ``radius_A`` is a true positive."""
    fs = np.asarray(found_slice, dtype=np.int64)
    ts = np.asarray(true_slice, dtype=np.int64)
    fxy = np.asarray(found_xy_A, dtype=np.float64).reshape(-1, 2)
    txy = np.asarray(true_xy_A, dtype=np.float64).reshape(-1, 2)
    tp = 0
    dists = []
    for s in np.intersect1d(fs, ts):
        a = np.flatnonzero(fs == s)
        b = np.flatnonzero(ts == s)
        d = np.hypot(fxy[a, None, 0] - txy[None, b, 0], fxy[a, None, 1] - txy[None, b, 1])
        r, c = linear_sum_assignment(np.where(d <= radius_A, d, 1e6))
        ok = d[r, c] <= radius_A
        tp += int(ok.sum())
        dists += list(d[r, c][ok])
    nf, nt = len(fs), len(ts)
    return {"precision": tp / nf if nf else float("nan"), "recall": tp / nt if nt else float("nan"),
            "true_positives": tp, "n_found": nf, "n_true": nt,
            "mean_distance_A": float(np.mean(dists)) if dists else float("nan"), "radius_A": float(radius_A)}


def validate_dislocations(result, true_slice, true_x_A, true_y_A, radius_A: float = 3.0, particle_mask=None,
                          min_surface_distance_A: float = 0.0) -> dict:
    """:func:`match_points` of a :class:`~msptycho.lattice.dislocations.DislocationResult` against truth.

    With ``particle_mask`` (true particle, (nz, nx, ny)) and ``min_surface_distance_A > 0``, true
    and found points closer than that to the particle's surface in their slice are left out of both
    lists (a Burgers circuit around them leaves the crystal, so no method sees them);
    ``n_true_near_surface`` says how many true points that removed.
    """
    p = result.points
    fs, fx, fy = (np.asarray(p[k]) for k in ("slice", "x_A", "y_A"))
    ts, tx, ty = np.asarray(true_slice, dtype=np.int64), np.asarray(true_x_A, float), np.asarray(true_y_A, float)
    dropped = 0
    if particle_mask is not None and min_surface_distance_A > 0:
        pm = np.asarray(particle_mask, dtype=bool)
        dx, dy = result.sampling_A
        ox, oy = result.origin_A
        depth = _edt(pm, dx, dy)

        def keep(s, x, y):
            i = np.clip(np.rint((x - ox) / dx).astype(int), 0, pm.shape[1] - 1)
            j = np.clip(np.rint((y - oy) / dy).astype(int), 0, pm.shape[2] - 1)
            return depth[s, i, j] >= min_surface_distance_A

        kt = keep(ts, tx, ty) if len(ts) else np.zeros(0, bool)
        kf = keep(fs, fx, fy) if len(fs) else np.zeros(0, bool)
        dropped = int((~kt).sum())
        ts, tx, ty = ts[kt], tx[kt], ty[kt]
        fs, fx, fy = fs[kf], fx[kf], fy[kf]
    out = match_points(fs, np.column_stack([fx, fy]), ts, np.column_stack([tx, ty]), radius_A)
    out["n_true_near_surface"] = dropped
    out["min_surface_distance_A"] = float(min_surface_distance_A)
    return out


def validate_surface(result, truth_particle_mask) -> dict:
    """IoU of the surface mask with the true particle mask over the result's slice range."""
    tm = np.asarray(truth_particle_mask, dtype=bool)
    a, b = result.slice_range
    return {"surface_iou": iou(result.mask[a:b + 1], tm[a:b + 1]), "slice_range": [int(a), int(b)]}


def validate_against_truth(truth, strain=None, core=None, dislocations=None, surface=None, *,
                           edge_band_A: float = 10.0, dislocation_radius_A: float = 3.0) -> dict:
    """All lattice metrics against a ground truth on the same grid.

    Parameters
    ----------
    truth : object
        With attributes ``dilation`` (fraction), ``rotation_rad`` (or ``rotation_deg``),
        ``particle_mask``, ``core_mask`` ((nz, nx, ny)), ``dislocations`` (fields ``slice``,
        ``x_A``, ``y_A``) and ``sampling_A``, e.g. :class:`msptycho.simulate.GroundTruth` or
        :class:`~msptycho.lattice.synthetic.SyntheticParticle`.
    strain, core, dislocations, surface : results, optional
        :class:`StrainResult`, :class:`CoreResult`, :class:`DislocationResult`, :class:`SurfaceResult`
        of a volume on the truth's grid (same shape, sampling and origin).
    edge_band_A : float
        Band at the particle edge left out of the strain errors, A.
    dislocation_radius_A : float
        Matching radius of dislocation positions, A.

    Returns
    -------
    dict of dicts: ``strain`` (all pixels; ``*_no_dislocation_cores``: without discs of
    3 x resolution around true dislocations; ``*_no_cores_no_interface``: also without a band of
    +-2 x resolution around the true core boundary), ``core``, ``dislocations`` (all true points and
    those deeper than the resolution below the surface), ``surface``.
    """
    out = {}
    pm = np.asarray(truth.particle_mask, dtype=bool)
    rot = (np.rad2deg(np.asarray(truth.rotation_rad)) if hasattr(truth, "rotation_rad")
           else np.asarray(truth.rotation_deg))
    tdis = getattr(truth, "dislocations", None)
    has_dis = tdis is not None and len(np.asarray(tdis["slice"])) > 0

    def same_grid(res, name):
        shape = np.shape(getattr(res, "mask", getattr(res, "core_mask", None)))
        if shape != pm.shape:
            raise InputError(f"validation: {name} has shape {shape}, the truth {pm.shape}; resample to the truth's grid first.")

    if strain is not None:
        same_grid(strain, "strain")
        r = strain.resolution_A
        m = validate_strain(strain, truth.dilation, rot, pm, edge_band_A=edge_band_A)
        cores = (near_points_mask(pm.shape, tdis["slice"], tdis["x_A"], tdis["y_A"], 3 * r, strain.sampling_A,
                                  strain.origin_A) if has_dis else np.zeros(pm.shape, bool))
        band = interface_band(np.asarray(truth.core_mask, dtype=bool), 2 * r, strain.sampling_A)
        for suffix, ex in (("_no_dislocation_cores", cores), ("_no_cores_no_interface", cores | band)):
            mm = validate_strain(strain, truth.dilation, rot, pm, edge_band_A=edge_band_A, exclude_mask=ex)
            m.update({k + suffix: v for k, v in mm.items() if k.startswith(("dilation", "rotation", "n_pixels"))})
        out["strain"] = m
    if core is not None:
        same_grid(core, "core")
        out["core"] = validate_core(core, truth.core_mask)
    if dislocations is not None and has_dis:
        m = validate_dislocations(dislocations, tdis["slice"], tdis["x_A"], tdis["y_A"], dislocation_radius_A)
        deep = validate_dislocations(dislocations, tdis["slice"], tdis["x_A"], tdis["y_A"], dislocation_radius_A,
                                     particle_mask=pm,
                                     min_surface_distance_A=dislocations.parameters.get("resolution_A", 1.6))
        m.update({k + "_deep": v for k, v in deep.items()})
        out["dislocations"] = m
    if surface is not None:
        out["surface"] = validate_surface(surface, pm)
    return out
