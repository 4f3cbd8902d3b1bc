"""Comparison of a reconstruction, and the analyses made from it, against the simulator's truth.

Grids: the truth maps (``truth.h5``) and the reconstruction share the reconstruction's pixel size
but not their origin or extent. :func:`overlap` pairs the pixels of two grids by the nearest
whole-pixel offset (the residual sub-pixel offset, at most half a pixel, ~0.1 A, is reported) and
every comparison is made on that common region. Slices are paired by index: both count slices of
the same thickness from the same entrance surface (the plane the probe's defocus refers to).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from .io.datacube import InputError


@dataclass(frozen=True)
class Overlap:
    """Common region of two grids of equal pixel size.

    Attributes
    ----------
    a, b : tuple of slice
        ``(x, y)`` slices selecting the common region in grid A and grid B.
    residual_offset_A : (float, float)
        Sub-pixel offset left after whole-pixel pairing, Angstrom.
    """

    a: tuple
    b: tuple
    residual_offset_A: tuple


def overlap(origin_a_A, shape_a, origin_b_A, shape_b, sampling_A: float, rtol: float = 1e-3) -> Overlap:
    """Pair the pixels of grid A and grid B (same ``sampling_A``) by the nearest whole-pixel offset.

    Parameters
    ----------
    origin_a_A, origin_b_A : (float, float)
        Scan-frame position of pixel [0, 0] of each grid, Angstrom.
    shape_a, shape_b : (int, int)
        Grid shapes ``(nx, ny)``.
    sampling_A : float
        Pixel size of both grids, Angstrom.
    """
    d = (np.asarray(origin_b_A, float) - np.asarray(origin_a_A, float)) / sampling_A
    shift = np.round(d).astype(int)  # pixel [i] of B sits at pixel [i + shift] of A
    sl_a, sl_b = [], []
    for ax in range(2):
        lo = max(0, shift[ax])
        hi = min(shape_a[ax], shape_b[ax] + shift[ax])
        if hi <= lo:
            raise InputError("validation: the reconstruction and the truth do not overlap in the scan frame.")
        sl_a.append(slice(lo, hi))
        sl_b.append(slice(lo - shift[ax], hi - shift[ax]))
    return Overlap(tuple(sl_a), tuple(sl_b), tuple(((d - shift) * sampling_A).tolist()))


def pearson(a, b, mask=None) -> float:
    """Pearson correlation of two arrays (over ``mask`` if given)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if mask is not None:
        a, b = a[mask], b[mask]
    a = a - a.mean()
    b = b - b.mean()
    den = np.sqrt(np.sum(a * a) * np.sum(b * b))
    return float(np.sum(a * b) / den) if den > 0 else float("nan")


def registration_shift_px(truth_2d, recon_2d, max_shift_px: int) -> np.ndarray:
    """Whole-pixel shift ``d`` at which ``recon_2d[i + d]`` best matches ``truth_2d[i]`` (peak of the
    zero-padded cross-correlation of the mean-free images within ``|d| <= max_shift_px``)."""
    a = np.asarray(truth_2d, float) - np.mean(truth_2d)
    b = np.asarray(recon_2d, float) - np.mean(recon_2d)
    shape = [n + max_shift_px for n in a.shape]
    cc = np.fft.irfft2(np.conj(np.fft.rfft2(a, shape)) * np.fft.rfft2(b, shape), shape)
    best, arg = -np.inf, (0, 0)
    for dx in range(-max_shift_px, max_shift_px + 1):
        for dy in range(-max_shift_px, max_shift_px + 1):
            if cc[dx, dy] > best:
                best, arg = cc[dx, dy], (dx, dy)
    return np.asarray(arg)


