"""One matplotlib style for every figure of the project (legible at journal column width)."""

from __future__ import annotations

import numpy as np

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

#: single-column and double-column widths, inches
COLUMN_WIDTH_IN = 3.5
PAGE_WIDTH_IN = 7.2

STYLE = {
    "font.size": 8,
    "axes.titlesize": 8,
    "axes.labelsize": 8,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "legend.fontsize": 7,
    "figure.dpi": 150,
    "savefig.dpi": 200,
    "savefig.bbox": "tight",
    "image.interpolation": "nearest",
    "image.origin": "upper",
}


def save_figure(fig, out_path, dpi: int | None = None, tight: bool = True):
    """Write ``fig`` atomically (format from the suffix; nothing appears at ``out_path`` on error)
    and close it.

    Parameters
    ----------
    dpi : int, optional
        Resolution (default: the style's ``savefig.dpi``).
    tight : bool
        Crop to the drawn content (the style's default); False keeps the figure size exact.
    """
    from pathlib import Path

    from ..io.provenance import atomic_path

    out_path = Path(out_path)
    try:
        with atomic_path(out_path) as tmp, plt.rc_context({} if tight else {"savefig.bbox": "standard"}):
            fig.savefig(tmp, format=out_path.suffix.lstrip(".") or "png", dpi=dpi)
    finally:
        plt.close(fig)
    return out_path


def use_style() -> None:
    """Apply the project style to matplotlib's global settings."""
    plt.rcParams.update(STYLE)


def add_scale_bar(ax, pixel_size_A: float, length_nm: float | None = None, color: str = "white") -> None:
    """Draw a scale bar in nm in the lower-left corner of an image axis.

    Parameters
    ----------
    ax : matplotlib Axes showing an image with ``imshow`` (pixel units)
    pixel_size_A : float
        Size of one image pixel, Angstrom.
    length_nm : float, optional
        Bar length, nm (default: a round number near 1/5 of the width).
    """
    xmin, xmax = sorted(ax.get_xlim())
    ymin, ymax = sorted(ax.get_ylim())
    width_nm = (xmax - xmin) * pixel_size_A / 10
    if length_nm is None:
        raw = width_nm / 5
        mag = 10 ** np.floor(np.log10(raw))
        length_nm = float(min((1, 2, 5, 10), key=lambda m: abs(m * mag - raw)) * mag)
    length_px = length_nm * 10 / pixel_size_A
    x0 = xmin + 0.05 * (xmax - xmin)
    y0 = ymax - 0.07 * (ymax - ymin)
    ax.plot([x0, x0 + length_px], [y0, y0], color=color, lw=2, solid_capstyle="butt")
    ax.text(x0 + length_px / 2, y0 - 0.02 * (ymax - ymin), f"{length_nm:g} nm", color=color,
            ha="center", va="bottom", fontsize=7)



