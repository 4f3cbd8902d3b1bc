"""Figures of the calibration chain: drift correction (before/after) and the parallax shift field."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .. import physics
from ..drift import nominal_images
from .style import PAGE_WIDTH_IN, add_scale_bar, plt, save_figure, use_style


def _log_fft(image):
    im = np.asarray(image, dtype=np.float64)
    im = im - im.mean()
    win = np.outer(np.hanning(im.shape[0]), np.hanning(im.shape[1]))
    return np.log1p(np.abs(np.fft.fftshift(np.fft.fft2(im * win))))


def _show(ax, image, pixel_size_A, title, cmap="gray"):
    im = np.asarray(image, dtype=np.float64)
    lo, hi = np.percentile(im, [0.5, 99.5])
    ax.imshow(im, cmap=cmap, vmin=lo, vmax=hi)
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    add_scale_bar(ax, pixel_size_A)


def _show_fft(ax, image, pixel_size_A, title, k_max_inv_A=None):
    f = _log_fft(image)
    nx, ny = f.shape
    dkx, dky = 1 / (nx * pixel_size_A), 1 / (ny * pixel_size_A)
    extent = [(-ny / 2 - 0.5) * dky, (ny / 2 - 0.5) * dky, (nx / 2 - 0.5) * dkx, (-nx / 2 - 0.5) * dkx]
    lo, hi = np.percentile(f, [50, 99.95])
    ax.imshow(f, cmap="magma", vmin=lo, vmax=hi, extent=extent)
    if k_max_inv_A:
        ax.set_xlim(-k_max_inv_A, k_max_inv_A)
        ax.set_ylim(k_max_inv_A, -k_max_inv_A)
    ax.set_xlabel(r"$k_y$ (1/$\AA$)")
    ax.set_ylabel(r"$k_x$ (1/$\AA$)")
    ax.set_title(title)


def plot_drift(result, image_0deg, image_90deg, out_path: str | os.PathLike, title: str | None = None,
               k_max_inv_A: float | None = 0.8) -> Path:
    """Before/after figure of the drift correction, written atomically.

    Top row: the 0-degree and 90-degree images as recorded (on the nominal grid) and the
    corrected combined image; bottom row: the Fourier transforms (log amplitude, Hann window) of
    the 0-degree and the corrected image, where drift shows as split or smeared lattice peaks, and
    the per-line drift (displacement of each scan line from the ideal raster, x and y, both images)
    against the scan line's time.

    Parameters
    ----------
    result : msptycho.drift.DriftResult
    image_0deg, image_90deg : ndarray
        The input pair, in the layout given to :func:`msptycho.drift.correct_drift`.
    out_path : str or PathLike
        Image file to write (format from the suffix).
    title : str, optional
        Figure title.
    k_max_inv_A : float or None
        Half-width of the Fourier panels, 1/Angstrom (None: everything).

    Returns
    -------
    Path
        ``out_path``.
    """
    use_style()
    out_path = Path(out_path)
    a, b = nominal_images(image_0deg, image_90deg, result.pair_layout)
    px = result.pixel_size_A
    # the corrected image, cropped to the area covered by both frames' bounding box
    cov = result.coverage > 1.0
    xs, ys = np.nonzero(cov)
    corr = result.image[xs.min():xs.max() + 1, ys.min():ys.max() + 1] if xs.size else result.image
    fig, axes = plt.subplots(2, 3, figsize=(PAGE_WIDTH_IN, PAGE_WIDTH_IN * 0.7), constrained_layout=True)
    try:
        _show(axes[0, 0], a, px, "0° scan (as recorded)")
        _show(axes[0, 1], b, px, "90° scan (as recorded)")
        _show(axes[0, 2], corr, px, "drift-corrected, combined")
        _show_fft(axes[1, 0], a, px, "FFT, 0° scan", k_max_inv_A)
        _show_fft(axes[1, 1], corr, px, "FFT, corrected", k_max_inv_A)
        ax = axes[1, 2]
        unmeasured = False
        for k, (name, ls) in enumerate((("0°", "-"), ("90°", "--"))):
            d = result.drift_px[k] * px
            t = np.arange(len(d)) / len(d) + k
            ax.plot(t, d[:, 0], ls, color="C0", lw=1, label=f"x, {name}")
            ax.plot(t, d[:, 1], ls, color="C3", lw=1, label=f"y, {name}")
            if result.informative and not np.all(result.informative[k]):
                bad = ~np.asarray(result.informative[k])
                ax.plot(t[bad], d[bad, 0], ".", color="0.6", ms=1.5)
                ax.plot(t[bad], d[bad, 1], ".", color="0.6", ms=1.5)
                unmeasured = True
        if unmeasured:
            ax.plot([], [], ".", color="0.6", label="not measured")
        ax.set_xlabel("time (frames)")
        ax.set_ylabel(r"scan-line drift ($\AA$)")
        ax.set_title(f"residual {result.residual_initial:.2f} → {result.residual_final:.2f}")
        ax.legend(loc="best", frameon=False, ncol=2, fontsize=6)
        if title:
            fig.suptitle(title)
    except BaseException:
        plt.close(fig)
        raise
    return save_figure(fig, out_path)


def plot_parallax(result, out_path: str | os.PathLike, title: str | None = None,
                  truth: dict | None = None) -> Path:
    """Parallax figure: the fitted shift field and the images, written atomically.

    Panels: the measured displacement of every bright-field image (black arrows) and the fitted
    aberration-gradient model (red), at the image's scattering angle (detector frame, mrad),
    drawn in the object frame and magnified; the measured against the fitted displacement, both
    components (outliers grey); the plain bright-field image; the upsampled tilt-corrected image.

    Parameters
    ----------
    result : msptycho.parallax.ParallaxResult
    out_path : str or PathLike
        Image file to write.
    title : str, optional
        Figure title.
    truth : dict, optional
        Known values (e.g. ``{"defocus_A": 120, "scan_rotation_deg": 14}``) printed beside the
        estimates.

    Returns
    -------
    Path
        ``out_path``.
    """
    from ..parallax import scan_to_object

    use_style()
    out_path = Path(out_path)
    lam = physics.wavelength_A(result.energy_eV)
    k_mrad = np.asarray(result.k_inv_A) * lam * 1e3
    d_meas = scan_to_object(result.shifts_A, result.scan_rotation_deg, result.transpose)
    d_fit = scan_to_object(result.shifts_fit_A, result.scan_rotation_deg, result.transpose)
    inl = np.asarray(result.inliers, dtype=bool)
    fig, axes = plt.subplots(1, 4, figsize=(PAGE_WIDTH_IN, PAGE_WIDTH_IN / 4 * 1.25), constrained_layout=True)
    try:
        ax = axes[0]
        span = float(np.abs(k_mrad).max()) if k_mrad.size else 1.0
        dmax = float(np.abs(d_fit).max()) or 1.0
        scale = dmax / (0.25 * span)  # longest fitted arrow: a quarter of the disk radius
        step = max(1, int(np.ceil(len(k_mrad) / 300)))  # at most ~300 arrows
        sel = np.zeros(len(k_mrad), dtype=bool)
        sel[::step] = True
        # imshow-like orientation: kx down, ky right
        ax.quiver(k_mrad[sel, 1], k_mrad[sel, 0], d_fit[sel, 1], d_fit[sel, 0], angles="xy",
                  scale_units="xy", scale=scale, color="C3", width=0.009, alpha=0.7)
        m = sel & inl
        ax.quiver(k_mrad[m, 1], k_mrad[m, 0], d_meas[m, 1], d_meas[m, 0], angles="xy",
                  scale_units="xy", scale=scale, color="k", width=0.004)
        ax.set_xlim(-1.2 * span, 1.2 * span)
        ax.set_ylim(1.2 * span, -1.2 * span)
        ax.set_aspect("equal")
        ax.set_xlabel(r"$k_y$ (mrad)")
        ax.set_ylabel(r"$k_x$ (mrad)")
        ax.set_title(f"measured (black), fit (red)\nlongest fit arrow {dmax:.2f} $\\AA$", fontsize=7)

        ax = axes[1]
        for c, col in enumerate(("C0", "C3")):
            ax.plot(d_fit[inl, c], d_meas[inl, c], ".", ms=2, color=col, label="xy"[c])
            ax.plot(d_fit[~inl, c], d_meas[~inl, c], ".", ms=2, color="0.6")
        lim = 1.1 * max(float(np.abs(d_meas[inl]).max()) if inl.any() else 1.0, dmax)
        ax.plot([-lim, lim], [-lim, lim], "k-", lw=0.5)
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
        ax.set_xlabel(r"fitted shift ($\AA$)")
        ax.set_ylabel(r"measured shift ($\AA$)")
        ax.legend(loc="upper left", frameon=False, markerscale=3)
        lines = [f"defocus {result.defocus_A:.1f} Å",
                 f"C12 {result.C12_A:.1f} Å @ {np.rad2deg(result.phi12_rad):.0f}°",
                 f"rotation {result.scan_rotation_deg:.2f}°" + (" (T)" if result.transpose else "")
                 + f", R² {result.explained_fraction:.2f}"]
        if np.isfinite(result.C21_A):
            lines.append(f"C21 {result.C21_A:.0f} Å @ {np.rad2deg(result.phi21_rad):.0f}°")
        if truth:
            tr = {"defocus_A": "defocus", "scan_rotation_deg": "rotation", "C12_A": "C12"}
            lines.append("truth: " + ", ".join(f"{tr.get(k, k)} {v:g}" for k, v in truth.items()))
        ax.set_title("\n".join(lines[:2]) + "\n" + "\n".join(lines[2:]), fontsize=6)

        _show(axes[2], result.image_bf, result.scan_step_A, "bright field")
        _show(axes[3], result.image, result.image_sampling_A, "tilt-corrected BF")
        if title:
            fig.suptitle(title)
    except BaseException:
        plt.close(fig)
        raise
    return save_figure(fig, out_path)
