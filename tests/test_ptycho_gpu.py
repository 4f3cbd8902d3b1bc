"""GPU backend (:mod:`msptycho.ptycho.kernels_gpu`) against the CPU backend.

Without a GPU the backend's maths is checked in its numpy mode (``GPUBackend(xp=numpy)``): every
kernel against the Numba kernel on random inputs, and a few iterations of a small reconstruction
against the CPU engine. Where CuPy imports and sees a CUDA device the same checks also run on the
GPU, for the fused CUDA kernels and for the pure array path, and otherwise skip with the reason.
Without a GPU the fused kernels' CUDA sources are also compiled as C++ (host compiler, std::complex)
and driven through the backend's fused path (see the end of the file).

Tolerances are single precision. The kernels compute in float32/complex64 like the Numba ones but
in another order (pairwise or tree sums, FMAs, another FFT and libm), so single kernels agree to
a few float32 ulps (``REL`` = 1e-5 of the array's largest value). After five iterations the
numpy-mode engine differs from the CPU engine by at most 7.5e-7 of the largest potential value
(1.6e-7 relative L2), 3e-7 in the probe and 1.5e-5 px in the positions: the same size as the CPU
engine's own response to scaling the data by 1 + 1e-6, i.e. rounding noise carried through the
multislice chain and the steps. ``END_REL`` = 2e-5 (about 300 float32 ulps, 25 times the measured
difference) leaves room for cuFFT and FMA rounding on the GPU while still catching any wrong term.

The iteration checks start from a random object, not from ``V = 0``: with the amplitude loss the
detector gradient ``2 (Psi - a Psi/|Psi|)`` at pixels where the model is ~0 but the data are not
(outside the probe aperture when the object is empty) has the phase of the FFT's rounding noise,
so from ``V = 0`` even the CPU engine changes its potential by 20-50 % (L2) when the data are
scaled by 1 + 1e-6; no two FFT libraries can agree there. The Poisson loss (preconditioned update)
does not have the problem, so the ``reconstruct`` check uses it.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

from dataclasses import replace

from msptycho.ptycho import MultisliceEngine, ReconstructionParameters, reconstruct
from msptycho.ptycho import kernels_cpu as kc
from msptycho.ptycho.kernels_gpu import GPUBackend, GPUUnavailableError, cuda_available

from test_ptycho import DEFOCUS, FAST, SAMPLING, SIGMA, _dataset, make_engine

HAS_CUDA, WHY_NOT = cuda_available()
NEEDS_CUDA = pytest.mark.skipif(not HAS_CUDA, reason=f"no CuPy/CUDA GPU here: {WHY_NOT}")


def _backend(kind):
    if kind == "numpy":
        return GPUBackend(xp=np)
    import cupy
    return GPUBackend(xp=cupy, fused=(kind == "cupy-fused"))


BACKENDS = ["numpy",
            pytest.param("cupy-fused", marks=NEEDS_CUDA),
            pytest.param("cupy-arrays", marks=NEEDS_CUDA)]

REL = 1e-5       # single kernel: a few float32 ulps of the largest value
END_REL = 2e-5   # after several iterations (see the module docstring)


def close(a, b, rel=REL):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape and a.dtype == b.dtype, (a.shape, b.shape, a.dtype, b.dtype)
    scale = max(float(np.abs(b).max()), 1e-30)
    err = float(np.abs(a.astype(np.complex128) - b.astype(np.complex128)).max())
    assert err <= rel * scale, f"max |diff| {err:.3g} > {rel:g} x {scale:.3g}"


def cplx(rng, shape, s=1.0):
    return (s * (rng.standard_normal(shape) + 1j * rng.standard_normal(shape))).astype(np.complex64)


class Case:
    """Random kernel inputs: batch of 5 windows of 8 x 6 pixels in a 20 x 17 object, 3 slices."""

    def __init__(self, seed=0):
        rng = np.random.default_rng(seed)
        self.nb, self.n0, self.n1, self.nx, self.ny, self.nz = 5, 8, 6, 20, 17, 3
        nb, n0, n1 = self.nb, self.n0, self.n1
        self.corners = np.stack([rng.integers(0, self.nx - n0 + 1, nb), rng.integers(0, self.ny - n1 + 1, nb)], 1)
        self.corners[1] = self.corners[0]      # two positions share a window: overlapping scatter
        self.corners = self.corners.astype(np.int64)
        self.frac = rng.uniform(-0.5, 0.5, (nb, 2))
        self.kx = np.fft.fftfreq(n0).astype(np.float32)
        self.ky = np.fft.fftfreq(n1).astype(np.float32)
        self.V = (rng.random((self.nz, self.nx, self.ny)) * 3).astype(np.float32)
        self.T = np.exp(1j * 0.7 * self.V).astype(np.complex64)
        self.psi = cplx(rng, (nb, n0, n1))
        self.g = cplx(rng, (nb, n0, n1))
        self.Pk = cplx(rng, (n0, n1))
        self.h = np.exp(1j * rng.uniform(0, 6, (n0, n1))).astype(np.complex64)
        self.rampx = cplx(rng, (nb, n0))
        self.rampy = cplx(rng, (nb, n1))
        self.amps = (rng.random((9, n0, n1)) * 2).astype(np.float32)
        self.index = rng.permutation(9)[:nb].astype(np.int64)
        self.sigma = 0.7


def run_both(kind, cpu_fn, name, args, out_idx):
    """Call the CPU kernel and the backend kernel on copies of ``args``; compare the arguments
    listed in ``out_idx`` afterwards."""
    be = _backend(kind)
    a_cpu = [a.copy() if isinstance(a, np.ndarray) else a for a in args]
    a_gpu = [be.asarray(a.copy()) if isinstance(a, np.ndarray) else a for a in args]
    cpu_fn(*a_cpu)
    getattr(be, name)(*a_gpu)
    return [(be.asnumpy(a_gpu[i]), a_cpu[i]) for i in out_idx]


@pytest.mark.parametrize("kind", BACKENDS)
def test_elementwise_kernels_match_cpu(kind):
    c = Case(1)
    nb, n0, n1 = c.nb, c.n0, c.n1
    z = lambda *s: np.zeros(s, np.complex64)
    checks = {
        "ramps": ((c.frac, c.kx, c.ky, z(nb, n0), z(nb, n1)), (3, 4)),
        "incident": ((c.Pk, c.rampx, c.rampy, 0.25, z(nb, n0, n1)), (4,)),
        "transmit": ((c.psi, c.T[1], c.corners, z(nb, n0, n1)), (3,)),
        "multiply": ((c.g, c.h), (0,)),
        "refresh_transmission": ((c.V, c.sigma, z(*c.V.shape)), (2,)),
        "clip_negative": ((c.V - 1.5,), (0,)),
        "project_potential": ((c.V, np.zeros((c.nx, c.ny), np.float32)), (1,)),
    }
    for name, (args, outs) in checks.items():
        for got, want in run_both(kind, getattr(kc, name), name, args, outs):
            close(got, want)
    # the forward pass multiplies in place (its own kernel on the GPU)
    be = _backend(kind)
    want = z(nb, n0, n1)
    kc.transmit(c.psi, c.T[1], c.corners, want)
    wave = be.asarray(c.psi.copy())
    be.transmit(wave, be.asarray(c.T[1]), be.asarray(c.corners), wave)
    close(be.asnumpy(wave), want)


@pytest.mark.parametrize("kind", BACKENDS)
@pytest.mark.parametrize("poisson", [0, 1, 2])
def test_residual_matches_cpu(kind, poisson):
    c = Case(2)
    g = c.g * 3
    g[0, 0, 0] = 0                                     # |Psi| = 0: the amplitude loss's special case
    args = (g, c.amps, c.index, poisson, 0.5, np.zeros(c.nb), np.zeros(c.nb))
    for got, want in run_both(kind, kc.residual, "residual", args, (0, 5, 6)):
        close(got, want)


@pytest.mark.parametrize("kind", BACKENDS)
def test_back_slice_update_and_copy_match_cpu(kind):
    c = Case(3)
    nx, ny = c.nx, c.ny
    f32 = lambda *s: np.zeros(s, np.float32)
    i64 = lambda *s: np.zeros(s, np.int64)
    args = [c.g, c.psi, c.T[0], c.corners, c.nb, c.sigma, f32(nx, ny), f32(nx, ny), i64(nx), i64(nx), f32(nx)]
    be = _backend(kind)
    a_cpu = [a.copy() if isinstance(a, np.ndarray) else a for a in args]
    a_gpu = [be.asarray(a.copy()) if isinstance(a, np.ndarray) else a for a in args]
    kc.back_slice(*a_cpu)
    be.back_slice(*a_gpu)
    for i in (0, 6, 7, 8, 9, 10):                      # g, grad, illum, row_lo, row_hi, row_max
        close(be.asnumpy(a_gpu[i]), a_cpu[i])
    assert np.array_equal(be.asnumpy(a_gpu[8]), a_cpu[8]) and np.array_equal(be.asnumpy(a_gpu[9]), a_cpu[9])
    # the scatter is deterministic: a second run gives the same bits
    a2 = [be.asarray(a.copy()) if isinstance(a, np.ndarray) else a for a in args]
    be.back_slice(*a2)
    assert np.array_equal(be.asnumpy(a2[6]), be.asnumpy(a_gpu[6]))
    # object update from that gradient (V, T, grad, illum), then the gradient copy
    V, T = c.V[0].copy(), c.T[0].copy()
    cv = [V, T, a_cpu[6], a_cpu[7], a_cpu[8], a_cpu[9], 3.0, 0.1, c.sigma]
    gv = [be.asarray(V.copy()), be.asarray(T.copy()), a_gpu[6], a_gpu[7], a_gpu[8], a_gpu[9], 3.0, 0.1, c.sigma]
    kc.update_object(*cv)
    be.update_object(*gv)
    for i in range(4):
        close(be.asnumpy(gv[i]), cv[i])
    # copy_gradient on a fresh scatter
    a3c = [a.copy() if isinstance(a, np.ndarray) else a for a in args]
    a3g = [be.asarray(a.copy()) if isinstance(a, np.ndarray) else a for a in args]
    kc.back_slice(*a3c)
    be.back_slice(*a3g)
    oc, og = np.ones((nx, ny), np.float32), be.asarray(np.ones((nx, ny), np.float32))
    kc.copy_gradient(oc, a3c[6], a3c[7], a3c[8], a3c[9])
    be.copy_gradient(og, a3g[6], a3g[7], a3g[8], a3g[9])
    close(be.asnumpy(og), oc)
    assert not np.any(be.asnumpy(a3g[6])) and not np.any(be.asnumpy(a3g[7]))


@pytest.mark.parametrize("kind", BACKENDS)
def test_gradient_and_position_kernels_match_cpu(kind):
    c = Case(4)
    nb, n0, n1 = c.nb, c.n0, c.n1
    proj = c.V.sum(axis=0)
    checks = {
        "probe_gradient": ((c.g, c.rampx, c.rampy, nb, np.zeros((n0, n1), np.complex64)), (4,)),
        "position_gradient": ((c.g, c.Pk, c.rampx, c.rampy, c.kx, c.ky, nb, np.zeros((nb, 2))), (7,)),
        "exit_shift_derivative": ((c.psi, proj, c.corners, nb, c.sigma,
                                   np.zeros((nb, n0, n1), np.complex64), np.zeros((nb, n0, n1), np.complex64)),
                                  (5, 6)),
        "position_curvature": ((c.g, c.psi, c.psi * 0.3j, nb, np.zeros((nb, 2))), (4,)),
    }
    for name, (args, outs) in checks.items():
        for got, want in run_both(kind, getattr(kc, name), name, args, outs):
            close(got, want)


@pytest.mark.parametrize("kind", BACKENDS)
@pytest.mark.parametrize("weights", [(0.2, 0.0), (0.0, 0.2), (0.1, 0.05)])
def test_tv_step_matches_cpu(kind, weights):
    rng = np.random.default_rng(6)
    V = (rng.random((4, 11, 9)) * 10).astype(np.float32)
    args = (V, np.zeros_like(V), weights[0], weights[1], 0.1)
    (got, want), = run_both(kind, kc.tv_step, "tv_step", args, (0,))
    close(got, want)


@pytest.mark.parametrize("kind", BACKENDS)
def test_ffts_are_unnormalised_in_place_and_batched(kind):
    be = _backend(kind)
    rng = np.random.default_rng(7)
    a = cplx(rng, (3, 4, 8, 6))
    d = be.asarray(a.copy())
    be.fft2(d)
    close(be.asnumpy(d), np.fft.fft2(a).astype(np.complex64))
    be.ifft2(d)
    close(be.asnumpy(d), (a * (8 * 6)).astype(np.complex64))      # both unnormalised: gain^2
    e = be.zeros(a.shape)
    be.fft2(d, out=e)                                                # out of place: d is kept
    close(be.asnumpy(d), (a * (8 * 6)).astype(np.complex64))
    close(be.asnumpy(e), (np.fft.fft2(a) * (8 * 6)).astype(np.complex64))
    assert be.fft_gain(8, 6) == pytest.approx(np.sqrt(48))


def _engine(backend, loss="amplitude"):
    """Small well-conditioned case: 5 x 5 positions, 32^2 windows, 3 slices, batches of 7, data
    from one random object and the start from another (every detector pixel has model amplitude,
    see the module docstring); probe updates from iteration 1, positions from 2, TV and positivity."""
    ref, _, h = make_engine(nz=3, scan=(5, 5), loss=loss)
    p = replace(ref.p, batch_size=7, probe_update_start_iteration=1, position_correction_start_iteration=2,
                tv_xy_weight_VA=0.05, tv_z_weight_VA=0.05, positivity=True, seed=3)
    e = MultisliceEngine(ref.amps, ref.Pk, ref.pos, ref.obj_shape, SIGMA, h, p, backend=backend)
    e.V[...] = e.be.asarray(ref.V)
    e.refresh()
    e.sampling_A = SAMPLING
    return e


ITERATIONS = 5


@pytest.fixture(scope="module")
def cpu_engines():
    out = {}
    for loss in ("amplitude", "poisson"):
        e = _engine(None, loss)
        for _ in range(ITERATIONS):
            e.run_iteration()
        out[loss] = e
    return out


def _compare_engines(e, ref):
    be = e.be
    close(be.asnumpy(e.V), ref.V, END_REL)
    close(be.asnumpy(e.Pk), ref.Pk, END_REL)
    np.testing.assert_allclose(e.pos, ref.pos, rtol=0, atol=1e-3)                     # pixels
    np.testing.assert_allclose(e.history["error"], ref.history["error"], rtol=END_REL)
    assert ref.history["error"][-1] < ref.history["error"][0]                          # it did work
    assert np.abs(ref.pos - ref.pos_initial).max() > 1e-3                               # positions moved


@pytest.mark.parametrize("loss", ["amplitude", "poisson"])
def test_numpy_mode_iterations_agree_with_cpu(cpu_engines, loss):
    """Five iterations with object, probe, position (Gauss-Newton), TV and positivity updates:
    the backend's maths, run with numpy, against the Numba engine."""
    e = _engine(GPUBackend(xp=np), loss)
    for _ in range(ITERATIONS):
        e.run_iteration()
    _compare_engines(e, cpu_engines[loss])


