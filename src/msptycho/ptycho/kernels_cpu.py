"""Numba CPU kernels and the CPU backend of the multislice engine.

Every kernel works on preallocated arrays (complex64 / float32) and writes its result in place;
none allocates. Every reduction runs in a fixed order, so results are bit-identical from run to
run with the same number of threads:

* per-position work is parallel over positions (each thread owns its positions' windows);
* scatter-adds into the object are parallel over *object rows*: a thread owns whole rows and
  visits the batch's positions in their batch order, so no two threads write the same pixel and
  the summation order never changes; where a whole batch runs in one call
  (:meth:`CPUBackend.batch_windows`), each thread owns a strip of rows and keeps the rows its
  windows reach beyond it apart, added afterwards in thread order;
* sums over positions (probe gradient) are parallel over window rows, sequential over positions.

A GPU backend supplies the same functions (same signatures) and FFTs; the engine
(:mod:`msptycho.ptycho.engine`) only calls them through a backend object.
"""

from __future__ import annotations

import logging
import math
import os

# Numba's OpenMP threads spin after each parallel region by default and take the cores that the
# FFT library's threads need next (2 threads were slower than 1 on a 2-core machine); waiting
# passively costs nothing measurable here. Read when libgomp starts, i.e. at the first parallel
# kernel; a value set by the user wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numba  # noqa: E402
import numpy as np  # noqa: E402
from llvmlite import ir  # noqa: E402
from numba import njit, prange, types  # noqa: E402
from numba.core import cgutils  # noqa: E402
from numba.extending import intrinsic  # noqa: E402

from .fftw_wisdom import ALIGN, WindowPlans, measured_plan  # noqa: E402

LOG = logging.getLogger("msptycho.ptycho")


@njit(parallel=True, cache=True)
def ramps(frac, kx, ky, rampx, rampy):
    """Separable sub-pixel shift phase ramps.

    ``rampx[b, i] = exp(-2 pi i kx[i] frac[b, 0])`` and likewise for y: the Fourier factor
    that shifts a wave by ``frac[b]`` pixels (``kx``, ``ky`` in cycles per pixel).
    """
    nb = frac.shape[0]
    for b in prange(nb):
        fx = frac[b, 0]
        fy = frac[b, 1]
        for i in range(kx.shape[0]):
            ph = -2.0 * np.pi * kx[i] * fx
            rampx[b, i] = np.complex64(complex(math.cos(ph), math.sin(ph)))
        for j in range(ky.shape[0]):
            ph = -2.0 * np.pi * ky[j] * fy
            rampy[b, j] = np.complex64(complex(math.cos(ph), math.sin(ph)))


# -- the per-position kernels -----------------------------------------------------------------
# They work on float32 views of the complex64 arrays (real and imaginary parts interleaved along
# the last axis), which LLVM vectorises where Numba's complex type is not; the public functions
# below take and return the complex64 arrays. FAST allows reassociation inside a kernel (SIMD
# sums), which changes the rounding but not the run-to-run determinism: the order is fixed by the
# compiled code. NaN and infinity keep their IEEE meaning (no "nnan"/"ninf"). Kernels that divide
# use numpy's error model (no zero check per division, which stops LLVM from vectorising); their
# denominators are kept away from zero explicitly.
FAST = {"nsz", "arcp", "contract", "afn", "reassoc"}


def _f(a: np.ndarray) -> np.ndarray:
    """float32 view (re, im interleaved) of a complex64 array; no copy."""
    return a.view(np.float32)


def _flat(a: np.ndarray) -> np.ndarray:
    """Flat float32 view of a C-contiguous complex64 array (never a copy: kernels write into it)."""
    if not a.flags.c_contiguous:
        raise ValueError(f"kernels_cpu: expected a C-contiguous array, got one of shape {a.shape} and strides "
                         f"{a.strides}")
    return a.view(np.float32).reshape(-1)


# -- explicit SIMD ------------------------------------------------------------------------------
# Building blocks for the kernels: Numba intrinsics that emit LLVM vector IR. They live in this
# module, not their own, because Numba's on-disk cache of a kernel is invalidated only by changes
# to the kernel's own file.
#
# LLVM vectorises the kernels' loops over interleaved complex64 data (re, im, re, im, ...) by
# de-interleaving every array into real and imaginary vectors and interleaving the results
# again: eight shuffles, four of them across the 128-bit halves of an AVX register, for every
# four complex products. On the x86 CPUs we run on those shuffles, not the arithmetic or the
# memory traffic, set the kernels' speed: a propagator product took about twice as long as numpy's
# hand-vectorised complex multiply. The intrinsics here keep the data interleaved and shuffle only
# within 128-bit halves (``movsldup``/``movshdup``/``shufps`` and ``fmaddsub`` on x86, the same
# generic IR on other targets):
#
# * :func:`cmul4`: four complex products ``a * b``; :func:`cmul4s`: four times one complex scalar;
# * :func:`back_slice8`: eight pixels of the transmission's adjoint and the potential gradient
#   (:func:`back_slice`);
# * :func:`residual_blocks`, :func:`residual_poisson_blocks`, :func:`position_gradient_blocks`,
#   :func:`position_curvature_blocks`: a row of blocks of eight pixels of the amplitude and
#   Poisson residuals, the position gradient and the position curvature, each returning its row
#   sums (accumulated in registers, one horizontal sum per row: a horizontal sum per block made
#   them slower than LLVM's own loops); the Poisson loss's logarithm is Cephes' ``logf`` on eight
#   lanes (:func:`log8`, within one ulp), not a scalar call per pixel;
# * :func:`probe_gradient4`: four pixels of the probe gradient; :func:`exit_times_ig8`: eight
#   pixels of the exit wave's shift derivatives.
#
# The per-position kernels built on them run 1.2-4.5x faster than LLVM's own vectorisation (per
# 128^2 window, hot: incident wave 21.6 -> 5.4 us, amplitude residual 47 -> 10.3 us, Poisson
# residual 112 -> 30 us).
#
# They take arrays and a *float index* into their flat float32 view and do **no bounds checks**:
# the caller guarantees that the floats read and written lie inside the arrays (loops run over
# whole blocks and finish with a scalar tail). Arrays must be C-contiguous float32 along
# the indexed axis (1-D rows of the kernels' float32 views). Loads and stores are unaligned.

_F8 = ir.VectorType(ir.FloatType(), 8)
_FAST = tuple(sorted(FAST))     # the kernels' fast-math flags, on the vector instructions


def _mask(*m):
    return ir.Constant(ir.VectorType(ir.IntType(32), len(m)), [ir.Constant(ir.IntType(32), x) for x in m])


_DUP_EVEN = _mask(0, 0, 2, 2, 4, 4, 6, 6)
_DUP_ODD = _mask(1, 1, 3, 3, 5, 5, 7, 7)
_SWAP = _mask(1, 0, 3, 2, 5, 4, 7, 6)
_EVEN_ODD_BLEND = _mask(0, 9, 2, 11, 4, 13, 6, 15)   # even lanes from the first, odd from the second
_EVENS = _mask(0, 2, 4, 6, 8, 10, 12, 14)
_ODDS = _mask(1, 3, 5, 7, 9, 11, 13, 15)


def _check_arrays(*tys):
    for t in tys:
        if not (isinstance(t, types.Array) and t.dtype == types.float32 and t.ndim == 1):
            raise TypeError(f"SIMD intrinsics: expected 1-D float32 arrays, got {t}")


def _ptr(context, builder, arrty, arr, idx, offset=0, to=_F8):
    """Pointer to ``to`` (default ``<8 x float>``) at float ``idx + offset`` of the 1-D array
    ``arr``."""
    a = context.make_array(arrty)(context, builder, arr)
    if offset:
        idx = builder.add(idx, ir.Constant(idx.type, offset))
    return builder.bitcast(builder.gep(a.data, [idx]), to.as_pointer())


def _cmul(builder, va, vb, conj_b):
    """``a * b`` (or ``a * conj(b)``) of two <8 x float> of 4 interleaved complex numbers."""
    und = ir.Constant(_F8, ir.Undefined)
    b_re = builder.shuffle_vector(vb, und, _DUP_EVEN)
    b_im = builder.shuffle_vector(vb, und, _DUP_ODD)
    a_sw = builder.shuffle_vector(va, und, _SWAP)
    t1 = builder.fmul(va, b_re, flags=_FAST)      # (ar br, ai br)
    t2 = builder.fmul(a_sw, b_im, flags=_FAST)    # (ai bi, ar bi)
    sub = builder.fsub(t1, t2, flags=_FAST)
    add = builder.fadd(t1, t2, flags=_FAST)
    # a b = (ar br - ai bi, ai br + ar bi); a conj(b) = (ar br + ai bi, ai br - ar bi)
    return builder.shuffle_vector(add, sub, _EVEN_ODD_BLEND) if conj_b else \
        builder.shuffle_vector(sub, add, _EVEN_ODD_BLEND)


_I32 = ir.IntType(32)
_F4 = ir.VectorType(ir.FloatType(), 4)
_PAIRS_LO = _mask(0, 0, 1, 1, 2, 2, 3, 3)      # pixels 0-3 of a natural-order vector, each twice
_PAIRS_HI = _mask(4, 4, 5, 5, 6, 6, 7, 7)


def _splat(builder, re, im=None):
    """<8 x float> of ``re`` in every lane, or of the complex ``(re, im)`` in every pair."""
    und = ir.Constant(_F8, ir.Undefined)
    v = builder.insert_element(und, re, ir.Constant(_I32, 0))
    if im is None:
        return builder.shuffle_vector(v, und, _mask(*([0] * 8)))
    v = builder.insert_element(v, im, ir.Constant(_I32, 1))
    return builder.shuffle_vector(v, und, _mask(0, 1, 0, 1, 0, 1, 0, 1))


def _const8(x):
    """<8 x float> constant ``x`` in every lane."""
    return ir.Constant(_F8, [ir.Constant(ir.FloatType(), float(x))] * 8)


def _hsum(builder, v):
    """Sum of the 8 lanes of ``v`` (a float): halves, then quarters, then the last two."""
    und, und4 = ir.Constant(_F8, ir.Undefined), ir.Constant(_F4, ir.Undefined)
    s = builder.fadd(builder.shuffle_vector(v, und, _mask(0, 1, 2, 3)),
                     builder.shuffle_vector(v, und, _mask(4, 5, 6, 7)), flags=_FAST)
    s = builder.fadd(builder.shuffle_vector(s, und4, _mask(0, 1)), builder.shuffle_vector(s, und4, _mask(2, 3)),
                     flags=_FAST)
    return builder.fadd(builder.extract_element(s, ir.Constant(_I32, 0)),
                        builder.extract_element(s, ir.Constant(_I32, 1)), flags=_FAST)


def _pair_sums(builder, u0, u1):
    """``re + im`` of each of the 8 complex numbers held in ``u0, u1`` (<8 x float> each), in
    pixel order."""
    return builder.fadd(builder.shuffle_vector(u0, u1, _EVENS), builder.shuffle_vector(u0, u1, _ODDS), flags=_FAST)


def _loads(context, builder, arrty, arr, idx, count=2):
    """``count`` consecutive <8 x float> from float ``idx`` of the 1-D array ``arr``."""
    return [builder.load(_ptr(context, builder, arrty, arr, idx, 8 * k), align=4) for k in range(count)]


@intrinsic
def cmul4(typingctx, out, io, a, ia, b, ib):
    """``out[io:io+8] = a[ia:ia+8] * b[ib:ib+8]``: four interleaved complex products (``out``
    may be ``a`` or ``b`` at the same index). No bounds checks."""
    _check_arrays(out, a, b)
    sig = types.void(out, types.intp, a, types.intp, b, types.intp)

    def codegen(context, builder, signature, args):
        out_, io_, a_, ia_, b_, ib_ = args
        ty = signature.args
        va = builder.load(_ptr(context, builder, ty[2], a_, ia_), align=4)
        vb = builder.load(_ptr(context, builder, ty[4], b_, ib_), align=4)
        builder.store(_cmul(builder, va, vb, False), _ptr(context, builder, ty[0], out_, io_), align=4)
        return context.get_dummy_value()
    return sig, codegen


