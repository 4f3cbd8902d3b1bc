"""The paper's figures (Ribet et al., Figs. 1-4 and S.2-S.8) and the validation figure.

One function per figure. Every function takes arrays (or the library's result dataclasses), draws
with the project style (:mod:`msptycho.figures.style`) and writes one PNG atomically
(:func:`msptycho.io.atomic_path`): the file appears only when complete. Figures are saved without
``bbox_inches="tight"``, so a figure's pixel size is exactly its size in inches times
:attr:`FigureSettings.dpi`; widths are the journal's page width (:data:`~.style.PAGE_WIDTH_IN`,
7.2 in) or column width (:data:`~.style.COLUMN_WIDTH_IN`, 3.5 in).

Array conventions are the project's: maps are indexed ``[slice, x, y]``, shown with ``x`` down
the page (rows) and ``y`` across (columns); positions in Angstrom, strain as a fraction (drawn in
%), rotation in degrees (counter-clockwise from +x towards +y positive), potential in V*A, slice
depths from the entrance surface (slice ``k`` spans ``[k dz, (k + 1) dz]``).

The 3-D render (Fig. 4) is in :mod:`msptycho.figures.render3d`, the movies in
:mod:`msptycho.figures.movies`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from matplotlib import colors as mcolors
from matplotlib.patches import Circle, FancyArrowPatch

from . import style
from ..settings import settings_from_mapping
from .style import COLUMN_WIDTH_IN, PAGE_WIDTH_IN, add_scale_bar, plt, use_style

# ------------------------------------------------------------------------------------------------
# settings


@dataclass(frozen=True)
class FigureSettings:
    """Appearance of the paper's figures and movies (config section ``figures``).

    Attributes
    ----------
    dpi : int
        Resolution of the PNG figures, dots per inch (a page-wide figure is ``7.2 * dpi`` pixels wide).
    strain_limit_percent : float or None
        Colour range of the strain maps (exx, eyy, exy, dilation) is +/- this, %; null: the 99th
        percentile of the absolute strain shown.
    rotation_limit_deg : float or None
        Colour range of the rotation maps is +/- this, degrees; null: the 99th percentile of the
        absolute rotation shown.
    potential_percentiles : tuple of float
        Lower and upper percentiles of the potential (over all slices shown) mapped to black and
        white, %.
    unreliable_top_slices : int
        Number of slices at the entrance surface whose maps are dominated by the support (carbon
        film) and flagged as less reliable in the movies and skipped when choosing the "top" slice
        of Figs. 2/3.
    montage_columns : int
        Panels per row in the per-slice montages (Figs. S.2-S.5).
    scale_bar_nm : float or None
        Length of the scale bars, nm; null: a round number near a fifth of the panel width.
    fft_max_inv_A : float or None
        Largest spatial frequency shown in the Fourier transform (Fig. S.8), 1/A; null: 1.3 times
        the largest marked reflection (or the Nyquist frequency when none is marked).
    probe_max_angle_mrad : float or None
        Largest scattering angle shown in the Fourier-space probe (Fig. S.6), mrad; null: 1.4 times
        the convergence semi-angle.
    phase_amplitude_percentile : float
        Percentile of the Bragg-filter amplitude (per reflection, all slices) shown at full
        brightness in the dislocation maps (Fig. S.5), %.
    movie_fps : float
        Frames (slices) per second of the movies.
    movie_frame_px : int
        Width of a movie frame, pixels (rounded to a multiple of 16).
    render_window_px : int
        Size of each of the two square 3-D render viewpoints (Fig. 4), pixels.
    render_view_1_deg, render_view_2_deg : tuple of float
        (elevation, azimuth) of the two viewpoints of the 3-D render, degrees; elevation from the
        x-y plane towards the entrance surface, azimuth from +x towards +y.
    render_surface_opacity : float
        Opacity of the particle surface in the 3-D render (0 transparent, 1 opaque).
    dislocation_tube_radius_A : float
        Radius of the tubes drawn along dislocation lines in the 3-D render, A.
    """

    dpi: int = 200
    strain_limit_percent: float | None = 5.0
    rotation_limit_deg: float | None = 3.0
    potential_percentiles: tuple[float, float] = (0.5, 99.5)
    unreliable_top_slices: int = 3
    montage_columns: int = 6
    scale_bar_nm: float | None = None
    fft_max_inv_A: float | None = None
    probe_max_angle_mrad: float | None = None
    phase_amplitude_percentile: float = 99.0
    movie_fps: float = 4.0
    movie_frame_px: int = 640
    render_window_px: int = 600
    render_view_1_deg: tuple[float, float] = (25.0, -60.0)
    render_view_2_deg: tuple[float, float] = (25.0, 120.0)
    render_surface_opacity: float = 0.3
    dislocation_tube_radius_A: float = 2.0

    def validate(self, source: str = "figure settings") -> "FigureSettings":
        """Raise ``ValueError`` naming the first bad field."""
        def bad(name, expected):
            raise ValueError(f"{source}: field '{name}' is {getattr(self, name)!r}; expected {expected}.")
        for name in ("dpi", "montage_columns", "movie_frame_px", "render_window_px"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
                bad(name, "a positive integer")
        if not isinstance(self.unreliable_top_slices, (int, np.integer)) or self.unreliable_top_slices < 0:
            bad("unreliable_top_slices", "a non-negative integer")
        for name in ("strain_limit_percent", "rotation_limit_deg", "scale_bar_nm", "fft_max_inv_A",
                     "probe_max_angle_mrad"):
            v = getattr(self, name)
            if v is not None and not (np.isfinite(v) and v > 0):
                bad(name, "a positive number or null")
        lo, hi = self.potential_percentiles
        if not 0 <= lo < hi <= 100:
            bad("potential_percentiles", "two percentiles 0 <= low < high <= 100")
        if not 0 < self.phase_amplitude_percentile <= 100:
            bad("phase_amplitude_percentile", "a percentile in (0, 100]")
        if not self.movie_fps > 0:
            bad("movie_fps", "a positive number")
        if not 0 <= self.render_surface_opacity <= 1:
            bad("render_surface_opacity", "a number in [0, 1]")
        if not self.dislocation_tube_radius_A > 0:
            bad("dislocation_tube_radius_A", "a positive number")
        return self

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_mapping(cls, mapping: dict | None, source: str = "figure settings") -> "FigureSettings":
        """Build from a mapping (e.g. the config's ``figures`` section); unknown keys are errors."""
        return settings_from_mapping(cls, mapping, source).validate(source)


# ------------------------------------------------------------------------------------------------
# helpers shared by the figure modules

#: colour of pixels without a value (outside the particle, no lattice signal) in strain-like maps
NO_DATA_COLOR = "0.82"
STRAIN_CMAP = "RdBu_r"
ROTATION_CMAP = "PuOr_r"


def _settings(settings: FigureSettings | None) -> FigureSettings:
    return (settings or FigureSettings()).validate()


def scalar_sampling(sampling_A) -> float:
    """Pixel size as one float (A): a scalar as is, a ``(dx, dy)`` pair's first value (the maps are
    shown with square pixels; the project's grids are square)."""
    if np.ndim(sampling_A) == 0:
        return float(sampling_A)
    return float(np.asarray(sampling_A, dtype=np.float64).ravel()[0])


def _origin(origin_A) -> tuple[float, float]:
    o = np.asarray(origin_A if origin_A is not None else (0.0, 0.0), dtype=np.float64).ravel()
    return float(o[0]), float(o[1])


def _volume(a, name: str, ndim: int = 3) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim == ndim - 1:
        a = a[None]
    if a.ndim != ndim or a.size == 0:
        raise ValueError(f"figure input '{name}' has shape {a.shape}; expected a non-empty {ndim}-D array.")
    return a


def slice_depth_nm(k, slice_thickness_A: float):
    """Mid-depth of slice ``k`` (0-based) below the entrance surface, nm."""
    return (np.asarray(k, dtype=np.float64) + 0.5) * float(slice_thickness_A) / 10.0


def slice_label(k: int, slice_thickness_A: float) -> str:
    """``"slice k+1, z = a-b nm"`` (1-based slice number as in the paper, depth range in nm)."""
    z0 = k * slice_thickness_A / 10
    return f"slice {k + 1}: {z0:.1f}–{z0 + slice_thickness_A / 10:.1f} nm"


def robust_limits(a, percentiles=(0.5, 99.5)) -> tuple[float, float]:
    """Percentile limits of the finite values of ``a``; (0, 1) when there are none."""
    v = np.asarray(a, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(v, percentiles)
    if not hi > lo:
        lo, hi = float(v.min()), float(v.max())
        if not hi > lo:
            hi = lo + 1.0
    return float(lo), float(hi)


def symmetric_limit(a, given: float | None, percentile: float = 99.0) -> float:
    """``given`` if set, else the ``percentile`` of ``|a|`` over finite values (at least 1e-6)."""
    if given is not None:
        return float(given)
    v = np.abs(np.asarray(a, dtype=np.float64))
    v = v[np.isfinite(v)]
    return float(max(np.percentile(v, percentile), 1e-6)) if v.size else 1.0


def cmap_with_bad(name: str, bad: str = NO_DATA_COLOR):
    """A copy of colour map ``name`` drawing NaN as ``bad``."""
    return plt.get_cmap(name).with_extremes(bad=bad)


def complex_to_rgb(z, amplitude_max: float | None = None, gamma: float = 1.0) -> np.ndarray:
    """RGB image of complex values: hue from the phase (HSV wheel, red at 0), brightness from the
    amplitude divided by ``amplitude_max`` (default: the largest amplitude), clipped to 1 and
    raised to ``gamma``."""
    z = np.asarray(z)
    amp = np.abs(z).astype(np.float64)
    amp[~np.isfinite(amp)] = 0.0
    m = float(amplitude_max) if amplitude_max else (float(amp.max()) or 1.0)
    val = np.clip(amp / m, 0, 1) ** gamma
    hue = (np.angle(z) / (2 * np.pi)) % 1.0
    hsv = np.stack([hue, np.ones_like(hue), val], axis=-1)
    return mcolors.hsv_to_rgb(hsv)


def add_phase_wheel(fig, rect=(0.0, 0.0, 0.08, 0.08), ax=None, label: str = "phase"):
    """A small colour wheel (hue = phase, brightness = amplitude) in figure coordinates ``rect``
    or in the given axes."""
    if ax is None:
        ax = fig.add_axes(rect)
    n = 101
    y, x = np.mgrid[-1:1:n * 1j, -1:1:n * 1j]
    z = x - 1j * y  # phase counter-clockwise on the page with 0 pointing right
    rgb = complex_to_rgb(z, 1.0)
    alpha = (np.abs(z) <= 1).astype(float)
    ax.imshow(np.dstack([rgb, alpha]), extent=(-1, 1, -1, 1), interpolation="bilinear")
    ax.set_axis_off()
    ax.set_title(label, fontsize=6, pad=1)
    for t, s in ((0, "0"), (np.pi / 2, "π/2"), (np.pi, "π"), (3 * np.pi / 2, "-π/2")):
        ax.text(1.25 * np.cos(t), 1.25 * np.sin(t), s, fontsize=5, ha="center", va="center")
    ax.set_xlim(-1.6, 1.6)
    ax.set_ylim(-1.6, 1.6)
    return ax


def panel_letter(ax, letter: str, color: str = "black", inside: bool = False) -> None:
    """Panel label ``(a)`` at the top-left corner of ``ax`` (outside above it unless ``inside``)."""
    if inside:
        ax.text(0.03, 0.97, f"({letter})", transform=ax.transAxes, ha="left", va="top", color=color,
                fontsize=8, fontweight="bold")
    else:
        ax.text(-0.02, 1.02, f"({letter})", transform=ax.transAxes, ha="right", va="bottom", color=color,
                fontsize=8, fontweight="bold")


def image_axes(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    for s in ax.spines.values():
        s.set_linewidth(0.5)


def save_figure(fig, out_path, dpi: int) -> Path:
    """Write ``fig`` atomically at ``dpi`` without tight cropping (exact page/column width), and close it."""
    return style.save_figure(fig, out_path, dpi=dpi, tight=False)


def _letters():
    return "abcdefghijklmnopqrstuvwxyz"


def valid_slices(maps, min_fraction: float = 0.5) -> np.ndarray:
    """Indices of slices whose count of finite pixels is at least ``min_fraction`` of the largest."""
    m = np.asarray(maps)
    counts = np.isfinite(m).reshape(m.shape[0], -1).sum(axis=1)
    if counts.max() == 0:
        return np.arange(m.shape[0])
    return np.flatnonzero(counts >= min_fraction * counts.max())


def top_middle_bottom(n_slices: int, valid=None, skip_top: int = 0) -> list[int]:
    """Three slices spanning the particle: first, middle and last of ``valid`` (all by default),
    leaving out the first ``skip_top`` slices when enough remain."""
    v = np.arange(n_slices) if valid is None else np.asarray(valid, dtype=np.int64)
    if v.size == 0:
        v = np.arange(n_slices)
    w = v[v >= skip_top]
    if w.size >= 3:
        v = w
    if v.size >= 3:
        return [int(v[0]), int(v[(v.size - 1) // 2]), int(v[-1])]
    return [int(v[min(i, v.size - 1)]) for i in (0, (v.size - 1) // 2, v.size - 1)]


def particle_crop(maps, margin_px: int = 10) -> tuple[slice, slice]:
    """Row and column slices of the bounding box of the finite (or True) pixels of ``maps``
    (``(nz, nx, ny)`` or ``(nx, ny)``; e.g. a strain map, NaN outside the particle, or a mask), grown
    by ``margin_px``; the whole grid when there are none.

    Crop every array of a figure with the same box (``volume[:, rows, cols]``); positions in A then
    need the new origin ``origin_A + (rows.start, cols.start) * pixel_size_A``.
    """
    m = np.asarray(maps)
    good = m if m.dtype == bool else np.isfinite(m)
    if good.ndim == 3:
        good = good.any(axis=0)
    if not good.any():
        return slice(0, good.shape[0]), slice(0, good.shape[1])
    idx = np.argwhere(good)
    (r0, c0), (r1, c1) = idx.min(axis=0) - margin_px, idx.max(axis=0) + 1 + margin_px
    return slice(max(0, int(r0)), min(good.shape[0], int(r1))), slice(max(0, int(c0)), min(good.shape[1], int(c1)))


def _montage_grid(n: int, columns: int, width_in: float = PAGE_WIDTH_IN, extra_h_in: float = 0.45,
                  title_h_in: float = 0.16, aspect: float = 1.0):
    cols = max(1, min(columns, n))
    rows = int(math.ceil(n / cols))
    panel = width_in / cols
    height = rows * (panel * aspect + title_h_in) + extra_h_in
    return rows, cols, (width_in, height)


# ------------------------------------------------------------------------------------------------
# Fig. 1b/c: drift-corrected HAADF image


def plot_haadf(image, pixel_size_A: float, out_path, *, coverage=None, crack_mask=None, crack_point_px=None,
               crack_xy_A=None, image_origin_A=(0.0, 0.0), title: str | None = None,
               settings: FigureSettings | None = None) -> Path:
    """Drift-corrected HAADF image of the particle (the paper's Fig. 1b/c), crack marked if given.

    Parameters
    ----------
    image : ndarray (H, W)
        Drift-corrected HAADF image (e.g. :attr:`msptycho.drift.DriftResult.image`), counts.
    pixel_size_A : float
        Pixel size of ``image``, A.
    out_path : path-like
        PNG to write (column width, ``3.5 in x dpi`` pixels wide).
    coverage : ndarray (H, W), optional
        Sampling weight (:attr:`DriftResult.coverage`); the image is cropped to the bounding box
        where it is at least half its median over covered pixels (the padding is dropped).
    crack_mask : ndarray of bool (H, W) or (nz, H, W), optional
        Crack pixels on the image's grid (a volume is projected along its first axis); outlined in
        yellow and pointed at by an arrow (as the paper's Fig. 1c).
    crack_point_px : (float, float), optional
        Pixel ``(row, column)`` of ``image`` to point the arrow at (instead of the mask's centroid).
    crack_xy_A : (float, float), optional
        Position ``(x, y)`` of the crack in the scan frame, A (e.g. the centroid of the truth's
        ``crack_mask``): converted to a pixel with ``image_origin_A`` and ``pixel_size_A``.
    image_origin_A : (float, float)
        Scan-frame position of pixel ``[0, 0]`` of ``image``, A (for a
        :class:`~msptycho.drift.DriftResult`: the scan pair's ``origin_A`` minus
        ``pad_px * pixel_size_A``).
    title : str, optional
    settings : FigureSettings, optional

    Returns
    -------
    Path
    """
    s = _settings(settings)
    use_style()
    img = np.asarray(image, dtype=np.float64)
    if img.ndim != 2 or img.size == 0:
        raise ValueError(f"plot_haadf: image has shape {img.shape}; expected a 2-D image.")
    r0, r1, c0, c1 = 0, img.shape[0], 0, img.shape[1]
    if coverage is not None:
        cov = np.asarray(coverage, dtype=np.float64)
        if cov.shape != img.shape:
            raise ValueError(f"plot_haadf: coverage has shape {cov.shape}; expected {img.shape}.")
        pos = cov[cov > 0]
        if pos.size:
            good = np.argwhere(cov >= 0.5 * np.median(pos))
            (r0, c0), (r1, c1) = good.min(axis=0), good.max(axis=0) + 1
    mask2 = None
    if crack_mask is not None:
        cm = np.asarray(crack_mask, dtype=bool)
        if cm.ndim == 3:
            cm = cm.any(axis=0)
        if cm.shape != img.shape:
            raise ValueError(f"plot_haadf: crack_mask has shape {cm.shape}; expected {img.shape} (the image's grid).")
        mask2 = cm[r0:r1, c0:c1]
    view = img[r0:r1, c0:c1]
    lo, hi = robust_limits(view, s.potential_percentiles)
    w = COLUMN_WIDTH_IN
    fig, ax = plt.subplots(figsize=(w, w * min(1.4, view.shape[0] / view.shape[1]) + 0.25), layout="constrained")
    ax.imshow(view, cmap="gray", vmin=lo, vmax=hi, interpolation="antialiased")
    image_axes(ax)
    target = None
    if crack_point_px is None and crack_xy_A is not None:
        ox, oy = _origin(image_origin_A)
        crack_point_px = ((float(crack_xy_A[0]) - ox) / pixel_size_A, (float(crack_xy_A[1]) - oy) / pixel_size_A)
    if crack_point_px is not None:
        target = (float(crack_point_px[0]) - r0, float(crack_point_px[1]) - c0)
    if mask2 is not None and mask2.any():
        ax.contour(mask2.astype(float), levels=[0.5], colors="yellow", linewidths=0.8)
        if target is None:
            target = tuple(np.argwhere(mask2).mean(axis=0))
    if target is not None:
        cy, cx = (view.shape[0] - 1) / 2, (view.shape[1] - 1) / 2
        d = np.array([target[0] - cy, target[1] - cx])
        nrm = np.hypot(*d)
        d = d / nrm if nrm > 1e-9 else np.array([1.0, 0.0])
        L = 0.18 * min(view.shape)
        start = 0.0
        if mask2 is not None and mask2.any() and crack_point_px is None:
            # from the centroid, walk out of the crack along d so the arrow stops at its edge
            for t in np.arange(0.0, max(view.shape), 0.5):
                i, j = int(round(target[0] + d[0] * t)), int(round(target[1] + d[1] * t))
                if not (0 <= i < view.shape[0] and 0 <= j < view.shape[1]) or not mask2[i, j]:
                    start = t
                    break
        head_t = start + 0.03 * L
        # keep the tail (and its label) inside the image
        tail_t = start + L
        for _ in range(20):
            ti, tj = target[0] + d[0] * tail_t, target[1] + d[1] * tail_t
            hx, hy = view.shape
            if 0.06 * hx <= ti <= 0.94 * hx and 0.06 * hy <= tj <= 0.94 * hy:
                break
            tail_t = head_t + 0.8 * (tail_t - head_t)
        tail = (target[1] + d[1] * tail_t, target[0] + d[0] * tail_t)
        head = (target[1] + d[1] * head_t, target[0] + d[0] * head_t)
        ax.add_patch(FancyArrowPatch(tail, head, arrowstyle="-|>", mutation_scale=12, color="yellow", lw=1.5))
        ax.text(*tail, "crack", color="yellow", fontsize=7, ha="center",
                va="bottom" if d[0] < 0 else "top")
    add_scale_bar(ax, pixel_size_A, s.scale_bar_nm)
    ax.set_title(title or "HAADF (drift corrected)")
    return save_figure(fig, out_path, s.dpi)


# ------------------------------------------------------------------------------------------------
# Figs. 2/3: top, middle, bottom slices with dilation and rotation


def plot_slices_strain(potential, dilation, rotation_deg, pixel_size_A: float, slice_thickness_A: float, out_path, *,
                       slices=None, title: str | None = None, settings: FigureSettings | None = None) -> Path:
    """Top, middle and bottom slices of the potential with their dilation and rotation maps (3 x 3,
    the paper's Figs. 2 and 3).

    Row 1: potential (grey, common contrast), row 2: dilation ``exx + eyy`` (%, diverging, centred at
    zero), row 3: rotation (degrees, diverging, centred at zero); one colour bar per row with
    units; columns are the chosen slices with their depth range; scale bar in nm.

    Parameters
    ----------
    potential : ndarray (nz, nx, ny)
        Reconstructed projected potential per slice, V*A.
    dilation : ndarray (nz, nx, ny)
        Dilation per slice (fraction; NaN where there is no lattice), on the same grid.
    rotation_deg : ndarray (nz, nx, ny)
        Lattice rotation per slice, degrees.
    pixel_size_A, slice_thickness_A : float
        Pixel size and slice thickness, A.
    out_path : path-like
        PNG to write (page width).
    slices : sequence of 3 int, optional
        Slices to show (0-based); default: first, middle and last slice with lattice signal
        (finite dilation in at least half as many pixels as the best slice), after the first
        ``settings.unreliable_top_slices``.
    title : str, optional
    settings : FigureSettings, optional

    Returns
    -------
    Path
    """
    s = _settings(settings)
    use_style()
    pot = _volume(potential, "potential")
    dil = _volume(dilation, "dilation")
    rot = _volume(rotation_deg, "rotation_deg")
    if not (pot.shape == dil.shape == rot.shape):
        raise ValueError(f"plot_slices_strain: potential {pot.shape}, dilation {dil.shape} and rotation "
                         f"{rot.shape} must have the same shape.")
    nz = pot.shape[0]
    if slices is None:
        slices = top_middle_bottom(nz, valid_slices(dil), s.unreliable_top_slices)
    slices = [int(k) for k in slices]
    if any(k < 0 or k >= nz for k in slices):
        raise ValueError(f"plot_slices_strain: slices {slices} outside 0..{nz - 1}.")
    ncol = len(slices)
    plo, phi = robust_limits(pot[slices], s.potential_percentiles)
    dlim = symmetric_limit(100 * dil[slices], s.strain_limit_percent)
    rlim = symmetric_limit(rot[slices], s.rotation_limit_deg)
    aspect = pot.shape[1] / pot.shape[2]
    panel = (PAGE_WIDTH_IN - 0.8) / ncol
    fig, axes = plt.subplots(3, ncol, figsize=(PAGE_WIDTH_IN, 3 * panel * aspect + 0.55 + (0.2 if title else 0)),
                             layout="constrained", squeeze=False)
    rows = (("potential", pot, "gray", (plo, phi), "potential (V·Å)", 1.0),
            ("dilation", dil, cmap_with_bad(STRAIN_CMAP), (-dlim, dlim), "dilation (%)", 100.0),
            ("rotation", rot, cmap_with_bad(ROTATION_CMAP), (-rlim, rlim), "rotation (°)", 1.0))
    letters = _letters()
    for r, (_, data, cmap, (vmin, vmax), label, scale) in enumerate(rows):
        im = None
        for c, k in enumerate(slices):
            ax = axes[r, c]
            im = ax.imshow(scale * np.asarray(data[k], dtype=np.float64), cmap=cmap, vmin=vmin, vmax=vmax,
                           interpolation="antialiased")
            image_axes(ax)
            panel_letter(ax, letters[r * ncol + c], color="black", inside=False)
            if r == 0:
                ax.set_title(slice_label(k, slice_thickness_A) + ("\n" + ("top", "middle", "bottom")[c]
                                                                   if ncol == 3 else ""))
            if c == 0:
                add_scale_bar(ax, pixel_size_A, s.scale_bar_nm, color="white" if r == 0 else "black")
        cb = fig.colorbar(im, ax=axes[r, :], shrink=0.9, pad=0.01, aspect=15, extend="both" if r else "neither")
        cb.set_label(label)
    if title:
        fig.suptitle(title)
    return save_figure(fig, out_path, s.dpi)


# ------------------------------------------------------------------------------------------------
# S.2 / S.3: all slices


def plot_slice_montage(potential, pixel_size_A: float, slice_thickness_A: float, out_path, *,
                       title: str | None = None, settings: FigureSettings | None = None) -> Path:
    """All slices of the potential as a montage with their depths (the paper's Figs. S.2/S.3).

    Common grey scale (``settings.potential_percentiles`` over all slices) so the depth
    distribution of the potential reads directly; each panel titled with the slice number and its
    depth range in nm; a scale bar in the first panel; a colour bar in V*A.

    Parameters
    ----------
    potential : ndarray (nz, nx, ny)
        Projected potential per slice, V*A.
    pixel_size_A, slice_thickness_A : float
        Pixel size and slice thickness, A.
    out_path : path-like
        PNG to write (page width).
    title : str, optional
    settings : FigureSettings, optional
    """
    s = _settings(settings)
    use_style()
    pot = _volume(potential, "potential")
    nz = pot.shape[0]
    lo, hi = robust_limits(pot, s.potential_percentiles)
    aspect = pot.shape[1] / pot.shape[2]
    rows, cols, size = _montage_grid(nz, s.montage_columns, aspect=aspect, extra_h_in=0.55 + (0.2 if title else 0))
    fig, axes = plt.subplots(rows, cols, figsize=size, layout="constrained", squeeze=False)
    im = None
    for i, ax in enumerate(axes.ravel()):
        if i >= nz:
            ax.set_axis_off()
            continue
        im = ax.imshow(pot[i], cmap="gray", vmin=lo, vmax=hi, interpolation="antialiased")
        image_axes(ax)
        z0 = i * slice_thickness_A / 10
        ax.set_title(f"{i + 1}: {z0:.1f}–{z0 + slice_thickness_A / 10:.1f} nm", fontsize=6, pad=2)
        if i == 0:
            add_scale_bar(ax, pixel_size_A, s.scale_bar_nm)
    cb = fig.colorbar(im, ax=axes, orientation="horizontal", shrink=0.4, aspect=40, pad=0.01)
    cb.set_label("projected potential (V·Å)")
    if title:
        fig.suptitle(title)
    return save_figure(fig, out_path, s.dpi)


# ------------------------------------------------------------------------------------------------
# S.4: order parameter per slice

#: shell (purple) -> threshold (white) -> core (blue), as the paper's Fig. S.4
ORDER_CMAP = mcolors.LinearSegmentedColormap.from_list("shell_core", ["#5b1a8c", "#b48ad6", "#f4f4f4",
                                                                      "#7fb0e6", "#0b3d91"])


def plot_order_parameter(order, pixel_size_A: float, slice_thickness_A: float, out_path, *, threshold=None,
                         core_mask=None, title: str | None = None, settings: FigureSettings | None = None) -> Path:
    """Order-parameter maps per slice (the paper's Fig. S.4): purple = shell, blue = core.

    The colour map is diverging about ``threshold`` (the core/shell boundary), NaN (outside the
    particle) drawn black, the core mask outlined in white.

    Parameters
    ----------
    order : ndarray (nz, nx, ny)
        Order parameter (:attr:`msptycho.lattice.CoreResult.order`), dimensionless, NaN outside.
    pixel_size_A, slice_thickness_A : float
        A.
    out_path : path-like
    threshold : float, optional
        Core threshold (:attr:`CoreResult.threshold`); default: the median order parameter.
    core_mask : ndarray of bool (nz, nx, ny), optional
        Core voxels (:attr:`CoreResult.core_mask`), outlined.
    title : str, optional
    settings : FigureSettings, optional
    """
    s = _settings(settings)
    use_style()
    o = _volume(order, "order").astype(np.float64)
    nz = o.shape[0]
    lo, hi = robust_limits(o, (1.0, 99.0))
    thr = float(np.nanmedian(o)) if threshold is None or not np.isfinite(threshold) else float(threshold)
    if not np.isfinite(thr):
        thr = 0.5 * (lo + hi)
    lo, hi = min(lo, thr - 1e-6), max(hi, thr + 1e-6)
    norm = mcolors.TwoSlopeNorm(vcenter=thr, vmin=lo, vmax=hi)
    cm = ORDER_CMAP.with_extremes(bad="black")
    cmask = None if core_mask is None else _volume(core_mask, "core_mask").astype(bool)
    if cmask is not None and cmask.shape != o.shape:
        raise ValueError(f"plot_order_parameter: core_mask has shape {cmask.shape}; expected {o.shape}.")
    aspect = o.shape[1] / o.shape[2]
    rows, cols, size = _montage_grid(nz, s.montage_columns, aspect=aspect, extra_h_in=0.6 + (0.2 if title else 0))
    fig, axes = plt.subplots(rows, cols, figsize=size, layout="constrained", squeeze=False)
    im = None
    for i, ax in enumerate(axes.ravel()):
        if i >= nz:
            ax.set_axis_off()
            continue
        im = ax.imshow(o[i], cmap=cm, norm=norm, interpolation="antialiased")
        if cmask is not None and cmask[i].any():
            ax.contour(cmask[i].astype(float), levels=[0.5], colors="white", linewidths=0.6)
        image_axes(ax)
        z0 = i * slice_thickness_A / 10
        ax.set_title(f"{i + 1}: {z0:.1f}–{z0 + slice_thickness_A / 10:.1f} nm", fontsize=6, pad=2)
        if i == 0:
            add_scale_bar(ax, pixel_size_A, s.scale_bar_nm)
    cb = fig.colorbar(im, ax=axes, orientation="horizontal", shrink=0.4, aspect=40, pad=0.01)
    cb.set_label(f"order parameter (shell ← {thr:.3g} → core)")
    if title:
        fig.suptitle(title)
    return save_figure(fig, out_path, s.dpi)


# ------------------------------------------------------------------------------------------------
# S.5: dislocation maps per slice


def plot_dislocation_maps(amplitude, phase, pixel_size_A: float, slice_thickness_A: float, out_path, *,
                          reflections=(0, 1), points=None, origin_A=(0.0, 0.0), g_vectors_inv_A=None,
                          title: str | None = None, settings: FigureSettings | None = None) -> Path:
    """Dislocation maps per slice (the paper's Fig. S.5): Bragg-filtered image of a reflection with
    its magnitude as brightness and its geometric phase as hue; dislocations (phase singularities)
    circled.

    Parameters
    ----------
    amplitude : ndarray (nz, n_g, nx, ny)
        Bragg-filter magnitude (:attr:`msptycho.lattice.DislocationResult.amplitude`), V*A.
    phase : ndarray (nz, n_g, nx, ny)
        Geometric phase (:attr:`DislocationResult.phase`), rad.
    pixel_size_A, slice_thickness_A : float
        A.
    out_path : path-like
    reflections : sequence of int
        Reflections (index along axis 1) shown; with two, each slice has a pair of panels.
    points : dict of 1-D arrays, optional
        Dislocations (:attr:`DislocationResult.points`: ``slice``, ``x_A``, ``y_A``), circled in
        the slices they cross.
    origin_A : (float, float)
        Position (x, y) of pixel ``[0, 0]``, A (to place ``points``).
    g_vectors_inv_A : (n_g, 2), optional
        The reflections, 1/A (shown in the panel titles).
    title : str, optional
    settings : FigureSettings, optional
    """
    s = _settings(settings)
    use_style()
    amp = _volume(amplitude, "amplitude", 4).astype(np.float64)
    ph = _volume(phase, "phase", 4).astype(np.float64)
    if amp.shape != ph.shape:
        raise ValueError(f"plot_dislocation_maps: amplitude {amp.shape} and phase {ph.shape} differ in shape.")
    reflections = [int(r) for r in reflections]
    if any(r < 0 or r >= amp.shape[1] for r in reflections):
        raise ValueError(f"plot_dislocation_maps: reflections {reflections} outside 0..{amp.shape[1] - 1}.")
    nz = amp.shape[0]
    nref = len(reflections)
    amax = {r: robust_limits(amp[:, r], (0.0, s.phase_amplitude_percentile))[1] for r in reflections}
    dx = float(pixel_size_A)
    ox, oy = _origin(origin_A)
    pts = None
    if points is not None and len(points.get("slice", ())):
        pts = (np.asarray(points["slice"], dtype=np.int64), (np.asarray(points["x_A"]) - ox) / dx,
               (np.asarray(points["y_A"]) - oy) / dx)
    n = nz * nref
    cols = s.montage_columns - (s.montage_columns % nref) if s.montage_columns >= nref else nref
    aspect = amp.shape[2] / amp.shape[3]
    key_h = 0.45
    rows, cols, size = _montage_grid(n, cols, aspect=aspect, title_h_in=0.22,
                                     extra_h_in=key_h + 0.1 + (0.2 if title else 0))
    fig = plt.figure(figsize=size, layout="constrained")
    panel_h = (size[1] - key_h - 0.1 - (0.2 if title else 0)) / rows
    gs = fig.add_gridspec(rows + 1, cols, height_ratios=[panel_h] * rows + [key_h])
    names = [f"g{r + 1}" for r in reflections]
    if g_vectors_inv_A is not None:
        g = np.asarray(g_vectors_inv_A, dtype=np.float64).reshape(-1, 2)
        names = [f"g{r + 1} (d = {1 / np.hypot(*g[r]):.2f} Å)" if r < len(g) else f"g{r + 1}" for r in reflections]
    for i in range(n):
        ax = fig.add_subplot(gs[i // cols, i % cols])
        k, j = divmod(i, nref)
        r = reflections[j]
        rgb = complex_to_rgb(amp[k, r] * np.exp(1j * np.nan_to_num(ph[k, r])), amax[r])
        ax.imshow(rgb, interpolation="antialiased")
        image_axes(ax)
        z0 = k * slice_thickness_A / 10
        ax.set_title(f"{k + 1}: {z0:.1f}–{z0 + slice_thickness_A / 10:.1f} nm\n{names[j]}", fontsize=6, pad=2)
        if pts is not None:
            sel = pts[0] == k
            if sel.any():
                ax.scatter(pts[2][sel], pts[1][sel], s=30, facecolors="none", edgecolors="white", linewidths=0.8)
        if i == 0:
            add_scale_bar(ax, pixel_size_A, s.scale_bar_nm)
        ax.set_xlim(-0.5, amp.shape[3] - 0.5)
        ax.set_ylim(amp.shape[2] - 0.5, -0.5)
    key = fig.add_subplot(gs[rows, :])
    key.set_axis_off()
    wheel_w = key_h / size[0]
    add_phase_wheel(fig, ax=key.inset_axes((0.0, 0.0, wheel_w * 1.1, 1.0)), label="")
    txt = key.text(wheel_w * 1.3, 0.5, "hue: geometric phase of the Bragg-filtered image\nbrightness: its magnitude "
                   f"(full at the {s.phase_amplitude_percentile:g}th percentile)\n○  dislocation found in the slice",
                   transform=key.transAxes, ha="left", va="center", fontsize=7)
    txt.set_in_layout(False)
    if title:
        fig.suptitle(title)
    return save_figure(fig, out_path, s.dpi)


# ------------------------------------------------------------------------------------------------
# S.6 / S.7: probe


def _as_aberrations(ab):
    from .. import physics
    if ab is None or isinstance(ab, physics.Aberrations):
        return ab
    if isinstance(ab, dict):
        known = {f for f in physics.Aberrations.__dataclass_fields__}
        return physics.Aberrations(**{k: float(v) for k, v in ab.items() if k in known and k != "extra"})
    raise TypeError(f"initial_aberrations is a {type(ab).__name__}; expected msptycho.physics.Aberrations or a dict.")


def probe_fourier(probe, sampling_A: float, energy_eV: float, initial_aberrations=None):
    """Fourier-space probe of a real-space probe centred on ``(n//2, n//2)``.

    Returns
    -------
    probe_k : complex ndarray (n, n)
        Zero frequency at the centre (``fftshift`` order).
    corrected_k : complex ndarray or None
        ``probe_k * exp(+i chi0)``: with the initial aberrations ``chi0`` removed.
    angles_mrad : ndarray (n,)
        Scattering angle of each row/column (centre 0), mrad.
    """
    from .. import physics
    p = np.asarray(probe)
    if p.ndim != 2 or p.shape[0] != p.shape[1]:
        raise ValueError(f"probe has shape {p.shape}; expected a square 2-D complex array.")
    n = p.shape[0]
    lam = physics.wavelength_A(energy_eV)
    pk = np.fft.fft2(np.fft.ifftshift(p.astype(np.complex128)), norm="ortho")
    corrected = None
    ab = _as_aberrations(initial_aberrations)
    if ab is not None:
        kx, ky = physics.spatial_frequencies((n, n), sampling_A)
        chi0 = physics.aberration_function(kx, ky, lam, ab)
        corrected = np.fft.fftshift(pk * np.exp(1j * chi0))
    ang = np.fft.fftshift(np.fft.fftfreq(n, d=sampling_A)) * lam * 1e3
    return np.fft.fftshift(pk), corrected, ang


def plot_probe_fourier(probe, sampling_A: float, energy_eV: float, out_path, *, semiangle_mrad: float | None = None,
                       initial_aberrations=None, title: str | None = None,
                       settings: FigureSettings | None = None) -> Path:
    """Reconstructed probe in Fourier space (the paper's Fig. S.6), as reconstructed and with the
    initial aberrations removed; hue = phase, brightness = amplitude, axes in mrad.

    Parameters
    ----------
    probe : complex ndarray (n, n)
        Real-space probe centred on ``(n//2, n//2)`` (:attr:`ReconstructionResult.probe`).
    sampling_A : float
        Real-space pixel size of the probe window, A.
    energy_eV : float
        Beam energy, eV.
    out_path : path-like
    semiangle_mrad : float, optional
        Convergence semi-angle, mrad (dashed circle; sets the default zoom).
    initial_aberrations : msptycho.physics.Aberrations or dict, optional
        Aberrations of the initial probe (from the calibration): their phase ``chi0`` is removed in
        the second panel, so only the changes made by the reconstruction remain.
    title : str, optional
    settings : FigureSettings, optional
    """
    s = _settings(settings)
    use_style()
    pk, corr, ang = probe_fourier(probe, sampling_A, energy_eV, initial_aberrations)
    da = ang[1] - ang[0]
    ext = (ang[0] - da / 2, ang[-1] + da / 2, ang[-1] + da / 2, ang[0] - da / 2)
    lim = s.probe_max_angle_mrad or (1.4 * semiangle_mrad if semiangle_mrad else float(ang[-1]))
    panels = [("reconstructed", pk)]
    if corr is not None:
        panels.append(("initial aberrations removed", corr))
    npan = len(panels)
    w = PAGE_WIDTH_IN if npan > 1 else COLUMN_WIDTH_IN + 0.6
    fig, axes = plt.subplots(1, npan + 1, figsize=(w, (w - 0.9) / npan + 0.55 + (0.2 if title else 0)),
                             layout="constrained", gridspec_kw={"width_ratios": [1] * npan + [0.22]}, squeeze=False)
    axes = axes[0]
    amax = float(np.abs(pk).max()) or 1.0
    for j, (name, z) in enumerate(panels):
        ax = axes[j]
        ax.imshow(complex_to_rgb(z, amax), extent=ext, interpolation="antialiased")
        if semiangle_mrad:
            ax.add_patch(Circle((0, 0), semiangle_mrad, fill=False, ls="--", lw=0.7, color="white"))
        ax.set_xlim(-lim, lim)
        ax.set_ylim(lim, -lim)
        ax.set_xlabel(r"$\theta_y$ (mrad)")
        ax.set_ylabel(r"$\theta_x$ (mrad)")
        ax.set_title(name)
        panel_letter(ax, _letters()[j])
    add_phase_wheel(fig, ax=axes[-1], label="phase\n(brightness:\namplitude)")
    if title:
        fig.suptitle(title)
    return save_figure(fig, out_path, s.dpi)


def propagate_probe(probe, sampling_A: float, energy_eV: float, depths_A) -> np.ndarray:
    """The probe propagated through vacuum (Fresnel) to each depth (A, from the entrance surface):
    complex ``(len(depths), n, n)``."""
    from .. import physics
    p = np.asarray(probe, dtype=np.complex128)
    n = p.shape[0]
    lam = physics.wavelength_A(energy_eV)
    kx, ky = physics.spatial_frequencies(p.shape, sampling_A)
    pk = np.fft.fft2(p)
    q = np.pi * lam * (kx ** 2 + ky ** 2)
    out = np.empty((len(depths_A), n, p.shape[1]), dtype=np.complex128)
    for i, z in enumerate(depths_A):
        out[i] = np.fft.ifft2(pk * np.exp(-1j * q * float(z)))
    return out


def plot_probe_real(probe, sampling_A: float, energy_eV: float, slice_thickness_A: float, n_slices: int, out_path, *,
                    initial_probe=None, title: str | None = None, settings: FigureSettings | None = None) -> Path:
    """Real-space probe (the paper's Fig. S.7): at the entrance surface and propagated through the
    slices (Fresnel propagation by the slice thickness, as in the forward model), with a depth
    section of its intensity.

    One row per probe (the initial guess if given, then the reconstructed one): (1) the probe at the
    entrance surface, (2) after propagation through all ``n_slices`` slices, hue = phase and
    brightness = amplitude (each panel scaled to its maximum); (3) the intensity along x through the
    probe's centre against depth, normalised at each depth, slice boundaries as faint lines. The
    view is zoomed to 1.5 times the radius holding 97 % of the intensity.

    Parameters
    ----------
    probe : complex ndarray (n, n)
        Reconstructed real-space probe centred on ``(n//2, n//2)``.
    sampling_A : float
        Pixel size of the probe window, A.
    energy_eV : float
        Beam energy, eV.
    slice_thickness_A : float
        Propagation distance per slice, A.
    n_slices : int
        Number of slices.
    out_path : path-like
    initial_probe : complex ndarray (n, n), optional
        Probe the reconstruction started from (e.g. :func:`msptycho.physics.probe_real` with the
        calibration), shown in a second row.
    title : str, optional
    settings : FigureSettings, optional
    """
    s = _settings(settings)
    use_style()
    probes = [("reconstructed", np.asarray(probe))]
    if initial_probe is not None:
        probes.insert(0, ("initial", np.asarray(initial_probe)))
    for name, p in probes:
        if p.ndim != 2 or p.shape[0] != p.shape[1]:
            raise ValueError(f"plot_probe_real: {name} probe has shape {p.shape}; expected a square 2-D array.")
    n_slices = int(n_slices)
    thick = n_slices * float(slice_thickness_A)
    nz_section = max(2 * n_slices + 1, 41)
    zs = np.linspace(0.0, thick, nz_section)
    nrow = len(probes)
    panel = (PAGE_WIDTH_IN - 0.7) / 3.3
    fig, axes = plt.subplots(nrow, 4, figsize=(PAGE_WIDTH_IN, nrow * (panel + 0.35) + 0.2 + (0.2 if title else 0)),
                             layout="constrained", squeeze=False,
                             gridspec_kw={"width_ratios": [1, 1, 1.1, 0.2]})
    letters = iter(_letters())
    for r, (name, p) in enumerate(probes):
        n = p.shape[0]
        lo_edge = (-0.5 - n // 2) * sampling_A
        hi_edge = (n - n // 2 - 0.5) * sampling_A
        ext = (lo_edge, hi_edge, hi_edge, lo_edge)
        prop = propagate_probe(p, sampling_A, energy_eV, zs)
        # zoom: 1.5 x the radius holding 97 % of the intensity summed over depth (the aperture's
        # ringing holds the rest)
        inten = np.sum(np.abs(prop) ** 2, axis=0)
        coords = (np.arange(n) - n // 2) * sampling_A
        rr = np.hypot(coords[:, None], coords[None, :]).ravel()
        order = np.argsort(rr)
        cum = np.cumsum(inten.ravel()[order])
        r97 = rr[order][min(np.searchsorted(cum, 0.97 * cum[-1]), rr.size - 1)]
        lim = float(min(hi_edge, max(1.5 * r97, 0.2 * hi_edge)))
        for j, (lab, z) in enumerate((("z = 0 (entrance)", prop[0]), (f"z = {thick / 10:.1f} nm (exit)", prop[-1]))):
            ax = axes[r, j]
            ax.imshow(complex_to_rgb(z), extent=ext, interpolation="antialiased")
            ax.set_xlim(-lim, lim)
            ax.set_ylim(lim, -lim)
            ax.set_title(f"{name}, {lab}", fontsize=7)
            ax.set_xlabel("y (Å)")
            ax.set_ylabel("x (Å)")
            panel_letter(ax, next(letters))
        ax = axes[r, 2]
        sec = np.abs(prop[:, :, n // 2]) ** 2
        sec = sec / np.maximum(sec.max(axis=1, keepdims=True), 1e-30)
        ax.imshow(sec.T, aspect="auto", cmap="inferno", origin="upper", interpolation="antialiased",
                  extent=(0, thick / 10, hi_edge, lo_edge))
        ax.set_ylim(lim, -lim)
        for k in range(1, n_slices):
            ax.axvline(k * slice_thickness_A / 10, color="white", lw=0.3, alpha=0.5)
        ax.set_xlabel("depth z (nm)")
        ax.set_ylabel("x (Å)")
        ax.set_title(f"{name}, intensity vs depth", fontsize=7)
        ax.text(0.98, 0.02, "normalised at each depth", transform=ax.transAxes, ha="right", va="bottom",
                fontsize=6, color="white")
        panel_letter(ax, next(letters))
        add_phase_wheel(fig, ax=axes[r, 3], label="phase")
    if title:
        fig.suptitle(title)
    return save_figure(fig, out_path, s.dpi)


# ------------------------------------------------------------------------------------------------
# S.8: Fourier transform of the mean potential


def plot_fft_peaks(mean_potential, sampling_A: float, out_path, *, strain_g_inv_A=None, dislocation_g_inv_A=None,
                   order_g200_inv_A=None, order_g220_inv_A=None, title: str | None = None,
                   settings: FigureSettings | None = None) -> Path:
    """Power spectrum of the mean potential with the reflections used by the analysis marked (the
    paper's Fig. S.8).

    Log power of the Hann-windowed mean slice, axes in 1/A. Reflections used for dislocations:
    circles (first red, second blue), each with its Friedel mate; for strain: dashed green circles
    (left out where they coincide with the dislocation ones); for the order parameter: white arrows
    at the first-neighbour ``{200}`` and purple arrows at the second-neighbour ``{220}`` peaks.

    Parameters
    ----------
    mean_potential : ndarray (nx, ny)
        Mean of the slices, V*A (or a volume ``(nz, nx, ny)``, averaged here).
    sampling_A : float
        Pixel size, A.
    out_path : path-like
    strain_g_inv_A, dislocation_g_inv_A : (2, 2), optional
        Reflections (:attr:`StrainResult.g_vectors_inv_A`, :attr:`DislocationResult.g_vectors_inv_A`), 1/A.
    order_g200_inv_A, order_g220_inv_A : (2, 2), optional
        Reflections of the order parameter (:attr:`CoreResult.g200_inv_A`, ``g220_inv_A``), 1/A.
    title : str, optional
    settings : FigureSettings, optional
    """
    s = _settings(settings)
    use_style()
    m = np.asarray(mean_potential, dtype=np.float64)
    if m.ndim == 3:
        m = m.mean(axis=0)
    if m.ndim != 2:
        raise ValueError(f"plot_fft_peaks: mean_potential has shape {m.shape}; expected 2-D.")
    m = np.nan_to_num(m - np.nanmean(m))
    win = np.hanning(m.shape[0])[:, None] * np.hanning(m.shape[1])[None, :]
    power = np.fft.fftshift(np.abs(np.fft.fft2(m * win)) ** 2)
    logp = np.log10(power + power.max() * 1e-12 + 1e-300)
    kx = np.fft.fftshift(np.fft.fftfreq(m.shape[0], d=sampling_A))
    ky = np.fft.fftshift(np.fft.fftfreq(m.shape[1], d=sampling_A))
    dkx, dky = 1 / (m.shape[0] * sampling_A), 1 / (m.shape[1] * sampling_A)
    ext = (ky[0] - dky / 2, ky[-1] + dky / 2, kx[-1] + dkx / 2, kx[0] - dkx / 2)

    def arr(g):
        return None if g is None else np.asarray(g, dtype=np.float64).reshape(-1, 2)

    sg, dg, g200, g220 = (arr(g) for g in (strain_g_inv_A, dislocation_g_inv_A, order_g200_inv_A, order_g220_inv_A))
    marked = [g for g in (sg, dg, g200, g220) if g is not None]
    gmax = max((float(np.hypot(*g.T).max()) for g in marked), default=0.0)
    lim = s.fft_max_inv_A or (1.3 * gmax if gmax > 0 else float(min(kx[-1], ky[-1])))
    w = COLUMN_WIDTH_IN + 0.5
    fig, ax = plt.subplots(figsize=(w, w - 0.25 + (0.2 if title else 0)), layout="constrained")
    inside = (np.abs(kx)[:, None] <= lim) & (np.abs(ky)[None, :] <= lim)
    lo, hi = robust_limits(logp[inside], (30.0, 99.95))
    im = ax.imshow(logp, extent=ext, cmap="gray", vmin=lo, vmax=hi, interpolation="antialiased")
    ax.set_xlim(-lim, lim)
    ax.set_ylim(lim, -lim)
    ax.set_xlabel(r"$k_y$ (Å$^{-1}$)")
    ax.set_ylabel(r"$k_x$ (Å$^{-1}$)")
    cb = fig.colorbar(im, ax=ax, shrink=0.8, pad=0.02)
    cb.set_label("log$_{10}$ power")
    r_circ = 0.06 * lim
    handles = []
    from matplotlib.lines import Line2D
    if dg is not None:
        for g, col in zip(dg, ("red", "#2f7bff", "orange", "cyan")):
            for sgn in (1, -1):
                ax.add_patch(Circle((sgn * g[1], sgn * g[0]), r_circ, fill=False, color=col, lw=1.2))
            handles.append(Line2D([], [], marker="o", ls="", mfc="none", mec=col,
                                  label=f"dislocations (d = {1 / np.hypot(*g):.2f} Å)"))
    if sg is not None:
        extra = [g for g in sg if dg is None or np.min(np.hypot(*(dg - g).T)) > 2 * max(dkx, dky)]
        for g in extra:
            for sgn in (1, -1):
                ax.add_patch(Circle((sgn * g[1], sgn * g[0]), 1.35 * r_circ, fill=False, color="#33cc33", lw=1.0,
                                    ls="--"))
        if sg is not None:
            handles.append(Line2D([], [], marker="o", ls="", mfc="none", mec="#33cc33" if extra else "0.5",
                                  label="strain" + ("" if extra else " (same peaks)")))
    for gs, col, lab in ((g200, "white", "order: 1st neighbours {200}"),
                         (g220, "#b266ff", "order: 2nd neighbours {220}")):
        if gs is None:
            continue
        for g in gs:
            for sgn in (1, -1):
                tip = np.array([sgn * g[1], sgn * g[0]])
                u = tip / (np.hypot(*tip) or 1.0)
                perp = np.array([-u[1], u[0]])
                tail = tip + 0.22 * lim * (0.6 * u + 0.8 * perp)
                head = tip + 1.6 * r_circ * (0.6 * u + 0.8 * perp)
                ax.add_patch(FancyArrowPatch(tuple(tail), tuple(head), arrowstyle="-|>", mutation_scale=8,
                                             color=col, lw=1.0))
        handles.append(Line2D([], [], marker=r"$\rightarrow$", ls="", color=col, mec="0.3", mew=0.3, label=lab))
    if handles:
        leg = ax.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, fontsize=6,
                        frameon=False, handletextpad=0.3, columnspacing=0.8)
        for t in leg.get_texts():
            t.set_color("black")
    ax.set_facecolor("black")
    if title:
        fig.suptitle(title)
    return save_figure(fig, out_path, s.dpi)


# ------------------------------------------------------------------------------------------------
# validation against the truth (synthetic samples)


def plot_validation(out_path, *, slice_thickness_A: float, slice_correlation=None, strain_error_maps=None,
                    pixel_size_A: float | None = None, strain_error_slice: int | None = None, core_profile=None,
                    core_profile_truth=None, core_profile_label: str = "core area per slice (nm²)",
                    dislocation_metrics=None, metrics_text: dict | None = None, title: str | None = None,
                    settings: FigureSettings | None = None) -> Path:
    """Validation of a synthetic sample against its ground truth, in one figure.

    Top row: (a) correlation of each reconstructed slice with the true potential against depth,
    (b) the core's depth profile against the truth, (c) dislocation precision and recall (with
    counts). Bottom row: up to three strain error maps (measured - true), diverging about zero.
    Any input left out leaves its panel with a note.

    Parameters
    ----------
    out_path : path-like
    slice_thickness_A : float
        Reconstruction slice thickness, A (depth axes).
    slice_correlation : 1-D array (nz,), optional
        Pearson correlation of each slice with the truth (NaN where undefined).
    strain_error_maps : dict of str -> ndarray (nx, ny), optional
        Maps of measured - true, keyed ``"exx"``, ``"eyy"``, ``"exy"``, ``"dilation"`` (fractions,
        drawn in %) or ``"rotation_deg"`` (degrees), e.g. the error in the middle slice.
    pixel_size_A : float, optional
        Pixel size of the error maps, A (scale bar).
    strain_error_slice : int, optional
        The slice (0-based) the error maps come from (named in their titles).
    core_profile, core_profile_truth : 1-D array (nz,), optional
        Core size per slice, measured and true (e.g. core area in nm^2).
    core_profile_label : str
        Axis label of the core profile (with its unit).
    dislocation_metrics : dict, optional
        ``precision``, ``recall`` (fractions) and optionally ``true_positives``, ``n_found``,
        ``n_true``, ``radius_A`` (:func:`msptycho.lattice.validate_dislocations`).
    metrics_text : dict, optional
        Further scalar metrics listed under the figure (name -> value).
    title : str, optional
    settings : FigureSettings, optional
    """
    s = _settings(settings)
    use_style()
    maps = dict(strain_error_maps or {})
    nmap = max(1, min(3, len(maps)))
    fig = plt.figure(figsize=(PAGE_WIDTH_IN, 4.9 + (0.2 if title else 0) + (0.25 if metrics_text else 0)),
                     layout="constrained")
    sub = fig.subfigures(2, 1, height_ratios=[1, 1.25])
    top = sub[0].subplots(1, 3)
    bottom = sub[1].subplots(1, nmap, squeeze=False)[0]

    ax = top[0]
    if slice_correlation is not None and len(slice_correlation):
        c = np.asarray(slice_correlation, dtype=np.float64)
        z = slice_depth_nm(np.arange(len(c)), slice_thickness_A)
        ax.plot(z, c, "o-", ms=3, color="C0")
        ax.axhline(0, color="0.6", lw=0.5)
        ax.set_ylim(min(-0.05, np.nanmin(c) - 0.05) if np.isfinite(c).any() else -0.05, 1.02)
        ax.text(0.03, 0.1, f"mean r = {np.nanmean(c):.3f}", transform=ax.transAxes, fontsize=7)
    else:
        ax.text(0.5, 0.5, "no correlation given", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("depth (nm)")
    ax.set_ylabel("correlation with truth, r")
    ax.set_title("slices vs true potential")
    panel_letter(ax, "a")

    ax = top[1]
    if core_profile is not None or core_profile_truth is not None:
        for prof, lab, sty, col in ((core_profile_truth, "truth", "--", "black"),
                                    (core_profile, "measured", "o-", "C0")):
            if prof is not None:
                p = np.asarray(prof, dtype=np.float64)
                ax.plot(slice_depth_nm(np.arange(len(p)), slice_thickness_A), p, sty, ms=3, label=lab, color=col)
        ax.legend(frameon=False)
    else:
        ax.text(0.5, 0.5, "no core profile given", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("depth (nm)")
    ax.set_ylabel(core_profile_label)
    ax.set_title("core depth profile")
    panel_letter(ax, "b")

    ax = top[2]
    if dislocation_metrics:
        dm = dislocation_metrics
        vals = [float(dm.get("precision", np.nan)), float(dm.get("recall", np.nan))]
        bars = ax.bar(["precision", "recall"], np.nan_to_num(vals), color=["C2", "C1"], width=0.6)
        for b, v in zip(bars, vals):
            ax.text(b.get_x() + b.get_width() / 2, (v if np.isfinite(v) else 0) + 0.02,
                    "n/a" if not np.isfinite(v) else f"{v:.2f}", ha="center", va="bottom", fontsize=7)
        ax.set_ylim(0, 1.18)
        info = []
        if "n_found" in dm and "n_true" in dm:
            info.append(f"{dm.get('true_positives', '?')} matched of {dm['n_true']} true, {dm['n_found']} found")
        if "radius_A" in dm:
            info.append(f"match radius {float(dm['radius_A']):g} Å")
        if info:
            ax.set_xlabel("\n".join(info), fontsize=6)
    else:
        ax.text(0.5, 0.5, "no dislocation metrics", ha="center", va="center", transform=ax.transAxes)
        ax.set_xticks([])
    ax.set_title("dislocation points per slice")
    panel_letter(ax, "c")

    labels = {"exx": r"$\epsilon_{xx}$", "eyy": r"$\epsilon_{yy}$", "exy": r"$\epsilon_{xy}$", "dilation": "dilation",
              "rotation_deg": "rotation", "rotation": "rotation"}
    items = list(maps.items())[:3]
    for j in range(nmap):
        ax = bottom[j]
        image_axes(ax)
        if j >= len(items):
            ax.text(0.5, 0.5, "no strain error maps given", ha="center", va="center", transform=ax.transAxes)
            continue
        name, e = items[j]
        e = np.asarray(e, dtype=np.float64)
        rot = name.startswith("rotation")
        data = e if rot else 100 * e
        lim = symmetric_limit(data, None)
        im = ax.imshow(data, cmap=cmap_with_bad(ROTATION_CMAP if rot else STRAIN_CMAP), vmin=-lim, vmax=lim,
                       interpolation="antialiased")
        rms = float(np.sqrt(np.nanmean(data ** 2))) if np.isfinite(data).any() else float("nan")
        where = "" if strain_error_slice is None else f"slice {int(strain_error_slice) + 1}: "
        ax.set_title(f"{where}{labels.get(name, name)} error\nrms {rms:.2g} {'°' if rot else '%'}")
        cb = sub[1].colorbar(im, ax=ax, shrink=0.7, pad=0.02, extend="both")
        cb.set_label("measured − true (" + ("°" if rot else "%") + ")")
        if pixel_size_A:
            add_scale_bar(ax, pixel_size_A, s.scale_bar_nm, color="black")
        panel_letter(ax, "def"[j])
    if metrics_text:
        txt = ",  ".join(f"{k} = {v:.3g}" if isinstance(v, (float, np.floating)) else f"{k} = {v}"
                         for k, v in metrics_text.items())
        sub[1].supxlabel(txt, fontsize=6)      # a label of the lower panels: the layout keeps it off them
    if title:
        fig.suptitle(title)
    return save_figure(fig, out_path, s.dpi)


# ------------------------------------------------------------------------------------------------
# adapters from the library's result dataclasses


def fig2_from_results(reconstruction, strain, out_path, *, slices=None, title=None, settings=None) -> Path:
    """:func:`plot_slices_strain` from a :class:`~msptycho.ptycho.ReconstructionResult` and a
    :class:`~msptycho.lattice.StrainResult` (same grid)."""
    return plot_slices_strain(reconstruction.potential_VA, strain.dilation, strain.rotation_deg,
                              scalar_sampling(reconstruction.sampling_A), reconstruction.slice_thickness_A, out_path,
                              slices=slices, title=title, settings=settings)


def probe_figures_from_result(reconstruction, out_fourier, out_real, *, initial_aberrations=None, title=None,
                              settings=None) -> tuple[Path, Path]:
    """Figs. S.6 and S.7 from a :class:`~msptycho.ptycho.ReconstructionResult`; with
    ``initial_aberrations`` (:class:`msptycho.physics.Aberrations` or dict) the initial probe is
    rebuilt with :func:`msptycho.physics.probe_real` and shown beside the reconstructed one."""
    from .. import physics
    r = reconstruction
    a = plot_probe_fourier(r.probe, r.sampling_A, r.energy_eV, out_fourier, semiangle_mrad=r.semiangle_mrad,
                           initial_aberrations=initial_aberrations, title=title, settings=settings)
    init = None
    ab = _as_aberrations(initial_aberrations)
    if ab is not None:
        n = r.probe.shape[0]
        init = physics.probe_real((n, n), r.sampling_A, r.energy_eV, r.semiangle_mrad, ab)
        init = np.fft.fftshift(np.asarray(init))  # physics.probe_real is centred on pixel 0
        init *= np.sqrt(np.sum(np.abs(r.probe) ** 2) / max(np.sum(np.abs(init) ** 2), 1e-30))
    b = plot_probe_real(r.probe, r.sampling_A, r.energy_eV, r.slice_thickness_A, r.potential_VA.shape[0], out_real,
                        initial_probe=init, title=title, settings=settings)
    return a, b


def fft_from_results(reconstruction, out_path, *, strain=None, core=None, dislocations=None, title=None,
                     settings=None) -> Path:
    """:func:`plot_fft_peaks` of the mean reconstructed slice with the reflections of the strain,
    core and dislocation results (any may be None)."""
    return plot_fft_peaks(np.asarray(reconstruction.potential_VA).mean(axis=0),
                          scalar_sampling(reconstruction.sampling_A), out_path, strain_g_inv_A=None if strain is None else strain.g_vectors_inv_A,
                          dislocation_g_inv_A=None if dislocations is None else dislocations.g_vectors_inv_A,
                          order_g200_inv_A=None if core is None else core.g200_inv_A,
                          order_g220_inv_A=None if core is None else core.g220_inv_A, title=title, settings=settings)


__all__ = ["FigureSettings", "plot_haadf", "plot_slices_strain", "plot_slice_montage", "plot_order_parameter",
           "plot_dislocation_maps", "plot_probe_fourier", "plot_probe_real", "plot_fft_peaks", "plot_validation",
           "probe_fourier", "propagate_probe", "complex_to_rgb", "fig2_from_results", "probe_figures_from_result",
           "fft_from_results", "particle_crop", "slice_depth_nm", "slice_label", "top_middle_bottom", "valid_slices"]
