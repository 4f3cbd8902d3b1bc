"""Ingest overview figure: mean diffraction pattern with the bright-field disk, virtual BF and ADF."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from matplotlib.colors import LogNorm
from matplotlib.patches import Circle
from matplotlib.ticker import NullFormatter

from .style import PAGE_WIDTH_IN, add_scale_bar, plt, save_figure, use_style


def plot_ingest_overview(overview, calibration, out_path: str | os.PathLike,
                         title: str | None = None) -> Path:
    """Draw the ingest overview and write it atomically.

    Three panels: the mean diffraction pattern on a log scale (axes in mrad about the detected
    disk centre) with the bright-field disk circled (solid) and the ADF detector's radii dashed;
    the virtual bright-field image; the virtual annular dark-field image, each with a scale bar.

    Parameters
    ----------
    overview : msptycho.virtual.IngestOverview
        Mean pattern, BF disk and virtual images (:func:`msptycho.virtual.compute_overview`).
    calibration : msptycho.io.Calibration
        Supplies ``mrad_per_pixel`` (diffraction axes) and ``scan_step_A`` (scale bars).
    out_path : str or PathLike
        Image file to write (format from its suffix, e.g. ``.png``); appears only when complete.
    title : str, optional
        Figure title (e.g. the sample name).

    Returns
    -------
    Path
        ``out_path``.
    """
    use_style()
    out_path = Path(out_path)
    mean = np.asarray(overview.mean_pattern, dtype=np.float64)
    disk = overview.disk
    dq = float(calibration.mrad_per_pixel)
    cx, cy = disk.center_px

    fig, axes = plt.subplots(1, 3, figsize=(PAGE_WIDTH_IN, PAGE_WIDTH_IN / 3 * 1.05),
                             constrained_layout=True)
    try:
        # mean pattern, log scale; imshow rows are Qx (vertical), columns Qy (horizontal)
        ax = axes[0]
        positive = mean[mean > 0]
        vmax = float(positive.max()) if positive.size else 1.0
        vmin = max(float(positive.min()) if positive.size else vmax * 1e-4, vmax * 1e-4)
        nx, ny = mean.shape
        extent = [(-0.5 - cy) * dq, (ny - 0.5 - cy) * dq, (nx - 0.5 - cx) * dq, (-0.5 - cx) * dq]
        im = ax.imshow(np.clip(mean, vmin, None), norm=LogNorm(vmin=vmin, vmax=vmax),
                       cmap="magma", extent=extent)
        ax.add_patch(Circle((0, 0), disk.radius_px * dq, fill=False, color="cyan", lw=1.0))
        for r in (overview.adf_inner_px, overview.adf_outer_px):
            if np.isfinite(r):
                ax.add_patch(Circle((0, 0), r * dq, fill=False, color="white", lw=0.8, ls="--"))
        ax.set_xlabel(r"$q_y$ (mrad)")
        ax.set_ylabel(r"$q_x$ (mrad)")
        ax.set_title(f"mean pattern (log)\nBF disk r = {disk.radius_px:.2f} px "
                     f"({disk.radius_px * dq:.1f} mrad)\nat ({cx:.2f}, {cy:.2f}) px")
        cb = fig.colorbar(im, ax=ax, shrink=0.8, label="counts / pixel")
        cb.ax.yaxis.set_minor_formatter(NullFormatter())

        for ax, img, name in ((axes[1], overview.bright_field, "virtual BF"),
                              (axes[2], overview.annular_dark_field, "virtual ADF")):
            ax.imshow(img, cmap="gray")
            ax.set_title(name)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel(r"$R_y$")
            ax.set_ylabel(r"$R_x$")
            add_scale_bar(ax, calibration.scan_step_A, color="yellow")
        if title:
            fig.suptitle(title)
    except BaseException:
        plt.close(fig)
        raise
    return save_figure(fig, out_path)


__all__ = ["plot_ingest_overview"]
