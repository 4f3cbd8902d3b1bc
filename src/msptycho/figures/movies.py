"""Per-slice movies of the potential and the strain maps (the paper's supplementary movies).

One frame per slice, drawn with matplotlib in the project style (colour bar with units, scale bar
in nm, slice number and depth range), written as an animated GIF (Pillow, through imageio) or, when
the output's suffix is ``.mp4``, as H.264 video through ``imageio-ffmpeg`` (optional dependency;
a clear error says when it is missing: :func:`mp4_available`). Slices at the entrance surface whose
maps are dominated by the support are flagged on their frames as less reliable (the paper's
movies say the same of their first slices); slices without any value say so.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..io.provenance import atomic_path
from .paper import (FigureSettings, ROTATION_CMAP, STRAIN_CMAP, cmap_with_bad, robust_limits, scalar_sampling,
                    slice_label, symmetric_limit)
from .style import add_scale_bar, plt, use_style

#: the movies of the paper: name -> (label, unit, scale from the stored value, kind)
MOVIE_MAPS = {
    "potential": ("projected potential", "V·Å", 1.0, "potential"),
    "exx": (r"$\epsilon_{xx}$", "%", 100.0, "strain"),
    "eyy": (r"$\epsilon_{yy}$", "%", 100.0, "strain"),
    "dilation": (r"dilation $\epsilon_{xx}+\epsilon_{yy}$", "%", 100.0, "strain"),
    "exy": (r"$\epsilon_{xy}$", "%", 100.0, "strain"),
    "rotation_deg": ("rotation", "°", 1.0, "rotation"),
}


def mp4_available() -> bool:
    """Whether MP4 can be written (``imageio-ffmpeg`` importable with its ffmpeg binary)."""
    try:
        import imageio_ffmpeg

        return bool(imageio_ffmpeg.get_ffmpeg_exe())
    except Exception:  # noqa: BLE001 - any failure means: not available
        return False


def _frame_size(width_px: int) -> tuple[int, int]:
    w = max(16, int(round(width_px / 16)) * 16)
    h = max(16, int(round(0.86 * w / 16)) * 16)
    return w, h


def render_frames(volume, pixel_size_A: float, slice_thickness_A: float, *, label: str, unit: str,
                  scale: float = 1.0, kind: str = "potential", unreliable_top_slices: int = 0,
                  title: str | None = None, settings: FigureSettings | None = None) -> np.ndarray:
    """Draw one RGB frame per slice: ``uint8 (nz, height, width, 3)``.

    Parameters
    ----------
    volume : ndarray (nz, nx, ny)
        Map per slice in stored units (fractions for strain, degrees, V*A).
    pixel_size_A, slice_thickness_A : float
        A.
    label, unit : str
        Colour-bar label and unit of the drawn values.
    scale : float
        Drawn value = ``scale * volume`` (100 for fractions -> %).
    kind : str
        ``"potential"`` (grey, percentile contrast), ``"strain"`` (diverging, +/-
        ``settings.strain_limit_percent``) or ``"rotation"`` (diverging, +/-
        ``settings.rotation_limit_deg``); the colour range is common to all frames.
    unreliable_top_slices : int
        The first this many slices carry a "less reliable" banner.
    title : str, optional
        Text at the top of every frame (e.g. the sample name).
    settings : FigureSettings, optional
        ``movie_frame_px`` sets the frame width.
    """
    s = (settings or FigureSettings()).validate()
    use_style()
    vol = np.asarray(volume, dtype=np.float64)
    if vol.ndim == 2:
        vol = vol[None]
    if vol.ndim != 3 or vol.size == 0:
        raise ValueError(f"movie input has shape {vol.shape}; expected (nz, nx, ny).")
    data = scale * vol
    if kind == "potential":
        vmin, vmax = robust_limits(data, s.potential_percentiles)
        cmap = cmap_with_bad("gray", "black")
    elif kind in ("strain", "rotation"):
        lim = symmetric_limit(data, s.strain_limit_percent if kind == "strain" else s.rotation_limit_deg)
        vmin, vmax = -lim, lim
        cmap = cmap_with_bad(STRAIN_CMAP if kind == "strain" else ROTATION_CMAP)
    else:
        raise ValueError(f"movie kind is {kind!r}; expected 'potential', 'strain' or 'rotation'.")
    w, h = _frame_size(s.movie_frame_px)
    dpi = w / 4.0  # a 4-inch-wide frame: the fonts scale with the frame
    fig = plt.figure(figsize=(w / dpi, h / dpi), dpi=dpi)
    try:
        ax = fig.add_axes((0.03, 0.04, 0.72, 0.84))
        cax = fig.add_axes((0.80, 0.12, 0.035, 0.68))
        im = ax.imshow(data[0], cmap=cmap, vmin=vmin, vmax=vmax, interpolation="antialiased")
        ax.set_xticks([])
        ax.set_yticks([])
        add_scale_bar(ax, scalar_sampling(pixel_size_A), s.scale_bar_nm,
                      color="white" if kind == "potential" else "black")
        cb = fig.colorbar(im, cax=cax, extend="neither" if kind == "potential" else "both")
        cb.set_label(f"{label} ({unit})", fontsize=9)
        cb.ax.tick_params(labelsize=8)
        head = fig.text(0.03, 0.975, "", ha="left", va="top", fontsize=10)
        flag = fig.text(0.39, 0.895, "", ha="center", va="bottom", fontsize=8, color="white",
                        bbox=dict(boxstyle="round,pad=0.3", fc="#c0392b", ec="none", alpha=0.9))
        frames = []
        for k in range(data.shape[0]):
            im.set_data(data[k])
            txt = slice_label(k, slice_thickness_A)
            head.set_text(f"{title}   {txt}" if title else txt)
            notes = []
            if k < unreliable_top_slices:
                notes.append("less reliable: support")
            if not np.isfinite(data[k]).any():
                notes.append("no lattice signal")
            flag.set_text("  ·  ".join(notes))
            flag.set_visible(bool(notes))
            fig.canvas.draw()
            frames.append(np.asarray(fig.canvas.buffer_rgba())[..., :3].copy())
    finally:
        plt.close(fig)
    return np.stack(frames)


def write_frames(frames: np.ndarray, out_path, fps: float) -> Path:
    """Write frames ``(n, h, w, 3)`` uint8 as a looping GIF or (suffix ``.mp4``) an H.264 MP4, atomically."""
    import imageio.v2 as iio2
    import imageio.v3 as iio

    out_path = Path(out_path)
    suffix = out_path.suffix.lower()
    frames = np.asarray(frames, dtype=np.uint8)
    if suffix == ".gif":
        with atomic_path(out_path) as tmp:
            # Pillow merges identical consecutive frames; a 1-value difference in one pixel keeps
            # one frame per slice even when two slices draw the same.
            fr = frames.copy()
            for i in range(1, len(fr)):
                if np.array_equal(fr[i], fr[i - 1]):
                    fr[i, 0, 0, 0] ^= 1
            iio.imwrite(tmp, list(fr), extension=".gif", duration=int(round(1000 / fps)), loop=0)
    elif suffix == ".mp4":
        if not mp4_available():
            raise RuntimeError(f"{out_path}: writing MP4 needs the package imageio-ffmpeg (pip install "
                               "imageio-ffmpeg==0.6.0); write a .gif instead.")
        with atomic_path(out_path) as tmp:
            wr = iio2.get_writer(tmp, format="FFMPEG", mode="I", fps=float(fps), codec="libx264",
                                 quality=8, macro_block_size=16, pixelformat="yuv420p")
            try:
                for f in frames:
                    wr.append_data(f)
            finally:
                wr.close()
    else:
        raise ValueError(f"{out_path}: movie suffix {out_path.suffix!r}; expected '.gif' or '.mp4'.")
    return out_path


def write_slice_movie(volume, out_path, pixel_size_A: float, slice_thickness_A: float, *, name: str = "potential",
                      title: str | None = None, settings: FigureSettings | None = None) -> Path:
    """Movie through the slices of one map (one frame per slice).

    Parameters
    ----------
    volume : ndarray (nz, nx, ny)
        The map in stored units: potential V*A, strain fractions, rotation degrees.
    out_path : path-like
        ``.gif`` or ``.mp4``.
    pixel_size_A, slice_thickness_A : float
        A.
    name : str
        One of :data:`MOVIE_MAPS` (``potential``, ``exx``, ``eyy``, ``dilation``, ``exy``,
        ``rotation_deg``): sets label, unit and colour map.
    title : str, optional
    settings : FigureSettings, optional
        ``movie_fps``, ``movie_frame_px``, ``unreliable_top_slices``, colour limits.
    """
    s = (settings or FigureSettings()).validate()
    if name not in MOVIE_MAPS:
        raise ValueError(f"movie name {name!r}; expected one of {sorted(MOVIE_MAPS)}.")
    label, unit, scale, kind = MOVIE_MAPS[name]
    frames = render_frames(volume, pixel_size_A, slice_thickness_A, label=label, unit=unit, scale=scale, kind=kind,
                           unreliable_top_slices=s.unreliable_top_slices, title=title, settings=s)
    return write_frames(frames, out_path, s.movie_fps)


def write_strain_movies(potential, strain, out_paths: dict, pixel_size_A: float, slice_thickness_A: float, *,
                        title: str | None = None, settings: FigureSettings | None = None) -> dict:
    """The paper's six movies: potential, exx, eyy, dilation, exy and rotation.

    Parameters
    ----------
    potential : ndarray (nz, nx, ny)
        Reconstructed potential, V*A.
    strain : StrainResult or dict
        :class:`msptycho.lattice.StrainResult` (or a dict with keys ``exx``, ``eyy``, ``exy``,
        ``dilation``, ``rotation_deg``), same grid as ``potential``.
    out_paths : dict of str -> path-like
        Output per movie name (keys from :data:`MOVIE_MAPS`; names left out are not written).
    pixel_size_A, slice_thickness_A : float
        A.
    title : str, optional
    settings : FigureSettings, optional

    Returns
    -------
    dict of str -> Path
    """
    get = (lambda k: strain[k]) if isinstance(strain, dict) else (lambda k: getattr(strain, k))
    unknown = set(out_paths) - set(MOVIE_MAPS)
    if unknown:
        raise ValueError(f"write_strain_movies: unknown movie name(s) {sorted(unknown)}; "
                         f"expected some of {sorted(MOVIE_MAPS)}.")
    out = {}
    for name, path in out_paths.items():
        vol = potential if name == "potential" else get(name)
        out[name] = write_slice_movie(vol, path, pixel_size_A, slice_thickness_A, name=name, title=title,
                                      settings=settings)
    return out


__all__ = ["MOVIE_MAPS", "mp4_available", "render_frames", "write_frames", "write_slice_movie", "write_strain_movies"]
