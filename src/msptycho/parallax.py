"""Parallax: tilt-corrected bright-field imaging and a fit of defocus, astigmatism, coma and the
scan rotation (as in py4DSTEM's parallax; Varnavides et al. and Yu et al., tcBF).

Physics (weak-phase object, project conventions of :mod:`msptycho.physics` and
``workflow/schemas/datacube.md``): the virtual bright-field image recorded by the detector pixel at
spatial frequency ``k`` is, to first order, the object's image displaced by

    ``d(k) = -grad_k chi(k) / (2 pi)``   (Angstrom, in the detector/object frame),

i.e. a feature at ``r`` appears at ``r + d(k)``. With ``chi`` of :func:`msptycho.physics.aberration_function`
and ``defocus_A = -C10`` a pure defocus gives ``d = wavelength * defocus_A * k``: for a positive
(over-focus) defocus features move towards ``+k``.

Scan geometry: scan position ``(i, j)`` lies at ``R_scan = (i, j) * scan_step_A`` in the scan frame
and at ``R_obj = Rot(scan_rotation) @ T @ R_scan`` in the detector/object frame, where
``Rot(a) = [[cos a, -sin a], [sin a, cos a]]`` and ``T`` swaps the two scan axes when ``transpose``
is true (identity otherwise). A displacement ``d`` in the object frame is seen in the scan frame as
``s = T @ Rot(-scan_rotation) @ d``.

Ambiguities: (``scan_rotation``, ``aberrations``) and (``scan_rotation + 180 deg``, ``-aberrations``)
give identical shift fields (and identical data for a pure phase object of opposite sign), so the
fit chooses the branch within +-90 degrees of ``rotation_guess_deg`` (the calibration's
``scan_rotation_deg`` by default). The transpose flag is not determined by a linear shift field
either (any 2x2 matrix is a rotation times a symmetric matrix, or a reflection times one); the fit
chooses the hypothesis with the smaller two-fold astigmatism relative to the defocus, unless
``transpose`` is given.

Thick samples: a BF image is the sum of the images of the sample's layers, and a layer at depth
``z`` below the plane where the probe has defocus ``D`` is displaced by ``wavelength (D - z) k``.
The fit returns one defocus for all layers, a contrast-weighted mean: a weak-phase layer's BF
contrast grows in proportion to its defocus and the cross-correlation weighs each layer by its
contrast squared, so layers of equal strength give ``sum (D - z)^3 / sum (D - z)^2`` (exact for a
single layer, within ~1-2 % for layers spread over 60 A at 180 A defocus; layers whose
displacements differ by more than the features' size pull it further towards the most defocused
one). On simulated data the truth to compare with is ``defocus_parallax_A`` of
:func:`msptycho.simulate.truth.defocus_reference_planes`, not the entrance-surface defocus. A
crystal whose lattice orientation changes with depth (a twisted shell) makes the layers' lattice
fringes, aliased by the scan step, move not quite along ``k``; what the notch (below) leaves of
them biases the fitted rotation (default pristine sample, shell twisted by 1.5 deg: 0.6 deg; the
same sample simulated without the twist: -0.25 deg; truth 0; with the former ``smooth_px`` of 1.0:
1.4 and 0.6 deg). :mod:`msptycho.calibrate` refines the rotation.

Method:

1. one streaming pass (row blocks) for the mean diffraction pattern, which gives the bright-field
   disk centre; a second pass accumulates virtual BF images of the detector binned by the finest
   binning factor, for binned pixels within ``bf_radius_fraction`` of the semi-angle;
2. for each binning factor (coarse to fine; coarser images are sums of finer ones) the images,
   normalised to their mean, are aligned iteratively against the mean of the others by
   cross-correlation (Fourier-shifted, windowed, parabolic sub-pixel peak; sharp lattice peaks of
   the mean power spectrum notched out; each iteration restarts from the robust affine fit of the
   shifts); the shifts start from the last accepted level's fit; a level is accepted when its fit
   explains at least ``min_explained_fraction`` of the shifts' variance, and the finest accepted
   level gives the result;
3. the shifts are fitted, with outlier rejection, by the aberration-gradient model over a grid of
   scan rotations (then refined) for both transpose hypotheses;
4. the tilt-corrected image: every BF image is placed at its positions minus its (fitted) shift on a
   grid ``upsample`` times finer than the scan and averaged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage, optimize
from scipy.signal.windows import tukey

from . import physics
from .drift import splat
from .io.datacube import Calibration, InputError

#: aberration coefficients of the linear shift model, in order (see :func:`shift_basis_A`)
COEFFS = ("defocus_A", "C12a_A", "C12b_A", "C21a_A", "C21b_A")


@dataclass
class ParallaxResult:
    """Result of :func:`parallax_fit`.

    Attributes
    ----------
    defocus_A : float
        Defocus, Angstrom (``-C10``, positive = over-focus, see :mod:`msptycho.physics`).
    C12_A, phi12_rad : float
        Two-fold astigmatism magnitude (A) and azimuth (rad, in the detector frame).
    C21_A, phi21_rad : float
        Axial coma (A, rad); NaN when not fitted.
    scan_rotation_deg : float
        Rotation of the scan axes relative to the detector axes, degrees, in [-180, 180).
    transpose : bool
        Whether the scan axes are swapped.
    k_inv_A : ndarray (n, 2)
        Spatial frequency (detector frame) of each virtual BF image of the level used, 1/A.
    shifts_A : ndarray (n, 2)
        Measured displacement of each BF image, scan frame, Angstrom.
    shifts_fit_A : ndarray (n, 2)
        Displacement predicted by the fitted model, scan frame, Angstrom.
    weights : ndarray (n,)
        Counts of each BF image (the fit's weights).
    inliers : ndarray (n,) bool
        BF images kept by the outlier rejection.
    offset_A : ndarray (2,)
        Constant displacement of the fit (object frame; a detector-centre error shows up here).
    residual_rms_A : float
        Weighted RMS of the fit residual over the inliers, Angstrom.
    explained_fraction : float
        Fraction of the (weighted) variance of the measured shifts that the model explains (R^2,
        inliers). Near 1 for a clean parallax measurement; well below (say < 0.8) the shifts were
        not measured reliably (e.g. BF images dominated by a crystal's lattice fringes aliased by a
        scan step larger than half the lattice spacing) and the estimates should not be trusted.
    image : ndarray (H, W)
        Upsampled tilt-corrected BF image (contrast, mean 0), scan frame.
    image_sampling_A : float
        Pixel size of ``image``, Angstrom.
    image_bf : ndarray (Rx, Ry)
        Plain (uncorrected) bright-field image, sum over the BF disk, counts.
    detector_center_px : (float, float)
        Bright-field disk centre used, detector pixels.
    scan_step_A : float
        Scan step of the data, Angstrom.
    energy_eV : float
        Beam energy, eV.
    history : list of dict
        Per binning level: ``bin``, ``n_images``, ``defocus_A``, ``scan_rotation_deg``,
        ``residual_rms_A``, ``explained_fraction``, ``accepted``, ``used`` (the level that gave the
        estimates, shifts and image).
    """

    defocus_A: float
    C12_A: float
    phi12_rad: float
    C21_A: float
    phi21_rad: float
    scan_rotation_deg: float
    transpose: bool
    k_inv_A: np.ndarray
    shifts_A: np.ndarray
    shifts_fit_A: np.ndarray
    weights: np.ndarray
    inliers: np.ndarray
    offset_A: np.ndarray
    residual_rms_A: float
    explained_fraction: float
    image: np.ndarray
    image_sampling_A: float
    image_bf: np.ndarray
    detector_center_px: tuple
    scan_step_A: float
    energy_eV: float
    history: list = field(default_factory=list)

    @property
    def aberrations(self) -> physics.Aberrations:
        """The fitted coefficients as :class:`msptycho.physics.Aberrations` (coma 0 if not fitted)."""
        c21 = 0.0 if not np.isfinite(self.C21_A) else self.C21_A
        p21 = 0.0 if not np.isfinite(self.phi21_rad) else self.phi21_rad
        return physics.Aberrations(defocus_A=self.defocus_A, C12_A=self.C12_A, phi12_rad=self.phi12_rad,
                                   C21_A=c21, phi21_rad=p21)


# --------------------------------------------------------------------------------------------
# the shift model


def _unit_aberrations():
    return (physics.Aberrations(defocus_A=1.0),
            physics.Aberrations(C12_A=1.0, phi12_rad=0.0),
            physics.Aberrations(C12_A=1.0, phi12_rad=np.pi / 4),
            physics.Aberrations(C21_A=1.0, phi21_rad=0.0),
            physics.Aberrations(C21_A=1.0, phi21_rad=np.pi / 2))


def shift_basis_A(k_inv_A: np.ndarray, wavelength_A: float) -> np.ndarray:
    """Displacement fields ``-grad chi / (2 pi)`` of unit aberration coefficients.

    Computed by central differences of :func:`msptycho.physics.aberration_function` (exact for the
    quadratic terms, error ~1e-10 relative for coma), so the sign conventions are those of
    :mod:`msptycho.physics`.

    Parameters
    ----------
    k_inv_A : ndarray (n, 2)
        Spatial frequencies (detector frame), 1/A.
    wavelength_A : float
        Electron wavelength, A.

    Returns
    -------
    ndarray (5, n, 2)
        Object-frame displacement (A) per 1 A of ``defocus_A``, ``C12 cos 2phi12``,
        ``C12 sin 2phi12``, ``C21 cos phi21``, ``C21 sin phi21`` (the order of :data:`COEFFS`).
    """
    k = np.asarray(k_inv_A, dtype=np.float64)
    kmax = max(float(np.abs(k).max()), 1e-6)
    h = 1e-4 * kmax
    out = np.empty((len(COEFFS),) + k.shape)
    for c, ab in enumerate(_unit_aberrations()):
        for ax in range(2):
            dk = np.zeros(2)
            dk[ax] = h
            cp = physics.aberration_function(k[:, 0] + dk[0], k[:, 1] + dk[1], wavelength_A, ab)
            cm = physics.aberration_function(k[:, 0] - dk[0], k[:, 1] - dk[1], wavelength_A, ab)
            out[c, :, ax] = -(cp - cm) / (2 * h) / (2 * np.pi)
    return out


def _rot(deg):
    a = np.deg2rad(deg)
    return np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])


_SWAP = np.array([[0.0, 1.0], [1.0, 0.0]])


def object_to_scan(d_obj: np.ndarray, scan_rotation_deg: float, transpose: bool) -> np.ndarray:
    """Displacements (n, 2) from the object/detector frame to the scan frame (module docstring)."""
    m = _rot(-scan_rotation_deg)
    if transpose:
        m = _SWAP @ m
    return np.asarray(d_obj) @ m.T


def scan_to_object(s_scan: np.ndarray, scan_rotation_deg: float, transpose: bool) -> np.ndarray:
    """Inverse of :func:`object_to_scan`."""
    m = _rot(scan_rotation_deg)
    if transpose:
        m = m @ _SWAP
    return np.asarray(s_scan) @ m.T


def model_shifts_A(k_inv_A, energy_eV: float, aberrations: physics.Aberrations,
                   scan_rotation_deg: float = 0.0, transpose: bool = False) -> np.ndarray:
    """Displacement (scan frame, Angstrom) of the virtual BF image at each ``k`` (n, 2).

    Parameters
    ----------
    k_inv_A : ndarray (n, 2)
        Detector-frame spatial frequencies, 1/A.
    energy_eV : float
        Beam energy, eV.
    aberrations : physics.Aberrations
        Defocus, C12 and C21 are used (C23, C30 are not part of the parallax model).
    scan_rotation_deg, transpose
        Scan geometry (module docstring).
    """
    lam = physics.wavelength_A(energy_eV)
    b = shift_basis_A(k_inv_A, lam)
    a = aberrations
    coef = np.array([a.defocus_A, a.C12_A * np.cos(2 * a.phi12_rad), a.C12_A * np.sin(2 * a.phi12_rad),
                     a.C21_A * np.cos(a.phi21_rad), a.C21_A * np.sin(a.phi21_rad)])
    d = np.tensordot(coef, b, axes=1)
    return object_to_scan(d, scan_rotation_deg, transpose)


def _lstsq(basis, d_obj, w):
    """Weighted linear fit of d_obj (n, 2) by basis (c, n, 2) plus a constant offset."""
    n = d_obj.shape[0]
    c = basis.shape[0]
    A = np.zeros((2 * n, c + 2))
    A[:n, :c] = basis[:, :, 0].T
    A[n:, :c] = basis[:, :, 1].T
    A[:n, c] = 1.0
    A[n:, c + 1] = 1.0
    y = np.concatenate([d_obj[:, 0], d_obj[:, 1]])
    sw = np.sqrt(np.concatenate([w, w]))
    coef, *_ = np.linalg.lstsq(A * sw[:, None], y * sw, rcond=None)
    r = (A @ coef - y).reshape(2, n).T
    ssr = float(np.sum(w * np.sum(r**2, axis=1)))
    return coef, ssr, r


def fit_shifts(k_inv_A, shifts_A, weights, energy_eV: float, *, rotation_guess_deg: float = 0.0,
               transpose: bool | None = None, fit_coma: bool = False,
               outlier_sigma: float = 4.0) -> dict:
    """Fit measured BF-image displacements with the aberration-gradient model.

    Parameters
    ----------
    k_inv_A : ndarray (n, 2)
        Detector-frame spatial frequency of each BF image, 1/A.
    shifts_A : ndarray (n, 2)
        Measured displacement of each image in the scan frame, Angstrom.
    weights : ndarray (n,)
        Non-negative weights (counts).
    energy_eV : float
        Beam energy, eV.
    rotation_guess_deg : float
        The fitted rotation lies within +-90 degrees of this (resolves the 180-degree ambiguity).
    transpose : bool or None
        Scan transpose; None chooses the hypothesis with less two-fold astigmatism.
    fit_coma : bool
        Also fit axial coma C21.
    outlier_sigma : float
        Images whose residual exceeds this many robust standard deviations are dropped and the fit
        repeated (0: no rejection).

    Returns
    -------
    dict
        ``defocus_A, C12_A, phi12_rad, C21_A, phi21_rad, scan_rotation_deg, transpose, offset_A,
        residual_rms_A, explained_fraction, inliers, shifts_fit_A``.
    """
    k = np.asarray(k_inv_A, dtype=np.float64)
    s = np.asarray(shifts_A, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    if k.ndim != 2 or k.shape[1] != 2 or s.shape != k.shape or w.shape != (k.shape[0],):
        raise ValueError("k_inv_A and shifts_A must be (n, 2) and weights (n,)")
    ncoef = 5 if fit_coma else 3
    if k.shape[0] < ncoef + 2:
        raise InputError(f"parallax: only {k.shape[0]} bright-field images to fit {ncoef} aberrations and "
                         f"the rotation; expected more bright-field detector pixels (use a smaller binning).")
    lam = physics.wavelength_A(energy_eV)
    basis = shift_basis_A(k, lam)[:ncoef]
    inl = np.ones(k.shape[0], dtype=bool)
    best = None
    for _round in range(3):
        best = _fit_geometry(basis, s, w, inl, rotation_guess_deg, transpose)
        if outlier_sigma <= 0:
            break
        res = np.hypot(*(s - best["shifts_fit_A"]).T)
        sig = 1.4826 * np.median(np.abs(res[inl])) + 1e-12
        new = res < outlier_sigma * sig + 1e-9
        if np.array_equal(new, inl) or new.sum() < ncoef + 2:
            break
        inl = new
    best["inliers"] = inl
    return best


def _fit_geometry(basis, s, w, inl, rotation_guess_deg, transpose):
    b = basis[:, inl]
    si = s[inl]
    wi = w[inl]
    cands = []
    for tr in ((False, True) if transpose is None else (bool(transpose),)):
        def ssr(theta, tr=tr):
            return _lstsq(b, scan_to_object(si, theta, tr), wi)[1]
        grid = rotation_guess_deg + np.arange(-90.0, 90.0, 1.0)
        vals = np.array([ssr(t) for t in grid])
        i = int(np.argmin(vals))
        lo, hi = grid[i] - 1.0, grid[i] + 1.0
        r = optimize.minimize_scalar(ssr, bounds=(lo, hi), method="bounded", options={"xatol": 1e-4})
        theta = float(r.x)
        coef, ssr_v, _ = _lstsq(b, scan_to_object(si, theta, tr), wi)
        cands.append((tr, theta, coef, ssr_v))
    if len(cands) == 2:
        ratio = [abs(np.hypot(c[2][1], c[2][2])) / max(abs(c[2][0]), 1e-12) for c in cands]
        tr, theta, coef, ssr_v = cands[int(np.argmin(ratio))]
    else:
        tr, theta, coef, ssr_v = cands[0]
    nc = basis.shape[0]
    d_fit = np.tensordot(coef[:nc], basis, axes=1) + coef[nc:nc + 2][None, :]
    theta_w = (theta + 180.0) % 360.0 - 180.0
    out = dict(defocus_A=float(coef[0]), C12_A=float(np.hypot(coef[1], coef[2])),
               phi12_rad=float(0.5 * np.arctan2(coef[2], coef[1])),
               C21_A=float(np.hypot(coef[3], coef[4])) if nc == 5 else float("nan"),
               phi21_rad=float(np.arctan2(coef[4], coef[3])) if nc == 5 else float("nan"),
               scan_rotation_deg=float(theta_w), transpose=bool(tr), offset_A=coef[nc:nc + 2].copy(),
               residual_rms_A=float(np.sqrt(ssr_v / max(wi.sum(), 1e-30))),
               explained_fraction=float(1.0 - ssr_v / max(float(np.sum(wi * np.sum(
                   (si - np.average(si, axis=0, weights=wi)) ** 2, axis=1))), 1e-30)),
               shifts_fit_A=object_to_scan(d_fit, theta_w, tr))
    return out


# --------------------------------------------------------------------------------------------
# virtual bright-field images


@dataclass
class VirtualBF:
    """Virtual bright-field images of binned detector pixels.

    Attributes
    ----------
    images : ndarray (n, Rx, Ry) float64
        Counts per scan position of each binned BF pixel.
    k_inv_A : ndarray (n, 2)
        Intensity-weighted mean spatial frequency of each binned pixel, 1/A.
    bins_px : ndarray (n, 2) int
        Index ``(bx, by)`` of each binned pixel on the binned detector.
    bin_factor : int
        Detector binning, pixels.
    mean_pattern : ndarray (Qx, Qy)
        Mean diffraction pattern, counts.
    center_px : (float, float)
        BF disk centre used, detector pixels.
    """

    images: np.ndarray
    k_inv_A: np.ndarray
    bins_px: np.ndarray
    bin_factor: int
    mean_pattern: np.ndarray
    center_px: tuple


def _check_datacube(datacube, calibration):
    if not hasattr(datacube, "shape") or len(datacube.shape) != 4:
        raise InputError(f"parallax: the datacube must be 4-D (Rx, Ry, Qx, Qy), got shape {getattr(datacube, 'shape', None)}.")
    if not isinstance(calibration, Calibration):
        raise InputError(f"parallax: calibration must be a msptycho.io.Calibration, got {type(calibration).__name__}.")
    calibration.validate("parallax calibration")
    rx, ry, qx, qy = datacube.shape
    if rx < 8 or ry < 8:
        raise InputError(f"parallax: the scan of {rx} x {ry} positions is too small; expected at least 8 x 8.")


def _bin_pattern(block, b, shape_b):
    """Sum detector pixels in b x b bins: (..., Qx, Qy) -> (..., Qx//b+, Qy//b+)."""
    qx, qy = block.shape[-2:]
    px, py = shape_b[0] * b - qx, shape_b[1] * b - qy
    if px or py:
        block = np.pad(block, [(0, 0)] * (block.ndim - 2) + [(0, px), (0, py)])
    sh = block.shape[:-2] + (shape_b[0], b, shape_b[1], b)
    return block.reshape(sh).sum(axis=(-3, -1))


def virtual_bf_images(datacube, calibration: Calibration, *, bin_factor: int = 2,
                      bf_radius_fraction: float = 0.9, detector_center_px=None,
                      rows_per_block: int = 8) -> VirtualBF:
    """Virtual bright-field images of binned detector pixels, streaming the datacube by scan rows.

    Parameters
    ----------
    datacube : ndarray or h5py.Dataset (Rx, Ry, Qx, Qy)
        Diffraction intensities (counts); read ``rows_per_block`` scan rows at a time.
    calibration : Calibration
        Energy, semi-angle and detector sampling are used.
    bin_factor : int
        Detector binning, pixels per side.
    bf_radius_fraction : float
        Detector pixels within this fraction of the convergence semi-angle count as bright field;
        a binned pixel is used when at least half of its pixels do.
    detector_center_px : (float, float) or None
        BF disk centre; None measures it from the mean pattern (centre of mass of the pixels
        above half the maximum).
    rows_per_block : int
        Scan rows read per block.
    """
    _check_datacube(datacube, calibration)
    rx, ry, qx, qy = datacube.shape
    b = int(bin_factor)
    if b < 1:
        raise ValueError(f"bin_factor must be >= 1, got {bin_factor!r}")
    mean = np.zeros((qx, qy))
    for r0 in range(0, rx, rows_per_block):
        blk = np.asarray(datacube[r0:r0 + rows_per_block], dtype=np.float64)
        if not np.all(np.isfinite(blk)):
            raise InputError(f"parallax: the datacube has NaN or infinite values in scan rows {r0}..{r0 + len(blk) - 1}; expected finite counts.")
        mean += blk.sum(axis=(0, 1))
    mean /= rx * ry
    if not mean.max() > 0:
        raise InputError("parallax: the mean diffraction pattern is empty; expected counts in the bright-field disk.")
    if detector_center_px is None:
        m = mean > 0.5 * mean.max()
        qi, qj = np.nonzero(m)
        wts = mean[m]
        center = (float(np.sum(qi * wts) / wts.sum()), float(np.sum(qj * wts) / wts.sum()))
    else:
        center = tuple(float(c) for c in detector_center_px)
    lam = physics.wavelength_A(calibration.energy_eV)
    dk = physics.mrad_to_inv_A(calibration.mrad_per_pixel, calibration.energy_eV)
    qxi, qyi = np.meshgrid(np.arange(qx), np.arange(qy), indexing="ij")
    kx = (qxi - center[0]) * dk
    ky = (qyi - center[1]) * dk
    alpha_mrad = np.hypot(kx, ky) * lam * 1e3
    mask = alpha_mrad <= bf_radius_fraction * calibration.semiangle_mrad
    shape_b = (math.ceil(qx / b), math.ceil(qy / b))
    frac = _bin_pattern(mask.astype(float), b, shape_b) / (b * b)
    wmean = mean * mask
    wsum = _bin_pattern(wmean, b, shape_b)
    use = (frac >= 0.5) & (wsum > 0)
    if use.sum() < 7:
        raise InputError(
            f"parallax: only {int(use.sum())} binned detector pixels lie in the bright-field disk "
            f"(semiangle {calibration.semiangle_mrad} mrad, {calibration.mrad_per_pixel} mrad/pixel, binning {b}); "
            f"expected at least 7: check the calibration or lower the binning.")
    kxb = _bin_pattern(wmean * kx, b, shape_b)[use] / wsum[use]
    kyb = _bin_pattern(wmean * ky, b, shape_b)[use] / wsum[use]
    bins = np.argwhere(use)
    images = np.empty((len(bins), rx, ry))
    for r0 in range(0, rx, rows_per_block):
        blk = np.asarray(datacube[r0:r0 + rows_per_block], dtype=np.float64) * mask
        binned = _bin_pattern(blk, b, shape_b)  # (nr, ry, bx, by)
        images[:, r0:r0 + blk.shape[0], :] = np.moveaxis(binned[:, :, use], -1, 0)
    return VirtualBF(images=images, k_inv_A=np.stack([kxb, kyb], axis=1), bins_px=bins,
                     bin_factor=b, mean_pattern=mean, center_px=center)


def _coarsen(vbf: VirtualBF, factor: int):
    """Group the BF images of ``vbf`` into bins ``factor`` times larger."""
    groups = vbf.bins_px // factor
    keys, inv = np.unique(groups, axis=0, return_inverse=True)
    inv = inv.ravel()
    n = len(keys)
    counts = vbf.images.sum(axis=(1, 2))
    imgs = np.zeros((n,) + vbf.images.shape[1:])
    np.add.at(imgs, inv, vbf.images)
    w = np.bincount(inv, weights=counts, minlength=n)
    k = np.stack([np.bincount(inv, weights=counts * vbf.k_inv_A[:, c], minlength=n) for c in (0, 1)], 1)
    k = k / np.maximum(w, 1e-30)[:, None]
    # keep only reasonably filled coarse bins
    members = np.bincount(inv, minlength=n)
    keep = members >= 0.5 * members.max()
    return imgs[keep], k[keep], w[keep], inv, keep


# --------------------------------------------------------------------------------------------
# alignment


def align_images(images: np.ndarray, shifts_px: np.ndarray, weights: np.ndarray, *,
                 iterations: int = 6, smooth_px: float = 1.0, max_step_px: float = 4.0,
                 edge_frac: float = 0.2, band_limit_px=None, regularize_k_inv_A=None,
                 notch_threshold: float = 0.0) -> np.ndarray:
    """Align images to their (weighted) mean by cross-correlation, iteratively.

    Each image is compared with the weighted mean of all the *other* aligned images.

    Parameters
    ----------
    images : ndarray (n, Rx, Ry)
        Images (any scale; each is normalised to its mean).
    shifts_px : ndarray (n, 2)
        Starting displacement of each image, scan pixels (``image(R) = f(R - shift)``).
    weights : ndarray (n,)
        Weight of each image in the reference (counts).
    iterations : int
        Alignment iterations.
    smooth_px : float
        Gaussian smoothing of the cross-correlation, pixels (noise robustness of the peak).
    max_step_px : float
        Largest update per iteration, pixels.
    edge_frac : float
        Tukey window taper fraction applied before correlating (scan images are not periodic).
    band_limit_px : ndarray (n,) or None
        Per image, the largest spatial frequency (cycles per scan pixel) used in the correlation.
        :func:`parallax_fit` passes ``(k_max - |k|) * scan_step_A``: only there does the image
        carry both side bands ``k +- p`` of the bright-field disk, whose transfer is a pure shift
        times a real, even function; beyond it the single side band adds a phase that biases the
        measured shift (by tens of percent for pixels near the disk edge).
    regularize_k_inv_A : ndarray (n, 2) or None
        Spatial frequency of each image: when given, the shifts each iteration starts from are the
        robust affine fit ``M k + s0`` of the previous iteration's measurements (the aberration
        model to first order), which keeps single images, e.g. ones dominated by aliased lattice
        fringes, from running away; the returned shifts are still the last measurements.

    notch_threshold : float
        Spatial frequencies where the images' mean power exceeds this many times its local median
        (sharp lattice peaks) are left out of the correlation (0: off).

    Returns
    -------
    ndarray (n, 2)
        Measured displacements of the last iteration, scan pixels.
    """
    n, rx, ry = images.shape
    m = images.mean(axis=(1, 2), keepdims=True)
    c = images / np.where(m > 0, m, 1.0) - 1.0
    F = np.fft.fft2(c)
    px_ = np.fft.fftfreq(rx)[:, None]
    py_ = np.fft.fftfreq(ry)[None, :]
    win = np.outer(tukey(rx, edge_frac), tukey(ry, edge_frac))
    lp = np.exp(-2 * np.pi**2 * smooth_px**2 * (px_**2 + py_**2))
    filt = lp[None]
    if band_limit_px is not None:
        pmax = np.maximum(np.asarray(band_limit_px, dtype=np.float64), 1e-3)[:, None, None]
        filt = filt * np.exp(-((px_**2 + py_**2)[None] / pmax**2) ** 4)
    s = np.array(shifts_px, dtype=np.float64, copy=True)
    w = np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    if notch_threshold > 0:
        # sharp peaks of the mean power spectrum (a crystal's lattice fringes, aliased by the scan
        # step, move inconsistently with the shift) are left out of the correlation
        win0 = np.outer(tukey(rx, edge_frac), tukey(ry, edge_frac))
        power = np.tensordot(w, np.abs(np.fft.fft2(c * win0)) ** 2, axes=1)
        background = ndimage.median_filter(power, size=7, mode="wrap")
        peaks = power > notch_threshold * background
        peaks[0, 0] = False
        peaks = ndimage.binary_dilation(peaks, iterations=1)
        filt = filt * np.where(peaks, 0.0, 1.0)[None]
    if regularize_k_inv_A is not None:
        kk = np.asarray(regularize_k_inv_A, dtype=np.float64)
        design = np.column_stack([kk[:, 0], kk[:, 1], np.ones(len(kk))])
        sw = np.sqrt(w)[:, None]
    raw = s.copy()
    for _ in range(iterations):
        ramp = np.exp(2j * np.pi * (px_[None] * s[:, 0, None, None] + py_[None] * s[:, 1, None, None]))
        aligned = np.fft.ifft2(F * ramp).real * win
        Fa = np.fft.fft2(aligned)
        Fr = np.tensordot(w, Fa, axes=1)
        # reference without the image itself: its own noise would pull it towards its current shift
        Fr_k = (Fr[None] - w[:, None, None] * Fa) / np.maximum(1.0 - w, 1e-12)[:, None, None]
        cc = np.fft.ifft2(Fa * np.conj(Fr_k) * filt).real
        upd = _peaks(cc)
        upd = np.clip(upd, -max_step_px, max_step_px)
        # the common translation of all images is arbitrary: keep the weighted mean shift fixed
        upd -= np.tensordot(w, upd, axes=1)[None, :]
        raw = s + upd
        if regularize_k_inv_A is None:
            s = raw
        else:
            # shifts of the next iteration: the affine fit s = M k + s0 of the measured ones (robust)
            keep = np.ones(len(raw), dtype=bool)
            for _pass in range(2):
                coef, *_ = np.linalg.lstsq((design * sw)[keep], (raw * sw)[keep], rcond=None)
                r = np.hypot(*(raw - design @ coef).T)
                keep = r <= 3.0 * 1.4826 * np.median(r) + 1e-6
            s = design @ coef
        if np.max(np.abs(upd)) < 1e-3:
            break
    return raw


def _peaks(cc):
    """Sub-pixel peak position (n, 2) of each periodic correlation map (parabola per axis)."""
    n, rx, ry = cc.shape
    flat = cc.reshape(n, -1)
    k = np.argmax(flat, axis=1)
    i, j = np.unravel_index(k, (rx, ry))
    idx = np.arange(n)
    out = np.zeros((n, 2))
    c0 = cc[idx, i, j]
    for ax, (a, size) in enumerate(((i, rx), (j, ry))):
        if ax == 0:
            cm = cc[idx, (i - 1) % rx, j]
            cp = cc[idx, (i + 1) % rx, j]
        else:
            cm = cc[idx, i, (j - 1) % ry]
            cp = cc[idx, i, (j + 1) % ry]
        den = cm - 2 * c0 + cp
        sub = np.where(den < 0, 0.5 * (cm - cp) / np.where(den < 0, den, -1.0), 0.0)
        pos = a + np.clip(sub, -0.5, 0.5)
        pos = np.where(pos > size / 2, pos - size, pos)
        out[:, ax] = pos
    return out


def tilt_corrected_image(images: np.ndarray, shifts_px: np.ndarray, weights: np.ndarray, *,
                         upsample: int = 2, kernel_sigma_px: float = 0.5) -> np.ndarray:
    """Upsampled tilt-corrected BF image: each image's samples placed at ``R - shift``.

    Parameters
    ----------
    images : ndarray (n, Rx, Ry)
        BF images (each normalised to contrast ``I / mean - 1``).
    shifts_px : ndarray (n, 2)
        Displacement of each image, scan pixels.
    weights : ndarray (n,)
        Weight of each image (counts).
    upsample : int
        Output pixels per scan step.
    kernel_sigma_px : float
        Resampling kernel, output pixels.

    Returns
    -------
    ndarray (Rx * upsample, Ry * upsample)
        Contrast image on the scan frame; output pixel ``p`` is at scan position ``p / upsample``.
    """
    n, rx, ry = images.shape
    m = images.mean(axis=(1, 2), keepdims=True)
    c = images / np.where(m > 0, m, 1.0) - 1.0
    i, j = np.meshgrid(np.arange(rx, dtype=float), np.arange(ry, dtype=float), indexing="ij")
    pos = np.empty((n, rx, ry, 2))
    pos[..., 0] = (i[None] - shifts_px[:, 0, None, None]) * upsample
    pos[..., 1] = (j[None] - shifts_px[:, 1, None, None]) * upsample
    w = np.asarray(weights, dtype=float)
    wimg = np.broadcast_to(w[:, None, None], c.shape)
    shape = (rx * upsample, ry * upsample)
    num, wt = splat(pos, c * wimg, shape, kernel_sigma_px)
    den, _ = splat(pos, wimg, shape, kernel_sigma_px)
    img = np.divide(num, den, out=np.zeros(shape), where=den > 1e-12)
    return img


# --------------------------------------------------------------------------------------------
# the whole method


def parallax_fit(datacube, calibration: Calibration, *, bin_factors: tuple[int, ...] = (8, 4, 2),
                 bf_radius_fraction: float = 0.9, iterations: int = 6, smooth_px: float = 0.3,
                 rotation_guess_deg: float | None = None, transpose: bool | None = None,
                 fit_coma: bool = False, outlier_sigma: float = 4.0, upsample: int = 2,
                 image_shifts: str = "fit", detector_center_px: tuple[float, float] | None = None,
                 band_limit: bool = True, min_band_inv_A: float = 0.05, regularize: bool = True,
                 notch_threshold: float = 3.0, min_explained_fraction: float = 0.8,
                 rows_per_block: int = 8) -> ParallaxResult:
    """Parallax (tilt-corrected bright field) fit of defocus, astigmatism, coma and scan rotation.

    Parameters
    ----------
    datacube : ndarray or h5py.Dataset (Rx, Ry, Qx, Qy)
        4D-STEM intensities (e.g. the ``dset`` of :class:`msptycho.io.open_datacube`), streamed by
        ``rows_per_block`` scan rows.
    calibration : Calibration
        ``energy_eV``, ``semiangle_mrad``, ``scan_step_A``, ``mrad_per_pixel``; its
        ``scan_rotation_deg`` is the default ``rotation_guess_deg``.
    bin_factors : tuple of int
        Detector binnings, coarse to fine; each must be a multiple of the last (finest) one.
    bf_radius_fraction : float
        Detector pixels within this fraction of the convergence semi-angle count as bright field.
    iterations : int
        Cross-correlation alignment iterations per binning level.
    smooth_px : float
        Gaussian smoothing of the cross-correlation maps, scan pixels. Smoothing weights the
        correlation towards low spatial frequencies, where a thick crystal's outline and aliased
        fringes dominate: on the default synthetic samples 1.0 explained 96-98 % of the shifts'
        variance (rotation 1.4 deg on the twisted pristine shell), 0.3 explains 99.4-99.7 %.
    rotation_guess_deg : float or None
        The fitted scan rotation lies within +-90 degrees of this, which resolves the 180-degree
        ambiguity with the defocus sign; null: the calibration's scan_rotation_deg.
    transpose : bool or None
        Scan transpose; null: chosen by the fit (the hypothesis with less two-fold astigmatism).
    fit_coma : bool
        Also fit axial coma C21 at the finest level.
    outlier_sigma : float
        BF images whose fit residual exceeds this many robust standard deviations are dropped and
        the fit repeated (0: no rejection).
    upsample : int
        Pixels of the tilt-corrected image per scan step.
    image_shifts : str
        Shifts used for the tilt-corrected image: fit (the fitted model) or measured.
    detector_center_px : (float, float) or None
        Bright-field disk centre (Qx, Qy), detector pixels; null: measured from the mean pattern.
    band_limit : bool
        At the finest level, correlate each BF image only up to the spatial frequency
        k_max - abs(k) that both side bands of the bright-field disk transfer; removes the bias of
        pixels near the disk edge.
    min_band_inv_A : float
        Lower bound of that band limit, 1/Angstrom.
    regularize : bool
        Start every alignment iteration from the robust affine fit (in k) of the previous
        iteration's shifts instead of the shifts themselves (stabilises undersampled or noisy data).
    notch_threshold : float
        Leave out of the correlation the spatial frequencies where the mean power of the BF images
        exceeds this many times its local median (sharp, aliased lattice peaks); 0: off.
    min_explained_fraction : float
        A binning level is accepted when its fit explains at least this fraction of the shifts'
        variance (R^2); the next level starts from the last accepted fit and the estimates come
        from the finest accepted level (the best level when none is).
    rows_per_block : int
        Scan rows of the datacube read at a time.

    Returns
    -------
    result : ParallaxResult
        Estimates, shifts and the tilt-corrected image.

    Raises
    ------
    InputError
        Wrong datacube shape, NaN, an empty or too small bright-field disk, bad binning factors.
    """
    _check_datacube(datacube, calibration)
    bins = [int(b) for b in bin_factors]
    if not bins or any(b < 1 for b in bins) or any(b % bins[-1] for b in bins):
        raise InputError(f"parallax: bin_factors {tuple(bin_factors)} must be positive multiples of the last (finest) one.")
    if image_shifts not in ("fit", "measured"):
        raise InputError(f"parallax: image_shifts must be 'fit' or 'measured', got {image_shifts!r}.")
    guess = calibration.scan_rotation_deg if rotation_guess_deg is None else float(rotation_guess_deg)
    step = calibration.scan_step_A
    E = calibration.energy_eV
    vbf = virtual_bf_images(datacube, calibration, bin_factor=bins[-1], bf_radius_fraction=bf_radius_fraction,
                            detector_center_px=detector_center_px, rows_per_block=rows_per_block)
    image_bf = vbf.images.sum(axis=0)
    kmax = physics.mrad_to_inv_A(calibration.semiangle_mrad, E)
    dk = physics.mrad_to_inv_A(calibration.mrad_per_pixel, E)
    fit = None          # the fit the next level starts from (the last accepted one)
    levels = []         # (fit, images, k, weights, measured shifts px) of every level
    history = []
    lam = physics.wavelength_A(E)
    for b in bins:
        factor = b // bins[-1]
        if factor == 1:
            imgs, k = vbf.images, vbf.k_inv_A
            w = imgs.sum(axis=(1, 2))
        else:
            imgs, k, w, _, _ = _coarsen(vbf, factor)
        if len(k) < 7:
            continue  # too coarse for this disk: go on with the next level
        if fit is None:
            s0 = np.zeros((len(k), 2))
        else:
            d = np.tensordot(fit["coef"][:3], shift_basis_A(k, lam)[:3], axes=1) + fit["offset_A"][None, :]
            s0 = object_to_scan(d, fit["scan_rotation_deg"], fit["transpose"]) / step
        band = None
        if band_limit and b == bins[-1]:
            half_bin = b * dk / np.sqrt(2)
            band = np.maximum(kmax - np.hypot(*k.T) - half_bin, min_band_inv_A) * step
        s_px = align_images(imgs, s0, w, iterations=iterations, smooth_px=smooth_px, band_limit_px=band,
                            regularize_k_inv_A=k if regularize else None, notch_threshold=notch_threshold)
        wfit = w if band is None else w * np.minimum(1.0, band / 0.5) ** 2
        f = fit_shifts(k, s_px * step, wfit, E, rotation_guess_deg=guess, transpose=transpose,
                       fit_coma=False, outlier_sigma=outlier_sigma)
        f["coef"] = _coef_from(f)
        accepted = f["explained_fraction"] >= min_explained_fraction
        if accepted or fit is None:
            fit = f
        levels.append((f, imgs, k, wfit, s_px, accepted))
        history.append(dict(bin=b, n_images=int(len(k)), defocus_A=f["defocus_A"],
                            scan_rotation_deg=f["scan_rotation_deg"], residual_rms_A=f["residual_rms_A"],
                            explained_fraction=f["explained_fraction"], accepted=bool(accepted)))
    if not levels:
        raise InputError("parallax: no binning level has enough bright-field pixels; expected at least 7.")
    # the finest accepted level gives the estimates (the best one if none is accepted)
    good = [lv for lv in levels if lv[5]]
    f, imgs, k, w, s_px, _ = good[-1] if good else max(levels, key=lambda lv: lv[0]["explained_fraction"])
    used_bin = history[levels.index(next(lv for lv in levels if lv[0] is f))]["bin"]
    if fit_coma:
        f = fit_shifts(k, s_px * step, w, E, rotation_guess_deg=guess, transpose=transpose,
                       fit_coma=True, outlier_sigma=outlier_sigma)
    for h in history:
        h["used"] = h["bin"] == used_bin
    use_px = f["shifts_fit_A"] / step if image_shifts == "fit" else s_px
    image = tilt_corrected_image(imgs, use_px, w, upsample=upsample)
    return ParallaxResult(
        defocus_A=f["defocus_A"], C12_A=f["C12_A"], phi12_rad=f["phi12_rad"], C21_A=f["C21_A"],
        phi21_rad=f["phi21_rad"], scan_rotation_deg=f["scan_rotation_deg"], transpose=f["transpose"],
        k_inv_A=k, shifts_A=s_px * step, shifts_fit_A=f["shifts_fit_A"], weights=w,
        inliers=f["inliers"], offset_A=f["offset_A"], residual_rms_A=f["residual_rms_A"],
        explained_fraction=f["explained_fraction"],
        image=image, image_sampling_A=step / upsample, image_bf=image_bf, detector_center_px=vbf.center_px,
        scan_step_A=step, energy_eV=E, history=history)


def _coef_from(f):
    c = [f["defocus_A"], f["C12_A"] * np.cos(2 * f["phi12_rad"]), f["C12_A"] * np.sin(2 * f["phi12_rad"])]
    if np.isfinite(f["C21_A"]):
        c += [f["C21_A"] * np.cos(f["phi21_rad"]), f["C21_A"] * np.sin(f["phi21_rad"])]
    return np.array(c)
