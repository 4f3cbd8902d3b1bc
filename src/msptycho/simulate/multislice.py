"""Multislice 4D-STEM on the simulation's own grid, integrated onto the detector's pixels.

Each probe position is propagated through a square window of the sample's transmission
functions cut around it (periodic within the window). Every slice applies
``psi <- ifft2(P_dz * fft2(psi * t))`` with the Fresnel propagator of :mod:`msptycho.physics`;
both ``t`` and the propagator are band-limited to 2/3 of the Nyquist frequency in each axis
(square antialiasing aperture), so the grid resolves, alias-free, every frequency up to
``1 / (3 * sampling)``. The far-field intensity ``|fft2(psi_exit)|^2 / n^2`` on the window's k-grid
(spacing ``1 / window``) is integrated onto the detector pixels (spacing ``mrad_per_pixel``) by
the exact overlap of the two grids' pixels (:func:`binning_matrix`): the simulation's k-grid is not
the detector's, let alone the reconstruction's.

Slices whose window holds no potential for any position of a batch are not transmitted; their
propagation is merged with the next one's (exact for free space).
"""

from __future__ import annotations

import numpy as np
import scipy.fft as sfft

from .. import physics


def antialias_mask(shape: tuple[int, int], sampling_A: float) -> np.ndarray:
    """Square band limit ``|kx|, |ky| <= 1 / (3 sampling)`` (float32, numpy FFT order)."""
    kx, ky = physics.spatial_frequencies(shape, sampling_A)
    kmax = 1.0 / (3.0 * sampling_A)
    return ((np.abs(kx) <= kmax) & (np.abs(ky) <= kmax)).astype(np.float32)


