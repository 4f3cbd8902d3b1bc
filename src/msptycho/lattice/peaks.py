"""Reciprocal-lattice peaks of a potential volume and their fluorite [001] indexing.

Fluorite (CaF2, SrYbF5-like) viewed along [001] projects onto a square array of atomic columns
with period ``a/2``: cation columns at ``(i, j) a/2`` and anion columns (two F per cation) at
``(i + 1/2, j + 1/2) a/2``. With Miller indices ``(h, k)`` of the cubic cell, the reflections are
``g = (h, k) / a`` rotated by the lattice orientation, with ``h, k`` both even:

* ``{200}``: ``|g| = 2/a`` (``d = a/2``, 2.73-2.85 A); structure factor ``4 f_cation - 8 f_F``,
  nearly cancelling in CaF2 and strong where the heavy Sr/Yb cations dominate;
* ``{220}``: ``|g| = 2 sqrt(2)/a`` (``d = a/(2 sqrt 2)``, 1.93-2.02 A); ``4 f_cation + 8 f_F``,
  strong everywhere in the particle.

The orientation ``angle_deg`` is the angle of the cubic ``[100]`` axis (the direction of the
``(2, 0)`` reflection) from the ``+x`` axis (first array axis) towards ``+y``, in ``[-45, 45)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from ..io.datacube import InputError
from ._common import as_sampling, check_g_vectors, check_volume, frequencies

#: Miller indices (h, k) of the two {220} and two {200} reflections the analysis uses
HK_220 = np.array([[2, 2], [-2, 2]], dtype=np.float64)
HK_200 = np.array([[2, 0], [0, 2]], dtype=np.float64)

#: lattice parameter of CaF2 (the shell), A: the default strain reference
A_CAF2_A = 5.46


@dataclass
class Spectrum:
    """Power spectrum of the windowed mean slice.

    Attributes
    ----------
    power : ndarray (nx, ny)
        ``|fft2(window * (mean - <mean>))|^2``, unshifted (numpy order).
    sampling_A : (float, float)
        Real-space pixel size, A.
    """

    power: np.ndarray
    sampling_A: tuple[float, float]
    _background: tuple | None = field(default=None, repr=False)

    def background(self) -> tuple[np.ndarray, np.ndarray]:
        """``(ring index map, median power per ring)``, computed once."""
        if self._background is None:
            self._background = _radial_background(self)
        return self._background

    @property
    def dk_inv_A(self) -> tuple[float, float]:
        """Frequency step along kx and ky, 1/A."""
        return (1.0 / (self.power.shape[0] * self.sampling_A[0]), 1.0 / (self.power.shape[1] * self.sampling_A[1]))


@dataclass
class Peak:
    """One reciprocal-lattice peak: position ``g_inv_A`` (1/A) and peak-to-background power ratio."""

    g_inv_A: np.ndarray
    snr: float

    @property
    def d_A(self) -> float:
        return 1.0 / float(np.hypot(*self.g_inv_A))


@dataclass
class FluoriteLattice:
    """Fluorite [001] indexing of a volume's spectrum.

    Attributes
    ----------
    a_A : float
        Measured (mean) lattice parameter, A.
    angle_deg : float
        Orientation of the cubic [100] axis from +x towards +y, degrees, in [-45, 45).
    g220_inv_A, g200_inv_A : ndarray (2, 2)
        Refined peak positions of the (2, 2), (-2, 2) and (2, 0), (0, 2) reflections, 1/A.
    snr220, snr200 : ndarray (2,)
        Peak-to-background power ratios of those peaks (``{200}`` may be weak: see module doc).
    hk220, hk200 : ndarray (2, 2)
        Their Miller indices.
    """

    a_A: float
    angle_deg: float
    g220_inv_A: np.ndarray
    g200_inv_A: np.ndarray
    snr220: np.ndarray
    snr200: np.ndarray
    hk220: np.ndarray = field(default_factory=lambda: HK_220.copy())
    hk200: np.ndarray = field(default_factory=lambda: HK_200.copy())

    def as_dict(self) -> dict:
        return {"a_A": self.a_A, "angle_deg": self.angle_deg, "g220_inv_A": self.g220_inv_A.tolist(),
                "g200_inv_A": self.g200_inv_A.tolist(), "snr220": self.snr220.tolist(),
                "snr200": self.snr200.tolist()}


def ideal_g(a_A: float, angle_deg: float, hk) -> np.ndarray:
    """Reciprocal vectors (1/A) of a cubic lattice of parameter ``a_A`` whose [100] axis makes
    ``angle_deg`` with +x: ``g = R(angle) (h, k) / a``, shape ``(n, 2)``."""
    hk = np.atleast_2d(np.asarray(hk, dtype=np.float64))
    t = np.deg2rad(angle_deg)
    rot = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    return (hk @ rot.T) / a_A


def fit_square_lattice(g_inv_A, hk) -> tuple[float, float]:
    """Least-squares ``(a_A, angle_deg)`` of a cubic lattice from measured ``g`` (1/A, ``(n, 2)``)
    with Miller indices ``hk`` (``(n, 2)``). ``angle_deg`` is wrapped to [-180, 180)."""
    g = np.atleast_2d(np.asarray(g_inv_A, dtype=np.float64))
    hk = np.atleast_2d(np.asarray(hk, dtype=np.float64))
    # g = [[p, -q], [q, p]] hk with p = cos/a, q = sin/a: linear in (p, q)
    rows = []
    rhs = []
    for (gx, gy), (h, k) in zip(g, hk):
        rows += [[h, -k], [k, h]]
        rhs += [gx, gy]
    (p, q), *_ = np.linalg.lstsq(np.array(rows), np.array(rhs), rcond=None)
    return 1.0 / float(np.hypot(p, q)), float(np.rad2deg(np.arctan2(q, p)))


def mean_spectrum(volume, sampling_A, slices=None) -> Spectrum:
    """Power spectrum of the Hann-windowed mean over ``slices`` (default all) of a volume ``[z, x, y]``."""
    v = check_volume(volume)
    sampling = as_sampling(sampling_A)
    sel = v if slices is None else v[np.asarray(slices)]
    if sel.shape[0] == 0:
        raise InputError("lattice analysis: the slice selection for the mean spectrum is empty.")
    m = sel.mean(axis=0)
    m = m - m.mean()
    w = np.hanning(m.shape[0])[:, None] * np.hanning(m.shape[1])[None, :]
    return Spectrum(power=np.abs(np.fft.fft2(m * w)) ** 2, sampling_A=sampling)


def _radial_background(spec: Spectrum) -> tuple[np.ndarray, np.ndarray]:
    """Median power per ring of width one frequency step: (bin index map, median per bin)."""
    kx, ky = frequencies(spec.power.shape, spec.sampling_A)
    dk = min(spec.dk_inv_A)
    r = np.rint(np.hypot(kx, ky) / dk).astype(np.int64)
    order = np.argsort(r, axis=None)
    rs = r.ravel()[order]
    ps = spec.power.ravel()[order]
    edges = np.flatnonzero(np.diff(rs)) + 1
    starts = np.concatenate([[0], edges])
    stops = np.concatenate([edges, [rs.size]])
    med = np.zeros(rs[-1] + 1)
    for a, b in zip(starts, stops):
        med[rs[a]] = np.median(ps[a:b])
    return r, np.maximum(med, np.finfo(np.float64).tiny)


def measure_peak(spec: Spectrum, g_inv_A, search_px: int = 3) -> Peak:
    """Refine the peak nearest ``g_inv_A``: the maximum of the power within ``search_px`` pixels,
    refined by a parabola through log-power along kx and ky; ``snr`` is its power over the median
    power of its ring."""
    p = spec.power
    nx, ny = p.shape
    dkx, dky = spec.dk_inv_A
    g = np.asarray(g_inv_A, dtype=np.float64)
    i0, j0 = int(np.rint(g[0] / dkx)), int(np.rint(g[1] / dky))
    best, bi, bj = -1.0, i0, j0
    for di in range(-search_px, search_px + 1):
        for dj in range(-search_px, search_px + 1):
            v = p[(i0 + di) % nx, (j0 + dj) % ny]
            if v > best:
                best, bi, bj = v, i0 + di, j0 + dj
    lp = lambda i, j: np.log(max(p[i % nx, j % ny], np.finfo(np.float64).tiny))  # noqa: E731

    def vertex(a, b, c):
        den = a - 2 * b + c
        return 0.0 if den >= 0 else float(np.clip(0.5 * (a - c) / den, -0.5, 0.5))

    fi = bi + vertex(lp(bi - 1, bj), lp(bi, bj), lp(bi + 1, bj))
    fj = bj + vertex(lp(bi, bj - 1), lp(bi, bj), lp(bi, bj + 1))
    rbin, med = spec.background()
    snr = best / med[rbin[bi % nx, bj % ny]]
    return Peak(g_inv_A=np.array([fi * dkx, fj * dky]), snr=float(snr))


def find_peaks(spec: Spectrum, k_min_inv_A: float, k_max_inv_A: float, min_snr: float = 50.0,
               size_px: int = 5) -> list[Peak]:
    """Local maxima of the power spectrum with ``k_min <= |k| <= k_max`` (1/A) whose power exceeds
    ``min_snr`` times the median of their ring, strongest first (both ``+g`` and ``-g`` appear)."""
    kx, ky = frequencies(spec.power.shape, spec.sampling_A)
    kr = np.hypot(kx, ky)
    rbin, med = spec.background()
    ratio = spec.power / med[rbin]
    is_max = ndimage.maximum_filter(spec.power, size=size_px, mode="wrap") == spec.power
    cand = np.argwhere(is_max & (kr >= k_min_inv_A) & (kr <= k_max_inv_A) & (ratio >= min_snr))
    peaks = [measure_peak(spec, (kx[i, 0], ky[0, j]), search_px=1) for i, j in cand]
    return sorted(peaks, key=lambda p: -p.snr)


def find_fluorite_lattice(volume, sampling_A, *, a_range_A=(5.3, 5.9), slices=None,
                          min_snr: float = 50.0, angle_tolerance_deg: float = 8.0) -> FluoriteLattice:
    """Find and index the fluorite [001] lattice in the mean spectrum of a volume.

    The strongest ``{220}`` peak (``|g| = 2 sqrt 2 / a`` for ``a`` in ``a_range_A``) and a second
    ``{220}`` peak at 90 degrees from it fix ``a`` and the orientation; all four reflections are
    then refined at their predicted positions.

    Parameters
    ----------
    volume : ndarray (nz, nx, ny)
        Projected potential per slice, V*A (any real image with a lattice works).
    sampling_A : float or (float, float)
        Pixel size, A.
    a_range_A : (float, float)
        Accepted cubic lattice parameters, A (default 5.3-5.9: CaF2 5.46 to SrYbF5 ~5.7).
    slices : sequence of int, optional
        Slices averaged for the spectrum (default all).
    min_snr : float
        Minimum peak power over the median power of its ring.
    angle_tolerance_deg : float
        Tolerance on the 90 degrees between the two {220} peaks.

    Returns
    -------
    FluoriteLattice

    Raises
    ------
    InputError
        No ``{220}`` peak pair: the volume shows no fluorite [001] lattice.
    """
    spec = mean_spectrum(volume, sampling_A, slices)
    a_lo, a_hi = sorted(float(x) for x in a_range_A)
    s8 = 2.0 * np.sqrt(2.0)
    k_lo, k_hi = s8 / a_hi, s8 / a_lo
    cands = find_peaks(spec, k_lo, k_hi, min_snr=min_snr)
    if not cands:
        raise InputError(f"lattice analysis: no fluorite {{220}} peak (d = {1/k_hi:.2f}-{1/k_lo:.2f} A) stands "
                         f"{min_snr:g} times above the background of the mean spectrum; the volume shows no lattice.")
    first = cands[0]
    rot90 = np.array([[0.0, -1.0], [1.0, 0.0]])
    target = rot90 @ first.g_inv_A
    partner = None
    for c in cands[1:]:
        ang = np.rad2deg(np.arccos(np.clip(np.dot(c.g_inv_A, target) / (np.hypot(*c.g_inv_A) * np.hypot(*target)), -1, 1)))
        if ang <= angle_tolerance_deg:
            partner = c
            break
    if partner is None:
        raise InputError(f"lattice analysis: found a {{220}}-like peak at d = {first.d_A:.3f} A but no second one at "
                         f"90 degrees; the volume shows no fluorite [001] lattice.")
    a_A, ang_220 = fit_square_lattice([first.g_inv_A, partner.g_inv_A], HK_220)
    angle = (ang_220 + 45.0) % 90.0 - 45.0
    g220 = np.array([measure_peak(spec, g).g_inv_A for g in ideal_g(a_A, angle, HK_220)])
    a_A, angle = fit_square_lattice(g220, HK_220)
    angle = (angle + 45.0) % 90.0 - 45.0
    p220 = [measure_peak(spec, g) for g in ideal_g(a_A, angle, HK_220)]
    p200 = [measure_peak(spec, g, search_px=1) for g in ideal_g(a_A, angle, HK_200)]
    return FluoriteLattice(a_A=a_A, angle_deg=angle,
                           g220_inv_A=np.array([p.g_inv_A for p in p220]),
                           g200_inv_A=np.array([p.g_inv_A for p in p200]),
                           snr220=np.array([p.snr for p in p220]), snr200=np.array([p.snr for p in p200]))


def check_peaks_present(volume, sampling_A, g_vectors_inv_A, min_snr: float = 10.0, slices=None,
                        names=None) -> np.ndarray:
    """Check that the spectrum has a peak at each chosen ``g`` (1/A); return their ``snr``.

    Raises
    ------
    InputError
        A chosen peak is absent (peak-to-background power ratio below ``min_snr``).
    """
    g = check_g_vectors(g_vectors_inv_A, n=None)
    spec = mean_spectrum(volume, sampling_A, slices)
    snr = np.array([measure_peak(spec, gi, search_px=2).snr for gi in g])
    for i, (gi, s) in enumerate(zip(g, snr)):
        if s < min_snr:
            label = names[i] if names is not None else f"g = ({gi[0]:.4f}, {gi[1]:.4f}) 1/A"
            raise InputError(f"lattice analysis: the chosen peak {label} is absent from the mean spectrum "
                             f"(peak-to-background {s:.1f} < {min_snr:g}).")
    return snr
