"""FFTW plans timed once per machine and kept in a wisdom file.

``FFTW_MEASURE`` plans are about 1.5 times faster than ``FFTW_ESTIMATE`` ones for the engine's
batched 128^2 and 160^2 transforms, but FFTW picks them by timing, so two processes could pick
different plans, whose results differ in the last bits. Here a transform is timed once per
machine: the plan goes into a wisdom file (one per CPU model and pyfftw version), and every later
plan for the same transform, in this process or another, is made from that file. Planning holds
an exclusive lock on the file, so two runs started together (two samples of a workflow) share the
first one's plans instead of timing their own. Runs on the same machine are then bit-identical.

The file is ``$MSPTYCHO_FFTW_WISDOM`` if set, else
``$XDG_CACHE_HOME/msptycho/fftw-wisdom-<cpu key>.pickle`` (``~/.cache`` without XDG_CACHE_HOME).
Deleting it only costs the next run its planning time (a fraction of a second per transform).
Where the file cannot be written (a read-only home on a cluster node) plans are timed for the
process alone, with a warning naming the file.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import logging
import os
import pickle
import platform
import tempfile
import weakref
from pathlib import Path

import numpy as np

ALIGN = 64  # bytes; FFTW's plans depend on the data's alignment up to the SIMD width
LOG = logging.getLogger("msptycho.ptycho")
_WARNED: set = set()


def machine_key() -> str:
    """Short hash of the CPU model, its flags and pyfftw's version."""
    cpu = platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
        lines = info.splitlines()
        cpu += "".join(ln for ln in lines if ln.startswith(("model name", "flags")))[:4096]
    except OSError:
        cpu += platform.processor()
    try:
        import pyfftw
        cpu += pyfftw.__version__
    except ImportError:  # pragma: no cover
        pass
    return hashlib.sha1(cpu.encode()).hexdigest()[:12]


def wisdom_path() -> Path:
    """The wisdom file of this machine (see the module docstring)."""
    env = os.environ.get("MSPTYCHO_FFTW_WISDOM")
    if env:
        return Path(env)
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "msptycho" / f"fftw-wisdom-{machine_key()}.pickle"


@contextlib.contextmanager
def _locked(path: Path):
    """Exclusive lock on ``path``'s lock file (no lock where the file system refuses one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a+") as f:
        try:
            import fcntl
            fcntl.flock(f, fcntl.LOCK_EX)
        except (ImportError, OSError):  # pragma: no cover - Windows or a lock-less file system
            pass
        yield


def _import(pyfftw, path: Path) -> None:
    try:
        with open(path, "rb") as f:
            pyfftw.import_wisdom(pickle.load(f))
    except (OSError, EOFError, pickle.UnpicklingError, TypeError, ValueError):
        pass  # no file yet, or an unreadable one (rewritten below)


def _export(pyfftw, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        pickle.dump(pyfftw.export_wisdom(), f)
    os.replace(tmp, path)


def _scratch_like(a: np.ndarray) -> np.ndarray:
    """Empty array of ``a``'s shape and dtype at the same address offset modulo :data:`ALIGN`."""
    off = a.__array_interface__["data"][0] % ALIGN
    buf = np.empty(a.nbytes + 2 * ALIGN, dtype=np.uint8)
    start = (off - buf.__array_interface__["data"][0]) % ALIGN
    return buf[start:start + a.nbytes].view(a.dtype).reshape(a.shape)


def measured_plan(pyfftw, a: np.ndarray, forward: bool, threads: int, path: Path | None = None,
                  out: np.ndarray | None = None):
    """2-D FFTW plan over the last two axes of ``a`` (in place, or into ``out``) from this
    machine's wisdom.

    A transform not yet in the wisdom file is timed (``FFTW_MEASURE``) on scratch arrays of the
    same shape and alignment, so the contents of ``a`` and ``out`` are kept, and the file is
    updated.
    """
    path = wisdom_path() if path is None else Path(path)
    out = a if out is None else out
    kw = dict(axes=(-2, -1), direction="FFTW_FORWARD" if forward else "FFTW_BACKWARD", threads=threads)

    def from_wisdom():
        """The plan from FFTW's wisdom in memory, or None if it has none for this transform."""
        try:
            return pyfftw.FFTW(a, out, flags=("FFTW_MEASURE", "FFTW_WISDOM_ONLY"), **kw)
        except RuntimeError:
            return None

    plan = from_wisdom()
    if plan is not None:
        return plan
    try:
        with _locked(path):
            _import(pyfftw, path)           # another process may have timed it meanwhile
            plan = from_wisdom()
            if plan is not None:
                return plan
            _measure(pyfftw, a, out, kw)
            _export(pyfftw, path)
    except OSError as e:
        # a read-only or missing cache folder: time the plan for this process only
        if path not in _WARNED:
            _WARNED.add(path)
            LOG.warning("FFTW wisdom file %s cannot be written (%s): plans are timed for this process "
                        "only, so another run may pick other plans (last-bit differences); set "
                        "MSPTYCHO_FFTW_WISDOM to a writable file", path, e)
        if from_wisdom() is None:
            _measure(pyfftw, a, out, kw)
    plan = from_wisdom()
    if plan is None:
        # the scratch arrays match the alignments, so the wisdom should always apply: say so if not
        LOG.warning("FFTW wisdom has no plan for a %s %s transform of %s just timed; using FFTW_ESTIMATE",
                    "forward" if forward else "inverse", "in-place" if out is a else "out-of-place", a.shape)
        plan = pyfftw.FFTW(a, out, flags=("FFTW_ESTIMATE",), **kw)
    return plan


