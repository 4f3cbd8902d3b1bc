"""Atomic model of a SrYbF5@CaF2 core-shell particle on amorphous carbon, viewed along [001].

Structure
---------
Both phases are built as the fluorite structure (Fm-3m): cations on the fcc sites, fluorine on
the eight tetrahedral sites ``(1/4, 1/4, 1/4) + ...`` of each cubic cell, cube axes along x, y, z.

* **Shell**: CaF2, a = 5.46 A.
* **Core**: alpha-SrYbF5 approximated as fluorite with a = 5.70 A and Sr/Yb drawn at random
  (50/50) on the cation sites. The approximation leaves out the 25 % excess fluorine of SrYbF5
  (5 F per 2 cations instead of 4, which sits on interstitial sites), the local relaxations around
  the two cation sizes, and the 1 % Tm dopant.
* **Support**: amorphous carbon on the entrance side (z from 0 to ``carbon_thickness_A``),
  atoms on a randomly jittered cubic grid at the configured density.

Deformation (reference lattice: CaF2, a = 5.46 A, cube axes along x, y, z)
-----------------------------------------------------------------------------
Every atom is placed at ``x = X + u(X)``, with ``X`` a site of the reference lattice (anchored at
the core centre ``c``) and ``u`` the sum of analytic displacement fields:

1. **Misfit** ``eps = a_core / a_shell - 1`` (4.40 %). Inside the core (``|X - c| < R0``,
   ``R0 = core_radius_A / (1 + eps)``) ``u = eps (X - c)``: the core keeps its own lattice
   parameter. Outside, ``u = eps R0^3 (X - c) / |X - c|^3``, the compatible (divergence-free)
   radial field that matches the core boundary and decays as 1/r^2 into the shell. This is the
   Eshelby-type inclusion field without the free-surface image term and without elastic
   compression of the core (core and shell are elastically the same medium).
2. **Twist** (pristine): in-plane rotation about the particle's axis by
   ``theta(z) = twist_top_deg * (z_bottom - z) / thickness`` (0 at the bottom, full at the top).
3. **Local tilt** (pristine): ``u_xy = tau e_k g_k(x, y) Q_k(z)`` for two Gaussian patches ``g_k``;
   the lattice columns lean by ``tau * g_k * dQ_k/dz``, with ``dQ_1/dz`` a sigmoid that is 1 in the
   upper half and ``dQ_2/dz`` 1 in the lower half: the off-zone region moves with depth.
4. **Edge dislocations** (cracked): line along z, in-plane Burgers vector ``b``, isotropic field
   (Hirth & Lothe, eq. 3-45); the branch cut runs along +-b (a slip cut, so the lattice is perfect
   across it) on the side away from the core centre; the single-valued part of the field is
   regularised over a 1 A core; lines that end inside the particle fade out over ~3 A.
5. **Crack** (cracked): about the crack tip ``P``, material at polar angle ``psi`` (from the crack
   direction) is rotated by ``omega(psi) = sign(psi) alpha(z)/2 (1 - |psi|/pi)^2``: the two faces
   open by ``alpha(z)`` (larger at the top) and the angular gradient of ``omega`` compresses the
   material near the break (azimuthal strain ``-alpha/pi`` at the faces). A slab is removed along
   the crack plane beyond the tip, ``crack_gap_A`` wide at the top and a quarter of that at the
   bottom.

True strain
-----------
``G_ij = d u_i / d X_j`` (in-plane i, j) is the lattice distortion relative to the reference, so a
measurement that compares local lattice vectors with the CaF2 reference (``A_local = (I + G) A_ref``)
sees ``exx = G_xx``, ``eyy = G_yy``, ``exy = (G_xy + G_yx) / 2``, ``rotation = (G_yx - G_xy) / 2``
(radians, counter-clockwise from +x towards +y), ``dilation = exx + eyy``. The core therefore has
``exx = eyy = 4.40 %`` and ``dilation = 8.79 %`` (a measurement of ``I - (I + G)^-1`` instead
would report 4.21 %).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .presets import SimulationParameters

#: atomic numbers
Z_C, Z_F, Z_CA, Z_SR, Z_YB = 6, 9, 20, 38, 70
REGION_CARBON, REGION_SHELL, REGION_CORE = 0, 1, 2

_FCC = np.array([[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
_TET = np.array([[x, y, z] for x in (0.25, 0.75) for y in (0.25, 0.75) for z in (0.25, 0.75)])
_FD_STEP_A = 1e-4
_DISLOCATION_CORE_A = 1.0
_DISLOCATION_FADE_A = 1.5
_TILT_FADE_A = 5.0


@dataclass
class AtomicModel:
    """Atoms of one frozen configuration.

    Attributes
    ----------
    positions_A : ndarray (N, 3)
        x, y (scan frame) and z (depth from the entrance surface), Angstrom.
    Z : ndarray (N,)
        Atomic numbers.
    region : ndarray (N,), int8
        0 carbon, 1 shell, 2 core.
    """

    positions_A: np.ndarray
    Z: np.ndarray
    region: np.ndarray

    def __len__(self) -> int:
        return len(self.Z)


def _sigmoid(t):
    return 0.5 * (1 + np.tanh(0.5 * t))


def _softplus(t):
    return np.logaddexp(0.0, t)


class Deformation:
    """The analytic displacement field of a sample (see the module doc).

    Parameters
    ----------
    params : SimulationParameters
    """

    def __init__(self, params: SimulationParameters):
        p = params
        self.p = p
        cx, cy, cz = p.particle_center_A
        self.center = np.array([cx, cy, cz])
        self.core_center = self.center + np.asarray(p.core_offset_A, dtype=float)
        self.eps = p.core_lattice_A / p.shell_lattice_A - 1.0
        self.R0 = p.core_radius_A / (1.0 + self.eps)
        self.z_top = p.carbon_thickness_A
        self.z_bottom = p.carbon_thickness_A + p.particle_thickness_A
        self.nu = p.poisson_ratio
        # tilt patches: upper half in the (+x, +y) corner leaning along +x, lower half opposite along +y
        r = p.particle_radius_A
        self.tilt_patches = [
            (self.center[:2] + 0.45 * r * np.array([1.0, 1.0]), np.array([1.0, 0.0]), "top"),
            (self.center[:2] + 0.45 * r * np.array([-1.0, -1.0]), np.array([0.0, 1.0]), "bottom"),
        ]
        self.dislocations = []
        for (x, y, bx, by, z0, z1) in p.dislocations:
            pos = self.center[:2] + np.array([x, y])
            # the cut runs along +-b (a slip cut: the two faces slide by a lattice vector, no
            # material is added or removed), on the side pointing away from the core centre
            bvec = np.array([bx, by], float)
            out = pos - self.core_center[:2]
            sgn = 1.0 if bvec @ out >= 0 else -1.0
            phi_cut = np.arctan2(sgn * bvec[1], sgn * bvec[0])
            self.dislocations.append(dict(pos=pos, b=np.array([bx, by], float), z0=self.z_top + z0,
                                          z1=self.z_top + z1, phi_cut=phi_cut))
        if p.crack_direction_deg is not None:
            phi = np.deg2rad(p.crack_direction_deg)
            self.crack_d = np.array([np.cos(phi), np.sin(phi)])
            self.crack_n = np.array([-np.sin(phi), np.cos(phi)])
            self.crack_tip = self.center[:2] + p.crack_tip_A * self.crack_d
        else:
            self.crack_d = None

    # -- depth profiles ----------------------------------------------------------------------
    def depth_fraction_from_bottom(self, z):
        """0 at the particle bottom, 1 at its top (clipped)."""
        return np.clip((self.z_bottom - z) / self.p.particle_thickness_A, 0.0, 1.0)

    def twist_rad(self, z):
        return np.deg2rad(self.p.twist_top_deg) * self.depth_fraction_from_bottom(z)

    def crack_opening_rad(self, z):
        p = self.p
        f = self.depth_fraction_from_bottom(z)
        return np.deg2rad(p.crack_opening_bottom_deg + (p.crack_opening_top_deg - p.crack_opening_bottom_deg) * f)

    def dislocation_weight(self, d, z):
        """1 where the dislocation line exists, fading over ~3 A where it ends inside."""
        w = np.ones_like(z, dtype=float)
        if d["z0"] > self.z_top + 1e-9:
            w = w * _sigmoid((z - d["z0"]) / _DISLOCATION_FADE_A)
        if d["z1"] < self.z_bottom - 1e-9:
            w = w * _sigmoid((d["z1"] - z) / _DISLOCATION_FADE_A)
        return w

    # -- displacement fields -----------------------------------------------------------------
    def _smooth_displacement(self, X):
        """Sum of all fields except the multivalued angle term of the dislocations (N, 3)."""
        p = self.p
        u = np.zeros_like(X)
        # 1. misfit
        Y = X - self.core_center
        rho = np.sqrt(np.sum(Y**2, axis=1))
        inside = rho < self.R0
        fac = np.where(inside, self.eps, self.eps * self.R0**3 / np.maximum(rho, 1e-9) ** 3)
        u += fac[:, None] * Y
        z = X[:, 2]
        # 2. twist
        if p.twist_top_deg:
            th = self.twist_rad(z)
            dx = X[:, 0] - self.center[0]
            dy = X[:, 1] - self.center[1]
            c, s = np.cos(th), np.sin(th)
            u[:, 0] += (c - 1) * dx - s * dy
            u[:, 1] += s * dx + (c - 1) * dy
        # 3. local tilt
        if p.tilt_mrad:
            tau = p.tilt_mrad * 1e-3
            zm = 0.5 * (self.z_top + self.z_bottom)
            w = _TILT_FADE_A
            for centre, e, half in self.tilt_patches:
                g = np.exp(-((X[:, 0] - centre[0]) ** 2 + (X[:, 1] - centre[1]) ** 2) / (2 * p.tilt_patch_radius_A**2))
                if half == "top":
                    Q = w * (_softplus(0.0) - _softplus((zm - z) / w))
                else:
                    Q = w * (_softplus((z - zm) / w) - _softplus(0.0))
                u[:, 0] += tau * e[0] * g * Q
                u[:, 1] += tau * e[1] * g * Q
        # 4. dislocations: single-valued part
        for d in self.dislocations:
            ux, uy = self._dislocation_periodic(d, X)
            wz = self.dislocation_weight(d, z)
            u[:, 0] += wz * ux
            u[:, 1] += wz * uy
        # 5. crack
        if self.crack_d is not None:
            Yc = X[:, :2] - self.crack_tip
            psi = np.arctan2(Yc @ self.crack_n, Yc @ self.crack_d)
            alpha = self.crack_opening_rad(z)
            om = np.sign(psi) * alpha / 2 * (1 - np.abs(psi) / np.pi) ** 2
            c, s = np.cos(om), np.sin(om)
            u[:, 0] += (c - 1) * Yc[:, 0] - s * Yc[:, 1]
            u[:, 1] += s * Yc[:, 0] + (c - 1) * Yc[:, 1]
        return u

    def _dislocation_local(self, d, X):
        b = d["b"]
        bn = np.linalg.norm(b)
        e1 = b / bn
        e2 = np.array([-e1[1], e1[0]])
        R = X[:, :2] - d["pos"]
        x = R @ e1
        y = R @ e2
        r2 = x**2 + y**2 + _DISLOCATION_CORE_A**2
        return bn, e1, e2, x, y, r2

    def _dislocation_periodic(self, d, X):
        """Single-valued part of the edge-dislocation field (Hirth & Lothe 3-45), global x, y."""
        nu = self.nu
        bn, e1, e2, x, y, r2 = self._dislocation_local(d, X)
        ux = bn / (2 * np.pi) * (x * y / (2 * (1 - nu) * r2))
        uy = -bn / (2 * np.pi) * ((1 - 2 * nu) / (4 * (1 - nu)) * np.log(r2) + (x**2 - y**2) / (4 * (1 - nu) * r2))
        return ux * e1[0] + uy * e2[0], ux * e1[1] + uy * e2[1]

    def _dislocation_angle(self, d, X):
        """Multivalued part ``b/(2 pi) theta`` with the cut along ``phi_cut`` (global x, y)."""
        R = X[:, :2] - d["pos"]
        psi = np.arctan2(R[:, 1], R[:, 0])
        th = np.mod(psi - d["phi_cut"], 2 * np.pi) - np.pi  # jumps by 2 pi where psi == phi_cut
        ux = d["b"][0] / (2 * np.pi) * th
        uy = d["b"][1] / (2 * np.pi) * th
        wz = self.dislocation_weight(d, X[:, 2])
        return wz * ux, wz * uy

    def displacement(self, X) -> np.ndarray:
        """Total displacement ``u(X)`` (N, 3), Angstrom, at reference positions ``X`` (N, 3)."""
        X = np.atleast_2d(np.asarray(X, dtype=np.float64))
        u = self._smooth_displacement(X)
        for d in self.dislocations:
            ux, uy = self._dislocation_angle(d, X)
            u[:, 0] += ux
            u[:, 1] += uy
        return u

    def gradient(self, X) -> np.ndarray:
        """In-plane distortion ``G[n, i, j] = d u_i / d X_j`` (i, j in x, y) at ``X`` (N, 3).

        The smooth fields are differentiated by central differences (step 1e-4 A, error ~1e-8);
        the angle term of each dislocation analytically (``grad theta = (-y, x) / r^2``, exact, as
        the atoms carry the exact angle; the strain therefore diverges as 1/r at a dislocation
        line, while the single-valued part of its field is regularised over 1 A).
        """
        X = np.atleast_2d(np.asarray(X, dtype=np.float64))
        G = np.zeros((len(X), 2, 2))
        h = _FD_STEP_A
        for j in range(2):
            Xp = X.copy()
            Xm = X.copy()
            Xp[:, j] += h
            Xm[:, j] -= h
            G[:, :, j] = (self._smooth_displacement(Xp)[:, :2] - self._smooth_displacement(Xm)[:, :2]) / (2 * h)
        for d in self.dislocations:
            R = X[:, :2] - d["pos"]
            r2 = np.maximum(np.sum(R**2, axis=1), 1e-4)  # exact: the atoms carry the exact angle term
            gth = np.stack([-R[:, 1] / r2, R[:, 0] / r2], axis=1)  # d theta / d (x, y)
            wz = self.dislocation_weight(d, X[:, 2])
            for i in range(2):
                G[:, i, :] += (wz * d["b"][i] / (2 * np.pi))[:, None] * gth
        return G

    def reference_position(self, x, iterations: int = 3) -> np.ndarray:
        """Invert ``x = X + u(X)`` by fixed-point iteration (N, 3)."""
        x = np.atleast_2d(np.asarray(x, dtype=np.float64))
        X = x.copy()
        for _ in range(iterations):
            X = x - self.displacement(X)
        return X

    # -- geometry ---------------------------------------------------------------------------
    def inside_particle(self, x) -> np.ndarray:
        """True where current positions ``x`` (N, 3) lie inside the particle's outer shape."""
        p = self.p
        q = p.particle_shape_exponent
        d = np.abs(x - self.center)
        return ((d[:, 0] / p.particle_radius_A) ** q + (d[:, 1] / p.particle_radius_A) ** q
                + (d[:, 2] / (p.particle_thickness_A / 2)) ** q) <= 1.0

    def crack_gap_A(self, z):
        """Width of the slab removed along the crack plane: ``crack_gap_A`` at the particle's top,
        a quarter of it at the bottom (linear in between)."""
        return self.p.crack_gap_A * (0.25 + 0.75 * self.depth_fraction_from_bottom(z))

    def in_crack_reference(self, X) -> np.ndarray:
        """True for reference positions in the slab removed along the crack plane."""
        if self.crack_d is None:
            return np.zeros(len(X), dtype=bool)
        Yc = X[:, :2] - self.crack_tip
        return (Yc @ self.crack_d > 0) & (np.abs(Yc @ self.crack_n) < self.crack_gap_A(X[:, 2]) / 2)

    def in_crack_current(self, x) -> np.ndarray:
        """True for current positions inside the opened crack (wedge of angle alpha(z) plus the
        removed slab), whether or not they are inside the particle."""
        if self.crack_d is None:
            return np.zeros(len(x), dtype=bool)
        Yc = x[:, :2] - self.crack_tip  # the tip itself does not move under the crack's rotation
        along = Yc @ self.crack_d
        r = np.sqrt(np.sum(Yc**2, axis=1))
        psi = np.arctan2(Yc @ self.crack_n, along)
        half = self.crack_opening_rad(x[:, 2]) / 2 + np.arcsin(np.clip(self.crack_gap_A(x[:, 2]) / 2 / np.maximum(r, 1e-9), 0, 1))
        return (along > 0) & (np.abs(psi) < half)

    def in_core_reference(self, X) -> np.ndarray:
        return np.sqrt(np.sum((X - self.core_center) ** 2, axis=1)) < self.R0


