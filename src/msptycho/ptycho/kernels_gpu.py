"""CuPy (GPU) backend of the multislice engine: the CPU backend's maths with array kernels.

:class:`GPUBackend` has exactly the interface of :class:`~msptycho.ptycho.kernels_cpu.CPUBackend`
(same kernel names, signatures and in-place semantics; unnormalised in-place batched FFTs with
gain ``sqrt(n0 * n1)``; ``zeros``/``asarray``/``asnumpy``), so
:class:`~msptycho.ptycho.engine.MultisliceEngine` runs unchanged on it: the engine allocates its
state and work arrays through the backend, which keeps them in GPU memory.

Every kernel has a pure array formulation written against an array module ``xp``; with
``xp=numpy`` it runs on the CPU, which is how the maths is verified where there is no GPU
(``tests/test_ptycho_gpu.py`` compares each kernel with the Numba kernel). With ``xp=cupy`` and
``fused=True`` (the default) the hot kernels are replaced by hand-written CUDA kernels, one
launch each:

* ``incident``, ``transmit`` (window gather fused with the multiply), ``residual`` (detector
  gradient; the per-position error and loss are then summed by CuPy reductions),
  ``refresh_transmission`` and ``update_object`` (sincos fused with the step): ``ElementwiseKernel``;
* ``probe_gradient``: an ``ElementwiseKernel`` over the window pixels, each summing the batch's
  positions in batch order;
* ``back_slice`` (the scatter-add of the potential gradient and the illumination): a
  ``RawKernel`` that *gathers* instead of scattering: one thread per object pixel visits the
  batch's positions in batch order and also writes the back-propagated wave of each window pixel
  it owns (every window pixel belongs to exactly one object pixel, so the writes never race);
  the rows' touched spans and largest illumination come out of the same launch through integer
  atomic min/max (exact in any order, so deterministic).

No kernel uses atomic additions: every sum runs in a fixed order (the per-pixel ones in batch
order, as on the CPU; the per-position ones as CuPy's tree reductions, fixed for a given device
and shape), so a GPU run is bit-reproducible on the same device and CuPy version. It is not
bit-identical to the CPU run: CUDA contracts multiply-adds into FMAs, uses its own ``sincosf``
and ``logf`` and cuFFT rounds differently from pocketfft; the results agree to single-precision
tolerance. ``multiply`` (one broadcast CuPy multiply) and the kernels used only by position
correction and the constraints (``ramps``, ``copy_gradient``, ``position_gradient``,
``project_potential``, ``exit_shift_derivative``, ``position_curvature``, ``tv_step``,
``clip_negative``) run as CuPy array expressions (several launches, deterministic).

Without a GPU the CUDA sources are checked by ``tests/test_ptycho_gpu.py`` compiled as C++ on the
CPU (``std::complex``, a loop over the launch grid), through this class's fused path; NVRTC
compilation, CuPy's launch machinery and cuFFT are only exercised where a GPU is present.
"""

from __future__ import annotations

import numpy as np

__all__ = ["GPUBackend", "GPUUnavailableError"]


class GPUUnavailableError(RuntimeError):
    """CuPy or a CUDA device is missing."""


def _import_cupy():
    """Return the ``cupy`` module if it imports and sees a CUDA device, else raise."""
    try:
        import cupy
    except Exception as e:  # ImportError, or a CUDA library failing to load
        raise GPUUnavailableError(
            f"GPUBackend needs CuPy and a CUDA GPU: install the 'gpu' extra (pip install 'msptycho[gpu]', "
            f"or the envs/ptycho-gpu.yaml environment), CuPy failed to import ({e}).") from e
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:
        raise GPUUnavailableError(
            f"GPUBackend needs a CUDA GPU and the 'gpu' extra (CuPy), but CUDA reports no usable device ({e}).") from e
    if count < 1:
        raise GPUUnavailableError("GPUBackend needs a CUDA GPU and the 'gpu' extra (CuPy), but no CUDA device is visible.")
    return cupy


def cuda_available() -> tuple[bool, str]:
    """Whether :class:`GPUBackend` can run here, and if not, why (for skips and benchmarks)."""
    try:
        _import_cupy()
    except GPUUnavailableError as e:
        return False, str(e)
    return True, ""