@intrinsic
def prefetch_line(typingctx, arr, idx):
    """Hint the cache line holding element ``idx`` of the 1-D array ``arr`` into the caches
    (``llvm.prefetch``, read, high locality). An address outside the array is harmless: a
    prefetch never faults."""
    _check_arrays(arr)
    sig = types.void(arr, types.intp)

    def codegen(context, builder, signature, args):
        a = context.make_array(signature.args[0])(context, builder, args[0])
        p = builder.bitcast(builder.gep(a.data, [args[1]]), ir.IntType(8).as_pointer())
        i32 = ir.IntType(32)
        f = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [p.type, i32, i32, i32]),
                                           "llvm.prefetch.p0")
        builder.call(f, [p, ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()
    return sig, codegen


@intrinsic
def back_slice8(typingctx, g, ig, p, ip, t, it, grad, igr, illum, iil, sigma):
    """Eight pixels of :func:`back_slice`: with the interleaved
    complex ``g = g[ig:ig+16]``, exit wave ``p = p[ip:ip+16]`` and transmission
    ``t = t[it:it+16]``: ``grad[igr:igr+8] += sigma Im(conj(p) g)``,
    ``illum[iil:iil+8] += |p|^2`` and ``g = conj(t) g`` (in place). No bounds checks."""
    _check_arrays(g, p, t, grad, illum)
    sig = types.void(g, types.intp, p, types.intp, t, types.intp, grad, types.intp, illum, types.intp,
                     types.float32)

    def codegen(context, builder, signature, args):
        g_, ig_, p_, ip_, t_, it_, gr_, igr_, il_, iil_, sg = args
        ty = signature.args
        und = ir.Constant(_F8, ir.Undefined)
        gptr = [_ptr(context, builder, ty[0], g_, ig_, k) for k in (0, 8)]
        gv = [builder.load(q, align=4) for q in gptr]
        pv = [builder.load(_ptr(context, builder, ty[2], p_, ip_, k), align=4) for k in (0, 8)]
        tv = [builder.load(_ptr(context, builder, ty[4], t_, it_, k), align=4) for k in (0, 8)]
        # u = swap(p) * g = (pi gr, pr gi): Im(conj(p) g) = pr gi - pi gr = odd(u) - even(u)
        u = [builder.fmul(builder.shuffle_vector(pv[k], und, _SWAP), gv[k], flags=_FAST) for k in (0, 1)]
        im = builder.fsub(builder.shuffle_vector(u[0], u[1], _ODDS), builder.shuffle_vector(u[0], u[1], _EVENS),
                          flags=_FAST)
        q = [builder.fmul(pv[k], pv[k], flags=_FAST) for k in (0, 1)]
        il = builder.fadd(builder.shuffle_vector(q[0], q[1], _EVENS), builder.shuffle_vector(q[0], q[1], _ODDS),
                          flags=_FAST)
        sgv = _splat(builder, sg)
        grp = _ptr(context, builder, ty[6], gr_, igr_)
        ilp = _ptr(context, builder, ty[8], il_, iil_)
        builder.store(builder.fadd(builder.load(grp, align=4), builder.fmul(sgv, im, flags=_FAST), flags=_FAST),
                      grp, align=4)
        builder.store(builder.fadd(builder.load(ilp, align=4), il, flags=_FAST), ilp, align=4)
        for k in (0, 1):
            builder.store(_cmul(builder, gv[k], tv[k], True), gptr[k], align=4)
        return context.get_dummy_value()
    return sig, codegen


# Cephes' single-precision sine and cosine: the argument reduced by pi/2 in three parts with
# fused multiply-adds (llvm.fma: exact products, and no fast-math flag of a calling kernel can
# reassociate them), then their polynomials on [-pi/4, pi/4].
_PIO2 = (1.5703125, 4.837512969970703125e-4, 7.54978995489188216e-8)
_SIN_C = (-1.6666654611e-1, 8.3321608736e-3, -1.9515295891e-4)
_COS_C = (4.166664568298827e-2, -1.388731625493765e-3, 2.443315711809948e-5)
_TWO_OVER_PI = 0.63661977236758134


def _cos_sin_ir(builder, x, lanes):
    """IR of ``cos(x), sin(x)`` for ``x`` a float (``lanes`` 1) or an <8 x float> (8)."""
    fty = ir.FloatType() if lanes == 1 else _F8
    ity = _I32 if lanes == 1 else ir.VectorType(_I32, 8)
    sfx = "f32" if lanes == 1 else "v8f32"

    def c(v):
        k = ir.Constant(ir.FloatType(), v)
        return k if lanes == 1 else ir.Constant(_F8, [k] * 8)

    def ci(v):
        k = ir.Constant(_I32, v)
        return k if lanes == 1 else ir.Constant(ity, [k] * 8)
    fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(fty, [fty] * 3), "llvm.fma." + sfx)
    floor = cgutils.get_or_insert_function(builder.module, ir.FunctionType(fty, [fty]), "llvm.floor." + sfx)
    q = builder.call(floor, [builder.call(fma, [x, c(_TWO_OVER_PI), c(0.5)])])
    nq = builder.fsub(c(0.0), q)
    r = x
    for part in _PIO2:
        r = builder.call(fma, [nq, c(part), r])
    z = builder.fmul(r, r)
    ps = builder.call(fma, [z, c(_SIN_C[2]), c(_SIN_C[1])])
    ps = builder.call(fma, [z, ps, c(_SIN_C[0])])
    sn = builder.call(fma, [builder.fmul(r, z), ps, r])
    pc = builder.call(fma, [z, c(_COS_C[2]), c(_COS_C[1])])
    pc = builder.call(fma, [z, pc, c(_COS_C[0])])
    cs = builder.call(fma, [builder.fmul(z, z), pc, builder.call(fma, [c(-0.5), z, c(1.0)])])
    k = builder.and_(builder.fptosi(q, ity), ci(3))
    odd = builder.icmp_signed("!=", builder.and_(k, ci(1)), ci(0))
    cs, sn = builder.select(odd, sn, cs), builder.select(odd, cs, sn)
    neg_c = builder.icmp_signed("!=", builder.and_(builder.add(k, ci(1)), ci(2)), ci(0))
    neg_s = builder.icmp_signed("!=", builder.and_(k, ci(2)), ci(0))
    return (builder.select(neg_c, builder.fsub(c(0.0), cs), cs),
            builder.select(neg_s, builder.fsub(c(0.0), sn), sn))


def _store_complex(context, builder, arrty, t, it, re, im):
    """Store eight complex numbers, real parts ``re`` and imaginary parts ``im`` (<8 x float>
    each), interleaved into ``t[it:it+16]``."""
    builder.store(builder.shuffle_vector(re, im, _mask(0, 8, 1, 9, 2, 10, 3, 11)),
                  _ptr(context, builder, arrty, t, it), align=4)
    builder.store(builder.shuffle_vector(re, im, _mask(4, 12, 5, 13, 6, 14, 7, 15)),
                  _ptr(context, builder, arrty, t, it, 8), align=4)


@intrinsic
def cos_sin8(typingctx, v, iv, sigma, t, it):
    """``t[it:it+16] = exp(i sigma v[iv:iv+8])``: eight complex numbers, interleaved, from eight
    phases (Cephes' sine and cosine on eight lanes). No bounds checks."""
    _check_arrays(v, t)
    sig = types.void(v, types.intp, types.float32, t, types.intp)

    def codegen(context, builder, signature, args):
        v_, iv_, sg, t_, it_ = args
        ty = signature.args
        x = builder.fmul(_splat(builder, sg), builder.load(_ptr(context, builder, ty[0], v_, iv_), align=4))
        _store_complex(context, builder, ty[3], t_, it_, *_cos_sin_ir(builder, x, 8))
        return context.get_dummy_value()
    return sig, codegen


@intrinsic
def cos_sin1(typingctx, v, iv, sigma, t, it):
    """``t[it:it+2] = exp(i sigma v[iv])``, one complex number as :func:`cos_sin8` computes
    each lane. No bounds checks."""
    _check_arrays(v, t)
    sig = types.void(v, types.intp, types.float32, t, types.intp)

    def codegen(context, builder, signature, args):
        v_, iv_, sg, t_, it_ = args
        ty = signature.args
        f = ir.FloatType()
        x = builder.fmul(sg, builder.load(_ptr(context, builder, ty[0], v_, iv_, to=f), align=4))
        cs, sn = _cos_sin_ir(builder, x, 1)
        builder.store(cs, _ptr(context, builder, ty[3], t_, it_, to=f), align=4)
        builder.store(sn, _ptr(context, builder, ty[3], t_, it_, 1, to=f), align=4)
        return context.get_dummy_value()
    return sig, codegen


@intrinsic
def object_step8(typingctx, v, iv, g, ig, il, iil, t, it, coef, floor, sigma):
    """One object step on eight pixels, each array read and written once: ``v -= coef g / (il +
    floor)`` where ``il > 0`` (the potential ``v`` at ``iv``, its gradient ``g`` at ``ig`` and
    illumination ``il`` at ``iil``), ``t[it:it+16] = exp(i sigma v)`` (interleaved, as
    :func:`cos_sin8`), ``g = il = 0``. A block whose gradient and illumination are all zero is
    left as it is (nothing reached it, so its potential, and the transmission that follows it,
    are unchanged). No bounds checks."""
    _check_arrays(v, g, il, t)
    sig = types.void(v, types.intp, g, types.intp, il, types.intp, t, types.intp, types.float32, types.float32,
                     types.float32)

    def codegen(context, builder, signature, args):
        v_, iv_, g_, ig_, il_, iil_, t_, it_, c_, fl_, sg_ = args
        ty = signature.args
        pil, pg = _ptr(context, builder, ty[4], il_, iil_), _ptr(context, builder, ty[2], g_, ig_)
        vil, vg = builder.load(pil, align=4), builder.load(pg, align=4)
        zero = _const8(0.0)
        # a lane of either map not exactly zero (NaN included): the maps are cleared wherever
        # anything was written into them
        touched = builder.bitcast(builder.or_(builder.fcmp_unordered("!=", vil, zero),
                                              builder.fcmp_unordered("!=", vg, zero)), ir.IntType(8))
        with builder.if_then(builder.icmp_unsigned("!=", touched, ir.Constant(ir.IntType(8), 0)), likely=True):
            pv = _ptr(context, builder, ty[0], v_, iv_)
            step = builder.fdiv(builder.fmul(_splat(builder, c_), vg), builder.fadd(vil, _splat(builder, fl_)))
            step = builder.select(builder.fcmp_ordered(">", vil, zero), step, zero)
            nv = builder.fsub(builder.load(pv, align=4), step)
            builder.store(nv, pv, align=4)
            phase = builder.fmul(_splat(builder, sg_), nv)
            _store_complex(context, builder, ty[6], t_, it_, *_cos_sin_ir(builder, phase, 8))
            builder.store(zero, pg, align=4)
            builder.store(zero, pil, align=4)
        return context.get_dummy_value()
    return sig, codegen


@njit(inline="always")
def _transmission_row(v, t, n, sg):
    """``t = exp(i sg v)`` for the ``n`` floats of the 1-D float32 ``v`` into the interleaved
    float32 ``t``: eight at a time (:func:`cos_sin8`), then the tail (:func:`cos_sin1`)."""
    n8 = n - n % 8
    for y in range(0, n8, 8):
        cos_sin8(v, y, sg, t, 2 * y)
    for y in range(n8, n):
        cos_sin1(v, y, sg, t, 2 * y)


@njit(parallel=True, cache=True)
def _refresh_transmission(potential, sigma, trans):
    nz, nx, ny = potential.shape
    sg = np.float32(sigma)
    for sx in prange(nz * nx):
        s = sx // nx
        x = sx % nx
        _transmission_row(potential[s, x], trans[s, x], ny, sg)


def refresh_transmission(potential, sigma, trans):
    """``trans = exp(i sigma V)`` for the whole object (complex64; float32 phase; Cephes' sine
    and cosine, :func:`cos_sin8`: the polynomials :func:`update_object` writes it with)."""
    _refresh_transmission(potential, sigma, _f(trans))


@intrinsic
def cmul4s(typingctx, out, io, a, ia, cr, ci):
    """``out[io:io+8] = a[ia:ia+8] * (cr + i ci)``: four interleaved complex numbers times one
    complex scalar (``out`` may be ``a`` at the same index). No bounds checks."""
    _check_arrays(out, a)
    sig = types.void(out, types.intp, a, types.intp, types.float32, types.float32)

    def codegen(context, builder, signature, args):
        out_, io_, a_, ia_, cr_, ci_ = args
        ty = signature.args
        va = builder.load(_ptr(context, builder, ty[2], a_, ia_), align=4)
        builder.store(_cmul(builder, va, _splat(builder, cr_, ci_), False), _ptr(context, builder, ty[0], out_, io_),
                      align=4)
        return context.get_dummy_value()
    return sig, codegen


def _blocks(builder, nblocks, body, nacc):
    """Emit ``for k in range(nblocks): acc += body(k)`` with ``nacc`` <8 x float> accumulators
    (``body`` returns one vector for each); returns each accumulator's lane sum (a float). The
    accumulators live in registers, so a row costs one horizontal sum, not one per block."""
    zero = _const8(0.0)
    accs = [cgutils.alloca_once_value(builder, zero) for _ in range(nacc)]
    with cgutils.for_range(builder, nblocks) as loop:
        for acc, v in zip(accs, body(loop.index)):
            builder.store(builder.fadd(builder.load(acc), v, flags=_FAST), acc)
    return [_hsum(builder, builder.load(acc)) for acc in accs]


@intrinsic
def max_blocks(typingctx, a, ia, nblocks):
    """The largest of ``a[ia:ia+8 nblocks]`` and 0 (float32; the 1-D float32 ``a``): a vector
    maximum in a register over the blocks, one horizontal maximum at the end. No bounds checks."""
    _check_arrays(a)
    sig = types.float32(a, types.intp, types.intp)

    def codegen(context, builder, signature, args):
        a_, ia_, nb_ = args
        acc = cgutils.alloca_once_value(builder, _const8(0.0))
        with cgutils.for_range(builder, nb_) as loop:
            v = builder.load(_ptr(context, builder, signature.args[0], a_, _at(builder, ia_, loop.index, 8)),
                             align=4)
            m = builder.load(acc)
            builder.store(builder.select(builder.fcmp_ordered(">", v, m), v, m), acc)
        und, und4 = ir.Constant(_F8, ir.Undefined), ir.Constant(_F4, ir.Undefined)
        m = builder.load(acc)
        lo, hi = builder.shuffle_vector(m, und, _mask(0, 1, 2, 3)), builder.shuffle_vector(m, und, _mask(4, 5, 6, 7))
        m = builder.select(builder.fcmp_ordered(">", lo, hi), lo, hi)
        lo, hi = builder.shuffle_vector(m, und4, _mask(0, 1)), builder.shuffle_vector(m, und4, _mask(2, 3))
        m = builder.select(builder.fcmp_ordered(">", lo, hi), lo, hi)
        x, y = (builder.extract_element(m, ir.Constant(_I32, k)) for k in (0, 1))
        return builder.select(builder.fcmp_ordered(">", x, y), x, y)
    return sig, codegen


def _at(builder, base, k, stride):
    """Float index ``base + k * stride`` (``k`` the block number)."""
    return builder.add(base, builder.mul(k, ir.Constant(k.type, stride)))


def _detector_block(context, builder, ty, w_, iw, a_, ia, sc, factor):
    """One block of eight pixels of a detector residual: with ``Psi = sc * w[iw:iw+16]``
    (interleaved complex; ``ty`` the arrays' types, ``ty[0]`` and ``ty[2]``) and
    ``a = amp[ia:ia+8]``, writes ``Psi * factor(|Psi|^2, |Psi|, a)`` (a real factor per pixel)
    over ``w``; returns ``(|Psi| - a)^2``, ``|Psi|^2`` and ``a`` (<8 x float>, pixel order)."""
    und = ir.Constant(_F8, ir.Undefined)
    sqrt = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_F8, [_F8]), "llvm.sqrt.v8f32")
    v = [builder.fmul(x, sc, flags=_FAST) for x in _loads(context, builder, ty[0], w_, iw)]
    m2 = _pair_sums(builder, *[builder.fmul(x, x, flags=_FAST) for x in v])
    m = builder.call(sqrt, [m2])
    a = builder.load(_ptr(context, builder, ty[2], a_, ia), align=4)
    d = builder.fsub(m, a, flags=_FAST)
    f = factor(m2, m, a)
    for j, pairs in ((0, _PAIRS_LO), (1, _PAIRS_HI)):
        builder.store(builder.fmul(v[j], builder.shuffle_vector(f, und, pairs), flags=_FAST),
                      _ptr(context, builder, ty[0], w_, iw, 8 * j), align=4)
    return builder.fmul(d, d, flags=_FAST), m2, a