def _measure(pyfftw, a, out, kw) -> None:
    """Time the transform on scratch arrays like ``a`` and ``out`` (adds it to FFTW's in-memory
    wisdom; in place when ``out`` is ``a``)."""
    s = _scratch_like(a)
    pyfftw.FFTW(s, s if out is a else _scratch_like(out), flags=("FFTW_MEASURE",), **kw)


# -- FFTW's plans for Numba kernels -----------------------------------------------------------------
# The fused CPU kernels (CPUBackend.forward_pass and propagate_back in kernels_cpu) call FFTW
# themselves, one window at a time, through its new-array execute function, so that a window stays
# in cache between its transforms and products. They use the very FFTW library pyfftw loaded (same
# planner, same wisdom), found among the process's mapped files; where that cannot be done (no
# pyfftw, not Linux) the engine keeps its batched transforms.

FFTW_MEASURE = 0
FFTW_ESTIMATE = 1 << 6
FFTW_WISDOM_ONLY = 1 << 21


def _mapped_fftwf_libraries() -> tuple[str | None, str | None]:
    """Paths of the single-precision FFTW library and its threads library mapped in this process."""
    try:
        with open("/proc/self/maps") as f:
            paths = {ln.split()[-1] for ln in f if "libfftw3f" in ln}
    except OSError:
        return None, None
    main = [p for p in paths if not ("_omp" in p or "_threads" in p or "_mpi" in p)]
    threads = [p for p in paths if "libfftw3f_omp" in p or "libfftw3f_threads" in p]
    return (main[0] if len(main) == 1 else None), (threads[0] if threads else None)


class WindowPlans:
    """Out-of-place single-window 2-D FFTW plans (forward and inverse, one thread) for Numba
    kernels: ``execute`` is the address of ``fftwf_execute_dft`` and ``forward``/``inverse`` the
    plans' addresses, valid for any pair of distinct windows with the alignment of ``src`` and
    ``dst`` (C-contiguous complex64 arrays whose last two axes are the window).

    Measured plans come from the wisdom file, timed on scratch arrays if new (as
    :func:`measured_plan` does for pyfftw's plans); ``planning="estimate"`` uses ``FFTW_ESTIMATE``.
    Raises ``OSError`` if pyfftw's FFTW library cannot be found or the plans cannot be made.
    """

    def __init__(self, src: np.ndarray, dst: np.ndarray, planning: str = "measure", path: Path | None = None):
        import pyfftw
        main, threads = _mapped_fftwf_libraries()
        if main is None:
            raise OSError("pyfftw's single-precision FFTW library is not among this process's mapped files")
        lib = ctypes.CDLL(main)          # the library pyfftw loaded: one planner, one wisdom
        addr = ctypes.c_void_p
        lib.fftwf_plan_dft_2d.restype = addr
        lib.fftwf_plan_dft_2d.argtypes = [ctypes.c_int, ctypes.c_int, addr, addr, ctypes.c_int, ctypes.c_uint]
        lib.fftwf_destroy_plan.argtypes = [addr]
        n0, n1 = src.shape[-2:]
        s = src.reshape(-1, n0, n1)[0]
        d = dst.reshape(-1, n0, n1)[0]
        if threads is not None:          # plans of one thread (pyfftw sets this before each of its plans)
            tl = ctypes.CDLL(threads)
            tl.fftwf_plan_with_nthreads.argtypes = [ctypes.c_int]
            tl.fftwf_plan_with_nthreads(1)
        plans = []
        for forward in (True, False):
            if planning == "measure":
                measured_plan(pyfftw, s, forward, 1, path=path, out=d)    # into the wisdom (no-op if there)
                flags = FFTW_MEASURE | FFTW_WISDOM_ONLY
            else:
                flags = FFTW_ESTIMATE
            p = lib.fftwf_plan_dft_2d(n0, n1, s.ctypes.data, d.ctypes.data, -1 if forward else 1, flags)
            if not p:
                raise OSError(f"FFTW made no {'forward' if forward else 'inverse'} plan for a {n0}x{n1} window")
            plans.append(p)
        self.forward, self.inverse = plans
        self.shape = (n0, n1)
        self._align = (s.ctypes.data % ALIGN, d.ctypes.data % ALIGN)
        self.execute = ctypes.cast(lib.fftwf_execute_dft, addr).value
        self._lib = lib
        weakref.finalize(self, _destroy, lib, list(plans))

    def applies(self, src: np.ndarray, dst: np.ndarray) -> bool:
        """Whether the plans may transform the windows of ``src`` into those of ``dst``: C-contiguous
        complex64 arrays of such windows, not overlapping, aligned as the planned ones."""
        return (src.dtype == np.complex64 and dst.dtype == np.complex64 and src.shape == dst.shape
                and src.shape[-2:] == self.shape and src.flags.c_contiguous and dst.flags.c_contiguous
                and (src.ctypes.data % ALIGN, dst.ctypes.data % ALIGN) == self._align
                and not np.may_share_memory(src, dst))


def _destroy(lib, plans) -> None:
    for p in plans:
        lib.fftwf_destroy_plan(p)