def _fluorite_sites(lo, hi, origin, a):
    """Reference fluorite sites with a cube corner at ``origin`` inside the box [lo, hi] (3-vectors).

    Returns positions (N, 3) and a boolean ``is_cation`` (N,).
    """
    n0 = np.floor((lo - origin) / a).astype(int) - 1
    n1 = np.ceil((hi - origin) / a).astype(int) + 1
    ii, jj, kk = np.meshgrid(np.arange(n0[0], n1[0]), np.arange(n0[1], n1[1]), np.arange(n0[2], n1[2]), indexing="ij")
    cells = np.stack([ii.ravel(), jj.ravel(), kk.ravel()], axis=1).astype(float)
    basis = np.concatenate([_FCC, _TET])
    pos = (cells[:, None, :] + basis[None, :, :]).reshape(-1, 3) * a + origin
    is_cat = np.tile(np.r_[np.ones(4, bool), np.zeros(8, bool)], len(cells))
    keep = np.all((pos >= lo) & (pos <= hi), axis=1)
    return pos[keep], is_cat[keep]


def carbon_atoms(rng, x_range_A, y_range_A, z_range_A, density_g_cm3):
    """Amorphous carbon: a cubic grid at the density's spacing with uniform jitter of +-30 %."""
    n = density_g_cm3 / 12.011 * 0.60221408  # atoms per A^3
    s = n ** (-1 / 3)
    xs = np.arange(x_range_A[0], x_range_A[1], s)
    ys = np.arange(y_range_A[0], y_range_A[1], s)
    zs = np.arange(z_range_A[0] + s / 2, z_range_A[1], s)
    if len(zs) == 0:
        return np.zeros((0, 3))
    g = np.stack(np.meshgrid(xs, ys, zs, indexing="ij"), axis=-1).reshape(-1, 3)
    g = g + rng.uniform(-0.3 * s, 0.3 * s, size=g.shape)
    g[:, 2] = np.clip(g[:, 2], z_range_A[0], np.nextafter(z_range_A[1], -np.inf))
    return g