@intrinsic
def residual_blocks(typingctx, w, iw, amp, ia, nblocks, sc, two):
    """``nblocks`` blocks of eight pixels of the amplitude loss's detector residual
    (:func:`residual`, amplitude mode): with ``Psi = sc * w[iw:iw+16 nblocks]`` (interleaved
    complex) and ``a = amp[ia:ia+8 nblocks]``, writes ``Psi * two * (1 - a / max(|Psi|, 1e-30))``
    over ``w`` and returns ``sum (|Psi| - a)^2`` (float32). No bounds checks."""
    _check_arrays(w, amp)
    sig = types.float32(w, types.intp, amp, types.intp, types.intp, types.float32, types.float32)

    def codegen(context, builder, signature, args):
        w_, iw_, a_, ia_, nblocks_, sc_, two_ = args
        s, twov = _splat(builder, sc_), _splat(builder, two_)
        one, tiny = _const8(1.0), _const8(1e-30)

        def factor(m2, m, a):
            mt = builder.select(builder.fcmp_ordered(">", m, tiny), m, tiny)
            return builder.fmul(twov, builder.fsub(one, builder.fdiv(a, mt, flags=_FAST), flags=_FAST), flags=_FAST)

        def body(k):
            dd, _, _ = _detector_block(context, builder, signature.args, w_, _at(builder, iw_, k, 16), a_,
                                       _at(builder, ia_, k, 8), s, factor)
            return [dd]
        return _blocks(builder, nblocks_, body, 1)[0]
    return sig, codegen


#: Cephes' single-precision logarithm: the polynomial for log(1 + m) - m + m^2 / 2 over m^3,
#: |m| < sqrt(2) - 1 (relative error about 1e-7)
_LOG_POLY = (7.0376836292e-2, -1.1514610310e-1, 1.1676998740e-1, -1.2420140846e-1, 1.4249322787e-1,
             -1.6668057665e-1, 2.0000714765e-1, -2.4999993993e-1, 3.3333331174e-1)


def _log8(builder, x):
    """Natural logarithm of the lanes of ``x`` (<8 x float>), Cephes' ``logf`` on eight lanes: the
    exponent and mantissa from the bits, then a polynomial (about 1 ulp for positive normal
    numbers; +inf and NaN pass through; zero, negative and subnormal lanes are not handled)."""
    i8 = ir.VectorType(_I32, 8)

    def ic(v):
        return ir.Constant(i8, [ir.Constant(_I32, v)] * 8)
    xi = builder.bitcast(x, i8)
    e = builder.sub(builder.and_(builder.lshr(xi, ic(23)), ic(0xFF)), ic(126))    # x = m 2^e, m in [0.5, 1)
    m = builder.bitcast(builder.or_(builder.and_(xi, ic(0x007FFFFF)), ic(0x3F000000)), _F8)
    small = builder.fcmp_ordered("<", m, _const8(0.707106781186547524))
    e = builder.sub(e, builder.zext(small, i8))
    m = builder.select(small, builder.fsub(builder.fadd(m, m), _const8(1.0)), builder.fsub(m, _const8(1.0)))
    z = builder.fmul(m, m)
    y = _const8(_LOG_POLY[0])
    for c in _LOG_POLY[1:]:
        y = builder.fadd(builder.fmul(y, m), _const8(c))
    y = builder.fmul(builder.fmul(y, m), z)
    fe = builder.sitofp(e, _F8)
    y = builder.fadd(y, builder.fmul(fe, _const8(-2.12194440e-4)))
    y = builder.fsub(y, builder.fmul(z, _const8(0.5)))
    r = builder.fadd(builder.fadd(m, y), builder.fmul(fe, _const8(0.693359375)))
    special = builder.fcmp_unordered("uge", x, _const8(float("inf")))          # +inf or NaN
    return builder.select(special, x, r)


@intrinsic
def log8(typingctx, x, ix, out, io):
    """``out[io:io+8] = log(x[ix:ix+8])`` by :func:`_log8` (the logarithm of
    :func:`residual_poisson_blocks`, here so that it can be tested lane by lane). No bounds
    checks."""
    _check_arrays(x, out)
    sig = types.void(x, types.intp, out, types.intp)

    def codegen(context, builder, signature, args):
        x_, ix_, out_, io_ = args
        ty = signature.args
        v = builder.load(_ptr(context, builder, ty[0], x_, ix_), align=4)
        builder.store(_log8(builder, v), _ptr(context, builder, ty[2], out_, io_), align=4)
        return context.get_dummy_value()
    return sig, codegen


@intrinsic
def residual_poisson_blocks(typingctx, w, iw, amp, ia, nblocks, sc, two, mode):
    """``nblocks`` blocks of eight pixels of the Poisson loss's detector residual
    (:func:`residual`, ``mode`` = its ``poisson``, 1 or 2): with ``Psi = sc * w`` and
    ``a = amp`` as in :func:`residual_blocks`, writes ``Psi * two * (1 - a^2 / (|Psi|^2 + 1e-12))``
    (mode 1) or ``Psi * two * (|Psi|^2 - a^2) / (|Psi|^2 + a^2 + 1e-12)`` over ``w`` and returns
    ``(sum (|Psi| - a)^2, sum |Psi|^2 - a^2 log(|Psi|^2 + 1e-12))`` (float32). No bounds
    checks."""
    _check_arrays(w, amp)
    sig = types.UniTuple(types.float32, 2)(w, types.intp, amp, types.intp, types.intp, types.float32,
                                           types.float32, types.intp)

    def codegen(context, builder, signature, args):
        w_, iw_, a_, ia_, nblocks_, sc_, two_, mode_ = args
        s, twov = _splat(builder, sc_), _splat(builder, two_)
        eps, one = _const8(1e-12), _const8(1.0)
        exact = builder.icmp_signed("==", mode_, ir.Constant(mode_.type, 1))

        def factor(m2, m, a):
            a2 = builder.fmul(a, a, flags=_FAST)
            f_exact = builder.fsub(one, builder.fdiv(a2, builder.fadd(m2, eps, flags=_FAST), flags=_FAST),
                                   flags=_FAST)
            f_pre = builder.fdiv(builder.fsub(m2, a2, flags=_FAST),
                                 builder.fadd(builder.fadd(m2, a2, flags=_FAST), eps, flags=_FAST), flags=_FAST)
            return builder.fmul(twov, builder.select(exact, f_exact, f_pre), flags=_FAST)

        def body(k):
            dd, m2, a = _detector_block(context, builder, signature.args, w_, _at(builder, iw_, k, 16), a_,
                                        _at(builder, ia_, k, 8), s, factor)
            a2 = builder.fmul(a, a, flags=_FAST)
            loss = builder.fsub(m2, builder.fmul(a2, _log8(builder, builder.fadd(m2, eps, flags=_FAST)),
                                                 flags=_FAST), flags=_FAST)
            return [dd, loss]
        return context.make_tuple(builder, signature.return_type, _blocks(builder, nblocks_, body, 2))
    return sig, codegen


@intrinsic
def probe_gradient4(typingctx, out, io, g, ig, r, ir_, cr, ci):
    """``out[io:io+8] += g[ig:ig+8] * conj(r[ir:ir+8]) * (cr + i ci)``: four interleaved complex
    numbers of the probe gradient. No bounds checks."""
    _check_arrays(out, g, r)
    sig = types.void(out, types.intp, g, types.intp, r, types.intp, types.float32, types.float32)

    def codegen(context, builder, signature, args):
        out_, io_, g_, ig_, r_, ir2, cr_, ci_ = args
        ty = signature.args
        vg = builder.load(_ptr(context, builder, ty[2], g_, ig_), align=4)
        vr = builder.load(_ptr(context, builder, ty[4], r_, ir2), align=4)
        t = _cmul(builder, _cmul(builder, vg, vr, True), _splat(builder, cr_, ci_), False)
        po = _ptr(context, builder, ty[0], out_, io_)
        builder.store(builder.fadd(builder.load(po, align=4), t, flags=_FAST), po, align=4)
        return context.get_dummy_value()
    return sig, codegen


@intrinsic
def position_gradient_blocks(typingctx, g, ig, p, ip, r, ir_, cr, ci, k, ik, nblocks):
    """``nblocks`` blocks of eight pixels of :func:`position_gradient`: with ``Q = p * (cr + i ci)
    * r`` and ``G = g`` (interleaved complex, from ``ip``, ``ir``, ``ig``), returns
    ``(sum Im(conj(G) Q), sum k Im(conj(G) Q))`` (float32; ``k`` from ``ik``). No bounds
    checks."""
    _check_arrays(g, p, r, k)
    sig = types.UniTuple(types.float32, 2)(g, types.intp, p, types.intp, r, types.intp, types.float32,
                                           types.float32, k, types.intp, types.intp)

    def codegen(context, builder, signature, args):
        g_, ig_, p_, ip_, r_, ir2, cr_, ci_, k_, ik_, nblocks_ = args
        ty = signature.args
        und = ir.Constant(_F8, ir.Undefined)
        c = _splat(builder, cr_, ci_)

        def body(kb):
            vg = _loads(context, builder, ty[0], g_, _at(builder, ig_, kb, 16))
            vp = _loads(context, builder, ty[2], p_, _at(builder, ip_, kb, 16))
            vr = _loads(context, builder, ty[4], r_, _at(builder, ir2, kb, 16))
            q = [_cmul(builder, _cmul(builder, vp[j], c, False), vr[j], False) for j in (0, 1)]
            # t = swap(G) Q = (gi qr, gr qi): Im(conj(G) Q) = gr qi - gi qr = odd(t) - even(t)
            t = [builder.fmul(builder.shuffle_vector(vg[j], und, _SWAP), q[j], flags=_FAST) for j in (0, 1)]
            im = builder.fsub(builder.shuffle_vector(t[0], t[1], _ODDS), builder.shuffle_vector(t[0], t[1], _EVENS),
                              flags=_FAST)
            vk = builder.load(_ptr(context, builder, ty[8], k_, _at(builder, ik_, kb, 8)), align=4)
            return [im, builder.fmul(vk, im, flags=_FAST)]
        return context.make_tuple(builder, signature.return_type, _blocks(builder, nblocks_, body, 2))
    return sig, codegen


