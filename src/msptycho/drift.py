"""Drift correction of an orthogonal scan pair (Ophus, Ciston & Nelson, Ultramicroscopy 162 (2016) 1-9).

Geometry (positions in pixels of the output frame, arrays indexed ``[x, y]`` as everywhere in the
project). Three layouts of the pair are understood (``pair_layout``):

* ``"nominal"`` (default; the layout of ``scan_pair.h5``, ``workflow/schemas/scan_pair.md``): both
  images on the nominal grid, ``image[i, j]`` at ``(x, y) = (i, j)``; the 0-degree image has its
  fast scan axis along x (the first index: its scan lines are the columns ``image[:, j]``, in time
  order of ``j``), the 90-degree image along y (its scan lines are the rows ``image[i, :]``).
* ``"transposed"``: both images as recorded, rows are scan lines in time order; ``image_0deg[i, j]``
  sits at ``(i, j)`` (fast axis along y) and ``image_90deg[i, j]`` at ``(j, i)``, i.e.
  ``image_90deg.T`` is the first image without drift.
* ``"rot90"``: as ``"transposed"`` but the second image is ``numpy.rot90`` of the first
  (``image_90deg[i, j]`` at ``(j, ny - 1 - i)``).

Model: every scan line is a rigid row of pixels one pixel apart along its fast direction ``u``; only
its origin (position of pixel 0) moves with drift. The method

1. searches a grid of *linear* drift vectors (the same drift velocity, in pixels per frame, for
   both images, as in the paper) for the one that maximises the normalised cross-correlation of
   the two images resampled onto a common grid, and aligns the second image by the translation of
   the correlation peak;
2. refines each scan line's origin iteratively: each line is compared with the other image
   resampled at the current positions (the combined image without the line's own image, which
   avoids the self-correlation bias) over a small grid of 2-D offsets, the best offset is refined
   with a parabola, the per-line offsets are smoothed along the slow axis, and the search window
   shrinks every iteration; the common translation of all lines is removed (it is not defined by
   the data);
3. resamples both images at the final positions (bilinear splatting plus a Gaussian kernel) and
   averages them into the corrected image.

The result is on a padded output grid; output pixel ``(p, q)`` is at ``(p - pad_px, q - pad_px)``
in first-image pixels, before removal of the common translation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from .io.datacube import InputError

LAYOUTS = ("nominal", "transposed", "rot90")


@dataclass
class DriftResult:
    """Result of :func:`correct_drift`.

    Attributes
    ----------
    image : ndarray (H, W) float64
        Drift-corrected combined image (mean of the two resampled images, weighted by coverage);
        pixels covered by neither image hold the mean of the covered ones.
    coverage : ndarray (H, W) float64
        Summed (kernel-smoothed) sampling weight of both images; ~2 where both images cover.
    images_resampled : ndarray (2, H, W) float64
        Each image resampled alone at its corrected positions.
    pixel_size_A : float
        Pixel size of the input images and of the output grid, Angstrom.
    pad_px : int
        Padding of the output grid; output pixel ``(p, q)`` is at ``(p - pad_px, q - pad_px)`` in
        pixels of the first image.
    origins_px : tuple of two ndarrays (n_lines_k, 2)
        Corrected origin ``(x, y)`` (position of the line's first pixel) of every scan line, in
        time order, of the 0-degree and the 90-degree image, output-grid pixels. (For the
        ``"nominal"`` layout the 0-degree image's lines are its columns.)
    ideal_origins_px : tuple of two ndarrays (n_lines_k, 2)
        Origins of a drift-free scan, output-grid pixels.
    fast_directions : ndarray (2, 2)
        Unit fast-scan direction ``(x, y)`` of each image.
    linear_drift_px : ndarray (2,)
        Linear drift found by the grid search: displacement ``(x, y)`` over one frame, pixels.
    translation_px : ndarray (2,)
        Translation of the second image relative to the offset predicted by the linear drift
        (continuous in time, ``frame_gap``), pixels.
    residual_initial, residual_linear, residual_final : float
        RMS difference of the two resampled (normalised) images over their common area, relative
        to the RMS of the image: with the ideal raster, after the linear search, at the end.
    residual_history : list of float
        Residual after each refinement iteration.
    informative : tuple of two bool ndarrays (n_lines_k,)
        Scan lines whose position was measured in the last refinement iteration (structure in
        the overlap of both images); the others (vacuum, no overlap) hold the offset of their
        nearest measured neighbour. All False when ``refine_iterations`` is 0.
    pair_layout : str
        Layout of the input pair (``nominal``, ``transposed`` or ``rot90``).
    """

    image: np.ndarray
    coverage: np.ndarray
    images_resampled: np.ndarray
    pixel_size_A: float
    pad_px: int
    origins_px: tuple
    ideal_origins_px: tuple
    fast_directions: np.ndarray
    linear_drift_px: np.ndarray
    translation_px: np.ndarray
    residual_initial: float
    residual_linear: float
    residual_final: float
    residual_history: list = field(default_factory=list)
    informative: tuple = ()
    pair_layout: str = "nominal"

    @property
    def drift_px(self) -> tuple:
        """Per-line displacement from the ideal raster, ``(x, y)`` pixels, for each image."""
        return tuple(o - i for o, i in zip(self.origins_px, self.ideal_origins_px))


# --------------------------------------------------------------------------------------------
# resampling of scattered samples


def splat(positions_px: np.ndarray, values: np.ndarray, shape: tuple[int, int],
          kernel_sigma_px: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Resample scattered samples onto a regular grid (bilinear splatting + Gaussian kernel).

    Parameters
    ----------
    positions_px : ndarray (..., 2)
        Sample positions ``(x, y)`` in output pixels (pixel ``p`` has its centre at ``p``).
    values : ndarray (...)
        Sample values (same leading shape as ``positions_px``).
    shape : (int, int)
        Output grid shape.
    kernel_sigma_px : float
        Standard deviation of the Gaussian smoothing kernel, output pixels (0: bilinear only).

    Returns
    -------
    image : ndarray (H, W)
        Weighted mean of the samples near each pixel (0 where no sample).
    weight : ndarray (H, W)
        Summed sampling weight per pixel (about 1 for one sample per pixel).
    """
    pos = np.asarray(positions_px, dtype=np.float64).reshape(-1, 2)
    val = np.asarray(values, dtype=np.float64).reshape(-1)
    h, w = shape
    x0 = np.floor(pos[:, 0])
    y0 = np.floor(pos[:, 1])
    fx = pos[:, 0] - x0
    fy = pos[:, 1] - y0
    x0 = x0.astype(np.int64)
    y0 = y0.astype(np.int64)
    xi = np.concatenate([x0, x0 + 1, x0, x0 + 1])
    yi = np.concatenate([y0, y0, y0 + 1, y0 + 1])
    wt = np.concatenate([(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy])
    ok = (xi >= 0) & (xi < h) & (yi >= 0) & (yi < w)
    idx = xi[ok] * w + yi[ok]
    wt = wt[ok]
    acc = np.bincount(idx, weights=wt * np.tile(val, 4)[ok], minlength=h * w).reshape(h, w)
    wacc = np.bincount(idx, weights=wt, minlength=h * w).reshape(h, w)
    if kernel_sigma_px > 0:  # unit-sum kernel: one sample per pixel keeps weight ~1
        acc = ndimage.gaussian_filter(acc, kernel_sigma_px, mode="constant")
        wacc = ndimage.gaussian_filter(wacc, kernel_sigma_px, mode="constant")
    img = np.divide(acc, wacc, out=np.zeros_like(acc), where=wacc > 1e-6)
    return img, wacc


# --------------------------------------------------------------------------------------------
# geometry of the pair


def _check_pair(image_0deg, image_90deg, pixel_size_A, pair_layout):
    a = np.asarray(image_0deg)
    b = np.asarray(image_90deg)
    if a.ndim != 2 or b.ndim != 2:
        raise InputError(f"scan pair: both images must be 2-D, got shapes {a.shape} and {b.shape}.")
    if pair_layout not in LAYOUTS:
        raise InputError(f"scan pair: pair_layout must be one of {LAYOUTS}, got {pair_layout!r}.")
    expected = a.shape if pair_layout == "nominal" else a.shape[::-1]
    if b.shape != expected:
        raise InputError(
            f"scan pair: the 90-degree image has shape {b.shape} but the 0-degree image has shape "
            f"{a.shape}; expected {expected} for pair_layout '{pair_layout}'.")
    if min(a.shape) < 16:
        raise InputError(f"scan pair: images of shape {a.shape} are too small; expected at least 16 x 16 pixels.")
    if np.ndim(pixel_size_A) == 0:
        p0 = p1 = float(pixel_size_A)
    else:
        if len(pixel_size_A) != 2:
            raise InputError(f"scan pair: pixel_size_A must be one number or one per image, got {pixel_size_A!r}.")
        p0, p1 = (float(p) for p in pixel_size_A)
    for p in (p0, p1):
        if not (np.isfinite(p) and p > 0):
            raise InputError(f"scan pair: pixel sizes must be positive finite numbers (Angstrom), got {pixel_size_A!r}.")
    if abs(p0 - p1) > 1e-6 * max(p0, p1):
        raise InputError(
            f"scan pair: the pixel sizes differ ({p0:g} A for the 0-degree image, {p1:g} A for the "
            f"90-degree image); expected one pixel size for both images of the pair.")
    for name, im in (("0-degree", a), ("90-degree", b)):
        if not np.all(np.isfinite(im)):
            raise InputError(f"scan pair: the {name} image contains NaN or infinite values; expected finite intensities.")
        if np.ptp(im) == 0:
            raise InputError(f"scan pair: the {name} image is constant; expected an image with contrast.")
    return a.astype(np.float64), b.astype(np.float64), p0


def _geometry(im0, im1, pair_layout, pad):
    """Scan lines (n_lines, n_fast) in time order, ideal line origins (n_lines, 2) in output-grid
    pixels and unit fast directions of both images, and the frame shape."""
    if pair_layout == "nominal":
        nx, ny = im0.shape
        lines = (im0.T, im1)
        o0 = np.stack([np.zeros(ny), np.arange(ny, dtype=float)], axis=1)
        o1 = np.stack([np.arange(nx, dtype=float), np.zeros(nx)], axis=1)
        dirs = np.array([[1.0, 0.0], [0.0, 1.0]])
    else:
        nx, ny = im0.shape
        lines = (im0, im1)
        o0 = np.stack([np.arange(nx, dtype=float), np.zeros(nx)], axis=1)
        y1 = np.arange(ny, dtype=float) if pair_layout == "transposed" else ny - 1 - np.arange(ny, dtype=float)
        o1 = np.stack([np.zeros(ny), y1], axis=1)
        dirs = np.array([[0.0, 1.0], [1.0, 0.0]])
    return lines, (o0 + pad, o1 + pad), dirs, (nx, ny)


def _positions(origins, u, n_fast):
    """Pixel positions (n_lines, n_fast, 2) of a scan with line origins and fast direction u."""
    j = np.arange(n_fast, dtype=float)
    return origins[:, None, :] + j[None, :, None] * u[None, None, :]


def _normalise(im):
    return (im - im.mean()) / im.std()


def _resample_pair(images, origins, dirs, shape, sigma):
    out, wts = [], []
    for im, o, u in zip(images, origins, dirs):
        img, wt = splat(_positions(o, u, im.shape[1]), im, shape, sigma)
        out.append(img)
        wts.append(wt)
    return np.stack(out), np.stack(wts)


def nominal_images(image_0deg, image_90deg, pair_layout: str = "nominal"):
    """Both images of a pair on the nominal grid of the first (no drift correction), e.g. for
    display: ``(image_0deg, image_90deg.T)`` for ``"transposed"``, un-rotated for ``"rot90"``."""
    a = np.asarray(image_0deg)
    b = np.asarray(image_90deg)
    if pair_layout == "transposed":
        b = b.T
    elif pair_layout == "rot90":
        b = np.rot90(b, -1)
    return a, b


def _valid(weights, frac=0.5):
    return weights > frac


def _residual(res, wts):
    both = _valid(wts[0]) & _valid(wts[1])
    if both.sum() < 16:
        return float("inf")
    d = res[0][both] - res[1][both]
    scale = 0.5 * (res[0][both].std() + res[1][both].std())
    return float(np.sqrt(np.mean((d - d.mean()) ** 2)) / scale)


def _cross_correlate(res, wts, max_shift_px):
    """Normalised cross-correlation of the two resampled images; returns (score, shift (2,))
    by which the second image must move to match the first (sub-pixel, parabolic), searched
    within +-max_shift_px per axis with a Gaussian preference (sigma max_shift_px) for small
    shifts: a crystal correlates equally well at every lattice vector."""
    shape = res.shape[1:]
    win = np.outer(np.hanning(shape[0]), np.hanning(shape[1]))
    a_list = []
    for r, w in zip(res, wts):
        v = _valid(w)
        if v.sum() < 16:
            return -np.inf, np.zeros(2)
        m = np.where(v, r - r[v].mean(), 0.0) * win
        a_list.append(m)
    fa = np.fft.rfft2(a_list[0])
    fb = np.fft.rfft2(a_list[1])
    cc = np.fft.irfft2(fa * np.conj(fb), s=shape)
    norm = np.sqrt(np.sum(a_list[0] ** 2) * np.sum(a_list[1] ** 2))
    tx = np.fft.fftfreq(shape[0], 1.0 / shape[0])[:, None]
    ty = np.fft.fftfreq(shape[1], 1.0 / shape[1])[None, :]
    r = max(float(max_shift_px), 1.0)
    inside = (np.abs(tx) <= r) & (np.abs(ty) <= r)
    prior = np.where(inside, np.exp(-(tx**2 + ty**2) / (2 * r**2)), 0.0)
    k = np.unravel_index(np.argmax(np.where(inside, (cc - cc.min()) * prior, -1.0)), shape)
    peak = cc[k] / norm
    shift = np.zeros(2)
    for ax in range(2):
        km = list(k)
        kp = list(k)
        km[ax] = (k[ax] - 1) % shape[ax]
        kp[ax] = (k[ax] + 1) % shape[ax]
        c0, cm, cp = cc[k], cc[tuple(km)], cc[tuple(kp)]
        den = cm - 2 * c0 + cp
        sub = 0.5 * (cm - cp) / den if den < 0 else 0.0
        s = k[ax] + np.clip(sub, -0.5, 0.5)
        if s > shape[ax] / 2:
            s -= shape[ax]
        shift[ax] = s
    return float(peak), shift


def _apply_linear(ideal, drift_frame_px, t0=0.0):
    """Origins of a scan whose lines drift linearly by drift_frame_px (x, y) per frame, the scan
    starting at time t0 (frames)."""
    n = ideal.shape[0]
    t = t0 + np.arange(n, dtype=float) / n
    return ideal + t[:, None] * np.asarray(drift_frame_px)[None, :]


def _centre(origins, ideal):
    """Remove the mean displacement of all lines of both images (not defined by the data)."""
    common = np.concatenate([o - i for o, i in zip(origins, ideal)]).mean(axis=0)
    return [o - common for o in origins]


# --------------------------------------------------------------------------------------------
# the method


def correct_drift(image_0deg, image_90deg, pixel_size_A, *, pair_layout: str = "nominal",
                  linear_search_max_frac: float = 0.08, linear_search_steps: int = 7,
                  refine_iterations: int = 10, refine_search_px: float = 2.0, refine_offsets: int = 7,
                  refine_min_search_px: float = 0.25, line_smoothing_sigma: float = 2.0,
                  kernel_sigma_px: float = 0.5, pad_frac: float = 0.1, coarse_blur_px: float = 3.0,
                  min_line_contrast: float = 0.3, frame_gap: float = 0.0,
                  translation_search_frac: float = 0.05) -> DriftResult:
    """Correct linear and non-linear drift of an orthogonal scan pair.

    Parameters
    ----------
    image_0deg : array_like (nx, ny)
        Image with the 0-degree fast scan axis (see ``pair_layout`` and the module docstring).
    image_90deg : array_like
        The orthogonal image of the same area: shape (nx, ny) for ``pair_layout="nominal"``,
        (ny, nx) as recorded otherwise.
    pixel_size_A : float or (float, float)
        Pixel size of the images, Angstrom (one value, or one per image: they must agree).
    pair_layout : str
        How the two images are stored: nominal (both on the nominal grid, 0-degree fast axis
        along x = first index, as in scan_pair.h5), transposed (both as recorded, rows are scan
        lines; the second is the transpose of the first) or rot90.
    linear_search_max_frac : float
        Largest linear drift searched, per frame and axis, as a fraction of the image size.
    linear_search_steps : int
        Grid points per axis of the linear-drift search (a second grid of the same size follows
        around the best point, one coarse step wide).
    refine_iterations : int
        Iterations of the per-line origin refinement (0: linear correction only).
    refine_search_px : float
        Half-width of the per-line offset search in the first iteration, pixels; halves every
        iteration down to refine_min_search_px.
    refine_offsets : int
        Offsets per axis in the per-line search grid (odd, at least 3).
    refine_min_search_px : float
        Smallest half-width of the per-line offset search, pixels.
    line_smoothing_sigma : float
        Gaussian smoothing of the per-line offsets along the slow scan axis, in scan lines (0: none),
        in the last iterations; wider windows smooth more (line_smoothing_sigma * search /
        refine_min_search_px).
    kernel_sigma_px : float
        Gaussian kernel of the resampling onto the output grid, pixels.
    pad_frac : float
        Padding of the output grid on each side, as a fraction of the larger image size.
    coarse_blur_px : float
        Gaussian low-pass (pixels) of the images for the linear search and the first refinement
        iteration; it shrinks with the search window (coarse_blur_px * search / refine_search_px).
        Blurring away the lattice keeps a crystal's repeating correlation peaks from trapping the
        search.
    min_line_contrast : float
        A scan line is refined only if its mismatch score over the offset window (median minus
        best) is at least this fraction of the typical (median over lines) best score per squared
        pixel of the window's half-width: lines through vacuum or pure noise are not; they take the
        offsets of their nearest refined neighbours.
    frame_gap : float
        Time from the end of the first frame to the start of the second, in frame times: with the
        linear drift it predicts the offset of the second frame, around which the translation
        between the frames is searched.
    translation_search_frac : float
        Half-width of that translation search, per axis, as a fraction of the image size.

    Returns
    -------
    result : DriftResult
        On the output frame: the nominal grid of ``image_0deg``, padded by ``pad_px`` on each side.

    Raises
    ------
    InputError
        If the shapes or pixel sizes of the pair disagree, or an image is not finite or constant.
    """
    if refine_offsets < 3 or refine_offsets % 2 == 0:
        raise InputError(f"drift: refine_offsets must be an odd integer >= 3, got {refine_offsets!r}.")
    if linear_search_steps < 1:
        raise InputError(f"drift: linear_search_steps must be >= 1, got {linear_search_steps!r}.")
    im0, im1, px = _check_pair(image_0deg, image_90deg, pixel_size_A, pair_layout)
    pad = int(math.ceil(pad_frac * max(im0.shape))) + 2
    lines, ideal, dirs, (nx, ny) = _geometry(im0, im1, pair_layout, pad)
    shape = (nx + 2 * pad, ny + 2 * pad)
    norm = [_normalise(lines[0]), _normalise(lines[1])]

    def blurred(sigma_px):
        """The normalised lines low-pass filtered (along and across the lines)."""
        if sigma_px <= 0.05:
            return norm
        return [_normalise(ndimage.gaussian_filter(n, sigma_px)) for n in norm]

    coarse = blurred(coarse_blur_px)
    sig = kernel_sigma_px

    res, wts = _resample_pair(norm, ideal, dirs, shape, sig)
    residual_initial = _residual(res, wts)

    # 1. linear drift search (coarse grid, then a finer grid around the best point)
    dmax = linear_search_max_frac * np.array([nx, ny], dtype=float)
    max_shift = translation_search_frac * max(nx, ny)
    t1 = 1.0 + frame_gap
    centre = np.zeros(2)
    half = dmax.copy()
    best = (-np.inf, np.zeros(2), np.zeros(2))
    for _level in range(2):
        if linear_search_steps == 1:
            grid_x = np.array([centre[0]])
            grid_y = np.array([centre[1]])
        else:
            grid_x = centre[0] + np.linspace(-half[0], half[0], linear_search_steps)
            grid_y = centre[1] + np.linspace(-half[1], half[1], linear_search_steps)
        for dx in grid_x:
            for dy in grid_y:
                d = np.array([dx, dy])
                origins = _centre((_apply_linear(ideal[0], d), _apply_linear(ideal[1], d, t1)), ideal)
                r, w = _resample_pair(coarse, origins, dirs, shape, sig)
                score, shift = _cross_correlate(r, w, max_shift)
                if score > best[0]:
                    best = (score, d, shift)
        centre = best[1]
        half = half / max(1, (linear_search_steps - 1) / 2)
    linear_drift = best[1]
    origins = _centre([_apply_linear(ideal[0], linear_drift), _apply_linear(ideal[1], linear_drift, t1)], ideal)
    # align the second image by the correlation peak (iterate: the peak is sub-pixel)
    translation = np.zeros(2)
    for _ in range(3):
        r, w = _resample_pair(coarse, origins, dirs, shape, sig)
        _, shift = _cross_correlate(r, w, max_shift - np.abs(translation).max())
        origins[1] = origins[1] + shift
        translation += shift
        if np.hypot(*shift) < 0.02:
            break
    origins = _centre(origins, ideal)
    res, wts = _resample_pair(norm, origins, dirs, shape, sig)
    residual_linear = _residual(res, wts)

    # 2. per-line refinement against the other image
    history = []
    informative = [np.zeros(len(o), dtype=bool) for o in origins]
    search = float(refine_search_px)
    for _it in range(refine_iterations):
        offs = np.linspace(-search, search, refine_offsets)
        step = offs[1] - offs[0]
        lines_it = blurred(coarse_blur_px * search / refine_search_px)
        for k in (0, 1):
            other = 1 - k
            res, wts = _resample_pair(lines_it, origins, dirs, shape, sig)
            delta, informative[k] = _line_offsets(lines_it[k], origins[k], dirs[k], res[other], wts[other],
                                                  offs, step, min_line_contrast)
            if line_smoothing_sigma > 0:
                # smoother while the window is wide: a block of lines cannot fall into a wrong
                # lattice basin on its own
                sigma_it = line_smoothing_sigma * max(1.0, search / max(refine_min_search_px, 1e-6))
                delta = ndimage.gaussian_filter1d(delta, sigma_it, axis=0, mode="nearest")
            origins[k] = origins[k] + delta
        origins = _centre(origins, ideal)
        res, wts = _resample_pair(norm, origins, dirs, shape, sig)
        history.append(_residual(res, wts))
        search = max(refine_min_search_px, search / 2)

    # 3. combined image from the original intensities
    res, wts = _resample_pair(list(lines), origins, dirs, shape, sig)
    res_n, wts_n = _resample_pair(norm, origins, dirs, shape, sig)
    residual_final = _residual(res_n, wts_n)
    coverage = wts.sum(axis=0)
    combined = np.divide((res * wts).sum(axis=0), coverage, out=np.zeros(shape), where=coverage > 1e-6)
    covered = coverage > 0.5
    combined[~covered] = combined[covered].mean() if covered.any() else 0.0
    return DriftResult(image=combined, coverage=coverage, images_resampled=res, pixel_size_A=px,
                       pad_px=pad, origins_px=(origins[0], origins[1]), ideal_origins_px=ideal,
                       fast_directions=dirs, linear_drift_px=np.asarray(linear_drift, dtype=float),
                       translation_px=translation, residual_initial=residual_initial,
                       residual_linear=residual_linear, residual_final=residual_final,
                       residual_history=history, informative=(informative[0], informative[1]),
                       pair_layout=pair_layout)


def _line_offsets(image, origins, u, reference, ref_weight, offsets, step, min_contrast=0.0):
    """Best 2-D offset of each scan line of ``image`` against ``reference`` (n_lines, 2), px."""
    n_lines, n_fast = image.shape
    pos = _positions(origins, u, n_fast)  # (L, F, 2)
    no = len(offsets)
    ox, oy = np.meshgrid(offsets, offsets, indexing="ij")
    ssd = np.empty((no, no, n_lines))
    # NaN marks the reference's uncovered pixels: bilinear sampling propagates it to every sample
    # that touches one, which is how samples outside the overlap are recognised
    ref = np.where(ref_weight > 0.5, reference, np.nan)
    for a in range(no):
        for b in range(no):
            cx = pos[..., 0] + ox[a, b]
            cy = pos[..., 1] + oy[a, b]
            coords = np.stack([cx.ravel(), cy.ravel()])
            s = ndimage.map_coordinates(ref, coords, order=1, mode="constant", cval=np.nan).reshape(n_lines, n_fast)
            v = np.isfinite(s)
            n = v.sum(axis=1)
            d = np.where(v, s - image, 0.0)
            ssd[a, b] = np.where(n > n_fast // 4, (d ** 2).sum(axis=1) / np.maximum(n, 1), np.inf)
    delta = np.zeros((n_lines, 2))
    flat = ssd.reshape(no * no, n_lines)
    good = np.isfinite(flat).all(axis=0)
    # a line without structure (vacuum, or noise only) has a flat score: leave it to its neighbours
    with np.errstate(invalid="ignore", divide="ignore"):
        lo = flat.min(axis=0)
        typical = np.median(lo[np.isfinite(lo)]) if np.isfinite(lo).any() else 1.0
        # the score grows ~ quadratically with the offset: compare per squared pixel of window
        half_width = max(float(np.max(np.abs(offsets))), 1e-6)
        contrast = (np.median(flat, axis=0) - lo) / max(typical, 1e-6) / half_width**2
    good &= contrast > min_contrast
    kbest = np.argmin(np.where(np.isfinite(flat), flat, np.inf), axis=0)
    ia, ib = np.unravel_index(kbest, (no, no))
    for line in np.nonzero(good)[0]:
        a, b = ia[line], ib[line]
        dx = offsets[a]
        dy = offsets[b]
        if 0 < a < no - 1:
            cm, c0, cp = ssd[a - 1, b, line], ssd[a, b, line], ssd[a + 1, b, line]
            den = cm - 2 * c0 + cp
            if den > 0:
                dx += step * np.clip(0.5 * (cm - cp) / den, -0.5, 0.5)
        if 0 < b < no - 1:
            cm, c0, cp = ssd[a, b - 1, line], ssd[a, b, line], ssd[a, b + 1, line]
            den = cm - 2 * c0 + cp
            if den > 0:
                dy += step * np.clip(0.5 * (cm - cp) / den, -0.5, 0.5)
        delta[line] = (dx, dy)
    if 0 < good.sum() < n_lines:
        # lines without overlap with the reference keep the offset of the nearest measured line
        idx = np.arange(n_lines)
        for c in (0, 1):
            delta[~good, c] = np.interp(idx[~good], idx[good], delta[good, c])
    return delta, good
