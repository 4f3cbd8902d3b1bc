"""Projected atomic potentials from the Kirkland (2010) parametrisation.

The electron scattering factor of a neutral atom is fitted as (Kirkland 2010, eq. C.15)

    f_e(q) = sum_i a_i / (q^2 + b_i) + c_i exp(-d_i q^2)        (q in 1/A, f_e in A)

which gives the projected potential in closed form (eq. C.19)

    v_z(r) = 4 pi^2 a0 e sum_i a_i K0(2 pi r sqrt(b_i)) + 2 pi^2 a0 e sum_i (c_i / d_i) exp(-pi^2 r^2 / d_i)

in V*A, with ``a0 e = 0.529177 A * 14.399645 V A``. Its integral over the plane is
``2 pi a0 e f_e(0)`` (:func:`integrated_projected_potential`), the number the tests check the
sampled potential against. The coefficients ship as ``msptycho/data/kirkland2010.json`` with their
citation.

Atoms are deposited on a grid by :func:`project_atoms`: the radial profile is tabulated once per
element, cut off where less than 0.1 % of the integral lies outside (at most 5 A) with a short
cosine taper, and the logarithmic singularity of ``K0`` at the nucleus is sampled at
``r >= 0.34 * sampling`` (the radius at which ``-ln r`` equals its mean over a pixel-sized disk).
"""

from __future__ import annotations

import functools
import json
from importlib import resources

import numba
import numpy as np
from scipy.special import k0, k1

#: Bohr radius (A) times e/(4 pi eps0) (V*A), as used by Kirkland
A0_E_VA2 = 0.52917721 * 14.3996454
#: fraction of the integrated projected potential allowed outside the cutoff radius
TAIL_FRACTION = 1e-3
MAX_CUTOFF_A = 5.0
TAPER_A = 0.3
TABLE_DR_A = 0.002


@functools.lru_cache(maxsize=1)
def kirkland_table() -> dict:
    """The Kirkland (2010) coefficient table: ``{symbol: {"Z", "a", "b", "c", "d"}}`` plus
    ``"_citation"``."""
    with resources.files("msptycho.data").joinpath("kirkland2010.json").open() as f:
        raw = json.load(f)
    table = dict(raw["elements"])
    table["_citation"] = raw["_citation"]
    return table