def test_reconstruct_accepts_the_backend_and_returns_numpy():
    """``reconstruct(..., backend=...)`` end to end (state through the backend, results back as
    numpy) on the data of the CPU tests, with the Poisson loss (well conditioned from V = 0)."""
    dc, cal, vac, _, _ = _dataset(jitter_A=0.1)
    params = ReconstructionParameters(**dict(FAST, num_iterations=2, loss="poisson"), seed=7)
    kw = dict(vacuum_probe_intensity=vac, initial_aberrations=DEFOCUS)
    a = reconstruct(dc, cal, params, **kw)
    b = reconstruct(dc, cal, params, backend=GPUBackend(xp=np), **kw)
    assert type(b.potential_VA) is np.ndarray and type(b.probe) is np.ndarray
    assert np.linalg.norm(b.potential_VA - a.potential_VA) < 1e-3 * np.linalg.norm(a.potential_VA)
    np.testing.assert_allclose(b.error_history, a.error_history, rtol=1e-4)


def _plain(a):
    return isinstance(a, np.ndarray) and not isinstance(a, DeviceArray)


def _check(args, what):
    for a in args:
        if isinstance(a, (list, tuple)):
            _check(a, what)
        elif _plain(a) and a.ndim > 0:
            raise TypeError(f"host array mixed with backend arrays in {what}")