def binning_matrix(n_sim: int, dk_sim: float, n_det: int, dk_det: float) -> np.ndarray:
    """Overlap of fftshift-centred simulation pixels with detector pixels along one axis.

    Simulation pixel ``j`` covers ``((j - n_sim//2) +- 1/2) dk_sim``; detector pixel ``i`` covers
    ``((i - n_det//2) +- 1/2) dk_det``. ``M[i, j]`` is the fraction of simulation pixel ``j`` inside
    detector pixel ``i``, so ``M @ I @ M.T`` integrates intensity (columns sum to 1 where the
    simulation pixel lies inside the detector).

    Returns
    -------
    ndarray (n_det, n_sim), float32
    """
    ks = (np.arange(n_sim) - n_sim // 2) * dk_sim
    kd = (np.arange(n_det) - n_det // 2) * dk_det
    lo = np.maximum(ks[None, :] - dk_sim / 2, kd[:, None] - dk_det / 2)
    hi = np.minimum(ks[None, :] + dk_sim / 2, kd[:, None] + dk_det / 2)
    return (np.clip(hi - lo, 0.0, None) / dk_sim).astype(np.float32)


def transmission_functions(potential_VA: np.ndarray, energy_eV: float, sampling_A: float,
                           workers: int = -1) -> np.ndarray:
    """Band-limited transmission functions ``exp(i sigma V)`` of potential slices.

    Parameters
    ----------
    potential_VA : ndarray (n_slices, nx, ny)
        Projected potential per slice, V*A.
    energy_eV : float
    sampling_A : float

    Returns
    -------
    ndarray (n_slices, nx, ny), complex64
    """
    sigma = physics.interaction_constant(energy_eV)
    mask = antialias_mask(potential_VA.shape[1:], sampling_A)
    out = np.empty(potential_VA.shape, dtype=np.complex64)
    for s in range(potential_VA.shape[0]):
        t = np.exp(1j * sigma * potential_VA[s].astype(np.float32)).astype(np.complex64)
        out[s] = sfft.ifft2(sfft.fft2(t, workers=workers) * mask, workers=workers)
    return out


class PatternSimulator:
    """Far-field patterns of probes through a stack of transmission functions.

    Parameters
    ----------
    transmissions : ndarray (n_slices, NX, NY), complex64
        Band-limited transmission functions of the whole field (:func:`transmission_functions`).
    slice_thickness_A : sequence of float (n_slices,)
        Propagation distance after each slice, Angstrom.
    sampling_A : float
        Pixel size of the field and of the window, Angstrom.
    origin_A : (float, float)
        Position of the field's pixel [0, 0] centre, Angstrom.
    window_px : int
        Window side, pixels (even).
    energy_eV, semiangle_mrad : float
    aberrations : physics.Aberrations
    detector_pixels : int
    detector_mrad_per_pixel : float
    aperture_edge_mrad : float
    occupied : ndarray (n_slices, 4) of int, optional
        Per slice ``(i0, i1, j0, j1)``: inclusive pixel bounding box of non-zero potential
        (``i0 > i1`` for an empty slice); slices whose box misses every window of a batch are skipped.
    workers : int
        Threads of scipy.fft (-1: all).
    periodic : bool
        The field is one period of a laterally periodic specimen and exactly one window large:
        every probe uses the whole field, placed at its position modulo the period.
    """

    def __init__(self, transmissions, slice_thickness_A, sampling_A, origin_A, window_px, energy_eV,
                 semiangle_mrad, aberrations, detector_pixels, detector_mrad_per_pixel,
                 aperture_edge_mrad=0.0, occupied=None, workers=-1, periodic=False):
        self.t = transmissions
        self.dz = np.asarray(slice_thickness_A, dtype=float)
        if self.t is not None and len(self.dz) != self.t.shape[0]:
            raise ValueError("slice_thickness_A must have one entry per transmission slice.")
        self.s = float(sampling_A)
        self.origin = np.asarray(origin_A, dtype=float)
        self.W = int(window_px)
        if self.W % 2:
            raise ValueError(f"window_px must be even, got {window_px}.")
        self.energy = float(energy_eV)
        self.lam = physics.wavelength_A(energy_eV)
        self.workers = workers
        self.kx, self.ky = physics.spatial_frequencies((self.W, self.W), self.s)
        self.mask = antialias_mask((self.W, self.W), self.s)
        self.probe_k = (physics.probe_fourier((self.W, self.W), self.s, energy_eV, semiangle_mrad,
                                              aberrations, aperture_edge_mrad) * self.mask).astype(np.complex64)
        # renormalise after the antialias mask (the aperture lies well inside it)
        self.probe_k /= np.sqrt(np.sum(np.abs(self.probe_k) ** 2) / self.W**2)
        dk_sim = 1.0 / (self.W * self.s)
        dk_det = physics.mrad_to_inv_A(detector_mrad_per_pixel, energy_eV)
        self.M = binning_matrix(self.W, dk_sim, int(detector_pixels), dk_det)
        self.occupied = occupied
        self.periodic = bool(periodic)
        if self.periodic and self.t is not None and self.t.shape[1:] != (self.W, self.W):
            raise ValueError("a periodic field must be exactly one window (window_px x window_px) large.")
        self._prop = {}

    def propagator(self, dz_A: float) -> np.ndarray:
        key = round(float(dz_A), 9)
        if key not in self._prop:
            self._prop[key] = (physics.fresnel_propagator(self.kx, self.ky, self.lam, dz_A) * self.mask).astype(np.complex64)
        return self._prop[key]

    def window_starts(self, positions_A: np.ndarray) -> np.ndarray:
        """First pixel (i, j) of the window around each position (N, 2)."""
        if self.periodic:
            return np.zeros((len(positions_A), 2), dtype=np.int64)
        return np.round((positions_A - self.origin) / self.s).astype(np.int64) - self.W // 2

    def probes(self, positions_A: np.ndarray, starts: np.ndarray) -> np.ndarray:
        """Real-space probes of unit norm centred on ``positions_A`` inside their windows (B, W, W)."""
        r0 = positions_A - (self.origin + starts * self.s)
        # separable phase ramp: exp(-2 pi i (kx x0 + ky y0)) = outer product of two 1-D ramps
        rx = np.exp(-2j * np.pi * self.kx[None, :, 0] * r0[:, 0, None]).astype(np.complex64)
        ry = np.exp(-2j * np.pi * self.ky[None, 0, :] * r0[:, 1, None]).astype(np.complex64)
        psi = self.probe_k[None] * rx[:, :, None]
        psi *= ry[:, None, :]
        return sfft.ifft2(psi, workers=self.workers, overwrite_x=True)

    def exit_waves_k(self, positions_A: np.ndarray) -> np.ndarray:
        """Exit waves in Fourier space (numpy FFT order), ``sum |.|^2 = W^2`` per probe (B, W, W)."""
        positions_A = np.atleast_2d(np.asarray(positions_A, dtype=float))
        starts = self.window_starts(positions_A)
        if self.t is not None:
            nx, ny = self.t.shape[1:]
            if starts.min() < 0 or starts[:, 0].max() + self.W > nx or starts[:, 1].max() + self.W > ny:
                raise ValueError("a probe window reaches beyond the potential field; enlarge the field margin.")
        psi = self.probes(positions_A, starts)
        pending = 0.0
        n_slices = 0 if self.t is None else self.t.shape[0]
        B = len(positions_A)
        for s in range(n_slices):
            if self.occupied is not None:
                i0, i1, j0, j1 = self.occupied[s]
                hit = ((starts[:, 0] <= i1) & (starts[:, 0] + self.W - 1 >= i0)
                       & (starts[:, 1] <= j1) & (starts[:, 1] + self.W - 1 >= j0))
                if not hit.any():
                    pending += self.dz[s]
                    continue
            if pending:
                psi = sfft.fft2(psi, workers=self.workers, overwrite_x=True)
                psi *= self.propagator(pending)
                psi = sfft.ifft2(psi, workers=self.workers, overwrite_x=True)
            for b in range(B):
                i, j = starts[b]
                psi[b] *= self.t[s, i:i + self.W, j:j + self.W]
            pending = self.dz[s]
        # the last propagation leaves far-field intensities unchanged: not applied
        return sfft.fft2(psi, workers=self.workers, overwrite_x=True)

    def patterns(self, positions_A: np.ndarray) -> np.ndarray:
        """Detector intensities of probes at ``positions_A`` (N, 2), as fractions of the incident
        electrons (a pattern sums to the fraction scattered inside the detector).

        Returns
        -------
        ndarray (N, detector_pixels, detector_pixels), float32
        """
        psi_k = self.exit_waves_k(positions_A)
        inten = np.abs(psi_k)
        inten *= inten
        inten = np.fft.fftshift(inten, axes=(-2, -1)).astype(np.float32) / np.float32(self.W**2)
        B, W, n = len(inten), self.W, self.M.shape[0]
        tmp = inten.reshape(B * W, W) @ self.M.T                       # (B*W, n): bin along ky
        tmp = np.ascontiguousarray(tmp.reshape(B, W, n).transpose(0, 2, 1)).reshape(B * n, W)
        out = (tmp @ self.M.T).reshape(B, n, n).transpose(0, 2, 1)     # bin along kx
        return np.ascontiguousarray(out, dtype=np.float32)


def occupied_boxes(potential_VA: np.ndarray, threshold_VA: float = 1e-6) -> np.ndarray:
    """Inclusive pixel bounding box ``(i0, i1, j0, j1)`` of ``|V| > threshold`` per slice."""
    out = np.zeros((potential_VA.shape[0], 4), dtype=np.int64)
    for s in range(potential_VA.shape[0]):
        m = np.abs(potential_VA[s]) > threshold_VA
        ii = np.flatnonzero(m.any(axis=1))
        jj = np.flatnonzero(m.any(axis=0))
        if len(ii) == 0:
            out[s] = (1, 0, 1, 0)
        else:
            out[s] = (ii[0], ii[-1], jj[0], jj[-1])
    return out