def registered_origin_A(recon_VA, recon_origin_A, truth_VA, truth_origin_A, sampling_A: float,
                        max_shift_A: float = 5.0) -> tuple[np.ndarray, np.ndarray]:
    """The reconstruction's origin corrected for the global translation that ptychography leaves
    undetermined (object and positions may shift together): the projected potentials are
    registered on their common region to the nearest pixel.

    Returns
    -------
    origin_A : ndarray (2,)
        Corrected scan-frame position of the reconstruction's pixel [0, 0], Angstrom.
    shift_A : ndarray (2,)
        The translation removed, Angstrom (reconstruction minus truth).
    """
    ov = overlap(truth_origin_A, np.shape(truth_VA)[1:], recon_origin_A, np.shape(recon_VA)[1:], sampling_A)
    t = np.asarray(truth_VA, float).sum(0)[ov.a]
    r = np.asarray(recon_VA, float).sum(0)[ov.b]
    d = registration_shift_px(t, r, int(np.ceil(max_shift_A / sampling_A)))
    return np.asarray(recon_origin_A, float) - d * sampling_A, d * sampling_A


def compare_potential(recon_VA, recon_origin_A, recon_sampling_A: float, truth_VA, truth_origin_A,
                      truth_sampling_A: float, particle_mask, core_mask) -> dict:
    """Per-slice and projected correlation of a reconstructed potential with the true one, and the
    depth at which the core's contrast peaks.

    Parameters
    ----------
    recon_VA : ndarray (nz, nx, ny)
        Reconstructed potential per slice, V*A.
    recon_origin_A, truth_origin_A : (float, float)
        Scan-frame position of pixel [0, 0], Angstrom.
    recon_sampling_A, truth_sampling_A : float
        Pixel sizes, Angstrom (must agree to 0.1 %).
    truth_VA : ndarray (nt, mx, my)
        True potential summed over each reconstruction slice, V*A.
    particle_mask, core_mask : bool ndarray (nt, mx, my)
        True masks.

    Returns
    -------
    dict
        ``slice_correlation`` (list, one per common slice, over the particle's projected footprint),
        ``projected_correlation``, ``core_contrast`` (per slice: mean potential in the core's
        footprint minus the shell's, V*A), ``core_peak_slice`` (reconstruction), ``true_core_slice``
        (centroid of the true core mask, slice units), ``residual_offset_A``.
    """
    if abs(recon_sampling_A - truth_sampling_A) > 1e-3 * truth_sampling_A:
        raise InputError(f"validation: reconstruction sampling {recon_sampling_A:.4f} A differs from the "
                         f"truth's {truth_sampling_A:.4f} A; expected the same detector geometry.")
    recon = np.asarray(recon_VA, dtype=np.float64)
    truth = np.asarray(truth_VA, dtype=np.float64)
    ov = overlap(truth_origin_A, truth.shape[1:], recon_origin_A, recon.shape[1:], truth_sampling_A)
    nz = min(recon.shape[0], truth.shape[0])
    r = recon[:nz][(slice(None),) + ov.b]
    t = truth[:nz][(slice(None),) + ov.a]
    pm = np.asarray(particle_mask, bool)[:nz][(slice(None),) + ov.a]
    cm = np.asarray(core_mask, bool)[:nz][(slice(None),) + ov.a]
    footprint = pm.any(axis=0)
    if not footprint.any():
        raise InputError("validation: the true particle lies outside the reconstructed field.")
    per_slice = [pearson(r[k], t[k], footprint) for k in range(nz)]
    core_fp = cm.any(axis=0)
    shell_fp = footprint & ~core_fp
    contrast = [float(r[k][core_fp].mean() - r[k][shell_fp].mean()) if core_fp.any() and shell_fp.any()
                else float("nan") for k in range(nz)]
    idx = np.argwhere(cm)
    return {
        "slice_correlation": per_slice,
        "projected_correlation": pearson(r.sum(0), t.sum(0), footprint),
        "core_contrast_VA": contrast,
        "core_peak_slice": int(np.nanargmax(contrast)) if np.isfinite(contrast).any() else None,
        "true_core_slice": float(idx[:, 0].mean()) if len(idx) else None,
        "n_slices_compared": nz,
        "residual_offset_A": list(ov.residual_offset_A),
    }