def _unwrap(a):
    if isinstance(a, DeviceArray):
        return a.view(np.ndarray)
    if isinstance(a, (list, tuple)):
        return type(a)(_unwrap(x) for x in a)
    return a


def _wrap(r):
    if type(r) is np.ndarray:
        return r.view(DeviceArray)
    if isinstance(r, tuple):
        return tuple(_wrap(x) for x in r)
    return r


class DeviceArray(np.ndarray):
    """numpy array standing in for a device array: numpy calls that mix it with host arrays
    raise (as CuPy's do), so host/device mixing in the engine shows up without a GPU."""

    def __array_ufunc__(self, ufunc, method, *inputs, out=None, **kw):
        _check(inputs + (out or ()), ufunc.__name__)
        if out:
            kw["out"] = tuple(_unwrap(o) for o in out)
        r = getattr(ufunc, method)(*_unwrap(inputs), **kw)
        return out[0] if out and len(out) == 1 else _wrap(r)

    def __array_function__(self, func, types, args, kwargs):
        _check(tuple(args) + tuple(kwargs.values()), func.__name__)
        kw = {k: _unwrap(v) for k, v in kwargs.items()}
        r = func(*_unwrap(args), **kw)
        if "out" in kwargs and kwargs["out"] is not None:
            return kwargs["out"]
        return _wrap(r)

    def __setitem__(self, key, value):
        _check((value,), "__setitem__")
        super().__setitem__(_unwrap(key), value)


