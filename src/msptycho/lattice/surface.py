"""The particle's surface from the lattice-fringe amplitude.

As the paper's Methods: the magnitude of the Fourier-filtered lattice peaks used for strain mapping,
per slice, forms a 3-D "crystallinity" volume; it is smoothed, thresholded (Otsu by default) and
an isosurface mesh is extracted (scikit-image ``marching_cubes``) over a chosen slice range (the
paper kept slices 8-25 of 36, 1-based: ``slice_range=(7, 24)`` here, 0-based and inclusive).

Mesh coordinates are in A: ``x = origin_x + i dx``, ``y = origin_y + j dy`` and
``z = (s + 1/2) * slice_thickness_A`` for slice ``s`` (z = 0 at the entrance surface of the
volume, growing along the beam). The mesh is closed (the volume is padded with empty voxels).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..io.datacube import InputError
from ._common import (as_origin, as_sampling, bragg_filter, check_g_vectors, check_volume, default_mask_sigma,
                      lattice_level)


@dataclass
class SurfaceResult:
    """Particle volume and surface mesh.

    Attributes
    ----------
    amplitude : float32 (nz, nx, ny)
        Smoothed sum of Bragg amplitudes of the reflections, V*A.
    mask : bool (nz, nx, ny)
        ``amplitude >= threshold`` within the slice range (False outside it).
    threshold : float
        Threshold on ``amplitude`` (V*A).
    threshold_method : str
        ``"otsu"`` or ``"fraction"`` (of the typical lattice level).
    slice_range : (int, int)
        First and last slice used (0-based, inclusive).
    vertices_A : float32 (n, 3)
        Mesh vertices (x, y, z), A.
    faces : int32 (m, 3)
        Triangles (vertex indices), oriented with normals pointing outwards.
    normals : float32 (n, 3)
        Vertex normals (outwards).
    g_vectors_inv_A : (n_g, 2)
    sampling_A, origin_A : (float, float)
    slice_thickness_A : float
    """

    amplitude: np.ndarray
    mask: np.ndarray
    threshold: float
    threshold_method: str
    slice_range: tuple[int, int]
    vertices_A: np.ndarray
    faces: np.ndarray
    normals: np.ndarray
    g_vectors_inv_A: np.ndarray
    sampling_A: tuple[float, float]
    origin_A: tuple[float, float]
    slice_thickness_A: float
    parameters: dict


def lattice_amplitude(volume, sampling_A, g_vectors_inv_A, mask_sigma_inv_A: float | None = None) -> np.ndarray:
    """Sum over reflections of the Bragg-filtered amplitude ``|B_g|`` per slice, V*A, ``(nz, nx, ny)``."""
    v = check_volume(volume)
    g = check_g_vectors(g_vectors_inv_A, n=None)
    sigma = default_mask_sigma(g, mask_sigma_inv_A)
    out = np.zeros(v.shape)
    for z in range(v.shape[0]):
        spec = np.fft.fft2(v[z])
        for gi in g:
            out[z] += np.abs(bragg_filter(spec, gi, sigma, sampling_A))
    return out


def surface_from_volume(volume, sampling_A, g_vectors_inv_A, *, slice_thickness_A: float,
                        slice_range=None, mask_sigma_inv_A: float | None = None, smoothing_A: float = 3.0,
                        smoothing_slices: float = 0.0, threshold_fraction: float | None = None,
                        mesh_step_px: int = 2, origin_A=(0.0, 0.0)) -> SurfaceResult:
    """Particle mask and isosurface mesh from the lattice-fringe amplitude.

    Parameters
    ----------
    volume : ndarray (nz, nx, ny)
        Projected potential, V*A.
    sampling_A : float or (float, float)
        Pixel size, A.
    g_vectors_inv_A : (n, 2)
        Reflections whose amplitudes are summed (e.g. the two {220} of the strain analysis), 1/A.
    slice_thickness_A : float
        Slice thickness, A (mesh z scale).
    slice_range : (int, int), optional
        First and last slice (0-based, inclusive) of the mask and mesh; default all.
    mask_sigma_inv_A : float, optional
        Gaussian Bragg-mask width, 1/A (default 10 % of the shortest ``|g|``).
    smoothing_A : float
        In-plane Gaussian smoothing of the amplitude (standard deviation), A.
    smoothing_slices : float
        Gaussian smoothing along z, slices (0: none).
    threshold_fraction : float, optional
        Threshold as a fraction of the typical lattice level (median amplitude over lattice pixels);
        default Otsu's threshold over the slice range.
    mesh_step_px : int
        Marching-cubes step in pixels (in-plane coarsening of the mesh).
    origin_A : (float, float)
        Position of pixel (0, 0), A.

    Returns
    -------
    SurfaceResult

    Raises
    ------
    InputError
        Bad slice range, no lattice, or an empty mask.
    """
    from skimage.filters import threshold_otsu
    from skimage.measure import marching_cubes

    v = check_volume(volume)
    dx, dy = as_sampling(sampling_A)
    ox, oy = as_origin(origin_A)
    g = check_g_vectors(g_vectors_inv_A, n=None)
    if not (np.isfinite(slice_thickness_A) and slice_thickness_A > 0):
        raise InputError(f"lattice analysis: slice_thickness_A must be positive, got {slice_thickness_A!r}.")
    nz = v.shape[0]
    if slice_range is None:
        first, last = 0, nz - 1
    else:
        first, last = (int(s) for s in slice_range)
        if not (0 <= first <= last < nz):
            raise InputError(f"lattice analysis: slice_range must be (first, last) with 0 <= first <= last < {nz} "
                             f"(0-based, inclusive), got {tuple(slice_range)}.")
    amp = lattice_amplitude(v, (dx, dy), g, mask_sigma_inv_A)
    amp = ndimage.gaussian_filter(amp, (smoothing_slices, smoothing_A / dx, smoothing_A / dy))
    sel = amp[first:last + 1]
    if not np.ptp(sel) > 0:
        raise InputError("lattice analysis: the lattice amplitude is uniform in the slice range; the volume shows no lattice.")
    if threshold_fraction is None:
        thr, method = float(threshold_otsu(sel)), "otsu"
    else:
        thr, method = float(threshold_fraction) * lattice_level(sel), "fraction"
    mask = np.zeros(v.shape, bool)
    mask[first:last + 1] = sel >= thr
    if not mask.any():
        raise InputError(f"lattice analysis: no voxel reaches the surface threshold {thr:.4g}; empty particle.")
    padded = np.pad(sel, 1, mode="constant", constant_values=min(0.0, float(sel.min())))
    step = max(1, int(mesh_step_px))
    verts, faces, normals, _ = marching_cubes(padded, level=thr, spacing=(1.0, 1.0, 1.0), step_size=step,
                                              allow_degenerate=False)
    # padded index (s', i', j') -> slice first + s' - 1, pixel i' - 1, j' - 1
    xyz = np.column_stack([ox + dx * (verts[:, 1] - 1), oy + dy * (verts[:, 2] - 1),
                           slice_thickness_A * (first + verts[:, 0] - 1 + 0.5)])
    # normals: scale the index-space gradient direction into physical space; marching_cubes points
    # them towards decreasing values (outwards for a bright particle)
    n = np.column_stack([normals[:, 1] / dx, normals[:, 2] / dy, normals[:, 0] / slice_thickness_A])
    n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
    # faces as returned wind clockwise seen from outside (checked by the signed volume in the
    # tests); reverse them so that they wind counter-clockwise, consistent with the outward normals
    faces = faces[:, ::-1]
    params = {"mask_sigma_inv_A": default_mask_sigma(g, mask_sigma_inv_A),
              "smoothing_A": smoothing_A, "smoothing_slices": smoothing_slices,
              "threshold_fraction": threshold_fraction, "mesh_step_px": step}
    return SurfaceResult(amplitude=amp.astype(np.float32), mask=mask, threshold=thr, threshold_method=method,
                         slice_range=(first, last), vertices_A=xyz.astype(np.float32), faces=faces.astype(np.int32),
                         normals=n.astype(np.float32), g_vectors_inv_A=g, sampling_A=(dx, dy), origin_A=(ox, oy),
                         slice_thickness_A=float(slice_thickness_A), parameters=params)
