"""Analytic test volumes: fluorite [001] column images of a core-shell particle with known strain.

Used by the tests of :mod:`msptycho.lattice` (the method's own error, apart from the simulator's
and the reconstruction's). Each slice is a sum of Gaussian atomic columns, placed at the fluorite
[001] cation and anion positions of a reference CaF2 lattice and moved by an analytic displacement
field evaluated at the slice's mid-depth:

* a relaxed core: inside a sphere of radius ``core_radius_A`` the lattice is dilated by
  ``core_misfit`` (each in-plane strain component), outside the sphere the 3-D misfit field
  ``u = misfit * R^3 d / |d|^3`` decays (continuous at the core surface);
* edge dislocations along z (line direction +z) with in-plane Burgers vector ``b``, isotropic
  field (Hirth & Lothe) ``u_x' = b/(2 pi) [theta + sin(2 theta) / (4 (1 - nu))]``,
  ``u_y' = -b/(2 pi) [(1 - 2 nu) / (4 (1 - nu)) ln r^2 + cos(2 theta) / (4 (1 - nu))]`` in the
  frame whose ``x'`` axis is along ``b``; a counter-clockwise circuit gives ``oint du = b``;
* a rigid in-plane rotation about the particle axis that changes linearly with depth (twist),
  positive counter-clockwise (from +x towards +y).

The true deformation gradient ``F = R(theta) (I + grad u)`` is evaluated analytically on the pixel
grid, and the truth strain uses the same definitions as :func:`msptycho.lattice.gpa.strain_from_F`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .gpa import strain_from_F


@dataclass
class Dislocation:
    """A straight edge dislocation along z through slices ``first_slice..last_slice`` (inclusive).

    ``x_A, y_A`` are reference-lattice coordinates relative to the particle centre (A);
    ``b_A`` is the in-plane Burgers vector (A)."""

    x_A: float
    y_A: float
    b_A: tuple[float, float]
    first_slice: int = 0
    last_slice: int = 10**9


@dataclass
class SyntheticParticle:
    """A synthetic volume and its truth (all maps ``(nz, nx, ny)``, positions in A).

    Attributes
    ----------
    volume : float32 projected potential per slice, V*A
    sampling_A, origin_A, slice_thickness_A : the grid
    exx, eyy, exy, dilation, rotation_deg : truth strain (fraction) and rotation (degrees, CCW > 0)
    particle_mask, core_mask : bool truth masks
    core_centroid : (x_A, y_A, slice index)
    dislocations : dict of arrays ``slice``, ``x_A``, ``y_A``, ``bx_A``, ``by_A`` (one row per slice
        a dislocation crosses, at its deformed position)
    a_A : reference lattice parameter, A
    """

    volume: np.ndarray
    sampling_A: float
    origin_A: tuple[float, float]
    slice_thickness_A: float
    exx: np.ndarray
    eyy: np.ndarray
    exy: np.ndarray
    dilation: np.ndarray
    rotation_deg: np.ndarray
    particle_mask: np.ndarray
    core_mask: np.ndarray
    core_centroid: tuple[float, float, float]
    dislocations: dict = field(default_factory=dict)
    a_A: float = 5.46


def _rot(t):
    c, s = np.cos(t), np.sin(t)
    return np.array([[c, -s], [s, c]])


def _edge_u(dx, dy, b, nu):
    """Edge-dislocation displacement (ux, uy) for Burgers vector ``b`` (2,) at offsets dx, dy."""
    bm = float(np.hypot(*b))
    beta = np.arctan2(b[1], b[0])
    c, s = np.cos(beta), np.sin(beta)
    xp, yp = c * dx + s * dy, -s * dx + c * dy
    r2 = np.maximum(xp**2 + yp**2, 1e-12)
    th = np.arctan2(yp, xp)
    k = 1.0 / (4.0 * (1.0 - nu))
    ux = bm / (2 * np.pi) * (th + k * 2 * xp * yp / r2)
    uy = -bm / (2 * np.pi) * ((1 - 2 * nu) * k * np.log(r2 / 100.0) + k * (xp**2 - yp**2) / r2)
    return c * ux - s * uy, s * ux + c * uy


def _edge_grad(dx, dy, b, nu):
    """Analytic displacement gradient ``D[i][j] = d u_i / d x_j`` of :func:`_edge_u`."""
    bm = float(np.hypot(*b))
    beta = np.arctan2(b[1], b[0])
    c, s = np.cos(beta), np.sin(beta)
    x, y = c * dx + s * dy, -s * dx + c * dy
    r2 = np.maximum(x**2 + y**2, 1e-12)
    r4 = r2**2
    C = 1.0 / (2.0 * (1.0 - nu))
    f = bm / (2 * np.pi)
    dxx = f * (-y / r2 + C * y * (y**2 - x**2) / r4)
    dxy = f * (x / r2 + C * x * (x**2 - y**2) / r4)
    dyx = -f * ((1 - 2 * nu) * C * x / r2 + 2 * C * x * y**2 / r4)
    dyy = -f * ((1 - 2 * nu) * C * y / r2 - 2 * C * x**2 * y / r4)
    # rotate the tensor back: D = R D' R^T
    Dp = np.array([[dxx, dxy], [dyx, dyy]])
    R = np.array([[c, -s], [s, c]])
    return np.einsum("ik,kl...,jl->ij...", R, Dp, R)


def _core_u(dx, dy, dz, radius, misfit):
    rho = np.sqrt(dx**2 + dy**2 + dz**2)
    inside = rho <= radius
    f = np.where(inside, misfit, misfit * radius**3 / np.maximum(rho, 1e-9) ** 3)
    return f * dx, f * dy


def _core_grad(dx, dy, dz, radius, misfit):
    rho = np.maximum(np.sqrt(dx**2 + dy**2 + dz**2), 1e-9)
    inside = rho <= radius
    k = misfit * radius**3
    d = (dx, dy)
    D = np.empty((2, 2) + np.shape(dx))
    for i in range(2):
        for j in range(2):
            outside = k * ((1.0 if i == j else 0.0) / rho**3 - 3 * d[i] * d[j] / rho**5)
            D[i, j] = np.where(inside, misfit if i == j else 0.0, outside)
    return D


def synthetic_fluorite_particle(*, n_px: int = 400, sampling_A: float = 0.197, nz: int = 16,
                                slice_thickness_A: float = 8.0, a_A: float = 5.46, angle_deg: float = 0.0,
                                radii_A=(30.0, 28.0, 60.0), core_radius_A: float = 17.0,
                                core_center_A=(5.0, -3.0, 20.0), core_misfit: float = 0.044,
                                twist_deg=(-1.0, 1.0), dislocations=(), poisson_ratio: float = 0.3,
                                column_sigma_A: float = 0.4, cation_shell: float = 1.0,
                                cation_core: float = 2.5, anion: float = 0.85, scale_VA3: float = 10.0,
                                noise_fraction: float = 0.0, seed: int = 0) -> SyntheticParticle:
    """Build a synthetic core-shell particle volume ``(nz, n_px, n_px)`` and its truth.

    Geometry: the particle (an ellipsoid of semi-axes ``radii_A`` = (x, y, z), A) is centred in the
    field and in depth; slice ``s`` has mid-depth ``z_s = (s + 1/2) dz - nz dz / 2`` (A, relative
    to the particle centre; z grows with the slice index, along the beam). ``core_center_A`` is
    relative to the particle centre. Column weights: cation columns ``cation_shell`` (Ca) or
    ``cation_core`` (Sr/Yb) and anion columns ``anion`` (two F), times ``scale_VA3``, spread as
    Gaussians of width ``column_sigma_A``. The twist goes linearly from ``twist_deg[0]`` in the first
    slice to ``twist_deg[1]`` in the last. ``noise_fraction`` adds Gaussian noise of that fraction
    of the volume's maximum.
    """
    dx = float(sampling_A)
    L = n_px * dx
    p = np.array([L / 2, L / 2])
    rx, ry, rz = (float(r) for r in radii_A)
    cc = np.asarray(core_center_A, dtype=np.float64)
    h = a_A / 2
    # reference columns (relative to the particle centre), cations then anions
    m = int(np.ceil(max(rx, ry) / h)) + 2
    ii, jj = np.meshgrid(np.arange(-m, m + 1), np.arange(-m, m + 1), indexing="ij")
    base = np.stack([ii.ravel() * h, jj.ravel() * h], axis=1)
    ref = np.concatenate([base, base + h / 2]) @ _rot(np.deg2rad(angle_deg)).T
    is_cation = np.concatenate([np.ones(len(base), bool), np.zeros(len(base), bool)])

    zs = (np.arange(nz) + 0.5) * slice_thickness_A - nz * slice_thickness_A / 2
    tw = np.linspace(twist_deg[0], twist_deg[1], nz) if nz > 1 else np.array([twist_deg[0]])
    disl = [d if isinstance(d, Dislocation) else Dislocation(**d) for d in dislocations]

    # pixel grid (deformed positions, relative to the particle centre)
    xg = dx * np.arange(n_px)[:, None] - p[0] + 0 * np.arange(n_px)[None, :]
    yg = dx * np.arange(n_px)[None, :] - p[1] + 0 * np.arange(n_px)[:, None]

    rs = int(np.ceil(4 * column_sigma_A / dx))
    off = np.arange(-rs, rs + 1)
    vol = np.zeros((nz, n_px, n_px))
    shape = (nz, n_px, n_px)
    exx, eyy, exy, rot = (np.zeros(shape) for _ in range(4))
    pmask = np.zeros(shape, bool)
    cmask = np.zeros(shape, bool)
    rows = {"slice": [], "x_A": [], "y_A": [], "bx_A": [], "by_A": []}

    def u_total(X, Y, z, active):
        ux, uy = _core_u(X - cc[0], Y - cc[1], z - cc[2], core_radius_A, core_misfit)
        for d in active:
            ex, ey = _edge_u(X - d.x_A, Y - d.y_A, d.b_A, poisson_ratio)
            ux, uy = ux + ex, uy + ey
        return ux, uy

    for s in range(nz):
        z = zs[s]
        R = _rot(np.deg2rad(tw[s]))
        active = [d for d in disl if d.first_slice <= s <= d.last_slice]
        # columns of this slice
        X, Y = ref[:, 0], ref[:, 1]
        inside = (X / rx) ** 2 + (Y / ry) ** 2 + (z / rz) ** 2 <= 1.0
        in_core = (X - cc[0]) ** 2 + (Y - cc[1]) ** 2 + (z - cc[2]) ** 2 <= core_radius_A**2
        ux, uy = u_total(X, Y, z, active)
        pos = (np.stack([X + ux, Y + uy], axis=1) @ R.T) + p
        w = np.where(is_cation, np.where(in_core, cation_core, cation_shell), anion) * scale_VA3
        pos, w = pos[inside], w[inside]
        # Gaussian stamps
        ci = np.rint(pos[:, 0] / dx).astype(int)
        cj = np.rint(pos[:, 1] / dx).astype(int)
        gi = ci[:, None, None] + off[None, :, None]
        gj = cj[:, None, None] + off[None, None, :]
        val = np.exp(-((gi * dx - pos[:, 0, None, None]) ** 2 + (gj * dx - pos[:, 1, None, None]) ** 2)
                     / (2 * column_sigma_A**2)) * (w / (2 * np.pi * column_sigma_A**2))[:, None, None]
        gi, gj = np.broadcast_arrays(gi, gj)
        ok = (gi >= 0) & (gi < n_px) & (gj >= 0) & (gj < n_px)
        vol[s] = np.bincount((gi[ok] * n_px + gj[ok]), weights=val[ok], minlength=n_px * n_px).reshape(n_px, n_px)
        # truth on the pixel grid: Lagrangian coordinates by fixed-point iteration
        Xr = R.T[0, 0] * xg + R.T[0, 1] * yg
        Yr = R.T[1, 0] * xg + R.T[1, 1] * yg
        Xl, Yl = Xr.copy(), Yr.copy()
        for _ in range(3):
            vx, vy = u_total(Xl, Yl, z, active)
            Xl, Yl = Xr - vx, Yr - vy
        D = _core_grad(Xl - cc[0], Yl - cc[1], z - cc[2], core_radius_A, core_misfit)
        for d in active:
            D = D + _edge_grad(Xl - d.x_A, Yl - d.y_A, d.b_A, poisson_ratio)
        F = np.einsum("ik,kj...->ij...", R, D + np.eye(2)[:, :, None, None])
        e = strain_from_F(F)
        exx[s], eyy[s], exy[s], rot[s] = e["exx"], e["eyy"], e["exy"], e["rotation_deg"]
        pmask[s] = (Xl / rx) ** 2 + (Yl / ry) ** 2 + (z / rz) ** 2 <= 1.0
        cmask[s] = pmask[s] & ((Xl - cc[0]) ** 2 + (Yl - cc[1]) ** 2 + (z - cc[2]) ** 2 <= core_radius_A**2)
        for d in active:
            if (d.x_A / rx) ** 2 + (d.y_A / ry) ** 2 + (z / rz) ** 2 > 1.0:
                continue
            cu = u_total(d.x_A, d.y_A, z, [o for o in active if o is not d])
            q = R @ np.array([d.x_A + cu[0], d.y_A + cu[1]]) + p
            rows["slice"].append(s)
            rows["x_A"].append(q[0])
            rows["y_A"].append(q[1])
            bb = R @ np.asarray(d.b_A, dtype=np.float64)
            rows["bx_A"].append(bb[0])
            rows["by_A"].append(bb[1])
    if noise_fraction > 0:
        vol += np.random.default_rng(seed).normal(0.0, noise_fraction * vol.max(), vol.shape)
    idx = np.argwhere(cmask)
    if len(idx):
        cen = (float(idx[:, 1].mean() * dx), float(idx[:, 2].mean() * dx), float(idx[:, 0].mean()))
    else:
        cen = (np.nan, np.nan, np.nan)
    nanout = lambda a: np.where(pmask, a, np.nan).astype(np.float32)  # noqa: E731
    return SyntheticParticle(volume=vol.astype(np.float32), sampling_A=dx, origin_A=(0.0, 0.0),
                             slice_thickness_A=float(slice_thickness_A), exx=nanout(exx), eyy=nanout(eyy),
                             exy=nanout(exy), dilation=nanout(exx + eyy), rotation_deg=nanout(rot),
                             particle_mask=pmask, core_mask=cmask, core_centroid=cen,
                             dislocations={k: np.asarray(v) for k, v in rows.items()}, a_A=a_A)