class DeviceNumpy:
    """Array module whose functions return :class:`DeviceArray` (a stand-in for ``cupy``)."""
    __name__ = "device_numpy"
    ndarray = DeviceArray
    fft = np.fft

    def __getattr__(self, name):
        f = getattr(np, name)
        if not callable(f) or isinstance(f, type):
            return f
        def w(*a, **k):
            return _wrap(f(*a, **k))
        return w


def _device_backend():
    be = GPUBackend(xp=DeviceNumpy())
    be.asnumpy = lambda a: np.array(a.view(np.ndarray) if isinstance(a, DeviceArray) else a)
    be.asarray = lambda a: a if isinstance(a, DeviceArray) else np.array(a).view(DeviceArray)
    return be


def test_engine_keeps_host_and_backend_arrays_apart(tmp_path):
    """The engine with a backend whose arrays refuse to mix with host arrays (as CuPy's do):
    every update (object, probe with aberration fit and Fourier constraint, positions with the
    affine fit, TV, positivity), a checkpoint and resume, the gradient check path and the model
    patterns run, and the results come back as numpy arrays."""
    dc, cal, vac, _, _ = _dataset(jitter_A=0.1)
    params = ReconstructionParameters(**dict(FAST, num_iterations=3, loss="poisson", position_affine_fit=True,
                                             checkpoint_every=2), seed=7)
    kw = dict(vacuum_probe_intensity=vac, initial_aberrations=DEFOCUS, checkpoint_path=tmp_path / "ck.h5")
    r = reconstruct(dc, cal, replace(params, num_iterations=2), backend=_device_backend(), **kw)
    r = reconstruct(dc, cal, params, backend=_device_backend(), **kw)                # resumes at 2
    for f in ("potential_VA", "probe", "positions_A", "error_history"):
        assert type(getattr(r, f)) is np.ndarray, f
    ref = reconstruct(dc, cal, params, vacuum_probe_intensity=vac, initial_aberrations=DEFOCUS)
    np.testing.assert_allclose(r.error_history, ref.error_history, rtol=1e-4)
    e = _engine(_device_backend())
    grads = {}
    e.batch(np.arange(e.B), gradients=grads)
    assert all(type(v) is np.ndarray for v in grads.values())
    assert type(e.model_patterns(np.arange(3))) is np.ndarray