# -- CUDA sources (used only with xp=cupy and fused=True) ------------------------------------------

_BACK_SLICE_SRC = r"""
extern "C" __global__
void msp_back_slice(float* g, const float* ex, const float* T, const long long* c,
                    const int nb, const int n0, const int n1, const int nx, const int ny,
                    const float sg, float* grad, float* illum,
                    long long* row_lo, long long* row_hi, float* row_max)
{
    // g, ex (exit waves): (nb, n0, n1) complex64 as interleaved floats; T, grad, illum: (nx, ny);
    // row_lo = ny, row_hi = 0, row_max = 0 on entry
    const int y = blockIdx.x * blockDim.x + threadIdx.x;
    const int x = blockIdx.y;
    if (y >= ny || x >= nx) return;
    const long long o = (long long)x * ny + y;
    const float tr = T[2 * o], ti = -T[2 * o + 1];          // conj(T)
    float gs = grad[o], il = illum[o];
    bool hit = false;
    for (int b = 0; b < nb; ++b) {                           // batch order: deterministic
        const long long i = x - c[2 * b];
        if (i < 0 || i >= n0) continue;
        const long long j = y - c[2 * b + 1];
        if (j < 0 || j >= n1) continue;
        const long long k = 2 * (((long long)b * n0 + i) * n1 + j);
        const float gr = g[k], gi = g[k + 1];
        const float pr = ex[k], pi = ex[k + 1];
        gs += sg * (pr * gi - pi * gr);                      // sigma Im(conj(exit) g)
        il += pr * pr + pi * pi;
        g[k] = tr * gr - ti * gi;                            // conj(T) g
        g[k + 1] = tr * gi + ti * gr;
        hit = true;
        // touched span of the row: min/max are exact whatever the order (deterministic)
        if (j == 0) atomicMin(&row_lo[x], c[2 * b + 1]);
        if (j == n1 - 1) atomicMax(&row_hi[x], c[2 * b + 1] + n1);
    }
    if (hit) {
        grad[o] = gs;
        illum[o] = il;
        // il >= 0, so its bits order like the float: an exact, order-free maximum
        atomicMax(reinterpret_cast<int*>(&row_max[x]), __float_as_int(il));
    }
}
"""


class _CudaKernels:
    """Compiled CuPy kernels (built lazily on first use by CuPy's own cache)."""

    def __init__(self, cp):
        EK = cp.ElementwiseKernel
        self.cp = cp
        self.incident = EK(
            "raw complex64 P, raw complex64 rx, raw complex64 ry, float32 sc, int32 n0, int32 n1",
            "complex64 out",
            """
            const ptrdiff_t npix = (ptrdiff_t)n0 * n1;
            const ptrdiff_t b = i / npix, r = i - b * npix, ii = r / n1, jj = r - ii * n1;
            out = P[r] * (rx[b * n0 + ii] * sc) * ry[b * n1 + jj];
            """, "msp_incident")
        # in place: the wave is the kernel's only array argument (an input that is also the output
        # would make CuPy copy it first); out of place, the wave is copied into the output first
        self.transmit_in_place = EK(
            "raw complex64 Tr, raw int64 c, int32 n0, int32 n1, int32 ny",
            "complex64 psi",
            """
            const ptrdiff_t npix = (ptrdiff_t)n0 * n1;
            const ptrdiff_t b = i / npix, r = i - b * npix, ii = r / n1, jj = r - ii * n1;
            psi = psi * Tr[(c[2 * b] + ii) * ny + c[2 * b + 1] + jj];
            """, "msp_transmit_in_place")
        self.residual = EK(
            "raw float32 A, raw int64 idx, float32 sc, int32 mode, int32 npix",
            "complex64 w, float32 e, float32 lo",
            """
            const ptrdiff_t b = i / npix, r = i - b * npix;
            const float a = A[idx[b] * npix + r];
            const complex<float> v = w * sc;
            const float m2 = v.real() * v.real() + v.imag() * v.imag();
            const float m = sqrtf(m2);
            const float d = m - a;
            e = d * d;
            float f;
            if (mode) {
                const float a2 = a * a;
                lo = m2 - a2 * logf(m2 + 1e-12f);
                f = (mode == 2) ? (m2 - a2) / (m2 + a2 + 1e-12f) : 1.0f - a2 / (m2 + 1e-12f);
            } else {
                lo = d * d;
                f = (m > 0.0f) ? 1.0f - a / m : 1.0f;
            }
            w = (v * (2.0f * sc)) * f;
            """, "msp_residual")
        self.refresh = EK(
            "float32 V, float32 sg", "complex64 Tr",
            """
            float s, co;
            sincosf(sg * V, &s, &co);
            Tr = complex<float>(co, s);
            """, "msp_refresh_transmission")
        self.update = EK(
            "raw int64 lo, raw int64 hi, float32 c, float32 fl, float32 sg, int32 ny",
            "float32 V, complex64 Tr, float32 G, float32 IL",
            """
            const ptrdiff_t x = i / ny, y = i - x * ny;
            if (y >= lo[x] && y < hi[x]) {
                const float il = IL;
                if (il > 0.0f) {
                    const float v = V - c * G / (il + fl);
                    V = v;
                    float s, co;
                    sincosf(sg * v, &s, &co);
                    Tr = complex<float>(co, s);
                }
                G = 0.0f;
                IL = 0.0f;
            }
            """, "msp_update_object")
        self.probe_gradient = EK(
            "raw complex64 g, raw complex64 rx, raw complex64 ry, int32 nb, int32 n0, int32 n1",
            "complex64 out",
            """
            const ptrdiff_t ii = i / n1, jj = i - ii * n1;
            complex<float> acc(0.0f, 0.0f);
            for (int b = 0; b < nb; ++b) {
                acc += conj(rx[(ptrdiff_t)b * n0 + ii]) * conj(ry[(ptrdiff_t)b * n1 + jj])
                       * g[((ptrdiff_t)b * n0 + ii) * n1 + jj];
            }
            out = acc;
            """, "msp_probe_gradient")
        self.back_slice = cp.RawKernel(_BACK_SLICE_SRC, "msp_back_slice")
        self.row_init = EK("int64 ny", "int64 lo, int64 hi, float32 mx", "lo = ny; hi = 0; mx = 0.0f;",
                           "msp_row_init")


