"""3-D render of the particle (the paper's Fig. 4): surface, core and dislocation lines.

The scene (particle surface, translucent; core, blue; dislocation lines as tubes coloured by their
Burgers vector) is rendered off-screen with pyvista/VTK from two viewpoints; the two images are
then laid out with matplotlib in the project style, with a legend of the Burgers vectors.

Rendering runs in a child Python process (``python -m msptycho.figures.render3d``), so that a VTK
crash (no OpenGL, a segmentation fault in a driver) cannot take the caller down; if the child
fails, or pyvista is not installed, the views are drawn with matplotlib's 3-D axes instead and
the figure says so in its corner. ``backend`` chooses explicitly.

Coordinates are the analysis's (:mod:`msptycho.lattice.surface`): ``x = origin_x + i dx``,
``y = origin_y + j dy`` (A), depth ``z = (slice + 1/2) * slice_thickness_A`` along the beam; the
renders show the entrance surface at the top.

Off-screen rendering on a machine without a display uses EGL: the environment variable
``VTK_DEFAULT_OPENGL_WINDOW=vtkEGLRenderWindow`` is set for the child when no ``DISPLAY`` is set
(Debian packages ``libegl1`` and ``libgl1-mesa-dri`` provide EGL and the software rasteriser).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from .paper import FigureSettings, save_figure
from .style import PAGE_WIDTH_IN, plt, use_style

LOG = logging.getLogger(__name__)

SURFACE_COLOR = "#c8c8c8"
CORE_COLOR = "#2f6fd6"
#: colours of the distinct Burgers vectors (the core's blue left out)
BURGERS_COLORS = ["#d62728", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf",
                  "#7f7f7f", "#000000"]


# ------------------------------------------------------------------------------------------------
# scene building


def core_mesh(core_mask, sampling_A, origin_A, slice_thickness_A: float, step_px: int = 1):
    """Triangle mesh of the boundary of a voxel mask ``(nz, nx, ny)`` (marching cubes at 0.5 of a
    lightly smoothed mask), in the surface mesh's coordinates (A).

    Returns
    -------
    vertices_A : float32 (n, 3)
        (x, y, z), A.
    faces : int32 (m, 3)
        Empty arrays when the mask is empty.
    """
    from scipy import ndimage
    from skimage.measure import marching_cubes

    from .paper import _origin

    m = np.asarray(core_mask, dtype=bool)
    if m.ndim != 3:
        raise ValueError(f"core_mesh: core_mask has shape {m.shape}; expected (nz, nx, ny).")
    if not m.any():
        return np.zeros((0, 3), np.float32), np.zeros((0, 3), np.int32)
    dx, dy = (float(sampling_A), float(sampling_A)) if np.ndim(sampling_A) == 0 else tuple(float(v) for v in sampling_A)
    ox, oy = _origin(origin_A)
    f = ndimage.gaussian_filter(np.pad(m.astype(np.float32), 1), (0.5, 1.0, 1.0))
    v, faces, _, _ = marching_cubes(f, level=0.5 * float(f.max()) if f.max() < 1 else 0.5,
                                    step_size=max(1, int(step_px)), allow_degenerate=False)
    xyz = np.column_stack([ox + dx * (v[:, 1] - 1), oy + dy * (v[:, 2] - 1),
                           slice_thickness_A * (v[:, 0] - 1 + 0.5)])
    return xyz.astype(np.float32), faces[:, ::-1].astype(np.int32)


def dislocation_polylines(points: dict, slice_thickness_A: float, lines: dict | None = None):
    """3-D polylines of dislocation lines from a per-slice point table.

    Parameters
    ----------
    points : dict of 1-D arrays
        ``slice``, ``x_A``, ``y_A``, ``line_id`` and the Burgers vector ``bx_A``, ``by_A``
        (:attr:`msptycho.lattice.DislocationResult.points`).
    slice_thickness_A : float
        A (z of a point = ``(slice + 1/2) * slice_thickness_A``).
    lines : dict, optional
        Unused (the points carry the Burgers vectors); accepted for symmetry with the result.

    Returns
    -------
    polylines : list of float ndarray (n_k, 3)
        (x, y, z) A, ordered by depth.
    burgers_A : float ndarray (n_lines, 2)
        In-plane Burgers vector of each line, A.
    """
    del lines
    if points is None or len(points.get("slice", ())) == 0:
        return [], np.zeros((0, 2))
    sl = np.asarray(points["slice"], dtype=np.float64)
    x = np.asarray(points["x_A"], dtype=np.float64)
    y = np.asarray(points["y_A"], dtype=np.float64)
    lid = np.asarray(points.get("line_id", np.arange(len(sl))), dtype=np.int64)
    bx = np.asarray(points.get("bx_A", np.zeros(len(sl))), dtype=np.float64)
    by = np.asarray(points.get("by_A", np.zeros(len(sl))), dtype=np.float64)
    polys, burgers = [], []
    for i in np.unique(lid):
        sel = np.flatnonzero(lid == i)
        sel = sel[np.argsort(sl[sel])]
        polys.append(np.column_stack([x[sel], y[sel], (sl[sel] + 0.5) * slice_thickness_A]))
        burgers.append((float(np.median(bx[sel])), float(np.median(by[sel]))))
    return polys, np.asarray(burgers, dtype=np.float64).reshape(-1, 2)


def burgers_classes(burgers_A, decimals: int = 1):
    """Group Burgers vectors (A, ``(n, 2)``) that agree to ``decimals``: ``(labels (n,), unique (k, 2))``."""
    b = np.round(np.asarray(burgers_A, dtype=np.float64).reshape(-1, 2), decimals) + 0.0
    if len(b) == 0:
        return np.zeros(0, np.int64), np.zeros((0, 2))
    uniq, labels = np.unique(b, axis=0, return_inverse=True)
    return labels.ravel(), uniq


def _camera(center, radius, elev_deg, azim_deg):
    e, a = np.deg2rad(elev_deg), np.deg2rad(azim_deg)
    d = np.array([np.cos(e) * np.cos(a), np.cos(e) * np.sin(a), -np.sin(e)])
    up = np.array([0.0, 0.0, -1.0])
    if abs(np.dot(d, up)) > 0.98:
        up = np.array([1.0, 0.0, 0.0])
    pos = np.asarray(center) + 4.0 * radius * d
    return pos, up


# ------------------------------------------------------------------------------------------------
# back ends: each returns one RGB uint8 image per view


def _render_pyvista(scene: dict, views, window_px: int) -> list[np.ndarray]:
    if not os.environ.get("DISPLAY"):
        os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
    import pyvista as pv

    pv.OFF_SCREEN = True
    center, radius = scene["center"], scene["radius"]
    images = []
    for elev, azim in views:
        p = pv.Plotter(off_screen=True, window_size=(window_px, window_px), lighting="light_kit")
        p.set_background("white")
        for mesh in scene["meshes"]:
            if len(mesh["faces"]) == 0:
                continue
            f = np.column_stack([np.full(len(mesh["faces"]), 3), mesh["faces"]]).ravel()
            pd = pv.PolyData(np.asarray(mesh["vertices"], dtype=np.float64), f)
            p.add_mesh(pd, color=mesh["color"], opacity=float(mesh["opacity"]), smooth_shading=True,
                       specular=0.2)
        for line in scene["lines"]:
            pts = np.asarray(line["points"], dtype=np.float64)
            if len(pts) == 1:
                h = 0.5 * scene["slice_thickness_A"]
                pts = np.vstack([pts - [0, 0, h], pts + [0, 0, h]])
            tube = pv.lines_from_points(pts).tube(radius=float(scene["tube_radius_A"]), n_sides=16)
            p.add_mesh(tube, color=line["color"], smooth_shading=True)
        _add_axes_pyvista(p, pv, scene)
        pos, up = _camera(center, radius, elev, azim)
        p.camera_position = [tuple(pos), tuple(center), tuple(up)]
        p.reset_camera()
        p.camera.zoom(1.2)
        img = p.screenshot(return_img=True)
        p.close()
        images.append(np.asarray(img)[..., :3].astype(np.uint8))
    return images


def _add_axes_pyvista(p, pv, scene):
    """Orientation triad (x, y, z along the beam) in the lower-left corner of the view."""
    del pv, scene
    p.add_axes(interactive=False, line_width=4, color="black", xlabel="x", ylabel="y", zlabel="z (beam)",
               viewport=(0.0, 0.0, 0.3, 0.3))


def _render_matplotlib(scene: dict, views, window_px: int) -> list[np.ndarray]:
    from mpl_toolkits.mplot3d.art3d import Poly3DCollection

    images = []
    dpi = 100
    center = np.asarray(scene["center"], dtype=np.float64)
    half = 1.05 * float(np.max(center - np.asarray(scene["bounds_lo"], dtype=np.float64)))
    for elev, azim in views:
        fig = plt.figure(figsize=(window_px / dpi, window_px / dpi), dpi=dpi)
        try:
            ax = fig.add_axes((0, 0, 1, 1), projection="3d")
            for mesh in scene["meshes"]:
                v, f = np.asarray(mesh["vertices"]), np.asarray(mesh["faces"])
                if len(f) == 0:
                    continue
                if len(f) > 20000:
                    f = f[:: int(np.ceil(len(f) / 20000))]
                pc = Poly3DCollection(v[f], facecolors=mesh["color"], alpha=max(0.08, float(mesh["opacity"])),
                                      edgecolor="none", shade=True)
                ax.add_collection3d(pc)
            for line in scene["lines"]:
                pts = np.asarray(line["points"])
                ax.plot(pts[:, 0], pts[:, 1], pts[:, 2], color=line["color"], lw=3,
                        marker="o" if len(pts) == 1 else None)
            for i in range(3):
                getattr(ax, f"set_{'xyz'[i]}lim")(center[i] - half, center[i] + half)
            ax.invert_zaxis()  # entrance surface (z = 0) at the top
            ax.set_box_aspect((1, 1, 1))
            # matplotlib's azimuth is measured from +x towards +y as ours; its elevation from the
            # x-y plane towards +z, which (z inverted) is towards the entrance surface
            ax.view_init(elev=elev, azim=azim)
            ax.set_xlabel("x (Å)", fontsize=8)
            ax.set_ylabel("y (Å)", fontsize=8)
            ax.set_zlabel("z, beam (Å)", fontsize=8)
            ax.tick_params(labelsize=6)
            fig.canvas.draw()
            images.append(np.asarray(fig.canvas.buffer_rgba())[..., :3].copy())
        finally:
            plt.close(fig)
    return images


def _render_child(scene: dict, views, window_px: int, timeout_s: float = 300.0) -> list[np.ndarray]:
    """Render with pyvista in a child process; raise RuntimeError on any failure."""
    src = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    if not env.get("DISPLAY"):
        env.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
    with tempfile.TemporaryDirectory(prefix="msptycho-render-") as td:
        fin, fout = Path(td) / "scene.npz", Path(td) / "images.npz"
        arrays = {}
        meta = {"views": [list(map(float, v)) for v in views], "window_px": int(window_px),
                "center": list(map(float, scene["center"])), "radius": float(scene["radius"]),
                "bounds_lo": list(map(float, scene["bounds_lo"])), "tube_radius_A": float(scene["tube_radius_A"]),
                "slice_thickness_A": float(scene["slice_thickness_A"]), "meshes": [], "lines": []}
        for i, m in enumerate(scene["meshes"]):
            arrays[f"mv{i}"], arrays[f"mf{i}"] = np.asarray(m["vertices"]), np.asarray(m["faces"])
            meta["meshes"].append({"color": m["color"], "opacity": float(m["opacity"])})
        for i, ln in enumerate(scene["lines"]):
            arrays[f"l{i}"] = np.asarray(ln["points"])
            meta["lines"].append({"color": ln["color"]})
        np.savez(fin, meta=np.array(json.dumps(meta)), **arrays)
        try:
            r = subprocess.run([sys.executable, "-m", "msptycho.figures.render3d", str(fin), str(fout)], env=env,
                               capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"pyvista render did not finish in {timeout_s:g} s") from None
        if r.returncode != 0 or not fout.exists():
            tail = (r.stderr or "").strip().splitlines()[-3:]
            raise RuntimeError(f"pyvista render process exited with {r.returncode}: {' | '.join(tail)}")
        with np.load(fout) as z:
            return [z[f"view{i}"] for i in range(len(views))]


def _child_main(fin: str, fout: str) -> None:
    with np.load(fin) as z:
        meta = json.loads(str(z["meta"]))
        scene = {k: meta[k] for k in ("center", "radius", "bounds_lo", "tube_radius_A", "slice_thickness_A")}
        scene["meshes"] = [dict(m, vertices=z[f"mv{i}"], faces=z[f"mf{i}"]) for i, m in enumerate(meta["meshes"])]
        scene["lines"] = [dict(ln, points=z[f"l{i}"]) for i, ln in enumerate(meta["lines"])]
    imgs = _render_pyvista(scene, meta["views"], meta["window_px"])
    np.savez(fout, **{f"view{i}": im for i, im in enumerate(imgs)})


def pyvista_available() -> bool:
    """Whether pyvista can be imported (it may still fail to render: see the module doc)."""
    try:
        import importlib.util

        return importlib.util.find_spec("pyvista") is not None
    except Exception:  # noqa: BLE001
        return False


# ------------------------------------------------------------------------------------------------
# the figure


def render_particle(out_path, surface_vertices_A, surface_faces, *, slice_thickness_A: float,
                    core_vertices_A=None, core_faces=None, dislocation_lines=(), burgers_A=None,
                    title: str | None = None, settings: FigureSettings | None = None,
                    backend: str = "auto") -> Path:
    """The paper's Fig. 4 analogue: particle surface, core and dislocation lines from two viewpoints.

    Parameters
    ----------
    out_path : path-like
        PNG to write (page width, ``7.2 in x dpi`` pixels wide).
    surface_vertices_A : float (n, 3)
        Particle surface mesh vertices (x, y, z), A (:attr:`msptycho.lattice.SurfaceResult.vertices_A`).
    surface_faces : int (m, 3)
        Its triangles (:attr:`SurfaceResult.faces`).
    slice_thickness_A : float
        A (length of single-slice dislocation segments).
    core_vertices_A, core_faces : optional
        Core mesh, same coordinates (e.g. :func:`core_mesh` of :attr:`CoreResult.core_mask`).
    dislocation_lines : sequence of float (n_k, 3)
        Polylines (x, y, z) A of the dislocation lines (:func:`dislocation_polylines`).
    burgers_A : float (n_lines, 2), optional
        In-plane Burgers vector of each line, A; lines with the same vector share a colour.
    title : str, optional
    settings : FigureSettings, optional
        ``render_window_px``, ``render_view_1_deg``, ``render_view_2_deg``,
        ``render_surface_opacity``, ``dislocation_tube_radius_A``, ``dpi``.
    backend : str
        ``"auto"`` (pyvista in a child process, matplotlib if that fails), ``"pyvista"`` (fail if
        it fails) or ``"matplotlib"``.

    Returns
    -------
    Path
    """
    s = (settings or FigureSettings()).validate()
    if backend not in ("auto", "pyvista", "matplotlib"):
        raise ValueError(f"render_particle: backend {backend!r}; expected 'auto', 'pyvista' or 'matplotlib'.")
    sv = np.asarray(surface_vertices_A, dtype=np.float64).reshape(-1, 3)
    sf = np.asarray(surface_faces, dtype=np.int64).reshape(-1, 3)
    if len(sv) == 0 or len(sf) == 0:
        raise ValueError("render_particle: the surface mesh is empty.")
    if sf.min() < 0 or sf.max() >= len(sv):
        raise ValueError(f"render_particle: surface faces index vertices outside 0..{len(sv) - 1}.")
    meshes = [{"vertices": sv, "faces": sf, "color": SURFACE_COLOR, "opacity": s.render_surface_opacity}]
    if core_vertices_A is not None and core_faces is not None and len(core_faces):
        meshes.append({"vertices": np.asarray(core_vertices_A, dtype=np.float64).reshape(-1, 3),
                       "faces": np.asarray(core_faces, dtype=np.int64).reshape(-1, 3), "color": CORE_COLOR,
                       "opacity": 0.6})
    lines = [np.asarray(p, dtype=np.float64).reshape(-1, 3) for p in dislocation_lines]
    lines = [p for p in lines if len(p)]
    b = np.zeros((len(lines), 2)) if burgers_A is None else np.asarray(burgers_A, dtype=np.float64).reshape(-1, 2)
    if len(b) != len(lines):
        raise ValueError(f"render_particle: {len(b)} Burgers vectors for {len(lines)} dislocation lines.")
    labels, uniq = burgers_classes(b)
    scene_lines = [{"points": p, "color": BURGERS_COLORS[lab % len(BURGERS_COLORS)]} for p, lab in zip(lines, labels)]
    lo, hi = sv.min(axis=0), sv.max(axis=0)
    center = 0.5 * (lo + hi)
    radius = 0.5 * float(np.linalg.norm(hi - lo)) or 1.0
    scene = {"meshes": meshes, "lines": scene_lines, "center": center, "radius": radius, "bounds_lo": lo,
             "tube_radius_A": s.dislocation_tube_radius_A, "slice_thickness_A": float(slice_thickness_A)}
    views = [tuple(s.render_view_1_deg), tuple(s.render_view_2_deg)]

    used = backend
    images = None
    if backend in ("auto", "pyvista"):
        try:
            if not pyvista_available():
                raise RuntimeError("pyvista is not installed")
            images = _render_child(scene, views, s.render_window_px)
            used = "pyvista"
        except RuntimeError as e:
            if backend == "pyvista":
                raise
            LOG.warning("3-D render with pyvista failed (%s); drawing with matplotlib instead", e)
    if images is None:
        images = _render_matplotlib(scene, views, s.render_window_px)
        used = "matplotlib"

    use_style()
    has_legend = len(lines) > 0 or len(meshes) > 1
    fig, axes = plt.subplots(1, 2, figsize=(PAGE_WIDTH_IN, PAGE_WIDTH_IN / 2 + (0.5 if has_legend else 0.15)
                                            + (0.2 if title else 0)), layout="constrained")
    for j, (ax, im, (el, az)) in enumerate(zip(axes, images, views)):
        ax.imshow(im, interpolation="antialiased")
        ax.set_axis_off()
        ax.set_title(f"({'ab'[j]}) elevation {el:g}°, azimuth {az:g}°", fontsize=8)
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = [Patch(facecolor=SURFACE_COLOR, edgecolor="0.5", label="particle surface")]
    if len(meshes) > 1:
        handles.append(Patch(facecolor=CORE_COLOR, label="core"))
    for i, (bx, by) in enumerate(uniq):
        n = int(np.sum(labels == i))
        handles.append(Line2D([], [], color=BURGERS_COLORS[i % len(BURGERS_COLORS)], lw=3,
                              label=f"b = ({bx:+.1f}, {by:+.1f}) Å" + (f" ×{n}" if n > 1 else "")))
    if not lines:
        handles.append(Line2D([], [], color="none", label="no dislocation lines"))
    fig.legend(handles=handles, loc="outside lower center", ncol=min(4, len(handles)), frameon=False, fontsize=7)
    if used == "matplotlib" and backend == "auto":
        fig.text(0.995, 0.005, "matplotlib fallback render", ha="right", va="bottom", fontsize=5, color="0.5")
    if title:
        fig.suptitle(title)
    return save_figure(fig, out_path, s.dpi)


def render_from_results(surface, out_path, *, core=None, dislocations=None, title: str | None = None,
                        settings: FigureSettings | None = None, backend: str = "auto") -> Path:
    """:func:`render_particle` from the analysis results: a :class:`~msptycho.lattice.SurfaceResult`,
    optionally a :class:`~msptycho.lattice.CoreResult` (its ``core_mask`` meshed with
    :func:`core_mesh`) and a :class:`~msptycho.lattice.DislocationResult` (its points linked into
    lines by ``line_id``)."""
    dz = float(surface.slice_thickness_A)
    cv = cf = None
    if core is not None:
        cv, cf = core_mesh(core.core_mask, core.sampling_A, core.origin_A, dz)
    polys, burgers = ([], None) if dislocations is None else dislocation_polylines(dislocations.points, dz)
    return render_particle(out_path, surface.vertices_A, surface.faces, slice_thickness_A=dz, core_vertices_A=cv,
                           core_faces=cf, dislocation_lines=polys, burgers_A=burgers, title=title,
                           settings=settings, backend=backend)


__all__ = ["core_mesh", "dislocation_polylines", "burgers_classes", "pyvista_available", "render_particle",
           "render_from_results"]


if __name__ == "__main__":  # the child process of _render_child
    _child_main(sys.argv[1], sys.argv[2])