@NEEDS_CUDA
@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("loss", ["amplitude", "poisson"])
def test_cupy_iterations_agree_with_cpu(cpu_engines, fused, loss):
    """Parity on the GPU: the same small case, CPU engine vs CuPy backend, after five iterations;
    and a second GPU run gives the same bits (no atomics)."""
    import cupy
    runs = []
    for _ in range(2):
        e = _engine(GPUBackend(xp=cupy, fused=fused), loss)
        for _ in range(ITERATIONS):
            e.run_iteration()
        runs.append(e)
    _compare_engines(runs[0], cpu_engines[loss])
    assert np.array_equal(cupy.asnumpy(runs[0].V), cupy.asnumpy(runs[1].V))
    assert np.array_equal(runs[0].pos, runs[1].pos)


def test_default_constructor_needs_cupy_or_names_the_extra():
    if HAS_CUDA:
        assert GPUBackend().is_cupy
        return
    with pytest.raises(GPUUnavailableError, match="'gpu' extra"):
        GPUBackend()
    assert "'gpu' extra" in WHY_NOT


# -- the CUDA sources, compiled as C++ and run on the CPU ---------------------------------------------
# The fused kernels' bodies are plain C++ over complex<float>; with std::complex, a flat-indexed
# CArray and a loop over the launch grid standing in for CUDA, they compile with the host compiler.
# Driving GPUBackend's fused path through them checks the kernels' index arithmetic and maths and
# the Python glue (argument order, dtypes, scalar types, contiguity, grid and block) without a GPU.
# What this cannot check: NVRTC compilation, CuPy's kernel-call machinery and cuFFT.