class GPUBackend:
    """FFTs and kernels on a CUDA GPU through CuPy (or, for verification, on the CPU with numpy).

    Same interface and semantics as :class:`~msptycho.ptycho.kernels_cpu.CPUBackend`: FFTs are
    2-D over the last two axes, batched over the leading axes, in place, complex64 and
    unnormalised in both directions (gain ``sqrt(n0 * n1)`` each); every kernel writes into the
    arrays it is given. The arrays are CuPy arrays with ``xp=cupy`` and numpy arrays with
    ``xp=numpy``; :meth:`asarray` and :meth:`asnumpy` move data between host and backend.

    Parameters
    ----------
    xp : module, optional
        Array module: ``cupy`` (default; imported here) or ``numpy`` (pure array formulation of
        every kernel, on the CPU: for tests without a GPU).
    fused : bool, optional
        With CuPy, use the hand-written CUDA kernels (default ``True``); ``False`` runs the pure
        array formulation on the GPU (slower, a second path for cross-checks). Ignored with numpy.

    Raises
    ------
    GPUUnavailableError
        If ``xp`` is omitted and CuPy does not import or sees no CUDA device.
    """

    name = "gpu"

    def __init__(self, xp=None, fused: bool = True):
        if xp is None:
            xp = _import_cupy()
        self.xp = xp
        self.is_cupy = xp.__name__ == "cupy"
        self.fused = bool(fused) and self.is_cupy
        self.fft_library = "cufft" if self.is_cupy else "numpy"
        if self.is_cupy:
            self.name = "gpu"
            self._k = _CudaKernels(xp) if self.fused else None
            import cupyx.scipy.fft as cufft
            self._cufft = cufft
        else:
            self.name = "gpu-numpy"
            self._k = None

    # -- arrays and FFTs ---------------------------------------------------------------------------
    @staticmethod
    def fft_gain(n0: int, n1: int) -> float:
        """Factor by which :meth:`fft2` and :meth:`ifft2` exceed the unitary transforms."""
        return float(np.sqrt(n0 * n1))

    def zeros(self, shape, dtype=np.complex64):
        """Zeroed array on the backend."""
        return self.xp.zeros(shape, dtype=dtype)

    def asarray(self, a):
        """``a`` as a backend array (a host-to-device copy with CuPy; ``a`` itself if it is one)."""
        return self.xp.asarray(a)

    def asnumpy(self, a):
        """``a`` as a numpy array (a device-to-host copy with CuPy)."""
        if self.is_cupy and isinstance(a, self.xp.ndarray):
            return self.xp.asnumpy(a)
        return np.asarray(a)

    def _fft(self, a, forward: bool, out=None) -> None:
        if out is not None and out is not a:
            out[...] = a          # out of place: transform a copy, in place
            a = out
        if self.is_cupy:
            if not a.flags.c_contiguous:
                raise ValueError("GPUBackend FFTs need C-contiguous arrays")
            f = self._cufft.fft2 if forward else self._cufft.ifft2
            # C2C with overwrite_x runs cuFFT in place; norm: no scaling in either direction
            r = f(a, axes=(-2, -1), norm="backward" if forward else "forward", overwrite_x=True)
            if r.data.ptr != a.data.ptr:  # pragma: no cover - CuPy chose an out-of-place plan
                a[...] = r
        elif forward:
            np.fft.fft2(a, out=a)
        else:
            # one axis at a time: numpy 2.4's ifft2 mishandles ``out`` (numpy/numpy#30909, fixed
            # by numpy/numpy#30910); fft2 and the 1-D transforms are right
            np.fft.ifft(a, axis=-1, norm="forward", out=a)
            np.fft.ifft(a, axis=-2, norm="forward", out=a)

    def fft2(self, a, out=None) -> None:
        """Unnormalised forward 2-D FFT over the last two axes, in place or into ``out`` (same
        shape; ``a`` is then kept: copied into ``out`` and transformed there)."""
        self._fft(a, True, out)

    def ifft2(self, a, out=None) -> None:
        """Unnormalised inverse 2-D FFT over the last two axes, in place or into ``out``."""
        self._fft(a, False, out)

    # -- helpers ------------------------------------------------------------------------------------
    def _windows(self, corners, nb, n0, n1):
        """Row (nb, n0, 1) and column (nb, 1, n1) object indices of the batch's windows."""
        xp = self.xp
        c = corners[:nb]
        rows = c[:, 0:1] + xp.arange(n0, dtype=c.dtype)[None, :]
        cols = c[:, 1:2] + xp.arange(n1, dtype=c.dtype)[None, :]
        return rows[:, :, None], cols[:, None, :]

    def _span(self, row_lo, row_hi, ny):
        """Mask (nx, ny) of the touched columns ``row_lo[x] <= y < row_hi[x]`` of each row."""
        y = self.xp.arange(ny, dtype=row_lo.dtype)[None, :]
        return (y >= row_lo[:, None]) & (y < row_hi[:, None])

    @staticmethod
    def _sincos(xp, ph):
        """``cos(ph) + i sin(ph)`` in complex64 (``ph`` float32)."""
        out = xp.empty(ph.shape, dtype=np.complex64)
        out.real[...] = xp.cos(ph)
        out.imag[...] = xp.sin(ph)
        return out

    # -- kernels (same names, signatures and semantics as kernels_cpu) ------------------------------
    def ramps(self, frac, kx, ky, rampx, rampy):
        """Separable sub-pixel shift phase ramps ``exp(-2 pi i k frac)`` (see kernels_cpu.ramps)."""
        xp = self.xp
        nb = frac.shape[0]
        for k, f, out in ((kx, frac[:, 0:1], rampx), (ky, frac[:, 1:2], rampy)):
            ph = (-2.0 * np.pi * k.astype(np.float64))[None, :] * f
            out[:nb].real[...] = xp.cos(ph)
            out[:nb].imag[...] = xp.sin(ph)

    def incident(self, probe_k, rampx, rampy, scale, out):
        """``out[b] = scale * probe_k * rampx[b][:, None] * rampy[b][None, :]``."""
        xp = self.xp
        nb, n0, n1 = out.shape
        if self.fused:
            self._k.incident(probe_k, rampx, rampy, np.float32(scale), np.int32(n0), np.int32(n1), out)
            return
        rx = rampx[:nb] * np.float32(scale)
        xp.multiply(probe_k[None], rx[:, :, None], out=out)
        xp.multiply(out, rampy[:nb, None, :], out=out)

    def refresh_transmission(self, potential, sigma, trans):
        """``trans = exp(i sigma V)`` for the whole object (complex64; float32 phase)."""
        if self.fused:
            self._k.refresh(potential, np.float32(sigma), trans)
            return
        trans[...] = self._sincos(self.xp, np.float32(sigma) * potential)

    def transmit(self, psi, trans, corners, out):
        """``out[b] = psi[b] * trans[window b]`` (window of position ``b`` at ``corners[b]``);
        ``out`` may be ``psi`` (in place)."""
        nb, n0, n1 = psi.shape
        if self.fused:
            if out is not psi:
                out[...] = psi
            self._k.transmit_in_place(trans, self.xp.ascontiguousarray(corners[:nb]), np.int32(n0), np.int32(n1),
                                      np.int32(trans.shape[1]), out)
            return
        rows, cols = self._windows(corners, nb, n0, n1)
        self.xp.multiply(psi, trans[rows, cols], out=out)

    def multiply(self, a, h):
        """``a[b] *= h`` for every ``b`` (one broadcast multiply)."""
        self.xp.multiply(a, h, out=a)

    def residual(self, wave_k, amplitudes, index, poisson, scale, err, loss):
        """Detector-plane residual: replace ``wave_k`` by the loss gradient (see kernels_cpu.residual).

        ``poisson``: 0 (or False) amplitude loss, 1 (or True) Poisson loss, 2 Poisson gradient
        preconditioned by its per-pixel curvature, ``2 Psi (|Psi|^2 - a^2) / (|Psi|^2 + a^2)``.
        ``err[b]``/``loss[b]`` receive the per-position amplitude error and loss (float64).
        """
        xp = self.xp
        nb, n0, n1 = wave_k.shape
        if self.fused:
            e = xp.empty(wave_k.shape, dtype=np.float32)
            lo = xp.empty(wave_k.shape, dtype=np.float32)
            self._k.residual(amplitudes, xp.ascontiguousarray(index[:nb]), np.float32(scale), np.int32(poisson),
                             np.int32(n0 * n1), wave_k, e, lo)
            e.sum(axis=(1, 2), dtype=np.float64, out=err[:nb])
            lo.sum(axis=(1, 2), dtype=np.float64, out=loss[:nb])
            return
        sc = np.float32(scale)
        a = amplitudes[index[:nb]]
        w = wave_k * sc
        m2 = w.real * w.real + w.imag * w.imag
        m = xp.sqrt(m2)
        d = m - a
        dd = d * d
        err[:nb] = dd.astype(np.float64).sum(axis=(1, 2))
        if poisson:
            tiny = np.float32(1e-12)
            a2 = a * a
            loss[:nb] = (m2 - a2 * xp.log(m2 + tiny)).astype(np.float64).sum(axis=(1, 2))
            if poisson == 2:
                f = (m2 - a2) / (m2 + a2 + tiny)
            else:
                f = np.float32(1.0) - a2 / (m2 + tiny)
        else:
            loss[:nb] = err[:nb]
            pos = m > 0
            f = xp.where(pos, np.float32(1.0) - a / xp.where(pos, m, np.float32(1.0)), np.float32(1.0))
        xp.multiply(w * (np.float32(2.0) * sc), f, out=wave_k)

    def _row_bounds(self, corners, nb, n0, n1, nx, ny, row_lo, row_hi):
        xp = self.xp
        c = corners[:nb]
        x = xp.arange(nx, dtype=c.dtype)[:, None]
        cover = (x >= c[None, :, 0]) & (x < c[None, :, 0] + n0)           # (nx, nb)
        if nb:
            row_lo[...] = xp.where(cover, c[None, :, 1], ny).min(axis=1)
            row_hi[...] = xp.where(cover, c[None, :, 1] + n1, 0).max(axis=1)
        else:
            row_lo[...] = ny
            row_hi[...] = 0

    def back_slice(self, g, exit_wave, trans, corners, nb, sigma, grad, illum, row_lo, row_hi, row_max):
        """Back-propagate through one slice's transmission and add the potential gradient and the
        illumination into ``grad``/``illum`` (see kernels_cpu.back_slice).

        Deterministic: every object pixel sums its positions in batch order (no atomic adds). The
        fused kernel also writes each row's touched span and largest illumination with integer
        atomic min/max, which are exact in any order (``illum >= 0``, so its bits order like
        the float), hence bit-reproducible too.
        """
        xp = self.xp
        n0, n1 = g.shape[1], g.shape[2]
        nx, ny = grad.shape
        sg = np.float32(sigma)
        if self.fused:
            c = xp.ascontiguousarray(corners[:nb])
            for arr in (g, exit_wave, trans, grad, illum):
                if not arr.flags.c_contiguous:
                    raise ValueError("GPUBackend.back_slice needs C-contiguous arrays")
            for arr in (row_lo, row_hi, row_max):
                if not arr.flags.c_contiguous:
                    raise ValueError("GPUBackend.back_slice needs C-contiguous arrays")
            self._k.row_init(np.int64(ny), row_lo, row_hi, row_max)
            block = 256
            self._k.back_slice(((ny + block - 1) // block, nx), (block,),
                               (g.view(np.float32), exit_wave.view(np.float32), trans.view(np.float32), c,
                                np.int32(nb), np.int32(n0), np.int32(n1), np.int32(nx), np.int32(ny), sg,
                                grad, illum, row_lo, row_hi, row_max))
            return
        else:
            rows, cols = self._windows(corners, nb, n0, n1)
            u = g[:nb]
            p = exit_wave[:nb]
            contrib = sg * (p.real * u.imag - p.imag * u.real)      # sigma Im(conj(exit) g)
            il = p.real * p.real + p.imag * p.imag
            g[:nb] = xp.conj(trans[rows, cols]) * u
            ch = self.asnumpy(corners[:nb])
            for b in range(nb):                       # batch order, as on the CPU (deterministic)
                x0, y0 = int(ch[b, 0]), int(ch[b, 1])
                grad[x0:x0 + n0, y0:y0 + n1] += contrib[b]
                illum[x0:x0 + n0, y0:y0 + n1] += il[b]
        self._row_bounds(corners, nb, n0, n1, nx, ny, row_lo, row_hi)
        row_max[...] = xp.where(self._span(row_lo, row_hi, ny), illum, np.float32(0.0)).max(axis=1)

    def update_object(self, potential, trans, grad, illum, row_lo, row_hi, coef, floor, sigma):
        """``V -= coef * grad / (illum + floor)`` where ``illum > 0`` in the touched span, refresh
        ``trans`` there, zero ``grad``/``illum`` in the span."""
        xp = self.xp
        c, fl, sg = np.float32(coef), np.float32(floor), np.float32(sigma)
        if self.fused:
            self._k.update(row_lo, row_hi, c, fl, sg, np.int32(potential.shape[1]), potential, trans, grad, illum)
            return
        span = self._span(row_lo, row_hi, potential.shape[1])
        upd = span & (illum > 0)
        den = xp.where(upd, illum + fl, np.float32(1.0))
        v = potential - c * grad / den
        potential[...] = xp.where(upd, v, potential)
        trans[...] = xp.where(upd, self._sincos(xp, sg * potential), trans)
        grad[...] = xp.where(span, np.float32(0.0), grad)
        illum[...] = xp.where(span, np.float32(0.0), illum)

    def copy_gradient(self, out, grad, illum, row_lo, row_hi):
        """Add the scattered gradient into ``out`` and zero ``grad``/``illum`` (gradient checks)."""
        xp = self.xp
        span = self._span(row_lo, row_hi, grad.shape[1])
        out += xp.where(span, grad, np.float32(0.0))
        grad[...] = xp.where(span, np.float32(0.0), grad)
        illum[...] = xp.where(span, np.float32(0.0), illum)

    def probe_gradient(self, g_k, rampx, rampy, nb, out):
        """``out = sum_b conj(ramp_b) * g_k[b]`` (summed in batch order)."""
        xp = self.xp
        n0, n1 = out.shape
        if self.fused:
            self._k.probe_gradient(g_k, rampx, rampy, np.int32(nb), np.int32(n0), np.int32(n1), out)
            return
        t = xp.conj(rampx[:nb])[:, :, None] * xp.conj(rampy[:nb])[:, None, :]
        t *= g_k[:nb]
        out[...] = t.sum(axis=0) if nb else 0

    def position_gradient(self, g_k, probe_k, rampx, rampy, kx, ky, nb, out):
        """Gradient of the loss with respect to each position's sub-pixel shift (per pixel):
        ``dL/df_x = 2 pi sum kx Im(conj(G) Q)`` with ``Q = probe_k * ramp_b``, likewise y."""
        q = probe_k[None] * rampx[:nb, :, None]
        q *= rampy[:nb, None, :]
        gg = g_k[:nb]
        im = gg.real * q.imag - gg.imag * q.real
        out[:nb, 0] = 2.0 * np.pi * (kx[None, :, None] * im).astype(np.float64).sum(axis=(1, 2))
        out[:nb, 1] = 2.0 * np.pi * (ky[None, None, :] * im).astype(np.float64).sum(axis=(1, 2))

    def project_potential(self, potential, out):
        """``out = sum_s potential[s]`` (float32, slice order)."""
        out[...] = potential.sum(axis=0, dtype=np.float32)

    def exit_shift_derivative(self, exit_wave, projected, corners, nb, sigma, dx, dy):
        """``exit * i sigma dVproj/dx`` (and y) per window pixel, central differences clamped at
        the object edge (see kernels_cpu.exit_shift_derivative)."""
        xp = self.xp
        n0, n1 = dx.shape[1], dx.shape[2]
        nx, ny = projected.shape
        X, Y = self._windows(corners, nb, n0, n1)
        xm, xq = xp.maximum(X - 1, 0), xp.minimum(X + 1, nx - 1)
        ym, yq = xp.maximum(Y - 1, 0), xp.minimum(Y + 1, ny - 1)
        ex = exit_wave[:nb]
        hs = np.float32(0.5 * sigma)
        gx = hs * (projected[xq, Y] - projected[xm, Y])
        gy = hs * (projected[X, yq] - projected[X, ym])
        dx[:nb] = ex * (1j * gx).astype(np.complex64)
        dy[:nb] = ex * (1j * gy).astype(np.complex64)

    def position_curvature(self, wave_k, dx, dy, nb, out):
        """Gauss-Newton curvature ``2 sum_k Re(conj(Psi/|Psi|) dPsi)^2`` along x and y per position."""
        xp = self.xp
        w = wave_k[:nb]
        m = xp.sqrt(w.real * w.real + w.imag * w.imag)
        pos = m > 0
        ms = xp.where(pos, m, np.float32(1.0))
        for ax, d in enumerate((dx[:nb], dy[:nb])):
            u = xp.where(pos, (w.real * d.real + w.imag * d.imag) / ms, np.float32(0.0))
            out[:nb, ax] = 2.0 * (u.astype(np.float64) ** 2).sum(axis=(1, 2))

    def tv_step(self, potential, work, weight_z, weight_xy, eps):
        """One gradient step on the smoothed total variation along z and in x-y (see
        kernels_cpu.tv_step; differences in float32, the step in float64 as there)."""
        xp = self.xp
        work[...] = potential
        nz = potential.shape[0]
        e2 = float(eps) * float(eps)
        w = work
        d = xp.zeros(potential.shape, dtype=np.float64)
        if weight_xy > 0:
            dxf = xp.zeros(potential.shape, dtype=np.float64)
            dyf = xp.zeros(potential.shape, dtype=np.float64)
            dxf[:, :-1, :] = w[:, 1:, :] - w[:, :-1, :]
            dyf[:, :, :-1] = w[:, :, 1:] - w[:, :, :-1]
            nrm = xp.sqrt(dxf * dxf + dyf * dyf + e2)
            d -= (dxf + dyf) / nrm
            d[:, 1:, :] += (dxf / nrm)[:, :-1, :]
            d[:, :, 1:] += (dyf / nrm)[:, :, :-1]
            d *= weight_xy
        if weight_z > 0 and nz > 1:
            dzf = (w[1:] - w[:-1]).astype(np.float64)
            t = dzf / xp.sqrt(dzf * dzf + e2)
            dz = xp.zeros(potential.shape, dtype=np.float64)
            dz[:-1] -= t
            dz[1:] += t
            d += weight_z * dz
        potential[...] = w - d

    def clip_negative(self, potential):
        """``V = max(V, 0)`` in place."""
        self.xp.maximum(potential, np.float32(0.0), out=potential)
