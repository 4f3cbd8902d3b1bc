"""Comparison of a reconstruction, and the analyses made from it, against the simulator's truth.

Grids: the truth maps (``truth.h5``) and the reconstruction share the reconstruction's pixel size
but not their origin or extent. :func:`overlap` pairs the pixels of two grids by the nearest
whole-pixel offset (the residual sub-pixel offset, at most half a pixel, ~0.1 A, is reported) and
every comparison is made on that common region. Slices are paired by index: both count slices of
the same thickness from the same entrance surface (the plane the probe's defocus refers to).
"""

from __future__ import annotations

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