_CTYPE = {"complex64": "complex<float>", "float32": "float", "int32": "int", "int64": "long long"}
_NP = {"complex64": np.complex64, "float32": np.float32, "int32": np.int32, "int64": np.int64}
_ARRAY_INPUTS = {"psi", "V"}           # non-raw inputs that are arrays (the others are scalars)


class _Spec:
    """Records the kernels ``_CudaKernels`` defines (stand-in for the ``cupy`` module)."""

    def __init__(self):
        self.ek, self.raw = [], []

    def ElementwiseKernel(self, inp, outp, body, name):
        self.ek.append((inp, outp, body, name))

    def RawKernel(self, src, name):
        self.raw.append((src, name))


def _cpp_source():
    from msptycho.ptycho.kernels_gpu import _CudaKernels
    spec = _Spec()
    _CudaKernels(spec)
    out = ["#include <complex>", "#include <cmath>", "#include <math.h>", "#include <cstddef>",
           "using std::complex; using std::conj;", "#define __global__", "#define __device__",
           "struct Dim3 { unsigned x, y, z; }; static Dim3 blockIdx, blockDim, threadIdx;",
           "template <typename T> struct CArray { T* d; T& operator[](ptrdiff_t i) { return d[i]; } };",
           "#include <cstring>",
           "template <typename T> static T atomicMin(T* a, T v) { T o = *a; if (v < o) *a = v; return o; }",
           "template <typename T> static T atomicMax(T* a, T v) { T o = *a; if (v > o) *a = v; return o; }",
           "static int __float_as_int(float f) { int i; std::memcpy(&i, &f, sizeof i); return i; }"]
    for src, _ in spec.raw:
        out.append(src)
    for inp, outp, body, name in spec.ek:
        params, call, k, m = [], [], 0, 0
        for s in inp.split(","):
            t = s.split()
            if t[0] == "raw":
                params.append(f"CArray<{_CTYPE[t[1]]}> {t[2]}")
                call.append(f"CArray<{_CTYPE[t[1]]}>{{({_CTYPE[t[1]]}*)arr[{k}]}}")
                k += 1
            elif t[1] in _ARRAY_INPUTS:
                params.append(f"const {_CTYPE[t[0]]} {t[1]}")
                call.append(f"(({_CTYPE[t[0]]}*)arr[{k}])[i]")
                k += 1
            else:
                params.append(f"const {_CTYPE[t[0]]} {t[1]}")
                call.append(f"({_CTYPE[t[0]]})sc[{m}]")
                m += 1
        for s in outp.split(","):
            t, n = s.split()
            params.append(f"{_CTYPE[t]}& {n}")
            call.append(f"(({_CTYPE[t]}*)arr[{k}])[i]")
            k += 1
        out.append(f"static void {name}({', '.join(params)}, ptrdiff_t i) {{\n{body}\n}}")
        out.append(f'extern "C" void run_{name}(void** arr, double* sc, long size) '
                   f'{{ for (ptrdiff_t i = 0; i < size; ++i) {name}({", ".join(call)}, i); }}')
    out.append('''extern "C" void run_msp_back_slice(int gx, int gy, int bx, float* g, const float* psi, const float* T,
        const long long* c, int nb, int n0, int n1, int nx, int ny, float sg, float* grad, float* illum,
        long long* row_lo, long long* row_hi, float* row_max) {
    blockDim.x = bx;
    for (int y = 0; y < gy; ++y) for (int x = 0; x < gx; ++x) for (int t = 0; t < bx; ++t) {
        blockIdx.x = x; blockIdx.y = y; threadIdx.x = t;
        msp_back_slice(g, psi, T, c, nb, n0, n1, nx, ny, sg, grad, illum, row_lo, row_hi, row_max);
    }
}''')
    return "\n".join(out)


