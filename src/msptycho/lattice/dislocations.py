"""Dislocations from Bragg filtering: phase singularities, Burgers vectors and 3-D lines.

Per slice, each of two reflections ``g_i`` is Bragg filtered (Gaussian mask). The phase of a
filtered image winds by ``2 pi n_i`` around a dislocation, where ``n_i = -g_i . b`` (with ``b`` the
in-plane Burgers vector defined by ``oint du = b`` on a counter-clockwise circuit in the
``(x, y)`` plane, ``x`` the first array axis, and the geometric phase ``P_g = -2 pi g . u``).

1. Winding of every pixel plaquette ``(i, j) -> (i+1, j) -> (i+1, j+1) -> (i, j+1)``
   (counter-clockwise), from wrapped phase differences ``angle(B_b conj(B_a))``: no unwrapping.
2. Only plaquettes where the smoothed Bragg amplitude (sum of both reflections, Gaussian of
   ``amplitude_smoothing_A``) is at least ``amplitude_threshold`` of its typical lattice level count
   (the amplitude itself vanishes at the singularity, hence the smoothing).
3. Singular plaquettes of both reflections closer than ``merge_radius_A`` are merged into one
   dislocation (a winding-2 singularity may split in two; opposite windings cancel); its windings
   ``(n_1, n_2)`` give ``b`` from ``g_i . b = -n_i`` (A). Clusters with zero net winding are dropped.
   With ``translation_g_inv_A`` (the reciprocal vectors of the structure's projected translation
   lattice; for fluorite [001] the {200} pair, since the projection repeats every a/2 along the cube
   axes) a point is kept only if ``G . b`` is an integer for both: a closed Burgers circuit around a
   perfect dislocation gives a lattice translation. With the {220} pair a winding such as
   ``(1, 0)`` means ``b = a/4 <110>``, which maps cation columns onto anion columns: it comes from a
   circuit that is not closed in the crystal (around a crack tip, through a surface, at a line's
   end) or from a partial bounding a fault. Such a point is kept only within ``link_radius_A`` of a
   lattice-translation point in a neighbouring slice (the same line, its circuit cut where it
   meets a surface); the others are dropped (on the simulator's cracked particle: the two points
   in the crack gap near its tip).
4. Positions in consecutive slices (gaps up to ``max_gap_slices``) with the same windings within
   ``link_radius_A`` are linked into lines (optimal assignment per slice).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from ..io.datacube import InputError
from ._common import (as_origin, as_sampling, bragg_filter, check_g_vectors, check_volume, default_mask_sigma,
                      lattice_level, psf_sigma_A)

#: columns of the per-point table
POINT_FIELDS = ("slice", "x_A", "y_A", "winding_1", "winding_2", "bx_A", "by_A", "line_id")
#: columns of the per-line table
LINE_FIELDS = ("line_id", "first_slice", "last_slice", "n_points", "winding_1", "winding_2", "bx_A", "by_A",
               "mean_x_A", "mean_y_A")


@dataclass
class DislocationResult:
    """Dislocations found in a volume.

    Attributes
    ----------
    points : dict of 1-D arrays (:data:`POINT_FIELDS`)
        One row per dislocation per slice: slice index, position (A), windings of the two
        reflections, Burgers vector (A), line id.
    lines : dict of 1-D arrays (:data:`LINE_FIELDS`)
        One row per 3-D line.
    g_vectors_inv_A : (2, 2)
        The two reflections, 1/A.
    amplitude : float32 (nz, 2, nx, ny) or None
        Bragg amplitudes (V*A) of the two reflections (for maps like the paper's Fig. S.5).
    phase : float32 (nz, 2, nx, ny) or None
        Geometric phase ``arg B_i - 2 pi g_i . r`` (rad, wrapped).
    significant : bool (nz, nx, ny)
        Where the smoothed amplitude passes the threshold.
    parameters : dict
        The parameters used.
    """

    points: dict
    lines: dict
    g_vectors_inv_A: np.ndarray
    amplitude: np.ndarray | None
    phase: np.ndarray | None
    significant: np.ndarray
    sampling_A: tuple[float, float]
    origin_A: tuple[float, float]
    parameters: dict = field(default_factory=dict)

    @property
    def n_points(self) -> int:
        return int(len(self.points["slice"]))


def plaquette_winding(bragg: np.ndarray) -> np.ndarray:
    """Winding number (int, ``(nx-1, ny-1)``) of the phase of a complex image around each pixel
    plaquette, counter-clockwise in ``(x, y)``: ``(i,j) -> (i+1,j) -> (i+1,j+1) -> (i,j+1) -> (i,j)``."""
    b = np.asarray(bragg)
    a00, a10, a11, a01 = b[:-1, :-1], b[1:, :-1], b[1:, 1:], b[:-1, 1:]
    s = (np.angle(a10 * np.conj(a00)) + np.angle(a11 * np.conj(a10)) + np.angle(a01 * np.conj(a11))
         + np.angle(a00 * np.conj(a01)))
    return np.rint(s / (2 * np.pi)).astype(np.int64)


def burgers_vectors(windings, g_vectors_inv_A) -> np.ndarray:
    """Burgers vectors (A, ``(n, 2)``) solving ``g_i . b = -n_i`` for windings ``(n, 2)``."""
    g = check_g_vectors(g_vectors_inv_A)
    n = np.atleast_2d(np.asarray(windings, dtype=np.float64))
    return np.linalg.solve(g, -n.T).T


def _cluster(xy, radius):
    if len(xy) == 0:
        return np.zeros(0, dtype=np.int64)
    pairs = cKDTree(xy).query_pairs(radius, output_type="ndarray")
    n = len(xy)
    if len(pairs) == 0:
        return np.arange(n)
    m = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    return connected_components(m, directed=False)[1]


def link_lines(slices, xy_A, windings, link_radius_A: float = 3.0, max_gap_slices: int = 1) -> np.ndarray:
    """Line id per point: points of consecutive slices (up to ``max_gap_slices`` missing) with the
    same windings and within ``link_radius_A`` (A) are joined, by optimal assignment per slice."""
    slices = np.asarray(slices, dtype=np.int64)
    xy = np.asarray(xy_A, dtype=np.float64).reshape(-1, 2)
    w = np.asarray(windings, dtype=np.int64).reshape(-1, 2)
    ids = -np.ones(len(slices), dtype=np.int64)
    tips: list[list] = []  # [line id, last slice, x, y, n1, n2]
    next_id = 0
    for s in np.unique(slices):
        pts = np.flatnonzero(slices == s)
        live = [t for t in tips if s - t[1] <= max_gap_slices + 1]
        if live and len(pts):
            cost = np.full((len(live), len(pts)), 1e9)
            for a, t in enumerate(live):
                for c, p in enumerate(pts):
                    if t[4] == w[p, 0] and t[5] == w[p, 1]:
                        d = np.hypot(t[2] - xy[p, 0], t[3] - xy[p, 1])
                        if d <= link_radius_A:
                            cost[a, c] = d + 0.01 * (s - t[1])
            ra, ca = linear_sum_assignment(cost)
            for a, c in zip(ra, ca):
                if cost[a, c] < 1e9:
                    p = pts[c]
                    ids[p] = live[a][0]
                    live[a][1:4] = [s, xy[p, 0], xy[p, 1]]
        for p in pts:
            if ids[p] < 0:
                ids[p] = next_id
                tips.append([next_id, s, xy[p, 0], xy[p, 1], w[p, 0], w[p, 1]])
                next_id += 1
    return ids


def _keep_lattice_points(slices, x_A, y_A, is_translation, radius_A: float) -> np.ndarray:
    """Points to keep: those whose Burgers vector is a lattice translation, and the others that lie
    within ``radius_A`` of such a point in a neighbouring slice (the same line, its circuit cut by a
    surface or at the line's end)."""
    keep = np.asarray(is_translation, dtype=bool).copy()
    good = np.flatnonzero(keep)
    for k in np.flatnonzero(~keep):
        nb = good[np.abs(slices[good] - slices[k]) == 1]
        if nb.size and np.min(np.hypot(x_A[nb] - x_A[k], y_A[nb] - y_A[k])) <= radius_A:
            keep[k] = True
    return keep


def find_dislocations(volume, sampling_A, g_vectors_inv_A, *, mask_sigma_inv_A: float | None = None,
                      amplitude_threshold: float = 0.4, amplitude_smoothing_A: float = 3.0,
                      merge_radius_A: float = 7.0, link_radius_A: float = 3.0, max_gap_slices: int = 1,
                      translation_g_inv_A=None, origin_A=(0.0, 0.0), keep_maps: bool = True) -> DislocationResult:
    """Dislocations in every slice and their 3-D lines (module doc).

    Parameters
    ----------
    volume : ndarray (nz, nx, ny)
        Projected potential, V*A, indexed ``[z, x, y]``.
    sampling_A : float or (float, float)
        Pixel size, A.
    g_vectors_inv_A : (2, 2)
        Two non-collinear reflections, 1/A (e.g. ``FluoriteLattice.g220_inv_A``).
    mask_sigma_inv_A : float, optional
        Gaussian Bragg-mask width, 1/A (default 20 % of the shorter ``|g|``: a wide mask keeps the
        singularities within about 1 A of the cores).
    amplitude_threshold : float
        Fraction of the typical lattice level the smoothed amplitude must reach (holes of that mask
        up to a disc of ``merge_radius_A``, i.e. the dips at the cores themselves, are filled).
    amplitude_smoothing_A : float
        Gaussian smoothing (standard deviation, A) of the amplitude for that test.
    merge_radius_A : float
        Singular plaquettes closer than this (A) are one dislocation (a dislocation whose ``|g . b|``
        is 2 shows two winding-1 singularities about ``|b|`` apart).
    link_radius_A : float
        Largest in-plane step (A) between linked positions of consecutive slices.
    max_gap_slices : int
        Slices a line may skip.
    translation_g_inv_A : (2, 2), optional
        Reciprocal vectors (1/A) of the projected translation lattice; points whose Burgers vector
        is not a translation of it (``G . b`` not an integer within 0.25) are dropped unless a
        lattice-translation point of a neighbouring slice lies within ``link_radius_A`` (module
        doc). None: every nonzero winding is kept.
    origin_A : (float, float)
        Position of pixel (0, 0), A.
    keep_maps : bool
        Keep the amplitude and phase maps in the result.

    Returns
    -------
    DislocationResult
    """
    v = check_volume(volume)
    dx, dy = as_sampling(sampling_A)
    ox, oy = as_origin(origin_A)
    g = check_g_vectors(g_vectors_inv_A)
    sigma = default_mask_sigma(g, mask_sigma_inv_A, fraction=0.2)
    gt = None if translation_g_inv_A is None else check_g_vectors(translation_g_inv_A, name="translation_g_inv_A")
    nz, nx, ny = v.shape
    amp = np.empty((nz, 2, nx, ny), dtype=np.float32)
    phase = np.empty((nz, 2, nx, ny), dtype=np.float32) if keep_maps else None
    windings = np.empty((nz, 2, nx - 1, ny - 1), dtype=np.int64)
    x = ox + dx * np.arange(nx)[:, None]
    y = oy + dy * np.arange(ny)[None, :]
    for z in range(nz):
        spec = np.fft.fft2(v[z])
        for i in range(2):
            b = bragg_filter(spec, g[i], sigma, (dx, dy))
            amp[z, i] = np.abs(b)
            windings[z, i] = plaquette_winding(b)
            if keep_maps:
                phase[z, i] = np.angle(b * np.exp(-2j * np.pi * (g[i, 0] * x + g[i, 1] * y)))
    total = amp.sum(axis=1, dtype=np.float64)
    smooth = ndimage.gaussian_filter(total, (0, amplitude_smoothing_A / dx, amplitude_smoothing_A / dy))
    level = lattice_level(smooth)
    if not level > 0:
        raise InputError("lattice analysis: the chosen reflections have no Bragg amplitude; the volume shows no lattice.")
    significant = smooth >= amplitude_threshold * level
    # amplitude dips at singularities inside the lattice are small holes of the mask: fill those
    # (up to a disc of merge_radius_A), but not cracks or voids
    from skimage.morphology import remove_small_holes
    max_hole_px = max(1, int(np.pi * merge_radius_A**2 / (dx * dy)))
    significant = np.stack([remove_small_holes(m, max_size=max_hole_px) for m in significant])
    plaq_sig = significant[:, :-1, :-1] & significant[:, 1:, :-1] & significant[:, 1:, 1:] & significant[:, :-1, 1:]
    rows = {k: [] for k in POINT_FIELDS if k != "line_id"}
    rows["translation"] = []
    for z in range(nz):
        found = []
        for i in range(2):
            ii, jj = np.nonzero((windings[z, i] != 0) & plaq_sig[z])
            for a, c in zip(ii, jj):
                n = [0, 0]
                n[i] = int(windings[z, i, a, c])
                found.append((ox + dx * (a + 0.5), oy + dy * (c + 0.5), n[0], n[1]))
        if not found:
            continue
        f = np.array(found, dtype=np.float64)
        lab = _cluster(f[:, :2], merge_radius_A)
        for c in np.unique(lab):
            m = lab == c
            n1, n2 = int(f[m, 2].sum()), int(f[m, 3].sum())
            if n1 == 0 and n2 == 0:
                continue
            bvec = burgers_vectors([[n1, n2]], g)[0]
            if gt is not None:
                p = gt @ bvec
                rows["translation"].append(bool(np.all(np.abs(p - np.rint(p)) <= 0.25)))
            rows["slice"].append(z)
            rows["x_A"].append(float(f[m, 0].mean()))
            rows["y_A"].append(float(f[m, 1].mean()))
            rows["winding_1"].append(n1)
            rows["winding_2"].append(n2)
            rows["bx_A"].append(float(bvec[0]))
            rows["by_A"].append(float(bvec[1]))
    if gt is not None and rows["slice"]:
        keep = _keep_lattice_points(np.asarray(rows["slice"]), np.asarray(rows["x_A"]), np.asarray(rows["y_A"]),
                                    np.asarray(rows["translation"]), link_radius_A)
        rows = {k: [v for v, ok in zip(vals, keep) if ok] for k, vals in rows.items()}
    points = {"slice": np.asarray(rows["slice"], dtype=np.int64),
              "x_A": np.asarray(rows["x_A"], dtype=np.float64), "y_A": np.asarray(rows["y_A"], dtype=np.float64),
              "winding_1": np.asarray(rows["winding_1"], dtype=np.int64),
              "winding_2": np.asarray(rows["winding_2"], dtype=np.int64),
              "bx_A": np.asarray(rows["bx_A"], dtype=np.float64), "by_A": np.asarray(rows["by_A"], dtype=np.float64)}
    points["line_id"] = link_lines(points["slice"], np.stack([points["x_A"], points["y_A"]], axis=1),
                                   np.stack([points["winding_1"], points["winding_2"]], axis=1),
                                   link_radius_A=link_radius_A, max_gap_slices=max_gap_slices)
    lines = summarize_lines(points)
    params = {"mask_sigma_inv_A": sigma, "resolution_A": psf_sigma_A(sigma),
              "amplitude_threshold": amplitude_threshold, "amplitude_smoothing_A": amplitude_smoothing_A,
              "merge_radius_A": merge_radius_A, "link_radius_A": link_radius_A, "max_gap_slices": max_gap_slices,
              "lattice_burgers_only": gt is not None}
    return DislocationResult(points=points, lines=lines, g_vectors_inv_A=g, amplitude=amp if keep_maps else None,
                             phase=phase, significant=significant, sampling_A=(dx, dy), origin_A=(ox, oy),
                             parameters=params)


def summarize_lines(points: dict) -> dict:
    """Per-line table (:data:`LINE_FIELDS`) from a per-point table."""
    ids = np.asarray(points["line_id"], dtype=np.int64)
    out = {k: [] for k in LINE_FIELDS}
    for lid in np.unique(ids):
        m = ids == lid
        s = points["slice"][m]
        out["line_id"].append(lid)
        out["first_slice"].append(int(s.min()))
        out["last_slice"].append(int(s.max()))
        out["n_points"].append(int(m.sum()))
        out["winding_1"].append(int(points["winding_1"][m][0]))
        out["winding_2"].append(int(points["winding_2"][m][0]))
        out["bx_A"].append(float(points["bx_A"][m][0]))
        out["by_A"].append(float(points["by_A"][m][0]))
        out["mean_x_A"].append(float(points["x_A"][m].mean()))
        out["mean_y_A"].append(float(points["y_A"][m].mean()))
    ints = {"line_id", "first_slice", "last_slice", "n_points", "winding_1", "winding_2"}
    return {k: np.asarray(v, dtype=np.int64 if k in ints else np.float64) for k, v in out.items()}
