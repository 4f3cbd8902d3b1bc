"""Drift correction of an orthogonal scan pair (Ophus, Ciston & Nelson, Ultramicroscopy 162 (2016) 1-9).

Geometry (all positions in pixels of the first image, arrays indexed ``[x, y]`` as everywhere in
the project):

* ``image_0deg[i, j]`` was recorded at the ideal position ``(x, y) = (i, j)``: scan line ``i`` is
  array row ``i`` and the fast scan axis runs along ``y`` (the second index).
* ``image_90deg`` is given *as recorded* (its rows are its scan lines, in time order). With
  ``orientation_90deg="transpose"`` (default) ``image_90deg[i, j]`` sits at ``(x, y) = (j, i)``,
  i.e. ``image_90deg.T`` is the first image without drift; with ``"rot90"`` the second image is
  ``numpy.rot90`` of the first (``image_90deg[i, j]`` at ``(j, ny - 1 - i)``).

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

ORIENTATIONS = ("transpose", "rot90")


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
        Corrected origin ``(x, y)`` of every scan line (in time order) of each image, output-grid
        pixels.
    ideal_origins_px : tuple of two ndarrays (n_lines_k, 2)
        Origins of a drift-free scan, output-grid pixels.
    fast_directions : ndarray (2, 2)
        Unit fast-scan direction ``(x, y)`` of each image.
    linear_drift_px : ndarray (2,)
        Linear drift found by the grid search: displacement ``(x, y)`` over one frame, pixels.
    translation_px : ndarray (2,)
        Translation applied to the second image after the linear search, pixels.
    residual_initial, residual_linear, residual_final : float
        RMS difference of the two resampled (normalised) images over their common area, relative
        to the RMS of the image: with the ideal raster, after the linear search, at the end.
    residual_history : list of float
        Residual after each refinement iteration.
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
    acc = np.zeros(h * w)
    wacc = np.zeros(h * w)
    for dx, dy, wt in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
        xi = x0 + dx
        yi = y0 + dy
        ok = (xi >= 0) & (xi < h) & (yi >= 0) & (yi < w)
        idx = xi[ok] * w + yi[ok]
        acc += np.bincount(idx, weights=wt[ok] * val[ok], minlength=h * w)
        wacc += np.bincount(idx, weights=wt[ok], minlength=h * w)
    acc = acc.reshape(h, w)
    wacc = wacc.reshape(h, w)
    if kernel_sigma_px > 0:  # unit-sum kernel: one sample per pixel keeps weight ~1
        acc = ndimage.gaussian_filter(acc, kernel_sigma_px, mode="constant")
        wacc = ndimage.gaussian_filter(wacc, kernel_sigma_px, mode="constant")
    img = np.divide(acc, wacc, out=np.zeros_like(acc), where=wacc > 1e-6)
    return img, wacc


# --------------------------------------------------------------------------------------------
# geometry of the pair


def _check_pair(image_0deg, image_90deg, pixel_size_A, orientation_90deg):
    a = np.asarray(image_0deg)
    b = np.asarray(image_90deg)
    if a.ndim != 2 or b.ndim != 2:
        raise InputError(f"scan pair: both images must be 2-D, got shapes {a.shape} and {b.shape}.")
    if orientation_90deg not in ORIENTATIONS:
        raise InputError(f"scan pair: orientation_90deg must be one of {ORIENTATIONS}, got {orientation_90deg!r}.")
    if b.shape != a.shape[::-1]:
        raise InputError(
            f"scan pair: the 90-degree image has shape {b.shape} but the 0-degree image has shape "
            f"{a.shape}; expected the 90-degree image as recorded, of shape {a.shape[::-1]}.")
    if min(a.shape) < 16:
        raise InputError(f"scan pair: images of shape {a.shape} are too small; expected at least 16 x 16 pixels.")
    if np.isscalar(pixel_size_A) or np.ndim(pixel_size_A) == 0:
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


def _geometry(shape0, orientation_90deg, pad):
    """Ideal origins (n_lines, 2) and fast directions of both images, output-grid pixels."""
    nx, ny = shape0
    o0 = np.stack([np.arange(nx, dtype=float), np.zeros(nx)], axis=1) + pad
    u0 = np.array([0.0, 1.0])
    if orientation_90deg == "transpose":
        o1 = np.stack([np.zeros(ny), np.arange(ny, dtype=float)], axis=1) + pad
    else:  # rot90: line i of the recorded image is the sample column y = ny - 1 - i
        o1 = np.stack([np.zeros(ny), ny - 1 - np.arange(ny, dtype=float)], axis=1) + pad
    u1 = np.array([1.0, 0.0])
    return (o0, o1), np.stack([u0, u1])


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


def _valid(weights, frac=0.5):
    return weights > frac


def _residual(res, wts):
    both = _valid(wts[0]) & _valid(wts[1])
    if both.sum() < 16:
        return float("inf")
    d = res[0][both] - res[1][both]
    scale = 0.5 * (res[0][both].std() + res[1][both].std())
    return float(np.sqrt(np.mean((d - d.mean()) ** 2)) / scale)


def _cross_correlate(res, wts):
    """Normalised cross-correlation of the two resampled images; returns (score, shift (2,))
    by which the second image must move to match the first (sub-pixel, parabolic)."""
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
    k = np.unravel_index(np.argmax(cc), shape)
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


def _apply_linear(ideal, drift_frame_px):
    """Origins of a scan whose lines drift linearly by drift_frame_px (x, y) over one frame."""
    n = ideal.shape[0]
    t = np.arange(n, dtype=float) / n
    return ideal + t[:, None] * np.asarray(drift_frame_px)[None, :]


# --------------------------------------------------------------------------------------------
# the method


def correct_drift(image_0deg, image_90deg, pixel_size_A, *, orientation_90deg: str = "transpose",
                  linear_search_max_frac: float = 0.08, linear_search_steps: int = 9,
                  refine_iterations: int = 10, refine_search_px: float = 2.0,
                  refine_offsets: int = 9, refine_min_search_px: float = 0.25,
                  line_smoothing_sigma: float = 2.0, kernel_sigma_px: float = 0.5,
                  pad_frac: float = 0.1) -> DriftResult:
    """Correct linear and non-linear drift of an orthogonal scan pair.

    Parameters
    ----------
    image_0deg : array_like (nx, ny)
        Image with the fast scan axis along its second index (rows are scan lines, in time order).
    image_90deg : array_like (ny, nx)
        The orthogonal image of the same area, as recorded (rows are its scan lines); see the
        module docstring and ``orientation_90deg``.
    pixel_size_A : float or (float, float)
        Pixel size of the images, Angstrom (one value, or one per image: they must agree).
    orientation_90deg : {"transpose", "rot90"}
        How the second image maps onto the first: ``image_90deg.T`` or ``numpy.rot90`` of it.
    linear_search_max_frac : float
        Largest linear drift searched, per frame and axis, as a fraction of the image size.
    linear_search_steps : int
        Grid points per axis of the linear-drift search (a second, finer grid of the same size
        follows around the best point).
    refine_iterations : int
        Iterations of the per-line origin refinement (0 stops after the linear search).
    refine_search_px : float
        Half-width of the per-line offset search in the first iteration, pixels; it halves every
        iteration down to ``refine_min_search_px``.
    refine_offsets : int
        Offsets per axis in the per-line search grid (odd).
    refine_min_search_px : float
        Smallest half-width of the per-line offset search, pixels.
    line_smoothing_sigma : float
        Gaussian smoothing of the per-line offsets along the slow scan axis, lines (0: none).
    kernel_sigma_px : float
        Gaussian kernel used when resampling the images onto the output grid, pixels.
    pad_frac : float
        Padding of the output grid on each side, as a fraction of the larger image size.

    Returns
    -------
    DriftResult

    Raises
    ------
    InputError
        If the shapes or pixel sizes of the pair disagree, or an image is not finite.
    """
    im0, im1, px = _check_pair(image_0deg, image_90deg, pixel_size_A, orientation_90deg)
    if refine_offsets < 3 or refine_offsets % 2 == 0:
        raise ValueError(f"refine_offsets must be an odd integer >= 3, got {refine_offsets!r}")
    if linear_search_steps < 1:
        raise ValueError(f"linear_search_steps must be >= 1, got {linear_search_steps!r}")
    nx, ny = im0.shape
    pad = int(math.ceil(pad_frac * max(nx, ny))) + 2
    shape = (nx + 2 * pad, ny + 2 * pad)
    ideal, dirs = _geometry(im0.shape, orientation_90deg, pad)
    norm = [_normalise(im0), _normalise(im1)]
    sig = kernel_sigma_px

    res, wts = _resample_pair(norm, ideal, dirs, shape, sig)
    residual_initial = _residual(res, wts)

    # 1. linear drift search (coarse grid, then a finer grid around the best point)
    dmax = linear_search_max_frac * np.array([nx, ny], dtype=float)
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
                origins = (_apply_linear(ideal[0], d), _apply_linear(ideal[1], d))
                r, w = _resample_pair(norm, origins, dirs, shape, sig)
                score, shift = _cross_correlate(r, w)
                if score > best[0]:
                    best = (score, d, shift)
        centre = best[1]
        half = half / max(1, (linear_search_steps - 1) / 2)
    linear_drift = best[1]
    origins = [_apply_linear(ideal[0], linear_drift), _apply_linear(ideal[1], linear_drift)]
    # align the second image by the correlation peak (iterate: the peak is sub-pixel)
    translation = np.zeros(2)
    for _ in range(3):
        r, w = _resample_pair(norm, origins, dirs, shape, sig)
        _, shift = _cross_correlate(r, w)
        origins[1] = origins[1] + shift
        translation += shift
        if np.hypot(*shift) < 0.02:
            break
    # split the translation between both images so the result stays centred
    origins[0] = origins[0] - translation / 2
    origins[1] = origins[1] - translation / 2
    res, wts = _resample_pair(norm, origins, dirs, shape, sig)
    residual_linear = _residual(res, wts)

    # 2. per-line refinement against the other image
    history = []
    search = float(refine_search_px)
    for _it in range(refine_iterations):
        offs = np.linspace(-search, search, refine_offsets)
        step = offs[1] - offs[0]
        total = []
        for k in (0, 1):
            other = 1 - k
            res, wts = _resample_pair(norm, origins, dirs, shape, sig)
            delta = _line_offsets(norm[k], origins[k], dirs[k], res[other], wts[other], offs, step)
            if line_smoothing_sigma > 0:
                delta = ndimage.gaussian_filter1d(delta, line_smoothing_sigma, axis=0, mode="nearest")
            origins[k] = origins[k] + delta
            total.append(delta)
        common = np.concatenate(total).mean(axis=0)
        origins[0] = origins[0] - common
        origins[1] = origins[1] - common
        res, wts = _resample_pair(norm, origins, dirs, shape, sig)
        history.append(_residual(res, wts))
        search = max(refine_min_search_px, search / 2)

    # 3. combined image from the original intensities
    res, wts = _resample_pair([im0, im1], origins, dirs, shape, sig)
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
                       residual_history=history)


def _line_offsets(image, origins, u, reference, ref_weight, offsets, step):
    """Best 2-D offset of each scan line of ``image`` against ``reference`` (n_lines, 2), px."""
    n_lines, n_fast = image.shape
    pos = _positions(origins, u, n_fast)  # (L, F, 2)
    no = len(offsets)
    ox, oy = np.meshgrid(offsets, offsets, indexing="ij")
    ssd = np.empty((no, no, n_lines))
    valid_ref = ref_weight > 0.5
    vmap = valid_ref.astype(np.float64)
    for a in range(no):
        for b in range(no):
            cx = pos[..., 0] + ox[a, b]
            cy = pos[..., 1] + oy[a, b]
            coords = np.stack([cx.ravel(), cy.ravel()])
            s = ndimage.map_coordinates(reference, coords, order=1, mode="constant").reshape(n_lines, n_fast)
            v = ndimage.map_coordinates(vmap, coords, order=1, mode="constant").reshape(n_lines, n_fast) > 0.99
            n = v.sum(axis=1)
            d = np.where(v, s - image, 0.0)
            ssd[a, b] = np.where(n > n_fast // 4, (d ** 2).sum(axis=1) / np.maximum(n, 1), np.inf)
    delta = np.zeros((n_lines, 2))
    flat = ssd.reshape(no * no, n_lines)
    good = np.isfinite(flat).all(axis=0)
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
    return delta