@functools.lru_cache(maxsize=None)
def coefficients(Z: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Kirkland coefficients ``(a, b, c, d)`` of element ``Z`` (arrays of 3)."""
    Z = int(Z)
    for sym, p in kirkland_table().items():
        if sym != "_citation" and p["Z"] == Z:
            return tuple(np.asarray(p[k], dtype=np.float64) for k in "abcd")
    raise ValueError(f"atomic number Z={Z} is not in the Kirkland table (1..103 expected).")


def scattering_factor(Z: int, q_inv_A) -> np.ndarray:
    """Electron scattering factor ``f_e(q)`` in Angstrom, ``q`` in 1/A (``q = 2 sin(theta)/lambda``)."""
    a, b, c, d = coefficients(Z)
    q2 = np.asarray(q_inv_A, dtype=np.float64)[..., None] ** 2
    return np.sum(a / (q2 + b) + c * np.exp(-d * q2), axis=-1)


def projected_potential(Z: int, r_A) -> np.ndarray:
    """Projected potential ``v_z(r)`` of one atom, V*A, at radius ``r_A`` (A, > 0)."""
    a, b, c, d = coefficients(Z)
    r = np.asarray(r_A, dtype=np.float64)[..., None]
    v = (4 * np.pi**2 * A0_E_VA2 * a * k0(2 * np.pi * r * np.sqrt(b))
         + 2 * np.pi**2 * A0_E_VA2 * (c / d) * np.exp(-np.pi**2 * r**2 / d))
    return np.sum(v, axis=-1)


def integrated_projected_potential(Z: int) -> float:
    """Analytic integral of ``v_z`` over the plane, V*A^3: ``2 pi a0 e f_e(0)``."""
    return float(2 * np.pi * A0_E_VA2 * scattering_factor(Z, 0.0))


def _tail_fraction(Z: int, R: float) -> float:
    """Fraction of the integral of ``v_z`` outside radius ``R`` (closed form)."""
    a, b, c, d = coefficients(Z)
    s = 2 * np.pi * np.sqrt(b)
    # int_R^inf K0(s r) 2 pi r dr = 2 pi R K1(s R) / s ; Gaussian: 2 pi^2 (c/d) * d/pi * exp(-pi^2 R^2/d)
    k_part = 4 * np.pi**2 * A0_E_VA2 * a * 2 * np.pi * R * k1(s * R) / s
    g_part = 2 * np.pi**2 * A0_E_VA2 * (c / d) * (d / np.pi) * np.exp(-np.pi**2 * R**2 / d)
    return float((k_part.sum() + g_part.sum()) / integrated_projected_potential(Z))


@functools.lru_cache(maxsize=None)
def cutoff_radius_A(Z: int) -> float:
    """Radius beyond which less than :data:`TAIL_FRACTION` of the integral lies (<= 5 A)."""
    for R in np.arange(1.0, MAX_CUTOFF_A + 1e-9, 0.1):
        if _tail_fraction(Z, R) < TAIL_FRACTION:
            return float(R)
    return MAX_CUTOFF_A


@functools.lru_cache(maxsize=None)
def radial_table(Z: int) -> tuple[np.ndarray, float, float]:
    """Tabulated, tapered profile ``v_z(r)`` on ``r = i * TABLE_DR_A``; returns (values, dr, cutoff)."""
    rc = cutoff_radius_A(Z)
    r = np.arange(0.0, rc + TABLE_DR_A, TABLE_DR_A)
    v = projected_potential(Z, np.maximum(r, 1e-4))
    taper = np.clip((rc - r) / TAPER_A, 0.0, 1.0)
    taper = 0.5 - 0.5 * np.cos(np.pi * taper)
    return (v * taper).astype(np.float64), TABLE_DR_A, rc


def element_tables(Zs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stack radial tables of several elements: (tables [n_el, n_r], cutoffs [n_el], dr)."""
    tabs = [radial_table(int(z)) for z in Zs]
    n = max(len(t[0]) for t in tabs)
    out = np.zeros((len(tabs), n))
    for i, t in enumerate(tabs):
        out[i, :len(t[0])] = t[0]
    return out, np.array([t[2] for t in tabs]), TABLE_DR_A


@numba.njit(cache=True)
def _splat(out, px, py, sl, el, tables, cutoffs, dr, sampling, r_min):
    nsl, nx, ny = out.shape
    ntab = tables.shape[1]
    for n in range(px.shape[0]):
        s = sl[n]
        if s < 0 or s >= nsl:
            continue
        e = el[n]
        rc = cutoffs[e]
        rcp = rc / sampling
        x0 = px[n]
        y0 = py[n]
        i0 = max(0, int(np.floor(x0 - rcp)))
        i1 = min(nx - 1, int(np.ceil(x0 + rcp)))
        j0 = max(0, int(np.floor(y0 - rcp)))
        j1 = min(ny - 1, int(np.ceil(y0 + rcp)))
        for i in range(i0, i1 + 1):
            dx = (i - x0) * sampling
            for j in range(j0, j1 + 1):
                dy = (j - y0) * sampling
                r = np.sqrt(dx * dx + dy * dy)
                if r >= rc:
                    continue
                if r < r_min:
                    r = r_min
                f = r / dr
                k = int(f)
                if k + 1 >= ntab:
                    continue
                w = f - k
                out[s, i, j] += (1.0 - w) * tables[e, k] + w * tables[e, k + 1]


def project_atoms(positions_xy_A: np.ndarray, Z: np.ndarray, slice_index: np.ndarray,
                  n_slices: int, shape: tuple[int, int], sampling_A: float,
                  origin_A: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """Sum the projected potentials of atoms into slices of a 2-D grid.

    Parameters
    ----------
    positions_xy_A : ndarray (N, 2)
        Atom positions (x, y), Angstrom.
    Z : ndarray (N,)
        Atomic numbers.
    slice_index : ndarray (N,)
        Slice that each atom belongs to (atoms outside ``0..n_slices-1`` are skipped).
    n_slices : int
        Number of slices.
    shape : (int, int)
        Grid shape (nx, ny); pixel ``[i, j]`` has its centre at ``origin_A + (i, j) * sampling_A``.
    sampling_A : float
        Pixel size, Angstrom.
    origin_A : (float, float)
        Position of pixel [0, 0]'s centre, Angstrom.

    Returns
    -------
    ndarray (n_slices, nx, ny), float32
        Projected potential per slice, V*Angstrom (non-periodic: atoms near an edge are cut).
    """
    positions_xy_A = np.asarray(positions_xy_A, dtype=np.float64)
    Z = np.asarray(Z, dtype=np.int64)
    if positions_xy_A.ndim != 2 or positions_xy_A.shape[1] != 2 or len(Z) != len(positions_xy_A):
        raise ValueError("positions_xy_A must have shape (N, 2) and Z shape (N,).")
    if not sampling_A > 0:
        raise ValueError(f"sampling_A must be positive, got {sampling_A!r}.")
    out = np.zeros((int(n_slices), int(shape[0]), int(shape[1])), dtype=np.float64)
    if len(Z) == 0:
        return out.astype(np.float32)
    uniq, el = np.unique(Z, return_inverse=True)
    tables, cutoffs, dr = element_tables(uniq)
    px = (positions_xy_A[:, 0] - origin_A[0]) / sampling_A
    py = (positions_xy_A[:, 1] - origin_A[1]) / sampling_A
    _splat(out, px, py, np.asarray(slice_index, dtype=np.int64), el.astype(np.int64), tables,
           cutoffs, dr, float(sampling_A), 0.34 * float(sampling_A))
    return out.astype(np.float32)