def build_model(params: SimulationParameters, rng: np.random.Generator | None = None,
                lateral_range_A: tuple[tuple[float, float], tuple[float, float]] | None = None) -> AtomicModel:
    """Build the atoms of a sample.

    Parameters
    ----------
    params : SimulationParameters
    rng : numpy Generator, optional
        Source of randomness (default: ``default_rng(params.seed)``).
    lateral_range_A : ((x0, x1), (y0, y1)), optional
        Lateral extent of the carbon support, Angstrom (default: the particle's box plus 10 A).

    Returns
    -------
    AtomicModel
    """
    params.validate()
    rng = np.random.default_rng(params.seed) if rng is None else rng
    deform = Deformation(params)
    p = params
    c = deform.center
    half = np.array([p.particle_radius_A, p.particle_radius_A, p.particle_thickness_A / 2]) + 2.0
    X, is_cat = _fluorite_sites(c - half, c + half, deform.core_center, p.shell_lattice_A)
    keep = ~deform.in_crack_reference(X)
    X, is_cat = X[keep], is_cat[keep]
    x = X + deform.displacement(X)
    keep = deform.inside_particle(x)
    X, x, is_cat = X[keep], x[keep], is_cat[keep]
    core = deform.in_core_reference(X)
    Z = np.where(is_cat, Z_CA, Z_F)
    core_cat = core & is_cat
    Z[core_cat] = np.where(rng.random(core_cat.sum()) < 0.5, Z_SR, Z_YB)
    region = np.where(core, REGION_CORE, REGION_SHELL).astype(np.int8)
    if p.thermal_rms_A > 0:
        x = x + rng.normal(0.0, p.thermal_rms_A, size=x.shape)
    if p.carbon_thickness_A > 0:
        if lateral_range_A is None:
            lateral_range_A = ((c[0] - half[0] - 10, c[0] + half[0] + 10), (c[1] - half[1] - 10, c[1] + half[1] + 10))
        cpos = carbon_atoms(rng, lateral_range_A[0], lateral_range_A[1], (0.0, p.carbon_thickness_A),
                            p.carbon_density_g_cm3)
        x = np.concatenate([x, cpos])
        Z = np.concatenate([Z, np.full(len(cpos), Z_C)])
        region = np.concatenate([region, np.full(len(cpos), REGION_CARBON, dtype=np.int8)])
    return AtomicModel(positions_A=x, Z=Z.astype(np.int64), region=region)


def fluorite_crystal(a_A: float, cells: tuple[int, int, int], Z_cation: int = Z_CA, Z_anion: int = Z_F):
    """A perfect fluorite crystal of ``cells`` unit cells (for tests and cross-checks).

    Returns
    -------
    positions_A : ndarray (N, 3)
        Atom positions in ``[0, cells * a)``, Angstrom.
    Z : ndarray (N,)
    """
    hi = np.array(cells, float) * a_A - 1e-6
    pos, is_cat = _fluorite_sites(np.zeros(3), hi, np.zeros(3), a_A)
    return pos, np.where(is_cat, Z_cation, Z_anion).astype(np.int64)
