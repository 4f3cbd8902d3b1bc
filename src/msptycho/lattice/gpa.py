"""Geometric phase analysis (Hytch 1997; Hytch, Putaux & Penisson 2003) of each slice of a volume.

Method, per slice and for each of two non-collinear reflections ``g_i``:

1. Bragg filter: ``B_i = ifft2(fft2(V) * exp(-|k - g_i|^2 / (2 sigma^2)))`` (Gaussian mask of
   width ``mask_sigma_inv_A``; the maps' resolution is ``1 / (2 pi sigma)`` A, see
   :func:`msptycho.lattice._common.psf_sigma_A`).
2. Local frequency ``g_i(r) = grad(arg B_i) / (2 pi)``, from ``angle(B[i+1] conj(B[i-1]))`` so that
   no phase unwrapping is needed (this is ``g_i + grad P_i / (2 pi)`` with the geometric phase
   ``P_i``).
   **Smoothing** (``smoothing_A``, default 3.4 A): each component of ``g_i(r)`` is then smoothed
   by a Gaussian of ``smoothing_A`` weighted by ``|B_i|`` (normalised convolution), and the Bragg
   mask is wider (default 15 % of the shorter ``|g|``, 2.05 A point spread for {220}). The maps'
   resolution is ``sqrt(psf^2 + smoothing_A^2)`` (default 4.0 A). Why: the phase gradient of a
   Bragg image blurred by a narrow mask responds nonlinearly to strong gradients (dislocation
   fields ``~ b / 2 pi r``), with an error ``~ psf^2`` times the field's curvature, whereas a linear
   smoothing of the local frequency is what the resolution-matched truth assumes; and the simulator's
   frozen thermal displacements (0.08 A per atom, about 0.04 A per 12 A column) give a strain noise
   ``~ 0.045 A / sqrt(8 pi rho) / sigma^2`` (``rho`` = 0.27 columns per A^2): 0.25 % at a 3.1 A
   resolution, 0.15 % at 4 A. On the simulator's true volume the resolution-matched dilation RMS
   (away from dislocation cores and the core interface) goes from 0.34 % / 0.50 % (pristine /
   cracked, one 3.1 A mask) to 0.22 % / 0.28 %. ``smoothing_A=0`` with ``mask_sigma_inv_A`` =
   10 % of ``|g|`` is the classic single-mask GPA (3.1 A).
3. Deformation gradient relative to the reference lattice (reciprocal vectors as rows of
   ``G_ref``): ``F = G_loc^-1 G_ref``, which maps the reference lattice's real-space vectors onto the
   local ones (exact for uniform dilation and rotation, and equal to Hytch's
   ``grad u = -(1/2 pi) A [grad P]`` to first order).
4. Strain from ``F`` by polar decomposition ``F = V R`` (:func:`strain_from_F`): rotation
   ``atan2(F_yx - F_xy, F_xx + F_yy)`` in degrees; ``exx = V_xx - 1``, ``eyy = V_yy - 1``,
   ``exy = V_xy``, dilation ``exx + eyy`` (fractions, along the image axes). To first order these are
   Hytch's ``e = sym(grad u)`` and ``omega = antisym(grad u)``.

**Sign conventions.** Arrays are ``[x, y]`` (``x`` the first axis). ``exx > 0`` is a lattice
stretched along x relative to the reference. The rotation is positive counter-clockwise: from
``+x`` towards ``+y`` (a lattice whose [100] axis turns from x towards y); shown with
``imshow(map.T, origin="lower")`` that is counter-clockwise on screen.

**Reference lattice** (``reference``):

* ``"lattice"`` (default): a cubic lattice of parameter ``reference_a_A`` (default 5.46 A, CaF2,
  i.e. the shell) oriented at ``reference_angle_deg``; when that angle is ``None`` it is measured as
  the orientation of the amplitude-weighted mean local lattice over ``reference_mask`` (default:
  every masked pixel of every slice). Strain is then relative to unstrained CaF2, as the
  simulator's truth.
* ``"region"``: the amplitude-weighted mean local lattice over ``reference_mask`` (default the whole
  masked particle), so that region's mean strain and rotation are zero.
* ``reference_g_inv_A``: explicit reciprocal vectors, overriding both.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..io.datacube import InputError
from ._common import (as_origin, as_sampling, bragg_filter, check_g_vectors, check_volume,
                      default_mask_sigma, lattice_level, local_frequency, normalized_gaussian, psf_sigma_A)
from .peaks import A_CAF2_A, check_peaks_present, find_fluorite_lattice, fit_square_lattice, ideal_g


def strain_from_F(F) -> dict:
    """Strain and rotation of a deformation gradient ``F[i, j, ...] = d x_i / d X_j`` (``i, j`` in x, y).

    Polar decomposition ``F = V R``: ``R`` is the rotation by
    ``theta = atan2(F_yx - F_xy, F_xx + F_yy)`` (exact in 2-D) and ``V = F R^T`` the symmetric left
    stretch, expressed along the image axes. Strain is ``V - I``: ``exx = V_xx - 1``,
    ``eyy = V_yy - 1``, ``exy = V_xy``, so a rigid rotation gives zero strain and a uniform
    dilation ``s`` gives ``exx = eyy = s`` exactly; for small deformations these equal the
    symmetric part of ``grad u`` and the rotation its antisymmetric part.

    Returns
    -------
    dict with ``exx``, ``eyy``, ``exy``, ``dilation`` (``exx + eyy``; fractions) and
    ``rotation_deg`` (degrees, positive counter-clockwise from +x towards +y).
    """
    F = np.asarray(F, dtype=np.float64)
    theta = np.arctan2(F[1, 0] - F[0, 1], F[0, 0] + F[1, 1])
    c, s = np.cos(theta), np.sin(theta)
    # V = F R^T with R = [[c, -s], [s, c]]
    vxx = F[0, 0] * c - F[0, 1] * s
    vyy = F[1, 0] * s + F[1, 1] * c
    vxy = 0.5 * ((F[0, 0] * s + F[0, 1] * c) + (F[1, 0] * c - F[1, 1] * s))
    exx, eyy = vxx - 1.0, vyy - 1.0
    return {"exx": exx, "eyy": eyy, "exy": vxy, "dilation": exx + eyy, "rotation_deg": np.rad2deg(theta)}


@dataclass
class StrainResult:
    """Per-slice strain of a volume (maps ``(nz, nx, ny)`` float32, NaN where ``mask`` is False).

    Attributes
    ----------
    exx, eyy, exy, dilation : ndarray
        Strain relative to the reference lattice, fractions (x100 for %).
    rotation_deg : ndarray
        In-plane lattice rotation relative to the reference, degrees, positive counter-clockwise.
    amplitude : ndarray
        Bragg amplitude of the weaker of the two reflections, relative to its typical lattice level.
    mask : ndarray of bool
        Where ``amplitude >= amplitude_threshold``.
    g_vectors_inv_A : (2, 2)
        Mask centres (the two reflections), 1/A.
    reference_g_inv_A : (2, 2)
        Reciprocal vectors of the zero-strain reference lattice, 1/A.
    hk : (2, 2) or None
        Miller indices of the two reflections.
    reference : str
        How the reference was chosen (human-readable).
    mask_sigma_inv_A, resolution_A : float
        Bragg-mask width (1/A) and the maps' real-space resolution (A): the standard deviation of
        the mask's point spread and the local-frequency smoothing combined in quadrature.
    amplitude_threshold : float
    sampling_A : (float, float)
    origin_A : (float, float)
    """

    exx: np.ndarray
    eyy: np.ndarray
    exy: np.ndarray
    dilation: np.ndarray
    rotation_deg: np.ndarray
    amplitude: np.ndarray
    mask: np.ndarray
    g_vectors_inv_A: np.ndarray
    reference_g_inv_A: np.ndarray
    hk: np.ndarray | None
    reference: str
    mask_sigma_inv_A: float
    resolution_A: float
    amplitude_threshold: float
    sampling_A: tuple[float, float]
    origin_A: tuple[float, float] = (0.0, 0.0)
    extra: dict = field(default_factory=dict)


GPA_MASK_FRACTION = 0.15
"""Default Bragg-mask width of :func:`gpa_strain`, fraction of the shorter ``|g|``."""


def smooth_local_lattice(g_local, amplitude, smoothing_A: float, sampling_A):
    """Amplitude-weighted Gaussian smoothing of local reciprocal vectors, in place and returned.

    Parameters
    ----------
    g_local : ndarray (nz, 2, 2, nx, ny)
        Local vectors of two reflections, 1/A (from :func:`local_lattice`).
    amplitude : ndarray (nz, 2, nx, ny)
        Their Bragg amplitudes, the weights (``|B_i|``).
    smoothing_A : float
        Gaussian standard deviation, A (0: no smoothing).
    sampling_A : float or (float, float)
        Pixel size, A.
    """
    if not (np.isfinite(smoothing_A) and smoothing_A >= 0):
        raise InputError(f"lattice analysis: smoothing_A must be a non-negative length in Angstrom, got {smoothing_A!r}.")
    if smoothing_A == 0:
        return g_local
    dx, dy = as_sampling(sampling_A)
    sig = (float(smoothing_A) / dx, float(smoothing_A) / dy)
    for z in range(g_local.shape[0]):
        for i in range(2):
            for c in range(2):
                g_local[z, i, c] = normalized_gaussian(g_local[z, i, c], amplitude[z, i], sig)
    return g_local


def local_lattice(volume, sampling_A, g_vectors_inv_A, mask_sigma_inv_A: float | None = None):
    """Local reciprocal vectors and Bragg amplitudes of two reflections in every slice.

    Parameters
    ----------
    volume : ndarray (nz, nx, ny)
        Projected potential, V*A.
    sampling_A : float or (float, float)
        Pixel size, A.
    g_vectors_inv_A : (2, 2)
        The two reflections (mask centres), 1/A.
    mask_sigma_inv_A : float, optional
        Gaussian mask width, 1/A (default 10 % of the shorter ``|g|``).

    Returns
    -------
    g_local : ndarray (nz, 2, 2, nx, ny) float32
        ``g_local[z, i, c]``: component ``c`` (x, y) of the local vector of reflection ``i``, 1/A.
    amplitude : ndarray (nz, 2, nx, ny) float32
        ``|B_i|``, V*A.
    """
    v = check_volume(volume)
    g = check_g_vectors(g_vectors_inv_A)
    sigma = default_mask_sigma(g, mask_sigma_inv_A)
    if not sigma > 0:
        raise InputError(f"lattice analysis: mask_sigma_inv_A must be positive, got {mask_sigma_inv_A!r}.")
    nz, nx, ny = v.shape
    gl = np.empty((nz, 2, 2, nx, ny), dtype=np.float32)
    amp = np.empty((nz, 2, nx, ny), dtype=np.float32)
    for z in range(nz):
        spec = np.fft.fft2(v[z])
        for i in range(2):
            b = bragg_filter(spec, g[i], sigma, sampling_A)
            gl[z, i, 0], gl[z, i, 1] = local_frequency(b, sampling_A)
            amp[z, i] = np.abs(b)
    return gl, amp


def deformation_gradient(g_local, reference_g_inv_A) -> np.ndarray:
    """``F = G_loc^-1 G_ref`` per pixel; ``g_local`` is ``(..., 2 reflections, 2 components, nx, ny)``
    moved to ``(2, 2, ...)`` order internally. Returns ``F[i, j, ...]``."""
    G = np.moveaxis(np.moveaxis(np.asarray(g_local), -4, 0), -3, 1)  # (2, 2, ..., nx, ny)
    Gr = np.asarray(reference_g_inv_A, dtype=np.float64)
    det = G[0, 0] * G[1, 1] - G[0, 1] * G[1, 0]
    det = np.where(np.abs(det) < 1e-12, np.nan, det)
    inv = np.array([[G[1, 1], -G[0, 1]], [-G[1, 0], G[0, 0]]]) / det
    return np.einsum("ik...,kj->ij...", inv, Gr)


def _weighted_mean_g(g_local, amp, mask):
    """Amplitude-weighted mean local vectors ``(2, 2)`` over ``mask`` (nz, nx, ny)."""
    out = np.zeros((2, 2))
    tot = 0.0
    for z in range(g_local.shape[0]):
        w = (amp[z, 0].astype(np.float64) * amp[z, 1]) * mask[z]
        tot += w.sum()
        out += np.einsum("icxy,xy->ic", g_local[z].astype(np.float64), w)
    if not tot > 0:
        raise InputError("lattice analysis: the reference region holds no lattice signal above the amplitude threshold.")
    return out / tot


def gpa_strain(volume, sampling_A, g_vectors_inv_A, *, hk=None, mask_sigma_inv_A: float | None = None,
               smoothing_A: float = 3.4, reference: str = "lattice", reference_a_A: float = A_CAF2_A,
               reference_angle_deg: float | None = None, reference_mask=None, reference_g_inv_A=None,
               amplitude_threshold: float = 0.3, origin_A=(0.0, 0.0)) -> StrainResult:
    """Geometric phase analysis of every slice (see the module doc for method and conventions).

    Parameters
    ----------
    volume : ndarray (nz, nx, ny)
        Projected potential per slice, V*A, indexed ``[z, x, y]``.
    sampling_A : float or (float, float)
        Pixel size, A.
    g_vectors_inv_A : (2, 2)
        Two non-collinear reflections present in the volume (mask centres), 1/A.
    hk : (2, 2), optional
        Their Miller indices (needed by ``reference="lattice"``), e.g. ``[[2, 2], [-2, 2]]``.
    mask_sigma_inv_A : float, optional
        Gaussian Bragg-mask width, 1/A (default :data:`GPA_MASK_FRACTION` = 15 % of the shorter ``|g|``).
    smoothing_A : float
        Amplitude-weighted Gaussian smoothing of the local reciprocal vectors, A (module doc; 0: none).
    reference : {"lattice", "region"}
        Zero-strain reference (module doc).
    reference_a_A : float
        Lattice parameter of the ``"lattice"`` reference, A (default CaF2, 5.46).
    reference_angle_deg : float, optional
        Orientation of the reference [100] axis from +x, degrees (default: measured).
    reference_mask : ndarray of bool (nz, nx, ny) or (nx, ny), optional
        Region for measured references (default: every pixel above the amplitude threshold).
    reference_g_inv_A : (2, 2), optional
        Explicit reference reciprocal vectors, 1/A (overrides ``reference``).
    amplitude_threshold : float
        Pixels where the weaker Bragg amplitude is below this fraction of its typical lattice level
        (median over lattice pixels) are masked (NaN).
    origin_A : (float, float)
        Position of pixel (0, 0), A.

    Returns
    -------
    StrainResult
    """
    v = check_volume(volume)
    sampling = as_sampling(sampling_A)
    origin = as_origin(origin_A)
    g = check_g_vectors(g_vectors_inv_A)
    sigma = default_mask_sigma(g, mask_sigma_inv_A, fraction=GPA_MASK_FRACTION)
    gl, amp = local_lattice(v, sampling, g, sigma)
    smooth_local_lattice(gl, amp, smoothing_A, sampling)
    levels = np.array([lattice_level(amp[:, i]) for i in range(2)])
    if not np.all(levels > 0):
        raise InputError("lattice analysis: a chosen reflection has zero Bragg amplitude everywhere; the peak is absent.")
    rel = np.min(amp / levels[None, :, None, None], axis=1)
    mask = rel >= float(amplitude_threshold)
    if not mask.any():
        raise InputError(f"lattice analysis: no pixel has Bragg amplitude above amplitude_threshold="
                         f"{amplitude_threshold}; the volume shows no lattice.")
    region = mask
    if reference_mask is not None:
        rm = np.asarray(reference_mask, dtype=bool)
        if rm.ndim == 2:
            rm = np.broadcast_to(rm, mask.shape)
        if rm.shape != mask.shape:
            raise InputError(f"lattice analysis: reference_mask must have shape {mask.shape[1:]} or {mask.shape}, got {rm.shape}.")
        region = mask & rm
    if reference_g_inv_A is not None:
        gref = check_g_vectors(reference_g_inv_A, name="reference_g_inv_A")
        desc = "explicit reference_g_inv_A"
    elif reference == "region":
        gref = _weighted_mean_g(gl, amp, region)
        desc = "region: amplitude-weighted mean lattice of " + ("reference_mask" if reference_mask is not None else "the masked particle")
    elif reference == "lattice":
        if hk is None:
            raise InputError("lattice analysis: reference='lattice' needs the Miller indices hk of the two g vectors.")
        hk = np.asarray(hk, dtype=np.float64)
        if reference_angle_deg is None:
            _, ang = fit_square_lattice(_weighted_mean_g(gl, amp, region), hk)
            src = "measured over " + ("reference_mask" if reference_mask is not None else "the masked particle")
        else:
            ang, src = float(reference_angle_deg), "given"
        gref = ideal_g(float(reference_a_A), ang, hk)
        desc = f"lattice: a = {float(reference_a_A):.4f} A, [100] at {ang:.4f} deg ({src})"
    else:
        raise InputError(f"lattice analysis: reference must be 'lattice' or 'region', got {reference!r}.")
    out = {k: np.empty(v.shape, dtype=np.float32) for k in ("exx", "eyy", "exy", "dilation", "rotation_deg")}
    for z in range(v.shape[0]):
        e = strain_from_F(deformation_gradient(gl[z].astype(np.float64), gref))
        for k in out:
            out[k][z] = np.where(mask[z], e[k], np.nan)
    return StrainResult(exx=out["exx"], eyy=out["eyy"], exy=out["exy"], dilation=out["dilation"],
                        rotation_deg=out["rotation_deg"], amplitude=rel.astype(np.float32), mask=mask,
                        g_vectors_inv_A=g, reference_g_inv_A=np.asarray(gref, dtype=np.float64),
                        hk=None if hk is None else np.asarray(hk, dtype=np.float64), reference=desc,
                        mask_sigma_inv_A=sigma, resolution_A=float(np.hypot(psf_sigma_A(sigma), smoothing_A)),
                        amplitude_threshold=float(amplitude_threshold), sampling_A=sampling, origin_A=origin)


def index_g(g_inv_A, a_A: float, angle_deg: float) -> np.ndarray:
    """Nearest integer Miller indices ``(h, k)`` of vectors ``g_inv_A`` (1/A) in a cubic lattice."""
    g = np.atleast_2d(np.asarray(g_inv_A, dtype=np.float64))
    t = np.deg2rad(angle_deg)
    rot_inv = np.array([[np.cos(t), np.sin(t)], [-np.sin(t), np.cos(t)]])
    return np.rint(g @ rot_inv.T * a_A)


def strain_from_volume(volume, sampling_A, *, g_vectors_inv_A=None, peak_family: str = "220",
                       a_range_A=(5.3, 5.9), min_snr: float = 50.0, **gpa_kwargs) -> tuple[StrainResult, "FluoriteLattice"]:
    """Find and index the fluorite lattice, then run :func:`gpa_strain` on two of its reflections.

    Parameters
    ----------
    volume, sampling_A
        As :func:`gpa_strain`.
    g_vectors_inv_A : (2, 2), optional
        Explicit reflections (1/A) instead of the indexed pair; checked to be present in the spectrum.
    peak_family : {"220", "200"}
        Which indexed pair to use (default ``{220}``, strong in shell and core alike).
    a_range_A, min_snr
        Passed to :func:`~msptycho.lattice.peaks.find_fluorite_lattice`.
    **gpa_kwargs
        Passed to :func:`gpa_strain` (``mask_sigma_inv_A``, ``reference``, ``reference_a_A``, ...).

    Returns
    -------
    (StrainResult, FluoriteLattice)
    """
    lat = find_fluorite_lattice(volume, sampling_A, a_range_A=a_range_A, min_snr=min_snr)
    if g_vectors_inv_A is not None:
        g = check_g_vectors(g_vectors_inv_A)
        check_peaks_present(volume, sampling_A, g)
        hk = index_g(g, lat.a_A, lat.angle_deg)
    elif peak_family == "220":
        g, hk = lat.g220_inv_A, lat.hk220
    elif peak_family == "200":
        check_peaks_present(volume, sampling_A, lat.g200_inv_A, names=["(2, 0)", "(0, 2)"])
        g, hk = lat.g200_inv_A, lat.hk200
    else:
        raise InputError(f"lattice analysis: peak_family must be '220' or '200', got {peak_family!r}.")
    res = gpa_strain(volume, sampling_A, g, hk=hk, **gpa_kwargs)
    res.extra["lattice"] = lat.as_dict()
    return res, lat
