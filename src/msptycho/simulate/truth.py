"""Ground truth on the reconstruction's grid (``truth.h5``, ``workflow/schemas/truth.md``).

The reconstruction's slices are ``recon_slice_thickness_A`` thick starting at z = 0 (the entrance
surface of the simulated volume, i.e. the top of the carbon support); its pixels are
``physics.realspace_sampling_A(detector_pixels, mrad_per_pixel, energy)`` wide and the truth grid
covers the scan field plus a margin of half a reconstruction window on each side, with pixel
``[0, 0]``'s centre at ``origin_A`` in the scan frame.

* **potential**: the atoms whose centre lies in a slice, their Kirkland projected potentials summed
  and averaged over each pixel (3 x 3 sub-samples), V*A. No band limit, no thermal smearing beyond
  the frozen displacements actually used by the simulation.
* **strain** ``exx, eyy, exy, dilation, rotation`` (see :mod:`msptycho.simulate.model` for the
  definitions; reference: CaF2, a = 5.46 A, cube axes along x, y): the analytic in-plane
  distortion averaged over three planes per slice where they lie in the particle; NaN outside the
  particle mask and inside the crack.
* **masks**: a pixel belongs to the particle / core / crack in a slice when at least half of the
  three sampled planes put it there (particle: inside the outer shape and not in the crack; core:
  inside the core after deformation; crack: in the opened crack within the outer shape).
* **dislocations**: for each slice whose mid-plane a line crosses inside the particle, the line's
  deformed (x, y) and its Burgers vector (reference frame).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .. import physics
from .model import AtomicModel, Deformation
from .potentials import project_atoms
from .presets import SimulationParameters, reconstruction_sampling_A

_SUPERSAMPLE = 3
_PLANES_PER_SLICE = 3


@dataclass
class GroundTruth:
    """Ground truth of one simulated sample (arrays indexed [slice, x, y]).

    Attributes
    ----------
    sampling_A : float
        Pixel size of the maps, Angstrom (the reconstruction's).
    origin_A : (float, float)
        Scan-frame position of pixel [0, 0]'s centre, Angstrom.
    slice_thickness_A : float
    slice_edges_A : ndarray (n_slices + 1,)
        z of the slice boundaries from the entrance surface, Angstrom.
    potential_VA : ndarray (n_slices, nx, ny), float32
    exx, eyy, exy, dilation, rotation_rad : ndarray (n_slices, nx, ny), float32
    particle_mask, core_mask, crack_mask : ndarray (n_slices, nx, ny), bool
    dislocations : ndarray, structured
        Fields ``slice, line, x_A, y_A, burgers_x_A, burgers_y_A``.
    reference_lattice_A : float
    misfit : float
        ``a_core / a_shell - 1``.
    particle_center_A, core_center_A : (3,) float
        Centres (x, y, z), Angstrom (core centre before deformation by twist/tilt/crack).
    core_radius_A : float
    probe : dict
        True probe parameters (energy_eV, semiangle_mrad, defocus_A in the physics convention,
        aberrations, aperture_edge_mrad, source_size_A).
    scan_positions_A : ndarray (Rx, Ry, 2)
        True probe positions including the jitter, Angstrom.
    scan_positions_nominal_A : ndarray (Rx, Ry, 2)
    haadf_drift_A : ndarray (2, hx, hy, 2) or None
        True drift at each pixel of the two HAADF frames, Angstrom.
    haadf_time_s : ndarray (2, hx, hy) or None
    """

    sampling_A: float
    origin_A: tuple[float, float]
    slice_thickness_A: float
    slice_edges_A: np.ndarray
    potential_VA: np.ndarray
    exx: np.ndarray
    eyy: np.ndarray
    exy: np.ndarray
    dilation: np.ndarray
    rotation_rad: np.ndarray
    particle_mask: np.ndarray
    core_mask: np.ndarray
    crack_mask: np.ndarray
    dislocations: np.ndarray
    reference_lattice_A: float
    misfit: float
    particle_center_A: np.ndarray
    core_center_A: np.ndarray
    core_radius_A: float
    probe: dict = field(default_factory=dict)
    scan_positions_A: np.ndarray | None = None
    scan_positions_nominal_A: np.ndarray | None = None
    haadf_drift_A: np.ndarray | None = None
    haadf_time_s: np.ndarray | None = None

    STRAIN_FIELDS = ("exx", "eyy", "exy", "dilation", "rotation_rad")
    MASK_FIELDS = ("particle_mask", "core_mask", "crack_mask")

    @property
    def n_slices(self) -> int:
        return self.potential_VA.shape[0]


DISLOCATION_DTYPE = np.dtype([("slice", "i4"), ("line", "i4"), ("x_A", "f8"), ("y_A", "f8"),
                              ("burgers_x_A", "f8"), ("burgers_y_A", "f8")])


def truth_grid(params: SimulationParameters) -> tuple[float, tuple[float, float], tuple[int, int]]:
    """Sampling, origin and shape of the truth maps: the scan field plus half a reconstruction
    window (``detector_pixels * sampling / 2``) on each side."""
    s = reconstruction_sampling_A(params)
    pad = params.detector_pixels * s / 2
    ex, ey = params.scan_extent_A
    shape = (int(np.ceil((ex + 2 * pad) / s)) + 1, int(np.ceil((ey + 2 * pad) / s)) + 1)
    return s, (-pad, -pad), shape


def probe_truth(params: SimulationParameters) -> dict:
    """The true probe parameters as a flat dict."""
    p = params
    return dict(energy_eV=p.energy_eV, wavelength_A=physics.wavelength_A(p.energy_eV),
                semiangle_mrad=p.semiangle_mrad, defocus_A=p.defocus_A, C12_A=p.C12_A, phi12_rad=p.phi12_rad,
                C21_A=p.C21_A, phi21_rad=p.phi21_rad, C23_A=p.C23_A, phi23_rad=p.phi23_rad, C30_A=p.C30_A,
                aperture_edge_mrad=p.aperture_edge_mrad, source_size_A=p.source_size_A,
                defocus_convention="defocus_A = -C10; positive: crossover defocus_A below the entrance surface")


def truth_potential(model: AtomicModel, n_slices: int, slice_thickness_A: float, sampling_A: float,
                    origin_A, shape) -> np.ndarray:
    """Projected potential summed per reconstruction slice, pixel-averaged (n, nx, ny) float32."""
    f = _SUPERSAMPLE
    fs = sampling_A / f
    f_origin = (origin_A[0] - (f - 1) / 2 * fs, origin_A[1] - (f - 1) / 2 * fs)
    sl = np.clip(np.floor(model.positions_A[:, 2] / slice_thickness_A).astype(np.int64), 0, n_slices - 1)
    out = np.empty((n_slices, *shape), dtype=np.float32)
    for k in range(n_slices):
        sel = sl == k
        fine = project_atoms(model.positions_A[sel, :2], model.Z[sel], np.zeros(sel.sum(), np.int64), 1,
                             (shape[0] * f, shape[1] * f), fs, f_origin)[0]
        out[k] = fine.reshape(shape[0], f, shape[1], f).mean(axis=(1, 3))
    return out


def truth_fields(deform: Deformation, n_slices: int, slice_thickness_A: float, sampling_A: float,
                 origin_A, shape):
    """Strain maps and masks per slice (see the module doc)."""
    p = deform.p
    nan = np.float32(np.nan)
    maps = {k: np.full((n_slices, *shape), nan, dtype=np.float32) for k in GroundTruth.STRAIN_FIELDS}
    masks = {k: np.zeros((n_slices, *shape), dtype=bool) for k in GroundTruth.MASK_FIELDS}
    # only the particle's in-plane bounding box can hold material
    c = deform.center
    r = p.particle_radius_A + 2.0
    i0 = max(0, int(np.floor((c[0] - r - origin_A[0]) / sampling_A)))
    i1 = min(shape[0], int(np.ceil((c[0] + r - origin_A[0]) / sampling_A)) + 1)
    j0 = max(0, int(np.floor((c[1] - r - origin_A[1]) / sampling_A)))
    j1 = min(shape[1], int(np.ceil((c[1] + r - origin_A[1]) / sampling_A)) + 1)
    xi = origin_A[0] + np.arange(i0, i1) * sampling_A
    yj = origin_A[1] + np.arange(j0, j1) * sampling_A
    gx, gy = np.meshgrid(xi, yj, indexing="ij")
    for k in range(n_slices):
        z0 = k * slice_thickness_A
        if z0 + slice_thickness_A <= deform.z_top or z0 >= deform.z_bottom:
            continue
        sums = np.zeros((5, *gx.shape))
        n_in = np.zeros(gx.shape)
        n_core = np.zeros(gx.shape)
        n_crack = np.zeros(gx.shape)
        for m in range(_PLANES_PER_SLICE):
            z = z0 + (m + 0.5) * slice_thickness_A / _PLANES_PER_SLICE
            x = np.stack([gx.ravel(), gy.ravel(), np.full(gx.size, z)], axis=1)
            env = deform.inside_particle(x)
            if not env.any():
                continue
            crack = deform.in_crack_current(x) & env
            inside = env & ~crack
            idx = np.flatnonzero(inside)
            X = deform.reference_position(x[idx])
            G = deform.gradient(X)
            vals = np.stack([G[:, 0, 0], G[:, 1, 1], 0.5 * (G[:, 0, 1] + G[:, 1, 0]),
                             G[:, 0, 0] + G[:, 1, 1], 0.5 * (G[:, 1, 0] - G[:, 0, 1])])
            for q in range(5):
                sums[q].ravel()[idx] += vals[q]
            n_in.ravel()[idx] += 1
            n_core.ravel()[idx] += deform.in_core_reference(X)
            n_crack += crack.reshape(gx.shape)
        half = _PLANES_PER_SLICE / 2
        part = n_in >= half
        masks["particle_mask"][k, i0:i1, j0:j1] = part
        masks["core_mask"][k, i0:i1, j0:j1] = n_core >= half
        masks["crack_mask"][k, i0:i1, j0:j1] = n_crack >= half
        with np.errstate(invalid="ignore", divide="ignore"):
            for q, name in enumerate(GroundTruth.STRAIN_FIELDS):
                maps[name][k, i0:i1, j0:j1] = np.where(part, sums[q] / n_in, np.nan)
    return maps, masks


def truth_dislocations(deform: Deformation, n_slices: int, slice_thickness_A: float) -> np.ndarray:
    """Deformed in-plane position of each dislocation line at each slice's mid-plane."""
    rows = []
    all_d = list(deform.dislocations)
    try:
        for n, d in enumerate(all_d):
            deform.dislocations = [e for m, e in enumerate(all_d) if m != n]
            for k in range(n_slices):
                z = (k + 0.5) * slice_thickness_A
                if not (deform.z_top <= z <= deform.z_bottom):
                    continue
                deform.dislocations = all_d
                w = deform.dislocation_weight(d, np.array([z]))[0]
                deform.dislocations = [e for m, e in enumerate(all_d) if m != n]
                if w < 0.5:
                    continue
                X = np.array([[d["pos"][0], d["pos"][1], z]])
                x = X + deform.displacement(X)
                if not deform.inside_particle(x)[0]:
                    continue
                rows.append((k, n, x[0, 0], x[0, 1], d["b"][0], d["b"][1]))
    finally:
        deform.dislocations = all_d
    return np.array(rows, dtype=DISLOCATION_DTYPE)


def ground_truth(params: SimulationParameters, model: AtomicModel, recon_slice_thickness_A: float = 12.0,
                 scan_positions_A=None, scan_positions_nominal_A=None, scan_pair=None) -> GroundTruth:
    """Assemble the ground truth of a sample on the reconstruction's grid.

    Parameters
    ----------
    params : SimulationParameters
    model : AtomicModel
        The atoms the simulation used.
    recon_slice_thickness_A : float
        Slice thickness of the reconstruction, Angstrom (slices start at z = 0).
    scan_positions_A, scan_positions_nominal_A : ndarray (Rx, Ry, 2), optional
    scan_pair : haadf.ScanPair, optional
        Source of the true drift.

    Returns
    -------
    GroundTruth
    """
    if not (np.isfinite(recon_slice_thickness_A) and recon_slice_thickness_A > 0):
        raise ValueError(f"recon_slice_thickness_A must be a positive number, got {recon_slice_thickness_A!r}.")
    deform = Deformation(params)
    s, origin, shape = truth_grid(params)
    depth = max(params.sample_thickness_A, params.truth_depth_A)
    n_slices = int(np.ceil(depth / recon_slice_thickness_A - 1e-9))
    pot = truth_potential(model, n_slices, recon_slice_thickness_A, s, origin, shape)
    maps, masks = truth_fields(deform, n_slices, recon_slice_thickness_A, s, origin, shape)
    dis = truth_dislocations(deform, n_slices, recon_slice_thickness_A)
    return GroundTruth(
        sampling_A=float(s), origin_A=(float(origin[0]), float(origin[1])),
        slice_thickness_A=float(recon_slice_thickness_A),
        slice_edges_A=np.arange(n_slices + 1) * float(recon_slice_thickness_A),
        potential_VA=pot, **maps, **masks, dislocations=dis,
        reference_lattice_A=float(params.shell_lattice_A), misfit=float(deform.eps),
        particle_center_A=np.asarray(deform.center), core_center_A=np.asarray(deform.core_center),
        core_radius_A=float(params.core_radius_A), probe=probe_truth(params),
        scan_positions_A=scan_positions_A, scan_positions_nominal_A=scan_positions_nominal_A,
        haadf_drift_A=None if scan_pair is None else scan_pair.drift_A,
        haadf_time_s=None if scan_pair is None else scan_pair.time_s)



def defocus_reference_planes(truth: GroundTruth) -> dict:
    """The true defocus referred to the planes of a thick sample that the calibration chain measures.

    The simulator forms its probe with ``probe["defocus_A"]`` (``D``) at z = 0, the entrance
    surface of its potential box (the top of the carbon support); the truth's (and the
    reconstruction's) slab ``k`` covers ``[k dz, (k + 1) dz)``. With ``defocus_A = -C10`` (positive:
    crossover below the entrance surface) a layer at depth ``z`` sees the defocus ``D - z``.

    * **entrance** (z = 0): ``D``.
    * **first slab** (z = dz / 2): the reconstruction applies each slab's potential at one plane,
      the first one where its probe is defined; a slab's potential acts, to first order, at its
      mid-plane, so a converged multislice model of this stack matches the data with the probe's
      defocus at ``z = dz / 2``: ``D - dz / 2``, the truth of the calibration (:mod:`msptycho.calibrate`).
    * **potential centroid** ``z_c = sum_k v_k z_k / sum_k v_k``, with ``v_k`` the mean projected
      potential of slab ``k`` over the scanned field and ``z_k`` its mid-plane: ``D - z_c``.
    * **parallax plane**: a BF image is the sum of the layers' images, each displaced by
      ``wavelength (D - z) k``; a weak-phase layer's BF contrast grows in proportion to its
      defocus ``D - z`` and the cross-correlation that measures the displacement weighs each layer
      by its contrast squared, so the measured defocus is
      ``sum_k v_k (D - z_k)^3 / sum_k v_k (D - z_k)^2`` (checked in ``tests/test_parallax.py``: two
      equal layers at 0 and 60 A under a 180 A entrance defocus give 161.5 A, not the centroid's
      150 A). This is the truth the parallax estimate (:mod:`msptycho.parallax`) is compared with.

    Parameters
    ----------
    truth : GroundTruth
        With ``probe["defocus_A"]``, ``potential_VA``, ``slice_edges_A`` and (optional)
        ``scan_positions_A`` to restrict the average to the scanned field.

    Returns
    -------
    dict
        ``defocus_entrance_A``, ``defocus_first_slab_A``, ``centroid_depth_A`` (below the
        entrance), ``defocus_centroid_A``, ``defocus_parallax_A``, ``sample_depth_A`` (depth of
        the truth's slabs); all Angstrom.
    """
    d0 = float(truth.probe["defocus_A"])
    pot = np.asarray(truth.potential_VA, dtype=np.float64)
    if truth.scan_positions_A is not None:
        p = np.asarray(truth.scan_positions_A, dtype=np.float64).reshape(-1, 2)
        lo = np.floor((p.min(axis=0) - np.asarray(truth.origin_A)) / truth.sampling_A).astype(int)
        hi = np.ceil((p.max(axis=0) - np.asarray(truth.origin_A)) / truth.sampling_A).astype(int) + 1
        pot = pot[:, max(lo[0], 0):hi[0], max(lo[1], 0):hi[1]]
    v = np.clip(pot.mean(axis=(1, 2)), 0.0, None)
    edges = np.asarray(truth.slice_edges_A, dtype=np.float64)
    z_mid = 0.5 * (edges[1:] + edges[:-1])
    if np.sum(v) > 0:
        zc = float(np.sum(v * z_mid) / np.sum(v))
        dz = d0 - z_mid
        d_par = float(np.sum(v * dz**3) / np.sum(v * dz**2)) if np.sum(v * dz**2) > 0 else d0 - zc
    else:
        zc, d_par = 0.0, d0
    return dict(defocus_entrance_A=d0, defocus_first_slab_A=d0 - 0.5 * float(edges[1] - edges[0]),
                centroid_depth_A=zc, defocus_centroid_A=d0 - zc, defocus_parallax_A=d_par,
                sample_depth_A=float(edges[-1]))