def position_errors(initial_A, refined_A, true_A) -> dict:
    """RMS scan-position errors before and after position correction, Angstrom.

    A common translation of all positions is not determined by ptychography (object and positions
    shift together), so it is removed before the RMS; the raw RMS is reported too.
    """
    ini = np.asarray(initial_A, float).reshape(-1, 2)
    ref = np.asarray(refined_A, float).reshape(-1, 2)
    tru = np.asarray(true_A, float).reshape(-1, 2)
    if not (ini.shape == ref.shape == tru.shape):
        raise InputError(f"validation: position arrays disagree in shape {ini.shape}, {ref.shape}, {tru.shape}.")

    def rms(e, centred):
        if centred:
            e = e - e.mean(axis=0)
        return float(np.sqrt(np.mean(np.sum(e * e, axis=1))))

    return {"initial_rms_A": rms(ini - tru, True), "refined_rms_A": rms(ref - tru, True),
            "initial_rms_raw_A": rms(ini - tru, False), "refined_rms_raw_A": rms(ref - tru, False)}


def crop_grid(obj, region: tuple, nz: int, grid_shape: tuple, new_origin_A=None):
    """A copy of a result dataclass cut to a common region of its grid.

    Every array field shaped ``(nz', nx, ny)`` (``(nx, ny)`` = ``grid_shape``) becomes
    ``[:nz, region]``, every ``(nx, ny)`` field becomes ``[region]``; ``origin_A`` is replaced by
    ``new_origin_A`` and a ``slice_range`` is clipped to ``nz``. Point positions (Angstrom) need no
    change.
    """
    import dataclasses

    changes = {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if isinstance(v, np.ndarray) and v.ndim == 3 and v.shape[1:] == tuple(grid_shape):
            changes[f.name] = v[(slice(0, nz),) + tuple(region)]
        elif isinstance(v, np.ndarray) and v.ndim == 2 and v.shape == tuple(grid_shape):
            changes[f.name] = v[tuple(region)]
    if new_origin_A is not None and hasattr(obj, "origin_A"):
        changes["origin_A"] = tuple(float(x) for x in new_origin_A)
    if hasattr(obj, "slice_range"):
        a, b = obj.slice_range
        changes["slice_range"] = (min(a, nz - 1), min(b, nz - 1))
    return dataclasses.replace(obj, **changes)


def _finite(d):
    """JSON-friendly copy: numpy scalars/arrays to Python, NaN to None."""
    if isinstance(d, dict):
        return {str(k): _finite(v) for k, v in d.items()}
    if isinstance(d, (list, tuple)):
        return [_finite(v) for v in d]
    if isinstance(d, np.ndarray):
        return _finite(d.tolist())
    if isinstance(d, (np.floating, float)):
        return float(d) if np.isfinite(d) else None
    if isinstance(d, (np.integer,)):
        return int(d)
    return d


def validate_reconstruction(truth, recon, strain, core, dislocations, surface, lattice_settings: dict,
                            edge_band_A: float = 10.0, dislocation_radius_A: float = 3.0):
    """Every validation number of one synthetic sample.

    Parameters
    ----------
    truth : msptycho.simulate.GroundTruth
    recon : msptycho.ptycho.ReconstructionResult
    strain, core, dislocations, surface : results of the analysis rules on ``recon``
    lattice_settings : dict
        ``{"strain": StrainSettings, "core": ..., "dislocations": ..., "surface": ...}`` used to
        run the same analyses on the true potential (the method's own error).

    Returns
    -------
    metrics : dict
        JSON-ready: ``potential`` (:func:`compare_potential`), ``positions``
        (:func:`position_errors`), ``method_on_truth`` and ``reconstruction`` (lattice metrics of
        :func:`msptycho.lattice.validate_against_truth`, on the true volume and on the
        reconstruction).
    figure_inputs : dict
        Arrays for :func:`msptycho.figures.paper.plot_validation`.
    """
    from . import lattice

    origin, shift = registered_origin_A(recon.potential_VA, recon.origin_A, truth.potential_VA, truth.origin_A,
                                        truth.sampling_A)
    metrics = {"potential": compare_potential(recon.potential_VA, origin, recon.sampling_A,
                                              truth.potential_VA, truth.origin_A, truth.sampling_A,
                                              truth.particle_mask, truth.core_mask)}
    metrics["potential"]["registration_shift_A"] = shift.tolist()
    if truth.scan_positions_A is not None:
        metrics["positions"] = position_errors(recon.positions_initial_A, recon.positions_A, truth.scan_positions_A)

    # the analysis methods on the true volume: their own error, apart from the reconstruction's
    V, dx, o = truth.potential_VA, truth.sampling_A, tuple(truth.origin_A)
    on_truth = {}
    try:
        on_truth["strain"] = lattice.run_strain(V, dx, lattice_settings["strain"], o)[0]
        on_truth["core"] = lattice.run_core(V, dx, lattice_settings["core"], o)
        on_truth["dislocations"] = lattice.run_dislocations(V, dx, lattice_settings["dislocations"], o)
        on_truth["surface"] = lattice.run_surface(V, dx, truth.slice_thickness_A, lattice_settings["surface"], o)
        metrics["method_on_truth"] = lattice.validate_against_truth(
            truth, **on_truth, edge_band_A=edge_band_A, dislocation_radius_A=dislocation_radius_A)
    except InputError as e:
        metrics["method_on_truth"] = {"error": str(e)}

    # the reconstruction's analyses, cut with the truth to their common region
    ov = overlap(truth.origin_A, truth.potential_VA.shape[1:], origin, recon.potential_VA.shape[1:],
                 truth.sampling_A)
    nz = min(truth.n_slices, recon.potential_VA.shape[0])
    new_origin = (truth.origin_A[0] + ov.a[0].start * truth.sampling_A,
                  truth.origin_A[1] + ov.a[1].start * truth.sampling_A)
    t = crop_grid(truth, ov.a, nz, truth.potential_VA.shape[1:], new_origin)
    grid = recon.potential_VA.shape[1:]
    cut = {k: crop_grid(r, ov.b, nz, grid, new_origin) for k, r in
           (("strain", strain), ("core", core), ("dislocations", dislocations), ("surface", surface))}
    pts = dict(cut["dislocations"].points)  # positions in the reconstruction's frame: remove the shift
    pts["x_A"] = np.asarray(pts["x_A"]) - shift[0]
    pts["y_A"] = np.asarray(pts["y_A"]) - shift[1]
    cut["dislocations"] = dataclasses.replace(cut["dislocations"], points=pts)
    metrics["reconstruction"] = lattice.validate_against_truth(
        t, **cut, edge_band_A=edge_band_A, dislocation_radius_A=dislocation_radius_A)

    mid = nz // 2
    truth_rot_deg = np.rad2deg(t.rotation_rad)
    pm = t.particle_mask[mid]
    figure_inputs = {
        "slice_thickness_A": float(truth.slice_thickness_A),
        "slice_correlation": np.asarray(metrics["potential"]["slice_correlation"]),
        "strain_error_maps": {
            "dilation": np.where(pm, cut["strain"].dilation[mid] - t.dilation[mid], np.nan),
            "rotation_deg": np.where(pm, cut["strain"].rotation_deg[mid] - truth_rot_deg[mid], np.nan)},
        "pixel_size_A": float(truth.sampling_A),
        "strain_error_slice": int(mid),
        "core_profile": cut["core"].core_mask.sum(axis=(1, 2)) * truth.sampling_A**2 / 100.0,
        "core_profile_truth": t.core_mask.sum(axis=(1, 2)) * truth.sampling_A**2 / 100.0,
        "dislocation_metrics": metrics["reconstruction"].get("dislocations"),
    }
    return _finite(metrics), figure_inputs
