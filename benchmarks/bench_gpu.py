"""Seconds per iteration of the CPU (Numba) and GPU (CuPy) backends of the multislice engine.

Usage::

    python benchmarks/bench_gpu.py                          # default and paper-scale cases
    python benchmarks/bench_gpu.py --cases default --iterations 3
    python benchmarks/bench_gpu.py --skip-cpu paper         # GPU only for the paper case
    python benchmarks/bench_gpu.py --json out.json

Cases: ``default`` (40 x 40 positions, 128^2 windows, 6 slices) and ``paper`` (100 x 100 = 10^4
positions, 128^2 windows, 36 slices). Data are the synthetic Poisson-noisy vacuum patterns of
``bench_ptycho.py`` (timing does not depend on the content); probe and position updates and TV
run from the first iteration (the most expensive configuration), batch size 110. The GPU is
warmed on a tiny problem first (CUDA kernels compile on first use, cuFFT plans are cached) and its
first timed iteration is dropped from the mean when there are several. Without CuPy or a CUDA
device the script prints why and exits 0 without timing anything.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from bench_ptycho import DEFOCUS_A, E_EV, MPP, SEMI_MRAD, STEP_A, synthetic_datacube  # noqa: E402

CASES = {
    "default": dict(scan=(40, 40), n=128, nz=6, iterations=3, cpu_iterations=2),
    "paper": dict(scan=(100, 100), n=128, nz=36, iterations=2, cpu_iterations=1),
}


def _params(nz, iterations, **kw):
    from msptycho.ptycho import ReconstructionParameters
    return ReconstructionParameters(num_slices=nz, slice_thickness_A=12.0, num_iterations=iterations,
                                    batch_size=kw.pop("batch_size", 110), probe_update_start_iteration=0,
                                    position_correction_start_iteration=0, tv_z_weight_VA=0.01,
                                    tv_xy_weight_VA=0.01, checkpoint_every=0, **kw)


def _time(dc, vac, cal, params, backend):
    from msptycho import physics
    from msptycho.ptycho import reconstruct
    res = reconstruct(dc, cal, params, initial_aberrations=physics.Aberrations(defocus_A=DEFOCUS_A),
                      vacuum_probe_intensity=vac, backend=backend)
    s = np.asarray(res.seconds_history)
    return s, res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", nargs="+", default=["default", "paper"], choices=sorted(CASES))
    ap.add_argument("--iterations", type=int, default=None, help="GPU iterations per case")
    ap.add_argument("--cpu-iterations", type=int, default=None, help="CPU iterations per case")
    ap.add_argument("--skip-cpu", nargs="*", default=[], help="cases whose CPU timing is skipped")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    args = ap.parse_args(argv)

    from msptycho.io import Calibration
    from msptycho.ptycho.kernels_gpu import GPUBackend, cuda_available

    ok, why = cuda_available()
    if not ok:
        print(f"bench_gpu: skipped, no GPU here ({why})")
        return 0
    import cupy
    dev = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    gpu_name = dev["name"].decode() if isinstance(dev["name"], bytes) else str(dev["name"])

    cal = Calibration(energy_eV=E_EV, semiangle_mrad=SEMI_MRAD, scan_step_A=STEP_A, mrad_per_pixel=MPP)
    # warm both backends (Numba cache, CUDA kernel compilation, cuFFT plans for 32^2)
    dcw, vacw = synthetic_datacube((3, 3), 32)
    calw = Calibration(energy_eV=E_EV, semiangle_mrad=SEMI_MRAD, scan_step_A=STEP_A, mrad_per_pixel=MPP * 4)
    for be in (None, GPUBackend()):
        _time(dcw, vacw, calw, _params(2, 1, batch_size=4), be)

    rows = []
    for name in args.cases:
        c = CASES[name]
        dc, vac = synthetic_datacube(c["scan"], c["n"])
        row = dict(case=name, positions=int(dc.shape[0] * dc.shape[1]), window=c["n"], slices=c["nz"],
                   gpu=gpu_name, cpu_threads=os.cpu_count())
        it = args.iterations or c["iterations"]
        pool = cupy.get_default_memory_pool()
        pool.free_all_blocks()
        t0 = time.perf_counter()
        s, res = _time(dc, vac, cal, _params(c["nz"], it), GPUBackend())
        cupy.cuda.Device().synchronize()
        row["gpu_seconds_per_iteration"] = float(np.mean(s[1:] if len(s) > 1 else s))
        row["gpu_first_iteration_seconds"] = float(s[0])
        row["gpu_total_seconds"] = time.perf_counter() - t0
        row["gpu_pool_GiB"] = pool.total_bytes() / 1024**3
        row["object_px"] = list(res.potential_VA.shape[1:])
        del res
        pool.free_all_blocks()
        if name in args.skip_cpu:
            row["cpu_seconds_per_iteration"] = None
        else:
            cit = args.cpu_iterations or c["cpu_iterations"]
            s, _ = _time(dc, vac, cal, _params(c["nz"], cit), None)
            row["cpu_seconds_per_iteration"] = float(np.mean(s))
        cpu = row["cpu_seconds_per_iteration"]
        row["speedup"] = None if cpu is None else cpu / row["gpu_seconds_per_iteration"]
        rows.append(row)
        print(json.dumps(row), flush=True)

    print(f"\n{'case':8s} {'positions':>9s} {'slices':>6s} {'CPU s/it':>10s} {'GPU s/it':>10s} {'speed-up':>9s}"
          f"   (GPU: {gpu_name}; CPU: {os.cpu_count()} cores, Numba + pocketfft/FFTW)")
    for r in rows:
        cpu = "-" if r["cpu_seconds_per_iteration"] is None else f"{r['cpu_seconds_per_iteration']:.3f}"
        sp = "-" if r["speedup"] is None else f"{r['speedup']:.1f}x"
        print(f"{r['case']:8s} {r['positions']:9d} {r['slices']:6d} {cpu:>10s} {r['gpu_seconds_per_iteration']:10.3f} {sp:>9s}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