@intrinsic
def position_curvature_blocks(typingctx, w, iw, a, ia, c, ic, nblocks):
    """``nblocks`` blocks of eight pixels of :func:`position_curvature`: with ``W``, ``A`` and
    ``C`` interleaved complex from ``iw``, ``ia``, ``ic``, returns ``(sum Re(conj(W) A)^2 / |W|^2,
    sum Re(conj(W) C)^2 / |W|^2)`` (float32; pixels where ``W = 0`` add nothing). No bounds
    checks."""
    _check_arrays(w, a, c)
    sig = types.UniTuple(types.float32, 2)(w, types.intp, a, types.intp, c, types.intp, types.intp)

    def codegen(context, builder, signature, args):
        w_, iw_, a_, ia_, c_, ic_, nblocks_ = args
        ty = signature.args
        zero = _const8(0.0)
        one = _const8(1.0)
        tiny = _const8(1e-30)

        def body(k):
            vw = _loads(context, builder, ty[0], w_, _at(builder, iw_, k, 16))
            va = _loads(context, builder, ty[2], a_, _at(builder, ia_, k, 16))
            vc = _loads(context, builder, ty[4], c_, _at(builder, ic_, k, 16))
            m2 = _pair_sums(builder, *[builder.fmul(x, x, flags=_FAST) for x in vw])
            ux = _pair_sums(builder, *[builder.fmul(vw[j], va[j], flags=_FAST) for j in (0, 1)])
            uy = _pair_sums(builder, *[builder.fmul(vw[j], vc[j], flags=_FAST) for j in (0, 1)])
            inv = builder.fdiv(one, builder.select(builder.fcmp_ordered(">", m2, tiny), m2, tiny), flags=_FAST)
            inv = builder.select(builder.fcmp_ordered(">", m2, zero), inv, zero)
            return [builder.fmul(builder.fmul(u, u, flags=_FAST), inv, flags=_FAST) for u in (ux, uy)]
        return context.make_tuple(builder, signature.return_type, _blocks(builder, nblocks_, body, 2))
    return sig, codegen


@intrinsic
def exit_times_ig8(typingctx, p, ip, vm, vp, vl, vr, iv, hs, ox, oy, io):
    """Eight pixels of :func:`exit_shift_derivative` inside the object: with the exit wave
    ``p[ip:ip+16]`` (interleaved complex), ``gx = hs (vp - vm)`` and ``gy = hs (vr - vl)`` (each
    of the four rows read at ``iv:iv+8``), ``ox[io:io+16] = p * i gx`` and ``oy[io:io+16] =
    p * i gy``. No bounds checks."""
    _check_arrays(p, vm, vp, vl, vr, ox, oy)
    sig = types.void(p, types.intp, vm, vp, vl, vr, types.intp, types.float32, ox, oy, types.intp)

    def codegen(context, builder, signature, args):
        p_, ip_, vm_, vp_, vl_, vr_, iv_, hs_, ox_, oy_, io_ = args
        ty = signature.args
        und = ir.Constant(_F8, ir.Undefined)
        hsv = _splat(builder, hs_)
        row = [builder.load(_ptr(context, builder, ty[k], a, iv_), align=4)
               for k, a in ((2, vm_), (3, vp_), (4, vl_), (5, vr_))]
        gx = builder.fmul(hsv, builder.fsub(row[1], row[0], flags=_FAST), flags=_FAST)
        gy = builder.fmul(hsv, builder.fsub(row[3], row[2], flags=_FAST), flags=_FAST)
        # i p = (-pi, pr): the swapped pair with the real part's sign flipped
        sign = ir.Constant(_F8, [ir.Constant(ir.FloatType(), x) for x in (-1.0, 1.0) * 4])
        for j, (vp0, pairs) in enumerate(zip(_loads(context, builder, ty[0], p_, ip_), (_PAIRS_LO, _PAIRS_HI))):
            ipv = builder.fmul(builder.shuffle_vector(vp0, und, _SWAP), sign, flags=_FAST)
            for out_, oty, gv in ((ox_, ty[8], gx), (oy_, ty[9], gy)):
                builder.store(builder.fmul(ipv, builder.shuffle_vector(gv, und, pairs), flags=_FAST),
                              _ptr(context, builder, oty, out_, io_, 8 * j), align=4)
        return context.get_dummy_value()
    return sig, codegen


@intrinsic
def fftw_execute(typingctx, fn, plan, src, isrc, dst, idst):
    """Call ``fftwf_execute_dft(plan, src + isrc, dst + idst)`` (``fn`` and ``plan`` addresses,
    ``src``/``dst`` 1-D float32 arrays and float offsets): FFTW's new-array execute, thread-safe,
    on the window starting there (see :class:`msptycho.ptycho.fftw_wisdom.WindowPlans`). No
    bounds checks."""
    _check_arrays(src, dst)
    sig = types.void(types.intp, types.intp, src, types.intp, dst, types.intp)

    def codegen(context, builder, signature, args):
        fn_, plan_, src_, isrc_, dst_, idst_ = args
        ty = signature.args
        i8 = ir.IntType(8)
        fnty = ir.FunctionType(ir.VoidType(), [i8.as_pointer()] * 3)
        f = builder.inttoptr(fn_, fnty.as_pointer())
        builder.call(f, [builder.inttoptr(plan_, i8.as_pointer()), _ptr(context, builder, ty[2], src_, isrc_, to=i8),
                         _ptr(context, builder, ty[4], dst_, idst_, to=i8)])
        return context.get_dummy_value()
    return sig, codegen


@njit(cache=True)
def _check_windows(corners, nb, n0, n1, nx, ny):
    """The explicitly vectorised kernels do not check bounds: every window must lie inside the
    object (the engine keeps them there, see ``forward.clip_positions``)."""
    for b in range(nb):
        if corners[b, 0] < 0 or corners[b, 1] < 0 or corners[b, 0] + n0 > nx or corners[b, 1] + n1 > ny:
            raise ValueError("a window reaches outside the object (corners out of range)")


@njit(fastmath=FAST, inline="always")
def _product(a, ia, b, ib, m):
    """``a[ia:ia+m] *= b[ib:ib+m]``: ``m`` floats of interleaved complex numbers, four at a time
    (:func:`cmul4`), then the tail."""
    m4 = m - m % 8
    for j in range(0, m4, 8):
        cmul4(a, ia + j, a, ia + j, b, ib + j)
    for j in range(m4, m, 2):
        xr = a[ia + j]
        xi = a[ia + j + 1]
        a[ia + j] = xr * b[ib + j] - xi * b[ib + j + 1]
        a[ia + j + 1] = xr * b[ib + j + 1] + xi * b[ib + j]


