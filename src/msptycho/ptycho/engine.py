"""Gradient-descent multislice ptychography: the iteration loop.

The maths lives in :mod:`msptycho.ptycho.forward` (geometry, probe, propagator, aberration fit)
and the kernels in a backend (:class:`msptycho.ptycho.kernels_cpu.CPUBackend`); this module only
orders them. Gradients are hand-derived (Wirtinger calculus, ``dL = Re <g, dz>``):

* detector: amplitude loss ``g_Psi = 2 (Psi - a Psi/|Psi|)``, Poisson ``2 Psi (1 - a^2/|Psi|^2)``;
* unitary FFTs and propagators: the adjoint is the inverse (conjugate propagator);
* transmission ``phi = psi * T``: ``g_psi = conj(T) g_phi`` and, with ``T = exp(i sigma V)``,
  ``dL/dV = sigma Im(conj(psi) conj(T) g_phi) = sigma Im(conj(phi) g_phi)`` scattered into the
  object window (the forward pass keeps the exit waves ``phi`` of every slice);
* probe ``psi_0 = IFFT(P_k ramp)``: ``g_P = sum_b conj(ramp_b) FFT(g_psi0_b)``;
* sub-pixel position: ``dL/df = 2 pi sum k Im(conj(FFT(g_psi0)) P_k ramp)``.

Steps are Gauss-Newton-like: the object update is divided by ``2 sigma^2 nz (I + r max I)``
with ``I`` the batch's illumination of each pixel of the slice, the probe's by ``2 nb`` and a
position's by the Gauss-Newton curvature ``2 sum_k Re(conj(Psi/|Psi|) dPsi)^2`` of the amplitude
loss, where ``dPsi`` is the exit wave's derivative for a shift of the object under the probe in
the projection approximation (``exit * i sigma grad(sum_s V_s)``, one extra FFT per position and
axis). For the Poisson loss the detector-plane gradient used in updates is preconditioned by the
loss's per-pixel curvature, which brings it to the amplitude loss's scale and keeps it bounded
where the model is near zero but counts were recorded.
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path

import numpy as np

from .. import physics
from ..io.datacube import Calibration, InputError, check_counts
from . import forward as fw
from .kernels_cpu import CPUBackend
from .parameters import ReconstructionParameters, ReconstructionResult

LOG = logging.getLogger("msptycho.ptycho")


class MultisliceEngine:
    """State and work arrays of one reconstruction (everything preallocated).

    Parameters
    ----------
    amplitudes : ndarray float32 (N, n, n)
        Square roots of the measured patterns in numpy FFT order (zero frequency at [0, 0]).
    probe_k : ndarray complex64 (n, n)
        Initial probe, unitary FFT of the centred real-space probe.
    positions_px : ndarray float64 (N, 2)
        Initial positions in object pixels.
    object_shape : (int, int)
    sigma : float
        Interaction constant, rad/(V*A).
    propagator_k : ndarray complex64 (n, n)
        Fresnel propagator over one slice.
    params : ReconstructionParameters
    fourier_amplitude : ndarray float (n, n), optional
        Target Fourier amplitude of the probe (numpy FFT order).
    aberration_basis, chi : ndarray, optional
        Basis and initial phase surface (see :func:`forward.fit_aberration_surface`).
    backend : object, optional
        FFTs and kernels (default :class:`CPUBackend`).
    amplitude_sum_sq : float, optional
        ``sum amplitudes^2`` when the caller has it already (the error's normaliser).
    """

    def __init__(self, amplitudes, probe_k, positions_px, object_shape, sigma, propagator_k, params,
                 fourier_amplitude=None, aberration_basis=None, chi=None, backend=None, amplitude_sum_sq=None):
        self.p = params
        self.be = be = backend or CPUBackend(params.fft_workers, params.fft_library, params.fft_planning)
        # arrays the kernels touch live where the backend computes (identity on the CPU)
        self.amps = be.asarray(amplitudes)
        self.N, self.n = amplitudes.shape[0], amplitudes.shape[1]
        n, nz = self.n, params.num_slices
        B = min(params.batch_size, self.N)
        self.B, self.nz = B, nz
        self.sigma = float(sigma)
        # the backend's FFTs are unnormalised: fold their gain into the propagators and kernels
        self.gain = self.be.fft_gain(n, n)
        h = (np.asarray(propagator_k, dtype=np.complex128) / self.gain**2).astype(np.complex64)
        self.h, self.hc = be.asarray(h), be.asarray(np.conj(h))
        self.kx, self.ky = (be.asarray(k) for k in fw.window_frequencies(n))
        self.obj_shape = tuple(object_shape)
        # state
        self.V = be.zeros((nz,) + self.obj_shape, np.float32)
        self.Pk = be.asarray(np.ascontiguousarray(probe_k, dtype=np.complex64).copy())
        self.T = be.zeros((nz,) + self.obj_shape, np.complex64)   # exp(i sigma V), kept in sync
        self.T[...] = 1
        self.pos = np.array(positions_px, dtype=np.float64)
        fw.clip_positions(self.pos, self.obj_shape, n)
        self.pos_initial = self.pos.copy()
        self.famp = None if fourier_amplitude is None else np.asarray(fourier_amplitude, dtype=np.float64)
        self.basis = aberration_basis
        self.chi = None if chi is None else np.array(chi, dtype=np.float64)
        self.step_scale = 1.0
        self.history = {"error": [], "loss": [], "step": [], "seconds": []}
        self.iteration = 0
        # work arrays. A batch is carried through the slices C positions at a time (a chunk
        # whose waves stay in cache); the object gradient of every slice is accumulated over the
        # chunks and the object updated once per batch, as if the batch were one chunk.
        # Where the backend can (CPU with FFTW) and no chunk size is asked for, the whole batch
        # runs in one call instead (CPUBackend.batch_windows): one slot of positions per thread,
        # each slot a group of positions at a time (a chunk), no Python between the kernels.
        default_chunk = getattr(be, "chunk_positions", None) or B
        slots = min(B, getattr(be, "workers", 1)) if hasattr(be, "batch_windows") and not params.chunk_size else 0
        self.group = min(max(default_chunk // slots, 1), -(-B // slots)) if slots else 0
        self.C = C = slots * self.group or min(B, params.chunk_size or default_chunk)
        self.exit_waves = self.be.zeros((nz, C, n, n), np.complex64)   # slot 0 first holds the incident wave
        self.g = self.be.zeros((C, n, n), np.complex64)        # Fourier-space waves and gradients
        self.g_real = self.be.zeros((C, n, n), np.complex64)   # real-space gradients
        # single-window FFT plans of the backend's fused kernels (None: batched FFTs and kernels)
        wp = getattr(be, "window_plans", None)
        self.window_plans = wp(self.exit_waves, self.g) if wp is not None else None
        self.slots = slots if self.window_plans is not None else 0
        R = B if self.slots else C            # positions whose ramps and corners are held at once
        self.rampx = be.zeros((R, n), np.complex64)
        self.rampy = be.zeros((R, n), np.complex64)
        self.corners = np.zeros((R, 2), dtype=np.int64)      # host; split_positions writes them
        self.frac = np.zeros((R, 2), dtype=np.float64)
        self.err = be.zeros(B, np.float64)
        self.loss = be.zeros(B, np.float64)
        self.grad = be.zeros((nz,) + self.obj_shape, np.float32)
        self.illum = be.zeros((nz,) + self.obj_shape, np.float32)
        self.row_lo = be.zeros((nz, self.obj_shape[0]), np.int64)
        self.row_hi = be.zeros((nz, self.obj_shape[0]), np.int64)
        self.rowmax = be.zeros((nz, self.obj_shape[0]), np.float32)
        self.slice_max = be.zeros(nz, np.float32)    # each slice's largest illumination (the step's floor)
        if self.slots:
            # each slot's probe gradient, and its rows beyond its strip of the object
            self.gPk_slots = be.zeros((self.slots, n, n), np.complex64)
            over = (self.slots - 1, nz, n, self.obj_shape[1]) if self.slots > 1 else (1, 1, 1, 1)
            self.overhang = (be.zeros(over, np.float32), be.zeros(over, np.float32))
            # each slot's largest illumination written in each slice
            self.illum_max = be.zeros((self.slots, nz), np.float32)
        elif C < B:   # a later chunk's touched rows, merged into the slice's
            self.chunk_rows = (be.zeros(self.obj_shape[0], np.int64), be.zeros(self.obj_shape[0], np.int64),
                               be.zeros(self.obj_shape[0], np.float32))
            self.gPk_chunk = be.zeros((n, n), np.complex64)
        self.gPk = be.zeros((n, n), np.complex64)
        self.gpos = be.zeros((B, 2), np.float64)
        self.tv_work = (be.zeros(self.V.shape, np.float32)
                        if (params.tv_z_weight_VA > 0 or params.tv_xy_weight_VA > 0) else None)
        if params.position_correction:
            self.wave_k = be.zeros((C, n, n), np.complex64)
            self.dX = be.zeros((C, n, n), np.complex64)
            self.dY = be.zeros((C, n, n), np.complex64)
            self.vproj = be.zeros(self.obj_shape, np.float32)
            self.pcurv = be.zeros((B, 2), np.float64)
        self.sum_a2 = sum_of_squares(amplitudes) if amplitude_sum_sq is None else float(amplitude_sum_sq)
        # curvature of the loss relative to the amplitude loss's: 1, because the Poisson update is
        # preconditioned per pixel to the amplitude loss's scale (kernels_cpu.residual, mode 2)
        self.curv = 1.0

    def array_bytes(self) -> int:
        """Bytes of the engine's own arrays (state and work arrays; not the measured amplitudes),
        each buffer counted once."""
        seen, total = set(), 0
        for name, a in vars(self).items():
            if name == "amps" or not hasattr(a, "nbytes") or not hasattr(a, "shape"):
                continue
            base = a
            while getattr(base, "base", None) is not None:
                base = base.base
            if id(base) not in seen:
                seen.add(id(base))
                total += int(base.nbytes)
        return total

    def refresh(self) -> None:
        """Recompute the transmission ``exp(i sigma V)`` after ``V`` was changed from outside."""
        self.be.refresh_transmission(self.V, self.sigma, self.T)

    # -- forward model ----------------------------------------------------------------------------
    def _forward(self, idx: np.ndarray, residual=None):
        """Multislice forward pass of positions ``idx`` (at most one chunk) with the current
        state: fills ``exit_waves[:, :nb]`` with the exit wave of every slice (the incident wave,
        multiplied in place by the slice's transmission) and the phase ramps, and returns the last
        exit wave in Fourier space, ``g[:nb]`` (unnormalised FFT), and the window corners on the
        backend. Every FFT is out of place (``g`` holds the Fourier-space waves): FFTW's
        out-of-place transforms of waves that are no longer in cache run 10-15 % faster than its
        in-place ones on the machines measured.

        ``residual``, optional: ``(index, mode, err, loss, keep_wave)`` goes on to the detector
        residual (``g`` then holds the loss's gradient, ``wave_k`` the detector wave if
        ``keep_wave``) and its inverse FFT into ``g_real[:nb]``."""
        be = self.be
        nb, nz = len(idx), self.nz
        fw.split_positions(self.pos[idx], self.n, self.corners[:nb], self.frac[:nb])
        corners = be.asarray(self.corners[:nb])
        be.ramps(be.asarray(self.frac[:nb]), self.kx, self.ky, self.rampx, self.rampy)
        g = self.g[:nb]
        if residual is not None:
            index, mode, err, loss, keep = residual
        if self.window_plans is not None:
            # each window through all of it while in cache (kernels_cpu.CPUBackend.forward_pass)
            res = None if residual is None else (self.amps, index, mode, 1.0 / self.gain, err, loss, self.g_real,
                                                 self.wave_k if keep else None)
            be.forward_pass(self.window_plans, self.Pk, self.rampx, self.rampy, 1.0 / self.gain, self.exit_waves,
                            self.g, self.T, corners, self.h, nb, res)
            return g, corners
        be.incident(self.Pk, self.rampx, self.rampy, 1.0 / self.gain, g)
        be.ifft2(g, out=self.exit_waves[0, :nb])
        for s in range(nz):
            wave = self.exit_waves[s, :nb]
            be.transmit(wave, self.T[s], corners, wave)
            be.fft2(wave, out=g)
            if s < nz - 1:
                be.multiply(g, self.h)
                be.ifft2(g, out=self.exit_waves[s + 1, :nb])
        if residual is not None:
            if keep:
                self.wave_k[:nb] = g
            be.residual(g, self.amps, index, mode, 1.0 / self.gain, err, loss)
            be.ifft2(g, out=self.g_real[:nb])
        return g, corners

    def model_patterns(self, idx: np.ndarray) -> np.ndarray:
        """Model patterns ``|FFT_ortho(exit)|^2`` (numpy FFT order, float32) of positions ``idx``
        (at most ``batch_size``) with the current state; allocates its output."""
        out = np.empty((len(idx), self.n, self.n), dtype=np.float32)
        for c0 in range(0, len(idx), self.C):
            g, _ = self._forward(idx[c0:c0 + self.C])
            out[c0:c0 + len(g)] = np.abs(self.be.asnumpy(g)) ** 2 / self.gain**2
        return out

    # -- one mini-batch -------------------------------------------------------------------------
    def batch(self, idx: np.ndarray, update_object=True, update_probe=False, update_positions=False,
              gradients=None) -> tuple[float, float]:
        """Forward model, loss and hand-derived gradients of positions ``idx``; update the state.

        With ``gradients`` (a dict) nothing is updated: the object gradient (nz, Nx, Ny),
        probe gradient (n, n) and position gradients (nb, 2; per pixel, in the order of ``idx``)
        are stored in it. The positions are visited in Z order (:func:`forward.z_order`), C at a
        time through all slices; the object is updated once, after the whole batch. Where the
        backend runs a whole batch in one call (``slots``), the positions are first split by
        their object rows into one run per slot, each run in Z order.

        Returns
        -------
        err, loss : float
            Sums over the batch of ``(|Psi| - a)^2`` and of the loss.
        """
        be, K = self.be, self.be
        nb, nz = len(idx), self.nz
        # neighbours in turn (Z order): a chunk's windows overlap in the object, which stays in
        # cache; the order is the same however the batch is chunked
        S = min(self.slots, nb)
        bounds = np.array([(t * nb) // S for t in range(S + 1)], dtype=np.int64) if S else None
        if S > 1:
            # one run of positions per slot, split by their rows in the object (each slot then
            # owns a strip of rows), each run in Z order
            byrow = np.argsort(self.pos[idx, 0], kind="stable")
            runs = [byrow[bounds[t]:bounds[t + 1]] for t in range(S)]
            order = np.concatenate([r[fw.z_order(self.pos[idx[r]], self.n // 2)] for r in runs])
        else:
            order = fw.z_order(self.pos[idx], self.n // 2)
        idx = idx[order]
        # loss mode: 0 amplitude, 1 Poisson (exact gradient), 2 Poisson preconditioned (updates)
        mode = 0 if self.p.loss == "amplitude" else (1 if gradients is not None else 2)
        need_probe = gradients is not None or update_probe
        need_pos = gradients is not None or update_positions
        if self.slots:
            self._batch_windows(idx, bounds, mode, need_probe, need_pos, update_positions and gradients is None)
        else:
            self._batch_chunked(idx, mode, need_probe, need_pos, update_positions, gradients)
        err = float(self.err[:nb].sum())
        loss = float(self.loss[:nb].sum())
        # undo the forward FFT's gain on the incident-wave gradient (small arrays)
        if need_probe:
            self.gPk *= np.float32(1.0 / self.gain)
        if need_pos:
            self.gpos[:nb] /= self.gain
        if gradients is not None:
            obj = be.zeros(self.V.shape, self.V.dtype)
            for s in range(nz):
                K.copy_gradient(obj[s], self.grad[s], self.illum[s], self.row_lo[s], self.row_hi[s])
            gradients["object"] = be.asnumpy(obj)
            gradients["probe"] = be.asnumpy(self.gPk).copy()
            gradients["positions"] = np.empty((nb, 2), dtype=np.float64)
            gradients["positions"][order] = be.asnumpy(self.gpos[:nb])   # in the caller's order
            return err, loss
        coef = self.p.step_size * self.step_scale / (2 * self.sigma**2 * nz * self.curv)
        for s in range(nz):
            floor = self.p.illumination_regularization_fraction * float(self.slice_max[s])
            K.update_object(self.V[s], self.T[s], self.grad[s], self.illum[s], self.row_lo[s], self.row_hi[s],
                            coef if update_object else 0.0, floor, self.sigma)
        if update_positions:
            self.pcurv[:nb] /= self.gain**2
            self._move_positions(idx, nb)
        if update_probe:
            c = self.p.probe_step_size * self.step_scale / (2 * nb * self.curv)
            self.gPk *= np.float32(c)
            self.Pk -= self.gPk
        return err, loss

    def _batch_chunked(self, idx, mode, need_probe, need_pos, update_positions, gradients):
        """The batch ``idx`` C positions at a time, kernel by kernel (the GPU, FFT libraries other
        than FFTW, or a chunk size set)."""
        be, K = self.be, self.be
        nb, nz, C = len(idx), self.nz, self.C
        for c0 in range(0, nb, C):
            sub = idx[c0:c0 + C]
            m = len(sub)
            first = c0 == 0
            # forward, detector residual and its inverse FFT into g_real
            g, corners = self._forward(sub, (be.asarray(sub), mode, self.err[c0:c0 + m], self.loss[c0:c0 + m],
                                             update_positions))
            # back through the slices: the real-space gradient in g_real, the Fourier-space one
            # in g (out-of-place FFTs, as in the forward pass)
            g_real = self.g_real[:m]
            for s in range(nz - 1, -1, -1):
                rows = (self.row_lo[s], self.row_hi[s], self.rowmax[s]) if first else self.chunk_rows
                K.back_slice(g_real, self.exit_waves[s, :m], self.T[s], corners, m, self.sigma, self.grad[s],
                             self.illum[s], *rows)
                if not first:
                    np.minimum(self.row_lo[s], rows[0], out=self.row_lo[s])
                    np.maximum(self.row_hi[s], rows[1], out=self.row_hi[s])
                    np.maximum(self.rowmax[s], rows[2], out=self.rowmax[s])
                if s > 0 and self.window_plans is not None:
                    be.propagate_back(self.window_plans, self.g_real, self.g, self.hc, m)
                elif s > 0:
                    be.fft2(g_real, out=g)
                    K.multiply(g, self.hc)
                    be.ifft2(g, out=g_real)
            if not (need_probe or need_pos):
                continue
            curvature = update_positions and gradients is None
            # each window's FFT, position gradient and curvature while in cache (CPU with FFTW) ...
            fused = self.window_plans is not None and be.gradient_tail(
                self.window_plans, g_real, g, need_pos, self.Pk, self.rampx, self.rampy, self.kx, self.ky,
                self.gpos[c0:c0 + m], (self.exit_waves[nz - 1, :m], self.vproj, corners, self.sigma, self.dX[:m],
                                       self.dY[:m], self.wave_k[:m], self.pcurv[c0:c0 + m]) if curvature else None)
            if not fused:
                be.fft2(g_real, out=g)
                if need_pos:
                    K.position_gradient(g, self.Pk, self.rampx, self.rampy, self.kx, self.ky, m,
                                        self.gpos[c0:c0 + m])
            if need_probe:
                K.probe_gradient(g, self.rampx, self.rampy, m, self.gPk if first else self.gPk_chunk)
                if not first:
                    self.gPk += self.gPk_chunk
            if curvature and not fused:     # ... or kernel by kernel
                # the exit wave's shift derivatives (at the state the gradients were taken at)
                # (in real space in the free g and g_real, then out of place into dX and dY)
                K.exit_shift_derivative(self.exit_waves[nz - 1, :m], self.vproj, corners, m, self.sigma, g, g_real)
                be.fft2(g, out=self.dX[:m])
                be.fft2(g_real, out=self.dY[:m])
                K.position_curvature(self.wave_k, self.dX, self.dY, m, self.pcurv[c0:c0 + m])
        self.rowmax.max(axis=1, out=self.slice_max)     # each slice's largest illumination

    def _batch_windows(self, idx, bounds, mode, need_probe, need_pos, curvature):
        """The batch ``idx`` through :meth:`CPUBackend.batch_windows`, slot ``t`` taking the
        positions ``bounds[t]:bounds[t + 1]`` (as :meth:`batch` ordered them)."""
        be, nb = self.be, len(idx)
        S = len(bounds) - 1
        fw.split_positions(self.pos[idx], self.n, self.corners[:nb], self.frac[:nb])
        be.ramps(self.frac[:nb], self.kx, self.ky, self.rampx, self.rampy)
        # slot t's windows start in rows strips[t]:strips[t + 1] (the runs are split by rows)
        strips = np.array([0] + [self.corners[bounds[t]:bounds[t + 1], 0].min() for t in range(1, S)]
                          + [self.obj_shape[0]], dtype=np.int64)
        be.batch_windows(self.window_plans, self.Pk, self.rampx, self.rampy, 1.0 / self.gain, self.exit_waves, self.g,
                         self.g_real, self.T, self.corners, self.h, self.hc, bounds, strips, self.group,
                         (self.amps, idx, mode, 1.0 / self.gain, self.err, self.loss), self.sigma, self.grad,
                         self.illum, self.overhang, self.illum_max, self.gPk_slots if need_probe else None,
                         (self.kx, self.ky, self.gpos) if need_pos else None,
                         (self.vproj, self.wave_k, self.dX, self.dY, self.pcurv) if curvature else None)
        be.finish_batch_rows(self.corners, nb, self.n, self.n, strips, self.grad, self.illum, self.overhang,
                             self.illum_max, self.row_lo, self.row_hi, self.slice_max, self.rowmax)
        if need_probe:
            self.gPk[...] = self.gPk_slots[0]
            for t in range(1, S):
                self.gPk += self.gPk_slots[t]

    def _move_positions(self, idx, nb):
        c = self.curv * self.be.asnumpy(self.pcurv[:nb])
        c = c + 1e-3 * c.mean(axis=0) + 1e-30
        d = -self.p.position_step_size * self.be.asnumpy(self.gpos[:nb]) / c
        lim = self.p.position_max_update_A / self.sampling_A
        np.clip(d, -lim, lim, out=d)
        self.pos[idx] += d
        fw.clip_positions(self.pos, self.obj_shape, self.n)

    sampling_A = 1.0  # set by reconstruct(); only used for the position damping

    # -- one iteration --------------------------------------------------------------------------
    def run_iteration(self) -> float:
        """One pass over all positions in a seeded random order, then the constraints."""
        it = self.iteration
        t0 = time.perf_counter()
        p = self.p
        order = np.random.default_rng([p.seed, it]).permutation(self.N)
        up_probe = it >= p.probe_update_start_iteration
        up_pos = p.position_correction and it >= p.position_correction_start_iteration
        err = loss = 0.0
        if up_pos:
            self.be.project_potential(self.V, self.vproj)
        for start in range(0, self.N, self.B):
            e, l = self.batch(order[start:start + self.B], True, up_probe, up_pos)
            err += e
            loss += l
        self.apply_constraints(up_probe, up_pos)
        err /= self.sum_a2
        step = p.step_size * self.step_scale
        if self.history["error"] and err > self.history["error"][-1]:
            self.step_scale *= p.step_size_reduction_factor
        dt = time.perf_counter() - t0
        self.history["error"].append(err)
        self.history["loss"].append(loss)
        self.history["step"].append(step)
        self.history["seconds"].append(dt)
        self.iteration += 1
        return err

    def apply_constraints(self, probe_updated: bool, positions_updated: bool) -> None:
        p = self.p
        if self.tv_work is not None:
            self.be.tv_step(self.V, self.tv_work, float(p.tv_z_weight_VA), float(p.tv_xy_weight_VA),
                            float(p.tv_epsilon_VA))
        if p.positivity:
            self.be.clip_negative(self.V)
        # exp(i sigma V) after the TV step and the clipping (the batch updates write it where they step)
        self.be.refresh_transmission(self.V, self.sigma, self.T)
        if probe_updated:
            amp = self.famp if (p.probe_fourier_amplitude_constraint and self.famp is not None) else None
            Pk = self.be.asnumpy(self.Pk)
            if p.probe_aberration_fit_order >= 2 and self.basis is not None:
                a = amp if amp is not None else np.abs(Pk).astype(np.float64)
                mask = a > 0.05 * a.max()
                Pk_new, self.chi = fw.fit_aberration_surface(Pk, self.chi, self.basis, mask, a)
                self.Pk[...] = self.be.asarray(Pk_new)
            elif amp is not None:
                self.Pk[...] = self.be.asarray((amp * np.exp(1j * np.angle(Pk))).astype(np.complex64))
        if positions_updated and p.position_affine_fit:
            self.pos[...] = affine_fit(self.pos_initial, self.pos)
            fw.clip_positions(self.pos, self.obj_shape, self.n)

    # -- checkpoints ----------------------------------------------------------------------------
    def state(self) -> dict:
        return {"potential_VA": self.be.asnumpy(self.V), "probe_k": self.be.asnumpy(self.Pk), "positions_px": self.pos,
                "chi": self.chi if self.chi is not None else np.zeros(0),
                "iteration": self.iteration, "step_scale": self.step_scale,
                "error": np.array(self.history["error"]), "loss": np.array(self.history["loss"]),
                "step": np.array(self.history["step"]), "seconds": np.array(self.history["seconds"])}

    def load_state(self, st: dict) -> None:
        self.V[...] = self.be.asarray(st["potential_VA"])
        self.refresh()
        self.Pk[...] = self.be.asarray(st["probe_k"])
        self.pos[...] = st["positions_px"]
        if self.chi is not None and np.size(st["chi"]):
            self.chi = np.array(st["chi"], dtype=np.float64)
        self.iteration = int(st["iteration"])
        self.step_scale = float(st["step_scale"])
        for k in ("error", "loss", "step", "seconds"):
            self.history[k] = [float(v) for v in st[k]]


def affine_fit(initial: np.ndarray, refined: np.ndarray) -> np.ndarray:
    """Least-squares global affine map of ``initial`` onto ``refined`` (both (N, 2)), evaluated at
    ``initial``."""
    a = np.hstack([initial, np.ones((len(initial), 1))])
    coef, *_ = np.linalg.lstsq(a, refined, rcond=None)
    return a @ coef


# -- public entry point ---------------------------------------------------------------------------

def sum_of_squares(a: np.ndarray, chunk: int = 16) -> float:
    """``sum a^2`` in float64, a chunk of positions at a time (a 2 MB temporary for 128^2 patterns)."""
    return float(sum(np.sum(np.square(a[i:i + chunk], dtype=np.float64)) for i in range(0, len(a), chunk)))


def prepare_amplitudes(datacube: np.ndarray, center_px, source: str = "datacube") -> np.ndarray:
    """``sqrt`` of the patterns, re-centred and ``ifftshift``-ed to numpy FFT order, float32 (N, n, n).

    Reads one scan row at a time (``datacube`` may be an ``h5py.Dataset``) and checks each for
    NaN and negative counts. A detector centre other than ``(n // 2, n // 2)`` is moved there by
    a whole-pixel roll.
    """
    rx, ry, qx, qy = datacube.shape
    out = np.empty((rx * ry, qx, qy), dtype=np.float32)
    shift = (qx // 2 - int(round(center_px[0])), qy // 2 - int(round(center_px[1])))
    for i in range(rx):
        block = np.asarray(datacube[i], dtype=np.float32)
        check_counts(block, "reconstruct", "datacube")
        if shift != (0, 0):
            block = np.roll(block, shift, axis=(1, 2))
        block = np.fft.ifftshift(block, axes=(1, 2))
        np.sqrt(block, out=out[i * ry:(i + 1) * ry])
    return out


def _fingerprint(params: ReconstructionParameters, *arrays) -> str:
    d = params.to_dict()
    for k in ("num_iterations", "checkpoint_every", "fft_workers"):
        d.pop(k)
    h = hashlib.sha256(repr(sorted(d.items())).encode())
    for a in arrays:
        if a is None:
            h.update(b"none")
            continue
        a = np.ascontiguousarray(a)
        h.update(str((a.shape, a.dtype.str)).encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()


def reconstruct(datacube, calibration: Calibration, params: ReconstructionParameters | None = None, *,
                initial_aberrations: physics.Aberrations | None = None, initial_probe=None,
                initial_positions_A=None, vacuum_probe_intensity=None, checkpoint_path=None,
                logger: logging.Logger | None = None, backend=None, on_iteration=None) -> ReconstructionResult:
    """Multislice ptychographic reconstruction by mini-batch gradient descent.

    Parameters
    ----------
    datacube : ndarray (Rx, Ry, Qx, Qy)
        Diffraction intensities (counts), patterns ``|fftshift(fft2(exit))|^2`` as in the
        canonical datacube; ``Qx == Qy`` is the reconstruction window.
    calibration : Calibration
        Energy (eV), semi-angle (mrad), scan step (A), detector sampling (mrad/pixel), scan
        rotation (deg), detector centre (pixels).
    params : ReconstructionParameters, optional
    initial_aberrations : Aberrations, optional
        Initial probe aberrations (defocus sign of :mod:`msptycho.physics`); zero if omitted.
    initial_probe : ndarray complex (Qx, Qy), optional
        Initial real-space probe centred on pixel ``(Qx // 2, Qy // 2)`` (any scale); overrides
        ``initial_aberrations`` for the probe itself (they still seed the phase fit).
    initial_positions_A : ndarray (Rx * Ry, 2) or (Rx, Ry, 2), optional
        Initial positions (x, y) in Angstrom in the scan frame; the nominal grid if omitted.
    vacuum_probe_intensity : ndarray (Qx, Qy), optional
        Vacuum probe pattern (same detector and centring as the datacube, any scale): Fourier
        amplitude of the initial probe and target of the Fourier-amplitude constraint.
    checkpoint_path : path, optional
        Checkpoint file: written every ``params.checkpoint_every`` iterations; if it exists and
        matches the data and parameters, the run resumes from it.
    logger : logging.Logger, optional
        Receives one line per iteration (default ``msptycho.ptycho``).
    backend : object or str, optional
        FFTs and kernels, or their name: ``"cpu"`` (the default,
        :class:`~msptycho.ptycho.kernels_cpu.CPUBackend`) or ``"gpu"``
        (:class:`~msptycho.ptycho.kernels_gpu.GPUBackend`, CuPy).
    on_iteration : callable, optional
        Called as ``on_iteration(iteration, seconds)`` after each iteration's log line (its time
        is not part of ``seconds``; progress displays, benchmarks).

    Returns
    -------
    ReconstructionResult

    Raises
    ------
    InputError
        If an input has the wrong shape or holds NaN or negative values.
    """
    from ..io import reconstruction as rio

    log = logger or LOG
    params = (params or ReconstructionParameters()).validate()
    if isinstance(backend, str):
        if backend not in ("cpu", "gpu"):
            raise InputError(f"reconstruct: field 'backend' is {backend!r}; expected 'cpu' or 'gpu'.")
        if backend == "gpu":
            from .kernels_gpu import GPUBackend
            backend = GPUBackend()
        else:
            backend = None      # the engine makes the CPU backend from the parameters
    cal = calibration
    if not isinstance(cal, Calibration):
        raise InputError(f"reconstruct: 'calibration' is a {type(cal).__name__}; expected a msptycho.io.Calibration.")
    datacube = np.asarray(datacube) if not hasattr(datacube, "shape") else datacube
    if len(datacube.shape) != 4 or min(datacube.shape) < 1:
        raise InputError(f"reconstruct: field 'datacube' has shape {tuple(datacube.shape)}; expected a non-empty (Rx, Ry, Qx, Qy) array.")
    rx, ry, qx, qy = datacube.shape
    if qx != qy:
        raise InputError(f"reconstruct: field 'datacube' has a {qx}x{qy} detector; expected a square detector (Qx == Qy).")
    cal = cal.with_center((qx, qy)).validate("reconstruct")
    n = qx
    amps = prepare_amplitudes(datacube, cal.detector_center_px)
    N = rx * ry
    sum_a2 = sum_of_squares(amps)
    mean_counts = sum_a2 / N
    if not mean_counts > 0:
        raise InputError("reconstruct: field 'datacube' holds no counts; expected diffraction patterns with signal.")

    energy = cal.energy_eV
    lam = physics.wavelength_A(energy)
    sampling = physics.realspace_sampling_A(n, cal.mrad_per_pixel, energy)
    sigma = physics.interaction_constant(energy)

    if initial_positions_A is None:
        pos_A = fw.scan_positions_A((rx, ry), cal.scan_step_A, cal.scan_rotation_deg)
    else:
        pos_A = np.asarray(initial_positions_A, dtype=np.float64).reshape(-1, 2)
        if pos_A.shape != (N, 2) or not np.all(np.isfinite(pos_A)):
            raise InputError(f"reconstruct: field 'initial_positions_A' has shape {np.shape(initial_positions_A)}; expected ({rx}*{ry}, 2) finite values in Angstrom.")
    obj_shape, origin = fw.object_geometry(pos_A, sampling, n, params.object_margin_px)

    famp = None
    if vacuum_probe_intensity is not None:
        vac = np.asarray(vacuum_probe_intensity, dtype=np.float64)
        if vac.shape != (n, n) or not np.all(np.isfinite(vac)) or vac.min() < 0 or vac.sum() <= 0:
            raise InputError(f"reconstruct: field 'vacuum_probe_intensity' has shape {vac.shape}; expected a finite non-negative ({n}, {n}) pattern with counts.")
        shift = (n // 2 - int(round(cal.detector_center_px[0])), n // 2 - int(round(cal.detector_center_px[1])))
        vac = np.fft.ifftshift(np.roll(vac, shift, axis=(0, 1)))
        famp = np.sqrt(vac * mean_counts / vac.sum())

    if initial_probe is not None:
        pr = np.asarray(initial_probe)
        if pr.shape != (n, n) or not np.all(np.isfinite(pr)):
            raise InputError(f"reconstruct: field 'initial_probe' has shape {pr.shape}; expected a finite complex ({n}, {n}) array.")
        pk = np.fft.fft2(pr.astype(np.complex128), norm="ortho")
        pk = (pk * np.sqrt(mean_counts / np.sum(np.abs(pk) ** 2))).astype(np.complex64)
    else:
        pk = fw.probe_from_aberrations(n, sampling, energy, cal.semiangle_mrad, initial_aberrations,
                                       mean_counts, famp)
    if famp is None and params.probe_fourier_amplitude_constraint:
        famp = np.abs(pk).astype(np.float64)

    basis = chi = None
    if params.probe_aberration_fit_order >= 2:
        basis, terms = fw.aberration_basis(n, sampling, lam, params.probe_aberration_fit_order)
        kx, ky = physics.spatial_frequencies((n, n), sampling)
        chi = physics.aberration_function(kx, ky, lam, initial_aberrations or physics.Aberrations())
        chi = np.broadcast_to(chi, (n, n)).copy()

    h = fw.propagator(n, sampling, lam, params.slice_thickness_A)
    eng = MultisliceEngine(amps, pk, fw.positions_to_pixels(pos_A, origin, sampling), obj_shape, sigma, h,
                           params, famp, basis, chi, backend, amplitude_sum_sq=sum_a2)
    eng.sampling_A = sampling
    chi0 = None if chi is None else chi.copy()

    fp = None
    if checkpoint_path is not None:
        fp = _fingerprint(params, amps, pk, pos_A, famp)
        cp = Path(checkpoint_path)
        if cp.exists():
            try:
                st = rio.read_checkpoint(cp)
            except (OSError, KeyError, InputError) as e:
                log.warning("checkpoint %s unreadable (%s); starting afresh", cp, e)
                st = None
            if st is not None and st["fingerprint"] == fp and st["iteration"] <= params.num_iterations:
                eng.load_state(st)
                log.info("resumed from checkpoint %s at iteration %d", cp, eng.iteration)
            elif st is not None:
                log.warning("checkpoint %s belongs to other data or parameters; starting afresh", cp)

    engine_GiB = eng.array_bytes() / 1024**3
    log.info("reconstruct: %d positions, window %d px at %.4f A, object %s x %d slices of %.2f A, batch %d, %s backend, "
             "%s FFTs, engine arrays %.3f GiB", N, n, sampling, obj_shape, params.num_slices, params.slice_thickness_A,
             eng.B, eng.be.name, getattr(eng.be, "fft_library", "?"), engine_GiB)
    while eng.iteration < params.num_iterations:
        err = eng.run_iteration()
        it = eng.iteration
        log.info("iteration %d/%d error %.6g loss %.6g step %.4g seconds %.3f", it, params.num_iterations,
                 err, eng.history["loss"][-1], eng.history["step"][-1], eng.history["seconds"][-1])
        if checkpoint_path is not None and params.checkpoint_every and it % params.checkpoint_every == 0:
            rio.write_checkpoint(checkpoint_path, eng.state(), fp)
        if on_iteration is not None:
            on_iteration(it, eng.history["seconds"][-1])

    ab = {}
    if chi is not None:
        # coefficients of the fitted change relative to the initial surface (least squares)
        m = (famp if famp is not None else np.abs(pk)) > 0
        coef, *_ = np.linalg.lstsq(basis[:, m].T, (chi0 - eng.chi)[m], rcond=None)
        ab = {f"{p_},{m_},{k_}": float(c) for (p_, m_, k_), c in zip(terms, -coef)}
    probe = np.fft.ifft2(eng.be.asnumpy(eng.Pk).astype(np.complex128), norm="ortho").astype(np.complex64)
    return ReconstructionResult(
        potential_VA=eng.be.asnumpy(eng.V), sampling_A=float(sampling), slice_thickness_A=float(params.slice_thickness_A),
        origin_A=np.asarray(origin, dtype=np.float64), probe=probe,
        positions_initial_A=pos_A, positions_A=eng.pos * sampling + origin,
        error_history=np.array(eng.history["error"]), loss_history=np.array(eng.history["loss"]),
        step_history=np.array(eng.history["step"]), seconds_history=np.array(eng.history["seconds"]),
        parameters=params, energy_eV=float(energy), semiangle_mrad=float(cal.semiangle_mrad),
        scan_shape=(rx, ry), iterations_done=eng.iteration, aberrations_fit=ab,
        fft_library=str(getattr(eng.be, "fft_library", "")), engine_GiB=float(engine_GiB))