@pytest.fixture(scope="module")
def emulated_backend(tmp_path_factory):
    import ctypes
    import shutil
    import subprocess
    cxx = shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
    if cxx is None:
        pytest.skip("no C++ compiler to run the CUDA sources on the CPU")
    d = tmp_path_factory.mktemp("cuda_emulated")
    (d / "k.cpp").write_text(_cpp_source())
    subprocess.run([cxx, "-std=c++14", "-O1", "-shared", "-fPIC", "-o", str(d / "k.so"), str(d / "k.cpp")],
                   check=True, capture_output=True, timeout=120)
    lib = ctypes.CDLL(str(d / "k.so"))

    class EK:
        def __init__(self, inp, outp, body, name):
            self.params = [s.split() for s in inp.split(",")] + [["out"] + s.split() for s in outp.split(",")]
            self.fn, self.name = getattr(lib, "run_" + name), name

        def __call__(self, *args):
            assert len(args) == len(self.params), self.name
            ptrs, scs, size = [], [], None
            for p, a in zip(self.params, args):
                if p[0] in ("raw", "out") or p[1] in _ARRAY_INPUTS:
                    t = p[1] if p[0] in ("raw", "out") else p[0]
                    assert isinstance(a, np.ndarray) and a.dtype == _NP[t] and a.flags.c_contiguous, (self.name, p)
                    ptrs.append(a.ctypes.data)
                    if p[0] != "raw":
                        assert size is None or a.size == size, (self.name, p)
                        size = a.size
                else:
                    assert type(a) is _NP[p[0]], (self.name, p, type(a))     # CuPy casts: be exact
                    scs.append(float(a))
            self.fn((ctypes.c_void_p * len(ptrs))(*ptrs), (ctypes.c_double * (len(scs) + 1))(*scs),
                    ctypes.c_long(size))

    class Raw:
        def __init__(self, src, name):
            self.fn = getattr(lib, "run_" + name)

        def __call__(self, grid, block, args):
            conv = []
            for a in args:
                if isinstance(a, np.ndarray):
                    assert a.flags.c_contiguous and a.dtype in (np.float32, np.int64)
                    conv.append(ctypes.c_void_p(a.ctypes.data))
                elif type(a) is np.int32:
                    conv.append(ctypes.c_int(int(a)))
                else:
                    assert type(a) is np.float32, type(a)
                    conv.append(ctypes.c_float(float(a)))
            self.fn(ctypes.c_int(grid[0]), ctypes.c_int(grid[1]), ctypes.c_int(block[0]), *conv)

    class FakeCupy:
        ElementwiseKernel = EK
        RawKernel = Raw

    from msptycho.ptycho.kernels_gpu import _CudaKernels

    def make():
        be = GPUBackend(xp=np)
        be.fused, be._k = True, _CudaKernels(FakeCupy)
        return be
    return make


def test_cuda_sources_emulated_match_cpu(emulated_backend, monkeypatch):
    """The fused kernels (CUDA sources compiled as C++) against the Numba kernels on random inputs,
    then five engine iterations against the CPU engine, as for the GPU parity test."""
    monkeypatch.setattr(sys.modules[__name__], "_backend", lambda kind: emulated_backend())
    test_elementwise_kernels_match_cpu("emulated")
    test_back_slice_update_and_copy_match_cpu("emulated")
    for mode in (0, 1, 2):
        test_residual_matches_cpu("emulated", mode)
    for loss in ("amplitude", "poisson"):
        ref, e = _engine(None, loss), _engine(emulated_backend(), loss)
        for _ in range(ITERATIONS):
            ref.run_iteration()
            e.run_iteration()
        _compare_engines(e, ref)