@njit(inline="always")
def _row_max(a, lo, hi):
    """The largest of ``a[lo:hi]`` and 0 (1-D float32): eight at a time (:func:`max_blocks`),
    then the tail."""
    n = max(hi - lo, 0)
    m = max_blocks(a, lo, n // 8)
    for j in range(lo + n - n % 8, hi):
        m = max(m, a[j])
    return m


@njit(inline="always")
def _prefetch_row(a, lo, hi):
    """Prefetch floats ``lo:hi`` of the 1-D float32 ``a``, a 64-byte line at a time."""
    for j in range(lo, hi, 16):
        prefetch_line(a, j)


@njit(fastmath=FAST, inline="always")
def _propagate(fn, plan_f, plan_b, src, isrc, k, ik, h, dst, idst, win):
    """One window through the propagator: ``k = FFT(src)``, ``k *= h``, ``dst = IFFT(k)`` (flat
    float32 arrays at float offsets; ``win`` floats per window)."""
    fftw_execute(fn, plan_f, src, isrc, k, ik)
    _product(k, ik, h, 0, win)
    fftw_execute(fn, plan_b, k, ik, dst, idst)


@njit(fastmath=FAST, inline="always")
def _incident_window(probe_k, rampx, rampy, b, sc, out, o):
    """Window ``b`` of :func:`incident` into the flat float32 ``out`` at offset ``o``."""
    n0 = probe_k.shape[0]
    m = probe_k.shape[1]
    n1 = m // 2
    m8 = m - m % 8
    ry = rampy[b]
    for i in range(n0):
        ar = rampx[b, 2 * i] * sc
        ai = rampx[b, 2 * i + 1] * sc
        p = probe_k[i]
        r = o + i * m
        for j in range(0, m8, 8):           # (p * ramp_x) * ramp_y, four pixels at a time
            cmul4s(out, r + j, p, j, ar, ai)
            cmul4(out, r + j, out, r + j, ry, j)
        for j in range(m8 // 2, n1):
            qr = p[2 * j] * ar - p[2 * j + 1] * ai
            qi = p[2 * j] * ai + p[2 * j + 1] * ar
            out[r + 2 * j] = qr * ry[2 * j] - qi * ry[2 * j + 1]
            out[r + 2 * j + 1] = qr * ry[2 * j + 1] + qi * ry[2 * j]


@njit(parallel=True, cache=True, fastmath=FAST)
def _incident(probe_k, rampx, rampy, scale, out, nb):
    win = probe_k.shape[0] * probe_k.shape[1]
    sc = np.float32(scale)
    for b in prange(nb):
        _incident_window(probe_k, rampx, rampy, b, sc, out, b * win)


def incident(probe_k, rampx, rampy, scale, out):
    """``out[b] = scale * probe_k * rampx[b][:, None] * rampy[b][None, :]`` (Fourier-space
    shifted probes; ``scale`` undoes the gain of the backend's unnormalised inverse FFT)."""
    _incident(_f(probe_k), _f(rampx), _f(rampy), scale, _flat(out), out.shape[0])


@njit(parallel=True, cache=True, fastmath=FAST)
def _transmit_in_place(psi, trans, corners):
    nb = psi.shape[0]
    n0 = psi.shape[1]
    m = psi.shape[2]                # floats per row, 2 n1
    _check_windows(corners, nb, n0, m // 2, trans.shape[0], trans.shape[1] // 2)
    for b in prange(nb):
        x0 = corners[b, 0]
        y0 = 2 * corners[b, 1]
        for i in range(n0):
            _product(psi[b, i], 0, trans[x0 + i, y0:y0 + m], 0, m)


def transmit(psi, trans, corners, out):
    """Transmission through one slice: ``out[b] = psi[b] * trans[window b]``, the window of
    position ``b`` starting at object pixel ``corners[b]`` (``trans = exp(i sigma V)``); ``out``
    may be ``psi`` (in place, as the engine calls it; otherwise ``psi`` is copied into ``out``
    first)."""
    if out is not psi:
        out[...] = psi
    _transmit_in_place(_f(out), _f(trans), corners)


@njit(parallel=True, cache=True, fastmath=FAST)
def _multiply(a, h, nb):
    win = h.shape[0]
    for b in prange(nb):
        _product(a, b * win, h, 0, win)


def multiply(a, h):
    """``a[b] *= h`` for every ``b`` (Fresnel propagator in Fourier space)."""
    _multiply(_flat(a), _flat(h), a.shape[0])


# -- fused kernels: FFTs and products of one window while it is in cache ----------------------------

@njit(fastmath=FAST, inline="always")
def _slice_step(fn, plan_f, plan_b, waves, wb, trans_s, x0, y0, n0, m, g, gb, h, next_wb, last, ahead):
    """The wave at ``wb`` of the flat ``waves`` through one slice: times the slice's transmission
    (``trans_s``, its float32 view) from object pixel ``(x0, y0)`` (the exit wave, kept), then
    Fresnel-propagated into ``waves`` at ``next_wb`` (``g`` at ``gb`` the Fourier-space scratch)
    or, at the ``last`` slice, its FFT into ``g`` at ``gb`` (the detector wave). The
    transmission's rows are prefetched ``ahead`` rows in advance (0: none)."""
    for i in range(n0):
        if ahead and i + ahead < n0:
            _prefetch_row(trans_s[x0 + i + ahead], 2 * y0, 2 * y0 + m)
        _product(waves, wb + i * m, trans_s[x0 + i, 2 * y0:2 * y0 + m], 0, m)
    if last:
        fftw_execute(fn, plan_f, waves, wb, g, gb)
    else:
        _propagate(fn, plan_f, plan_b, waves, wb, g, gb, h, waves, next_wb, n0 * m)


@njit(fastmath=FAST, error_model="numpy", inline="always")
def _detector_step(fn, plan_b, g, gb, win, amp, poisson, rsc, err, loss, b, g_real, keep, wave_k):
    """The detector wave in ``g`` at ``gb``: kept in ``wave_k`` (if ``keep``), replaced by the
    loss's gradient (:func:`residual` against the amplitudes ``amp``; ``err[b]``, ``loss[b]``),
    whose inverse FFT goes into ``g_real`` at ``gb`` (the exit wave's gradient)."""
    if keep:
        wave_k[gb:gb + win] = g[gb:gb + win]
    e, lo = _residual_window(g, gb, amp, poisson, rsc)
    err[b] = e
    loss[b] = lo
    fftw_execute(fn, plan_b, g, gb, g_real, gb)


@njit(parallel=True, cache=True, fastmath=FAST, error_model="numpy")
def _forward_pass(fn, plan_f, plan_b, probe_k, rampx, rampy, incident_scale, waves, g, trans, corners, h, nb, nz, C,
                  residual, amplitudes, index, poisson, residual_scale, err, loss, g_real, keep, wave_k):
    n0 = probe_k.shape[0]
    m = probe_k.shape[1]
    win = n0 * m
    _check_windows(corners, nb, n0, m // 2, trans.shape[1], trans.shape[2] // 2)
    sc = np.float32(incident_scale)
    rsc = np.float32(residual_scale)
    for b in prange(nb):
        gb = b * win
        _incident_window(probe_k, rampx, rampy, b, sc, g, gb)      # the shifted probe, Fourier space
        fftw_execute(fn, plan_b, g, gb, waves, gb)                 # slot 0 (s = 0): the incident wave
        for s in range(nz):
            wb = (s * C + b) * win
            _slice_step(fn, plan_f, plan_b, waves, wb, trans[s], corners[b, 0], corners[b, 1], n0, m, g, gb, h,
                        wb + C * win, s == nz - 1, 0)
        if residual:
            _detector_step(fn, plan_b, g, gb, win, amplitudes[index[b]], poisson, rsc, err, loss, b, g_real, keep,
                           wave_k)


@njit(parallel=True, cache=True)
def _execute_windows(fn, plan, src, dst, nb, win):
    for b in prange(nb):
        fftw_execute(fn, plan, src, b * win, dst, b * win)


@njit(parallel=True, cache=True, fastmath=FAST)
def _propagate_back(fn, plan_f, plan_b, g_real, g, hc, nb, win):
    for b in prange(nb):
        _propagate(fn, plan_f, plan_b, g_real, b * win, g, b * win, hc, g_real, b * win, win)


@njit(fastmath=FAST, error_model="numpy", inline="always")
def _tail_window(fn, plan_f, g_real, g, g3, w, win, b, positions, probe_k, rampx, rampy, kx, ky, gpos, curvature,
                 exit_wave, projected, corners, hs, g_real3, dx, dy, dx3, dy3, wave_k, pcurv):
    """Window ``w`` (position ``b``) of :meth:`CPUBackend.gradient_tail`."""
    gb = w * win
    fftw_execute(fn, plan_f, g_real, gb, g, gb)        # the incident wave's gradient, Fourier space
    if positions:
        _position_gradient_window(g3, w, probe_k, rampx, rampy, kx, ky, b, gpos)
    if curvature:
        # the exit wave's shift derivatives (x into the free g_real[w], y into dy[w]), their FFTs
        # (into dx[w] and g_real[w]) and the curvature, all while the window is in cache
        _exit_shift_window(exit_wave, w, projected, corners, b, hs, g_real3, dy3)
        fftw_execute(fn, plan_f, g_real, gb, dx, gb)
        fftw_execute(fn, plan_f, dy, gb, g_real, gb)
        _position_curvature_window(wave_k, dx3, g_real3, w, pcurv, b)


@njit(parallel=True, cache=True, fastmath=FAST, error_model="numpy")
def _gradient_tail(fn, plan_f, g_real, g, g3, nb, win, positions, probe_k, rampx, rampy, kx, ky, gpos, curvature,
                   exit_wave, projected, corners, hs, g_real3, dx, dy, dx3, dy3, wave_k, pcurv):
    for b in prange(nb):
        _tail_window(fn, plan_f, g_real, g, g3, b, win, b, positions, probe_k, rampx, rampy, kx, ky, gpos, curvature,
                     exit_wave, projected, corners, hs, g_real3, dx, dy, dx3, dy3, wave_k, pcurv)


@njit(fastmath=FAST, error_model="numpy", inline="always")
def _residual_window(w, o, amp, poisson, sc):
    """One window of :func:`residual`: the flat float32 ``w`` at offset ``o`` against the
    amplitudes ``amp`` (n0, n1); returns the window's error and loss."""
    n0 = amp.shape[0]
    n1 = amp.shape[1]
    tiny = np.float32(1e-30)
    two = np.float32(2.0) * sc
    one = np.float32(1.0)
    # eight pixels at a time (residual_blocks, residual_poisson_blocks), then the tail
    j0 = n1 - n1 % 8
    e = 0.0
    lo = 0.0
    for i in range(n0):
        r = o + i * 2 * n1
        arow = amp[i]
        er = np.float32(0.0)
        lr = np.float32(0.0)
        if poisson == 0:
            er += residual_blocks(w, r, arow, 0, j0 // 8, sc, two)
        else:
            eb, lb = residual_poisson_blocks(w, r, arow, 0, j0 // 8, sc, two, poisson)
            er += eb
            lr += lb
        for j in range(j0, n1):
            wr = w[r + 2 * j] * sc
            wi = w[r + 2 * j + 1] * sc
            m2 = wr * wr + wi * wi
            m = np.sqrt(m2)
            a = arow[j]
            d = m - a
            er += d * d
            if poisson == 0:
                f = two * (one - a / max(m, tiny))
            else:
                a2 = a * a
                lr += m2 - a2 * np.float32(math.log(m2 + np.float32(1e-12)))
                if poisson == 2:
                    f = two * ((m2 - a2) / (m2 + a2 + np.float32(1e-12)))
                else:
                    f = two * (one - a2 / (m2 + np.float32(1e-12)))
            w[r + 2 * j] = wr * f
            w[r + 2 * j + 1] = wi * f
        e += er
        lo += lr
    return e, (lo if poisson else e)


@njit(parallel=True, cache=True, fastmath=FAST, error_model="numpy")
def _residual(wave_k, amplitudes, index, poisson, scale, err, loss, nb):
    win = amplitudes.shape[1] * amplitudes.shape[2] * 2
    sc = np.float32(scale)
    for b in prange(nb):
        e, lo = _residual_window(wave_k, b * win, amplitudes[index[b]], poisson, sc)
        err[b] = e
        loss[b] = lo


def residual(wave_k, amplitudes, index, poisson, scale, err, loss):
    """Detector-plane residual: replace ``wave_k`` by the gradient of the loss with respect to it.

    ``Psi = scale * wave_k`` is the unitary-FFT detector wave (``scale`` undoes the gain of the
    backend's unnormalised FFT) and the gradient is written times ``scale`` so that the
    unnormalised inverse FFT of it is the unitary one.

    Amplitude loss ``sum (|Psi| - a)^2``: ``g = 2 (Psi - a Psi / |Psi|)`` (``2 Psi`` where
    ``Psi = 0``, i.e. zero). ``poisson`` = 0: amplitude loss; 1: Poisson loss
    ``sum (|Psi|^2 - a^2 log |Psi|^2)``, ``g = 2 Psi (1 - a^2 / |Psi|^2)``; 2: the same gradient
    preconditioned, i.e. divided by the loss's per-pixel curvature in ``|Psi|`` relative to the
    amplitude loss's, ``(|Psi|^2 + a^2) / (2 |Psi|^2)``, giving the bounded
    ``2 Psi (|Psi|^2 - a^2) / (|Psi|^2 + a^2)`` (a Newton-like step where the model is near zero
    but counts were recorded, where the plain gradient explodes).
    ``err[b]`` receives the amplitude error ``sum (|Psi| - a)^2`` of position ``b`` and
    ``loss[b]`` the value of the chosen loss (float64; float32 within a detector row, float64
    over rows, in a fixed order).
    """
    _residual(_flat(wave_k), amplitudes, index, poisson, scale, err, loss, wave_k.shape[0])


@njit(fastmath=FAST, inline="always")
def _scatter_row(g, ig, p, ip, t, it, grad, igr, illum, iil, n1, sg):
    """One window row of :func:`back_slice` (``n1`` pixels; 1-D float32 arrays and float
    offsets): ``grad[igr + j] += sigma Im(conj(p) g)``, ``illum[iil + j] += |p|^2`` and
    ``g = conj(t) g``, eight pixels at a time (:func:`back_slice8`), then the tail."""
    n8 = n1 - n1 % 8
    for j in range(0, n8, 8):
        back_slice8(g, ig + 2 * j, p, ip + 2 * j, t, it + 2 * j, grad, igr + j, illum, iil + j, sg)
    for j in range(n8, n1):
        tr = t[it + 2 * j]
        ti = t[it + 2 * j + 1]
        gr = g[ig + 2 * j]
        gi = g[ig + 2 * j + 1]
        pr = p[ip + 2 * j]
        pi = p[ip + 2 * j + 1]
        grad[igr + j] += sg * (pr * gi - pi * gr)      # sigma Im(conj(exit) g)
        illum[iil + j] += pr * pr + pi * pi
        g[ig + 2 * j] = tr * gr + ti * gi              # conj(T) g
        g[ig + 2 * j + 1] = tr * gi - ti * gr


#: Rows ahead at which :meth:`CPUBackend.batch_windows` prefetches a window's transmission,
#: gradient and illumination rows: 0.93-0.97x the time per batch at paper scale on the 2-core VM
#: (same-process A/B, four runs of 4-6 rounds); 2 to 8 rows were alike.
PREFETCH_ROWS = 2

#: Object rows per task of :func:`back_slice`: a task walks its rows of each window in turn.
BACK_SLICE_ROWS = 8


@njit(parallel=True, cache=True, fastmath=FAST)
def _back_slice(g, exit_wave, trans, corners, nb, sigma, grad, illum, row_lo, row_hi, row_max):
    nx = grad.shape[0]
    ny = grad.shape[1]
    n0 = g.shape[1]
    n1 = g.shape[2] // 2
    sg = np.float32(sigma)
    _check_windows(corners, nb, n0, n1, nx, ny)
    # the rows the windows cover, split into tasks of R rows (so every thread gets a share)
    first = nx
    last = 0
    for b in range(nb):
        first = min(first, max(corners[b, 0], 0))
        last = max(last, min(corners[b, 0] + n0, nx))
    for x in range(nx):
        if x < first or x >= last:
            row_lo[x] = ny
            row_hi[x] = 0
            row_max[x] = 0
    R = BACK_SLICE_ROWS
    for task in prange((max(last - first, 0) + R - 1) // R):
        xa = first + task * R
        xe = min(xa + R, last)
        for x in range(xa, xe):
            row_lo[x] = ny
            row_hi[x] = 0
        for b in range(nb):                 # batch order: every pixel sums in the same order
            x0 = corners[b, 0]
            y0 = corners[b, 1]
            for x in range(max(xa, x0), min(xe, x0 + n0)):
                i = x - x0
                row_lo[x] = min(row_lo[x], y0)
                row_hi[x] = max(row_hi[x], y0 + n1)
                _scatter_row(g[b, i], 0, exit_wave[b, i], 0, trans[x], 2 * y0, grad[x], y0, illum[x], y0, n1, sg)
        for x in range(xa, xe):             # the task's rows, still in cache
            row_max[x] = _row_max(illum[x], row_lo[x], row_hi[x])


def back_slice(g, exit_wave, trans, corners, nb, sigma, grad, illum, row_lo, row_hi, row_max):
    """Back-propagate through one slice's transmission and scatter the potential gradient.

    On entry ``g[b]`` is the gradient with respect to the slice's exit wave ``exit_wave[b] =
    psi[b] * T`` (``psi`` the incident wave, ``T = trans[window b] = exp(i sigma V)``); on exit it
    is the gradient with respect to the incident wave, ``conj(T) * g``. The potential gradient
    ``sigma * Im(conj(psi) * conj(T) * g) = sigma * Im(conj(exit) * g)`` and the illumination
    ``|psi|^2 = |exit|^2`` are added into ``grad`` and ``illum`` (object-sized, zero on entry).
    Parallel over blocks of :data:`BACK_SLICE_ROWS` object rows within the rows the windows
    cover; a block's rows of each window are visited in batch order, so every pixel sums its
    positions in batch order (deterministic for any thread count). ``row_lo/row_hi`` receive the
    touched column span of each row (``lo >= hi`` when untouched) and ``row_max`` the row's
    largest illumination.
    """
    _back_slice(_f(g), _f(exit_wave), _f(trans), corners, nb, sigma, grad, illum, row_lo, row_hi, row_max)


@njit(parallel=True, cache=True, fastmath=FAST, error_model="numpy")
def _update_object(potential, trans, grad, illum, row_lo, row_hi, coef, floor, sigma):
    # one loop per array written, over slices starting at 0 (no negative-index wraparound) and
    # numpy's division (no zero check): LLVM vectorises them, which it does not for one loop
    # writing four arrays
    sg = np.float32(sigma)
    c = np.float32(coef)
    fl = np.float32(floor)
    for x in prange(potential.shape[0]):
        lo = row_lo[x]
        n = max(row_hi[x] - lo, 0)
        v = potential[x, lo:lo + n]
        g = grad[x, lo:lo + n]
        il = illum[x, lo:lo + n]
        t = trans[x, 2 * lo:2 * (lo + n)]
        n8 = n - n % 8
        for y in range(0, n8, 8):       # eight pixels at a time, each array touched once
            object_step8(v, y, g, y, il, y, t, 2 * y, c, fl, sg)
        for y in range(n8, n):
            if il[y] > 0:
                v[y] -= c * g[y] / (il[y] + fl)
            cos_sin1(v, y, sg, t, 2 * y)
            g[y] = 0
            il[y] = 0


def update_object(potential, trans, grad, illum, row_lo, row_hi, coef, floor, sigma):
    """``V -= coef * grad / (illum + floor)`` where ``illum > 0`` in the touched column span of
    each row, ``trans = exp(i sigma V)`` there (Cephes' sine and cosine, as
    :func:`refresh_transmission`: the transmission is written from the potential without being
    read), and zero ``grad``/``illum`` (ready for the next batch). Eight pixels at a time
    (:func:`object_step8`, every array read and written once), then the row's tail. Blocks of
    eight whose gradient and illumination are all zero are skipped: ``trans`` must follow ``V``
    on entry, as the engine keeps it."""
    _update_object(potential, _f(trans), grad, illum, row_lo, row_hi, coef, floor, sigma)


@njit(fastmath=FAST, inline="always")
def _probe_gradient_row(o, gb, rampx, rampy, b, i, m8, n1):
    """Row ``i`` of position ``b``'s term of :func:`probe_gradient`: ``o += conj(rampx[b, i])
    conj(rampy[b]) gb`` (float32 rows, ``m8`` floats in whole blocks of four pixels)."""
    ar = rampx[b, 2 * i]
    ai = -rampx[b, 2 * i + 1]
    ry = rampy[b]
    for j in range(0, m8, 8):       # g conj(ry) conj(rx), four pixels at a time
        probe_gradient4(o, j, gb, j, ry, j, ar, ai)
    for j in range(m8 // 2, n1):
        cr = ar * ry[2 * j] + ai * ry[2 * j + 1]
        ci = ai * ry[2 * j] - ar * ry[2 * j + 1]
        gr = gb[2 * j]
        gi = gb[2 * j + 1]
        o[2 * j] += cr * gr - ci * gi
        o[2 * j + 1] += cr * gi + ci * gr


@njit(parallel=True, cache=True, fastmath=FAST)
def _probe_gradient(g_k, rampx, rampy, nb, out):
    n0 = out.shape[0]
    n1 = out.shape[1] // 2
    m8 = 2 * n1 - (2 * n1) % 8
    for i in prange(n0):
        o = out[i]
        for j in range(2 * n1):
            o[j] = 0
        for b in range(nb):
            _probe_gradient_row(o, g_k[b, i], rampx, rampy, b, i, m8, n1)


def probe_gradient(g_k, rampx, rampy, nb, out):
    """``out = sum_b conj(ramp_b) * g_k[b]``: gradient with respect to the Fourier probe.
    Parallel over window rows, sequential over positions (deterministic)."""
    _probe_gradient(_f(g_k), _f(rampx), _f(rampy), nb, _f(out))


@njit(fastmath=FAST, inline="always")
def _position_gradient_window(g_k, w, probe_k, rampx, rampy, kx, ky, b, out):
    """Position ``b`` of :func:`position_gradient`, its wave in window ``w`` of ``g_k``, into
    ``out[b]``."""
    n0 = g_k.shape[1]
    n1 = g_k.shape[2] // 2
    n8 = n1 - n1 % 8
    sx = 0.0
    sy = 0.0
    ry = rampy[b]
    for i in range(n0):
        ar = rampx[b, 2 * i]
        ai = rampx[b, 2 * i + 1]
        p = probe_k[i]
        gb = g_k[w, i]
        rowx = np.float32(0.0)
        dx, dy = position_gradient_blocks(gb, 0, p, 0, ry, 0, ar, ai, ky, 0, n8 // 8)   # 8 pixels at a time
        rowx += dx
        sy += dy
        for j in range(n8, n1):
            pr = p[2 * j] * ar - p[2 * j + 1] * ai
            pi = p[2 * j] * ai + p[2 * j + 1] * ar
            qr = pr * ry[2 * j] - pi * ry[2 * j + 1]
            qi = pr * ry[2 * j + 1] + pi * ry[2 * j]
            im = gb[2 * j] * qi - gb[2 * j + 1] * qr
            rowx += im
            sy += ky[j] * im
        sx += kx[i] * rowx
    out[b, 0] = 2.0 * np.pi * sx
    out[b, 1] = 2.0 * np.pi * sy


@njit(parallel=True, cache=True, fastmath=FAST)
def _position_gradient(g_k, probe_k, rampx, rampy, kx, ky, nb, out):
    for b in prange(nb):
        _position_gradient_window(g_k, b, probe_k, rampx, rampy, kx, ky, b, out)


def position_gradient(g_k, probe_k, rampx, rampy, kx, ky, nb, out):
    """Gradient of the loss with respect to each position's sub-pixel shift (per pixel).

    With ``Q = probe_k * ramp_b`` (the incident wave in Fourier space) and ``G = g_k[b]``:
    ``dL/df_x = 2 pi sum kx Im(conj(G) Q)`` and likewise for y.
    """
    _position_gradient(_f(g_k), _f(probe_k), _f(rampx), _f(rampy), kx, ky, nb, out)


@njit(inline="always", fastmath=FAST)
def _write_exit_times_ig(p, j, gx, gy, ox, oy):
    """``ox[j] = exit * i gx`` and ``oy[j] = exit * i gy`` with ``exit = p[j]`` (float32 (re, im)
    rows)."""
    er = p[2 * j]
    ei = p[2 * j + 1]
    ox[2 * j] = -ei * gx
    ox[2 * j + 1] = er * gx
    oy[2 * j] = -ei * gy
    oy[2 * j + 1] = er * gy


@njit(fastmath=FAST, inline="always")
def _exit_shift_window(exit_wave, w, projected, corners, b, hs, dx, dy):
    """Position ``b`` of :func:`exit_shift_derivative`, its exit wave and outputs in window ``w``
    (``hs = sigma / 2``, float32)."""
    n0 = dx.shape[1]
    n1 = dx.shape[2] // 2
    n8 = n1 - n1 % 8
    nx, ny = projected.shape
    x0 = corners[b, 0]
    y0 = corners[b, 1]
    # the usual case (the engine keeps windows off the object's edge): contiguous neighbours
    inside = x0 >= 1 and y0 >= 1 and x0 + n0 + 1 <= nx and y0 + n1 + 1 <= ny
    for i in range(n0):
        X = x0 + i
        p = exit_wave[w, i]
        ox = dx[w, i]
        oy = dy[w, i]
        vm = projected[max(X - 1, 0), y0:y0 + n1]
        vp = projected[min(X + 1, nx - 1), y0:y0 + n1]
        if inside:
            vl = projected[X, y0 - 1:y0 + n1 - 1]
            vr = projected[X, y0 + 1:y0 + n1 + 1]
            for j in range(0, n8, 8):   # eight pixels at a time
                exit_times_ig8(p, 2 * j, vm, vp, vl, vr, j, hs, ox, oy, 2 * j)
            for j in range(n8, n1):
                _write_exit_times_ig(p, j, hs * (vp[j] - vm[j]), hs * (vr[j] - vl[j]), ox, oy)
        else:
            v0 = projected[X]
            for j in range(n1):
                Y = y0 + j
                _write_exit_times_ig(p, j, hs * (vp[j] - vm[j]),
                                     hs * (v0[min(Y + 1, ny - 1)] - v0[max(Y - 1, 0)]), ox, oy)


@njit(parallel=True, cache=True, fastmath=FAST)
def _exit_shift_derivative(exit_wave, projected, corners, nb, sigma, dx, dy):
    hs = np.float32(0.5 * sigma)
    for b in prange(nb):
        _exit_shift_window(exit_wave, b, projected, corners, b, hs, dx, dy)


def exit_shift_derivative(exit_wave, projected, corners, nb, sigma, dx, dy):
    """Approximate derivative of the exit wave with respect to a shift of the object under the
    probe (projection approximation): ``exit * i sigma dVproj/dx`` (per pixel), for the
    Gauss-Newton curvature of the position update."""
    _exit_shift_derivative(_f(exit_wave), projected, corners, nb, sigma, _f(dx), _f(dy))


@njit(fastmath=FAST, error_model="numpy", inline="always")
def _position_curvature_window(wave_k, dx, dy, w, out, b):
    """Window ``w`` of :func:`position_curvature` into ``out[b]``."""
    n0 = dx.shape[1]
    n1 = dx.shape[2] // 2
    n8 = n1 - n1 % 8
    tiny = np.float32(1e-30)
    cx = 0.0
    cy = 0.0
    for i in range(n0):
        wk = wave_k[w, i]
        a = dx[w, i]
        c = dy[w, i]
        rx = np.float32(0.0)
        ry = np.float32(0.0)
        ux, uy = position_curvature_blocks(wk, 0, a, 0, c, 0, n8 // 8)    # eight pixels at a time
        rx += ux
        ry += uy
        for j in range(n8, n1):
            wr = wk[2 * j]
            wi = wk[2 * j + 1]
            m2 = wr * wr + wi * wi
            inv = np.float32(1.0) / max(m2, tiny)     # zero where the wave is zero
            inv = inv if m2 > 0 else np.float32(0.0)
            ux = wr * a[2 * j] + wi * a[2 * j + 1]
            uy = wr * c[2 * j] + wi * c[2 * j + 1]
            rx += ux * ux * inv
            ry += uy * uy * inv
        cx += rx
        cy += ry
    out[b, 0] = 2.0 * cx
    out[b, 1] = 2.0 * cy


@njit(parallel=True, cache=True, fastmath=FAST, error_model="numpy")
def _position_curvature(wave_k, dx, dy, nb, out):
    for b in prange(nb):
        _position_curvature_window(wave_k, dx, dy, b, out, b)


def position_curvature(wave_k, dx, dy, nb, out):
    """Gauss-Newton curvature of the amplitude loss along x and y for each position:
    ``2 sum_k Re(conj(Psi/|Psi|) dPsi)^2``."""
    _position_curvature(_f(wave_k), _f(dx), _f(dy), nb, out)


# -- one mini-batch, each window through all of it while in cache -------------------------------

@njit(cache=True)
def _check_strips(corners, bounds, strips, nx):
    """:meth:`CPUBackend.batch_windows` writes without bounds checks: every slot's windows must
    start in its strip of rows, the strips in order from row 0 to the object's last."""
    S = len(bounds) - 1
    if len(strips) != S + 1 or strips[0] != 0 or strips[S] != nx or bounds[0] != 0:
        raise ValueError("batch_windows: strips must run from row 0 to the object's last, one per slot")
    for t in range(S):
        if bounds[t + 1] < bounds[t] or strips[t + 1] < strips[t]:
            raise ValueError("batch_windows: slots and strips must be in order")
        for b in range(bounds[t], bounds[t + 1]):
            if corners[b, 0] < strips[t] or (t < S - 1 and corners[b, 0] > strips[t + 1]):
                raise ValueError("batch_windows: a window starts outside its slot's strip of rows")


@njit(parallel=True, cache=True, fastmath=FAST, error_model="numpy")
def _batch_windows(fn, plan_f, plan_b, probe_k, rampx, rampy, incident_scale, waves, g, g_real, trans, corners, h, hc,
                   nb, nz, bounds, strips, group, amplitudes, index, poisson, residual_scale, err, loss, sigma, grad,
                   illum, over_grad, over_illum, probe, gpk, positions, kx, ky, gpos, curvature, projected, hs, wave_k,
                   dx, dy, pcurv, g3, last3, g_real3, wave_k3, dx3, dy3, illum_max, ahead):
    n0 = probe_k.shape[0]
    m = probe_k.shape[1]
    n1 = m // 2
    win = n0 * m
    W = waves.shape[0] // (nz * win)        # windows per slice in the stack
    _check_windows(corners, nb, n0, n1, trans.shape[1], trans.shape[2] // 2)
    sc = np.float32(incident_scale)
    rsc = np.float32(residual_scale)
    sg = np.float32(sigma)
    m8 = m - m % 8
    S = len(bounds) - 1
    for t in prange(S):
        end = strips[t + 1]                 # rows from here on go to the slot's overhang
        if probe:
            gpk[t] = 0
        illum_max[t * nz:(t + 1) * nz] = 0
        for start in range(bounds[t], bounds[t + 1], group):
            ng = min(group, bounds[t + 1] - start)
            # forward, slice by slice over the group (its windows share the slice's object rows
            # in cache): the incident waves, every slice's exit wave (kept), the detector wave;
            # then window by window its residual and the residual's inverse FFT
            for k in range(ng):
                gb = (t * group + k) * win  # window w = t * group + k: g, g_real, wave_k, dx, dy, waves[:, w]
                _incident_window(probe_k, rampx, rampy, start + k, sc, g, gb)
                fftw_execute(fn, plan_b, g, gb, waves, gb)
            for s in range(nz):
                for k in range(ng):
                    b = start + k
                    gb = (t * group + k) * win
                    wb = s * W * win + gb
                    _slice_step(fn, plan_f, plan_b, waves, wb, trans[s], corners[b, 0], corners[b, 1], n0, m, g, gb,
                                h, wb + W * win, s == nz - 1, ahead)
            for k in range(ng):
                b = start + k
                _detector_step(fn, plan_b, g, (t * group + k) * win, win, amplitudes[index[b]], poisson, rsc, err,
                               loss, b, g_real, curvature, wave_k)
            # backward, slice by slice over the group (its windows share the slice's object
            # rows in cache): scatter the potential gradient, back through the transmission and
            # the propagator
            for s in range(nz - 1, -1, -1):
                top = illum_max[t * nz + s]     # the slot's largest illumination in the slice
                for k in range(ng):
                    b = start + k
                    w = t * group + k
                    gb = w * win
                    wb = (s * W + w) * win
                    x0 = corners[b, 0]
                    y0 = corners[b, 1]
                    for i in range(n0):
                        x = x0 + i
                        if ahead and i + ahead < n0 and x + ahead < end:
                            _prefetch_row(trans[s, x + ahead], 2 * y0, 2 * y0 + m)
                            _prefetch_row(grad[s, x + ahead], y0, y0 + n1)
                            _prefetch_row(illum[s, x + ahead], y0, y0 + n1)
                        if x < end:         # the slot's own strip, or its overhang beyond it
                            gr = grad[s, x]
                            il = illum[s, x]
                        else:
                            gr = over_grad[t, s, x - end]
                            il = over_illum[t, s, x - end]
                        _scatter_row(g_real, gb + i * m, waves, wb + i * m, trans[s, x], 2 * y0, gr, y0, il, y0, n1, sg)
                        # the row's largest illumination, read while in cache (every value the slot
                        # wrote is seen, its last one included)
                        top = max(top, _row_max(il, y0, y0 + n1))
                    if s > 0:
                        _propagate(fn, plan_f, plan_b, g_real, gb, g, gb, hc, g_real, gb, win)
                illum_max[t * nz + s] = top
            if not (probe or positions or curvature):
                continue
            # the incident wave's gradient in Fourier space: probe and position gradients, and
            # the position curvature
            for k in range(ng):
                b = start + k
                w = t * group + k
                _tail_window(fn, plan_f, g_real, g, g3, w, win, b, positions, probe_k, rampx, rampy, kx, ky, gpos,
                             curvature, last3, projected, corners, hs, g_real3, dx, dy, dx3, dy3, wave_k3, pcurv)
                if probe:
                    for i in range(n0):
                        _probe_gradient_row(gpk[t, i], g3[w, i], rampx, rampy, b, i, m8, n1)


@njit(parallel=True, cache=True)
def _finish_batch_rows(corners, nb, n0, n1, strips, grad, illum, over_grad, over_illum, illum_max, row_lo, row_hi,
                       slice_max, row_max):
    nz, nx, ny = grad.shape
    S = len(strips) - 1
    for x in prange(nx):
        lo = ny
        hi = 0
        for b in range(nb):
            if corners[b, 0] <= x < corners[b, 0] + n0:
                lo = min(lo, corners[b, 1])
                hi = max(hi, corners[b, 1] + n1)
        for s in range(nz):
            row_lo[s, x] = lo
            row_hi[s, x] = hi
            gr = grad[s, x]
            il = illum[s, x]
            mx = np.float32(0.0)
            for t in range(S - 1):          # the slots' overhangs in slot order
                r = x - strips[t + 1]
                if 0 <= r < n0:
                    og = over_grad[t, s, r]
                    oi = over_illum[t, s, r]
                    for y in range(lo, hi):
                        gr[y] += og[y]
                        il[y] += oi[y]
                        og[y] = 0
                        oi[y] = 0
                        mx = max(mx, il[y])
            row_max[s, x] = mx
    # each slice's largest illumination: the slots' maxima (of every value a slot wrote
    # into the maps; the final value of a pixel no overhang reaches is one of them) and the rows
    # the overhangs were added to
    for s in range(nz):
        mx = np.float32(0.0)
        for t in range(S):
            mx = max(mx, illum_max[t, s])
        for x in range(nx):
            mx = max(mx, row_max[s, x])
        slice_max[s] = mx


def finish_batch_rows(corners, nb, n0, n1, strips, grad, illum, overhang, illum_max, row_lo, row_hi, slice_max,
                      row_max):
    """After :meth:`CPUBackend.batch_windows`: add the slots' overhangs into ``grad`` and
    ``illum`` in slot order (zeroing them) and write, for every slice, the column span of the
    windows ``corners[:nb]`` (``n0 x n1`` pixels) in each object row into ``row_lo/row_hi``, as
    :func:`back_slice` does, and the slice's largest illumination into ``slice_max`` (from the
    slots' maxima ``illum_max``, ``(slots, nz)``, and the rows the overhangs reach,
    whose maxima go into ``row_max``, ``(nz, rows)`` work space), without reading the maps'
    other rows again."""
    _finish_batch_rows(corners, nb, n0, n1, np.asarray(strips, np.int64), grad, illum, overhang[0], overhang[1],
                       illum_max, row_lo, row_hi, slice_max, row_max)


@njit(parallel=True, cache=True)
def copy_gradient(out, grad, illum, row_lo, row_hi):
    """Copy the scattered gradient into ``out`` and zero ``grad``/``illum`` (gradient checks)."""
    for x in prange(out.shape[0]):
        for y in range(row_lo[x], row_hi[x]):
            out[x, y] += grad[x, y]
            grad[x, y] = 0
            illum[x, y] = 0


@njit(parallel=True, cache=True)
def project_potential(potential, out):
    """``out = sum_s potential[s]`` (float32, summed in slice order)."""
    nz, nx, ny = potential.shape
    for x in prange(nx):
        for y in range(ny):
            out[x, y] = 0
        for s in range(nz):
            for y in range(ny):
                out[x, y] += potential[s, x, y]


@njit(parallel=True, cache=True)
def tv_step(potential, work, weight_z, weight_xy, eps):
    """One gradient step on the smoothed total variation, separately along z and in x-y.

    ``V <- V - weight_xy * dTV_xy/dV - weight_z * dTV_z/dV`` with
    ``TV_xy = sum sqrt(dx^2 + dy^2 + eps^2)`` (isotropic, forward differences) and
    ``TV_z = sum sqrt(dz^2 + eps^2)``. Each derivative is bounded by about 4 (x-y) and 2 (z),
    so the weights are the largest change per call in V*A. ``work`` holds a copy of ``V``.
    """
    nz, nx, ny = potential.shape
    for s in prange(nz):
        for x in range(nx):
            for y in range(ny):
                work[s, x, y] = potential[s, x, y]
    e2 = eps * eps
    for sx in prange(nz * nx):
        s = sx // nx
        x = sx % nx
        for y in range(ny):
            w = work[s, x, y]
            d = 0.0
            if weight_xy > 0:
                # own forward-difference vector
                dx = work[s, x + 1, y] - w if x + 1 < nx else 0.0
                dy = work[s, x, y + 1] - w if y + 1 < ny else 0.0
                nrm = math.sqrt(dx * dx + dy * dy + e2)
                d -= (dx + dy) / nrm
                if x > 0:
                    wx = work[s, x - 1, y]
                    ddx = w - wx
                    ddy = work[s, x - 1, y + 1] - wx if y + 1 < ny else 0.0
                    d += ddx / math.sqrt(ddx * ddx + ddy * ddy + e2)
                if y > 0:
                    wy = work[s, x, y - 1]
                    ddy = w - wy
                    ddx = work[s, x + 1, y - 1] - wy if x + 1 < nx else 0.0
                    d += ddy / math.sqrt(ddx * ddx + ddy * ddy + e2)
                d *= weight_xy
            if weight_z > 0 and nz > 1:
                dz = 0.0
                if s + 1 < nz:
                    dd = work[s + 1, x, y] - w
                    dz -= dd / math.sqrt(dd * dd + e2)
                if s > 0:
                    dd = w - work[s - 1, x, y]
                    dz += dd / math.sqrt(dd * dd + e2)
                d += weight_z * dz
            potential[s, x, y] = w - d


@njit(parallel=True, cache=True)
def clip_negative(potential):
    """``V = max(V, 0)`` in place."""
    nz, nx, ny = potential.shape
    for sx in prange(nz * nx):
        s = sx // nx
        x = sx % nx
        for y in range(ny):
            if potential[s, x, y] < 0:
                potential[s, x, y] = 0


class _ScipyPocketfft:
    """scipy's pocketfft through the public :mod:`scipy.fft` (scipy >= 1.18 has no private in-place
    entry): an in-place transform writes into its input where scipy can (``overwrite_x``), else is
    copied back; with ``out`` other than ``a``, ``a`` is kept. Same ``c2c(a, axes, forward, norm,
    out, workers)`` call as ``pypocketfft``."""

    @staticmethod
    def c2c(a, axes, forward, norm, out, workers):
        import scipy.fft
        f = scipy.fft.fftn if forward else scipy.fft.ifftn
        r = f(a, axes=axes, norm="backward" if forward else "forward", overwrite_x=out is a, workers=workers)
        if r is not out:
            out[...] = r


def _pocketfft():
    """scipy's pocketfft: the private in-place ``pypocketfft`` (scipy <= 1.17, no allocation), else
    the public :mod:`scipy.fft` (same library and results, one allocation per transform)."""
    try:
        from scipy.fft._pocketfft import pypocketfft  # private, but the only in-place entry
        return pypocketfft
    except ImportError:
        return _ScipyPocketfft()


def _pyfftw():
    try:
        import pyfftw
        return pyfftw
    except ImportError:
        return None


#: :meth:`CPUBackend.gradient_tail`'s stand-ins for the curvature's projected potential,
#: corners and output when it computes none (allocated once: nothing in the iteration loop is)
_NO_CURVATURE = (np.zeros((1, 1), np.float32), np.zeros((1, 2), np.int64), np.zeros((1, 2)))
_NO_FREQUENCIES = np.zeros(1, np.float32)


class CPUBackend:
    """FFTs and kernels for the CPU.

    FFTs are 2-D over the last two axes, batched over the leading axis, in place, complex64 and
    *unnormalised* in both directions: each multiplies by ``fft_gain(n0, n1) = sqrt(n0 * n1)``
    relative to the unitary transform; the engine folds that into the propagator and kernels.
    Libraries: FFTW through pyfftw when it is installed and ``fft_library`` allows (plans timed
    once per machine or made with ``FFTW_ESTIMATE``, see ``fft_planning``; cached per array),
    otherwise scipy's pocketfft (writing into its input where scipy has the private entry, scipy <= 1.17); numpy
    (which works in complex128 and copies) is the last resort.

    Parameters
    ----------
    workers : int
        FFT and kernel threads; 0 means ``os.cpu_count()`` (kernels: at most Numba's thread count).
    fft_library : str
        ``"auto"`` (FFTW if available, else pocketfft), ``"fftw"``, ``"pocketfft"`` or ``"numpy"``.
    fft_planning : str
        FFTW only: ``"measure"`` (plans timed once per machine and kept in a wisdom file, see
        :mod:`msptycho.ptycho.fftw_wisdom`) or ``"estimate"`` (``FFTW_ESTIMATE``, no file).
    fused_kernels : bool
        FFTW only: let the engine run its work one window at a time through FFTW's single-window
        plans, called from Numba kernels: a whole batch in one call (:meth:`batch_windows`) or,
        with a chunk size set, the forward pass, backward propagation and gradient tail chunk by
        chunk (:meth:`forward_pass`, :meth:`propagate_back`, :meth:`gradient_tail`; out-of-place
        transforms of such windows also run this way). Same results to float32 rounding.
    """

    name = "cpu"

    def __init__(self, workers: int = 0, fft_library: str = "auto", fft_planning: str = "measure",
                 fused_kernels: bool = True):
        self.fused_kernels = bool(fused_kernels)
        self.workers = int(workers) if workers and workers > 0 else (os.cpu_count() or 1)
        # the kernels use as many threads as the FFTs (a rule given 1 thread of 2 uses 1)
        numba.set_num_threads(max(1, min(self.workers, numba.config.NUMBA_NUM_THREADS)))
        self._pfft = _pocketfft()
        self._fftw = _pyfftw() if fft_library in ("auto", "fftw") else None
        if fft_library == "fftw" and self._fftw is None:
            raise ImportError("fft_library='fftw' needs pyfftw")
        if self._fftw is not None:
            self.fft_library = "fftw"
        elif self._pfft is not None and fft_library in ("auto", "pocketfft"):
            self.fft_library = "pocketfft"
        else:
            self.fft_library = "numpy"
        if fft_planning not in ("measure", "estimate"):
            raise ValueError(f"fft_planning is {fft_planning!r}; expected 'measure' or 'estimate'")
        self.fft_planning = fft_planning
        #: positions carried through the slices together: 16 per thread (their 128^2 waves, 2 MB
        #: per thread, stay in cache)
        self.chunk_positions = 16 * self.workers
        self._plans = {}
        self._window_plans = {}
        for k in ("ramps", "incident", "transmit", "multiply", "residual", "back_slice", "refresh_transmission",
                  "update_object", "copy_gradient", "probe_gradient", "position_gradient",
                  "tv_step", "clip_negative", "project_potential",
                  "exit_shift_derivative", "position_curvature", "finish_batch_rows"):
            setattr(self, k, globals()[k])

    @staticmethod
    def fft_gain(n0: int, n1: int) -> float:
        """Factor by which :meth:`fft2` and :meth:`ifft2` exceed the unitary transforms."""
        return float(np.sqrt(n0 * n1))

    def zeros(self, shape, dtype=np.complex64) -> np.ndarray:
        """Zeroed work array, SIMD-aligned when FFTW is used."""
        if self.fft_library == "fftw":
            a = self._fftw.empty_aligned(shape, dtype=dtype, n=ALIGN)
            a[...] = 0
            return a
        return np.zeros(shape, dtype=dtype)

    def _plan(self, a, forward, out):
        key = (a.__array_interface__["data"][0], out.__array_interface__["data"][0], a.shape, forward)
        plan = self._plans.get(key)
        if plan is None:
            if self.fft_planning == "measure" and a.flags.c_contiguous and out.flags.c_contiguous:
                plan = measured_plan(self._fftw, a, forward, self.workers, out=out)
            else:
                plan = self._fftw.FFTW(a, out, axes=(-2, -1), direction="FFTW_FORWARD" if forward else "FFTW_BACKWARD",
                                       flags=("FFTW_ESTIMATE",), threads=self.workers)
            self._plans[key] = plan
        return plan

    def _fft(self, a, forward, out):
        out = a if out is None else out
        wp = self._window_plans.get(a.shape[-2:]) if out is not a else None
        if wp is not None and wp.applies(a, out):
            # out of place with single-window plans: the windows in parallel, one per thread
            n0, n1 = a.shape[-2:]
            _execute_windows(wp.execute, wp.forward if forward else wp.inverse, _flat(a), _flat(out),
                             a.size // (n0 * n1), n0 * n1 * 2)
        elif self.fft_library == "fftw":
            self._plan(a, forward, out).execute()
        elif self.fft_library == "pocketfft":
            self._pfft.c2c(a, (-2, -1), forward, 0, out, self.workers)
        elif forward:
            out[...] = np.fft.fft2(a)  # not out=: numpy 2.4's in-place ifft2 over two axes is wrong
        else:
            out[...] = np.fft.ifft2(a, norm="forward")

    def fft2(self, a: np.ndarray, out: np.ndarray | None = None) -> None:
        """Unnormalised forward 2-D FFT over the last two axes, in place or into ``out`` (same
        shape; ``a`` is then kept)."""
        self._fft(a, True, out)

    def ifft2(self, a: np.ndarray, out: np.ndarray | None = None) -> None:
        """Unnormalised inverse 2-D FFT over the last two axes, in place or into ``out``."""
        self._fft(a, False, out)

    # -- fused kernels (FFTW only) ---------------------------------------------------------------
    def window_plans(self, src: np.ndarray, dst: np.ndarray):
        """Single-window FFTW plans for :meth:`forward_pass` and :meth:`propagate_back` on
        buffers allocated like ``src`` and ``dst`` (by :meth:`zeros`), or None where the fused
        kernels are not used: another FFT library, ``fused_kernels=False``, windows whose byte size
        is not a multiple of the SIMD alignment (every window must align as the planned one), or
        pyfftw's FFTW library not found (then the batched transforms are used)."""
        n0, n1 = src.shape[-2:]
        if self.fft_library != "fftw" or not self.fused_kernels or (n0 * n1 * 8) % ALIGN:
            return None
        try:
            wp = WindowPlans(src, dst, self.fft_planning)
            self._window_plans[(n0, n1)] = wp      # also for the out-of-place fft2/ifft2 of such windows
            return wp
        except OSError as e:
            LOG.info("fused FFT kernels not used (%s); batched FFTs instead", e)
            return None

    @staticmethod
    def forward_pass(plans, probe_k, rampx, rampy, incident_scale, waves, g, trans, corners, h, nb,
                     residual=None) -> None:
        """The multislice forward pass of windows ``0..nb-1``, one window at a time (parallel over
        windows), each FFTW transform and product on a window still in cache: the incident wave
        (:func:`incident` into ``g[b]``, inverse FFT into ``waves[0, b]``); every ``waves[s, b]``
        becomes the exit wave of slice ``s`` (``*= trans[s][window b]``), carried to
        ``waves[s + 1, b]`` by ``IFFT(h * FFT(.))``; ``g[b]`` receives the last exit wave's FFT
        (unnormalised). The same as the engine's batched sequence (incident, ifft2, then per slice
        transmit, fft2, multiply, ifft2).

        ``residual``, optional: ``(amplitudes, index, poisson, scale, err, loss, g_real, wave_k)``
        goes on to :func:`residual` on ``g[b]`` (``wave_k[b]``, unless None, keeps the detector
        wave first) and the inverse FFT of the gradient into ``g_real[b]``."""
        nz, C, n0, n1 = waves.shape
        if residual is None:
            amps, index, poisson, rscale = np.zeros((1, n0, n1), np.float32), np.zeros(1, np.int64), 0, 1.0
            err = loss = np.zeros(1, np.float64)
            g_real = wave_k = g
        else:
            amps, index, poisson, rscale, err, loss, g_real, wave_k = residual
        keep = residual is not None and wave_k is not None
        _forward_pass(plans.execute, plans.forward, plans.inverse, _f(probe_k), _f(rampx), _f(rampy), incident_scale,
                      _flat(waves), _flat(g), _f(trans), corners, _flat(h), nb, nz, C, residual is not None, amps,
                      index, poisson, rscale, err, loss, _flat(g_real), keep, _flat(wave_k if keep else g))

    @staticmethod
    def gradient_tail(plans, g_real, g, positions, probe_k, rampx, rampy, kx, ky, gpos, curvature=None) -> bool:
        """The engine's per-window work after the backward pass, fused (windows in parallel, each
        in cache): ``g[b] = FFT(g_real[b])`` (the incident wave's gradient in Fourier space) and,
        if ``positions``, :func:`position_gradient` into ``gpos[b]``, for ``b < len(gpos)``.

        ``curvature``, optional: ``(exit_wave, projected, corners, sigma, dx, dy, wave_k, pcurv)``
        goes on to :func:`exit_shift_derivative` of ``exit_wave[b]``, the FFTs of the two
        derivatives and :func:`position_curvature` with ``wave_k[b]`` into ``pcurv[b]``; ``g_real``,
        ``dx`` and ``dy`` are then scratch (``dx[b]`` and ``g_real[b]`` end up holding the
        derivatives' FFTs). Same results as the separate kernels and batched FFTs. Returns False,
        doing nothing, where the plans do not apply to these arrays."""
        nb = len(gpos)
        if curvature is None:       # placeholders of the right types, not touched
            exit_wave, dx, dy, wave_k, sigma = g, g, g, g, 0.0
            projected, corners, pcurv = _NO_CURVATURE
        else:
            exit_wave, projected, corners, sigma, dx, dy, wave_k, pcurv = curvature
        if not (plans.applies(g_real, g) and (curvature is None or (plans.applies(dx, dy)
                                                                   and plans.applies(g_real, dx)))):
            return False
        if nb > min(len(g), len(exit_wave), len(wave_k), len(pcurv) if curvature is not None else nb):
            raise ValueError(f"gradient_tail: {nb} positions but fewer windows or outputs")
        n0, n1 = g.shape[1:]
        _gradient_tail(plans.execute, plans.forward, _flat(g_real), _flat(g), _f(g), nb, n0 * n1 * 2, positions,
                       _f(probe_k), _f(rampx), _f(rampy), kx, ky, gpos, curvature is not None, _f(exit_wave),
                       projected, corners, np.float32(0.5 * sigma), _f(g_real), _flat(dx), _flat(dy), _f(dx), _f(dy),
                       _f(wave_k), pcurv)
        return True

    @staticmethod
    def batch_windows(plans, probe_k, rampx, rampy, incident_scale, waves, g, g_real, trans, corners, h, hc, bounds,
                      strips, group, residual, sigma, grad, illum, overhang, illum_max, probe_grad=None,
                      positions=None, curvature=None) -> None:
        """A whole mini-batch in one call, with no Python between the kernels: for each group of
        ``group`` positions, the forward pass of :meth:`forward_pass` slice by slice over the
        group, the detector residual window by window, the backward pass slice by slice over the
        group (the potential gradient scattered into ``grad`` and ``illum`` as :func:`back_slice`
        does, the propagation back as :meth:`propagate_back`), and the gradient tail of
        :meth:`gradient_tail` window by window. Slice by slice, the group's windows of a slice's
        transmission and gradient maps overlap and stay in cache (7 % faster per iteration than
        taking each window through all slices in turn, on 36 slices; 2-3 % on 6).

        The positions ``bounds[t]:bounds[t + 1]`` form slot ``t``. Slots run in parallel, each
        through its positions in order, ``group`` at a time. Slot ``t`` uses the windows
        ``t * group ...`` of ``g``, ``g_real``, ``wave_k``, ``dx`` and ``dy``, and of ``waves`` for
        the exit waves of every slice. The slots' windows must be sorted by their first row, so
        that slot ``t``'s windows start in the object rows
        ``strips[t]:strips[t + 1]`` (``strips[0] = 0``, ``strips[-1]`` the object's rows): a
        slot adds the rows of its strip straight into ``grad`` and ``illum`` (no other slot
        writes them) and the rows beyond it, at most a window's height, into its own
        ``overhang = (over_grad, over_illum)``, each ``(slots - 1, nz, n0, ny)`` or more slots, zero on entry;
        :func:`finish_batch_rows` adds those in slot order. Every pixel's sum thus runs in a fixed
        order for a given number of slots (with one slot, the batch order of :func:`back_slice`).
        ``illum_max[t, s]``, ``(slots, nz)`` float32, receives the largest illumination value
        slot ``t`` wrote in slice ``s`` (each row read back while in cache), so that the
        slice's largest illumination needs no second pass over the maps.

        The transmission, gradient and illumination rows of a window are prefetched
        :data:`PREFETCH_ROWS` rows ahead (0: none) in the forward product and the scatter.

        ``residual = (amplitudes, index, poisson, scale, err, loss)`` as in :func:`residual`;
        ``probe_grad``, optional: ``(slots, n0, n1)`` complex64, slot ``t``'s sum of the probe
        gradient terms into ``probe_grad[t]``; ``positions``, optional: ``(kx, ky, gpos)`` as in
        :func:`position_gradient`; ``curvature``, optional: ``(projected, wave_k, dx, dy, pcurv)``
        as in :meth:`gradient_tail`.
        """
        nz, W, n0, n1 = waves.shape
        S = len(bounds) - 1
        nb = int(bounds[-1])
        amps, index, poisson, rscale, err, loss = residual
        over_grad, over_illum = overhang
        if (S * group > min(W, len(g), len(g_real)) or len(strips) != S + 1
                or nb > min(len(corners), len(rampx), len(err))):
            raise ValueError(f"batch_windows: {S} slots of {group} windows and {nb} positions but fewer windows "
                             "or outputs")
        if (illum_max.dtype != np.float32 or illum_max.shape[0] < S or illum_max.shape[1:] != (nz,)
                or not illum_max.flags.c_contiguous):
            raise ValueError(f"batch_windows: illum_max of shape {illum_max.shape}; expected a contiguous float32 "
                             f"(at least {S}, {nz})")
        if S > 1 and (over_grad.shape[0] < S - 1 or over_grad.shape[1:] != (nz, n0, grad.shape[2])
                      or over_grad.shape != over_illum.shape):
            raise ValueError(f"batch_windows: overhang of shape {over_grad.shape}; expected (at least {S - 1}, {nz}, "
                             f"{n0}, {grad.shape[2]})")
        _check_strips(corners, np.asarray(bounds, np.int64), np.asarray(strips, np.int64), grad.shape[1])
        kx, ky, gpos = positions if positions is not None else (_NO_FREQUENCIES, _NO_FREQUENCIES, _NO_CURVATURE[2])
        if curvature is None:
            projected, _, pcurv = _NO_CURVATURE
            wave_k = dx = dy = g
        else:
            projected, wave_k, dx, dy, pcurv = curvature
            if S * group > min(len(wave_k), len(dx), len(dy)):
                raise ValueError("batch_windows: fewer curvature windows than slots")
        # FFTW runs the plans on these buffers unchecked: they must be laid out as the planned ones
        if not (plans.applies(waves[0], g) and plans.applies(g_real, g)
                and (curvature is None or (plans.applies(dx, dy) and plans.applies(g_real, dx)))):
            raise ValueError("batch_windows: the window plans do not apply to these buffers (shape, alignment)")
        gpk = probe_grad if probe_grad is not None else g[:1]
        _batch_windows(plans.execute, plans.forward, plans.inverse, _f(probe_k), _f(rampx), _f(rampy), incident_scale,
                       _flat(waves), _flat(g), _flat(g_real), _f(trans), corners, _flat(h), _flat(hc), nb, nz,
                       np.asarray(bounds, np.int64), np.asarray(strips, np.int64), group, amps, index, poisson, rscale,
                       err, loss, sigma, grad, illum, over_grad, over_illum, probe_grad is not None, _f(gpk),
                       positions is not None, kx, ky, gpos, curvature is not None, projected,
                       np.float32(0.5 * sigma), _flat(wave_k), _flat(dx), _flat(dy), pcurv, _f(g),
                       _f(waves[nz - 1]), _f(g_real), _f(wave_k), _f(dx), _f(dy), illum_max.reshape(-1),
                       PREFETCH_ROWS)

    @staticmethod
    def propagate_back(plans, g_real, g, hc, nb) -> None:
        """``g_real[b] = IFFT(hc * FFT(g_real[b]))`` for ``b < nb``, one window at a time (``g``
        receives the Fourier-space product): the batched fft2, multiply, ifft2 of the engine's
        backward pass, fused."""
        n0, n1 = g_real.shape[1:]
        _propagate_back(plans.execute, plans.forward, plans.inverse, _flat(g_real), _flat(g), _flat(hc), nb,
                        n0 * 2 * n1)

    def asarray(self, a):
        return a

    def asnumpy(self, a):
        return a
