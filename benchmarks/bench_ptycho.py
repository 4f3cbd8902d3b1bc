"""Speed of the multislice engine: seconds per iteration, peak RSS and the FFT floor.

Usage::

    python benchmarks/bench_ptycho.py                    # default-size case (40x40, 128^2, 6 slices)
    python benchmarks/bench_ptycho.py --cases default paper --py4dstem

Each case runs in its own subprocess (so its peak RSS is its own): it makes a synthetic datacube
(Poisson-noisy vacuum patterns of a 300 keV, 25 mrad probe with 120 A defocus: the timing does
not depend on the content), warms the Numba cache on a tiny problem, runs ``reconstruct`` for
the requested iterations with probe and position updates switched on from the first iteration
(the most expensive configuration) and counts the 2-D FFTs the engine performed. The FFT floor is
the time of the same number of batched complex64 FFTs of the same size at the best throughput
found among FFTW (``FFTW_MEASURE`` and ``FFTW_ESTIMATE`` plans, batched, and single-window plans
run a window per thread as the engine's fused kernels run them), scipy's pocketfft and numpy, in
place and out of place. It is given twice: batched by the mini-batch (110 patterns, 14 MB at
128^2) and at the best of the mini-batch and the engine's chunk of positions (16 per thread,
2 MB, whose FFTs run 15-25 % faster per transform on a machine with 0.5 MB of L2 cache per core).
It is measured after every iteration, in the same process, by timing as many transforms as an
iteration makes with the fastest library for each batch size, so that floor and iteration are
timed over about as long and a slower spell of a shared machine shows in both; each ratio is
reported as the best iteration over the best floor and as the median of the per-iteration
ratios. ``MSPTYCHO_FUSED_KERNELS=0`` runs the engine without its fused kernels (batched FFTs
only), for comparison.

``--py4dstem`` also times py4DSTEM 0.14's ``MultislicePtychography`` (CPU, gradient descent, same
slices and batch size, probe and positions updated) on the same data, in the venv
``/work/venvs/py4dstem`` (``benchmarks/bench_py4dstem.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CASES = {
    # name: (scan side, window, slices, iterations)
    "default": dict(scan=(40, 40), n=128, nz=6, iterations=4),
    # py4DSTEM takes most of an hour per paper-scale iteration: timed over 12 of its 91 batches
    "paper": dict(scan=(100, 100), n=128, nz=36, iterations=1, py4dstem_batches=12),
}
E_EV, SEMI_MRAD, MPP, STEP_A, DEFOCUS_A, DOSE = 300e3, 25.0, 100 / 128, 2.0, 120.0, 5e3
VENV_PY = os.environ.get("PY4DSTEM_PYTHON", "/work/venvs/py4dstem/bin/python")


def _synthetic_rows(scan, n, seed=0):
    """Vacuum pattern (float32) and a generator of the datacube's scan rows (scan[1], n, n)."""
    from msptycho import physics
    rng = np.random.default_rng(seed)
    sampling = physics.realspace_sampling_A(n, MPP, E_EV)
    probe = physics.probe_real((n, n), sampling, E_EV, SEMI_MRAD, physics.Aberrations(defocus_A=DEFOCUS_A))
    vac = np.abs(np.fft.fftshift(np.fft.fft2(probe))) ** 2
    vac *= DOSE * STEP_A**2 / vac.sum()
    rows = (rng.poisson(vac, size=(scan[1], n, n)).astype(np.float32) for _ in range(scan[0]))
    return vac.astype(np.float32), rows


def synthetic_datacube(scan, n, seed=0):
    """Poisson-noisy vacuum patterns (Rx, Ry, n, n) float32 and the vacuum pattern."""
    vac, rows = _synthetic_rows(scan, n, seed)
    dc = np.empty(scan + (n, n), dtype=np.float32)
    for i, row in enumerate(rows):
        dc[i] = row
    return dc, vac


def synthetic_datacube_file(path, scan, n, cal, seed=0, npy_path=None):
    """The same data written a scan row at a time to a canonical datacube file (and optionally a
    ``.npy`` copy for py4DSTEM), never whole in memory; returns the vacuum pattern."""
    from msptycho.io import DatacubeWriter
    vac, rows = _synthetic_rows(scan, n, seed)
    npy = None if npy_path is None else np.lib.format.open_memmap(npy_path, "w+", np.float32, scan + (n, n))
    with DatacubeWriter(path, scan + (n, n), cal, source="benchmark") as w:
        for i, row in enumerate(rows):
            w.write_rows(i, row[None])
            if npy is not None:
                npy[i] = row
    if npy is not None:
        npy.flush()
        del npy
    return vac


def run_case(name: str, iterations: int | None, data_dir: str | None) -> dict:
    from msptycho.io import Calibration, open_datacube
    from msptycho import physics
    from msptycho.ptycho import ReconstructionParameters, reconstruct
    from msptycho.ptycho.kernels_cpu import CPUBackend

    class CountingBackend(CPUBackend):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            self.count = 0

        def fft2(self, a, out=None):
            self.count += a.shape[0] if a.ndim == 3 else 1
            super().fft2(a, out)

        def ifft2(self, a, out=None):
            self.count += a.shape[0] if a.ndim == 3 else 1
            super().ifft2(a, out)

        # the fused kernels make their FFTs themselves, one window at a time
        def forward_pass(self, plans, probe_k, rampx, rampy, scale, waves, g, trans, corners, h, nb, residual=None):
            self.count += nb * (2 * waves.shape[0] + (residual is not None))
            super().forward_pass(plans, probe_k, rampx, rampy, scale, waves, g, trans, corners, h, nb, residual)

        def batch_windows(self, plans, probe_k, rampx, rampy, scale, waves, g, g_real, trans, corners, h, hc, bounds,
                          strips, group, residual, sigma, grad, illum, overhang, illum_max, probe_grad=None,
                          positions=None, curvature=None):
            # per position: forward 2 nz + 1 (residual), backward 2 (nz - 1), tail 1 or 3
            nz = waves.shape[0]
            tail = (probe_grad is not None or positions is not None or curvature is not None) + 2 * (curvature is not None)
            self.count += int(bounds[-1]) * (4 * nz - 1 + tail)
            super().batch_windows(plans, probe_k, rampx, rampy, scale, waves, g, g_real, trans, corners, h, hc, bounds,
                                  strips, group, residual, sigma, grad, illum, overhang, illum_max, probe_grad,
                                  positions, curvature)

        def propagate_back(self, plans, g_real, g, hc, nb):
            self.count += 2 * nb
            super().propagate_back(plans, g_real, g, hc, nb)

        def gradient_tail(self, plans, g_real, g, positions, probe_k, rampx, rampy, kx, ky, gpos, curvature=None):
            done = super().gradient_tail(plans, g_real, g, positions, probe_k, rampx, rampy, kx, ky, gpos, curvature)
            if done:
                self.count += len(gpos) * (1 if curvature is None else 3)
            return done

    c = CASES[name]
    it = iterations or c["iterations"]
    cal = Calibration(energy_eV=E_EV, semiangle_mrad=SEMI_MRAD, scan_step_A=STEP_A, mrad_per_pixel=MPP)
    ab = physics.Aberrations(defocus_A=DEFOCUS_A)
    # warm the Numba cache (compilation is not part of an iteration)
    dcw, vacw = synthetic_datacube((3, 3), 32)
    calw = Calibration(energy_eV=E_EV, semiangle_mrad=SEMI_MRAD, scan_step_A=STEP_A, mrad_per_pixel=MPP * 4)
    reconstruct(dcw, calw, ReconstructionParameters(num_slices=2, num_iterations=1, batch_size=4,
                                                    probe_update_start_iteration=0,
                                                    position_correction_start_iteration=0,
                                                    tv_z_weight_VA=0.01, tv_xy_weight_VA=0.01),
                vacuum_probe_intensity=vacw, initial_aberrations=ab)

    params = ReconstructionParameters(num_slices=c["nz"], slice_thickness_A=12.0, num_iterations=it,
                                      batch_size=110, probe_update_start_iteration=0,
                                      position_correction_start_iteration=0, tv_z_weight_VA=0.01,
                                      tv_xy_weight_VA=0.01, checkpoint_every=0,
                                      fft_workers=int(os.environ.get("MSPTYCHO_FFT_WORKERS", "0")))
    be = CountingBackend(params.fft_workers, fused_kernels=os.environ.get("MSPTYCHO_FUSED_KERNELS", "1") != "0")
    chunk = min(params.batch_size, params.chunk_size or be.chunk_positions)
    # the floor's arrays, plans and the libraries' work buffers exist before the baseline of the
    # memory measurement (one sample taken here, not used)
    floor_sample = fft_floor_sampler(c["n"], sorted({params.batch_size, chunk}), be.workers)
    floor_sample(0)
    rss_base_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    # like the reconstruct rule: the datacube stays in its file and is read a row at a time
    t0 = time.perf_counter()
    work = Path(data_dir) if data_dir else Path(tempfile.mkdtemp())
    vac = synthetic_datacube_file(work / f"{name}_datacube.h5", c["scan"], c["n"], cal,
                                  npy_path=(work / f"{name}_datacube.npy") if data_dir else None)
    if data_dir:
        np.save(work / f"{name}_vacuum.npy", vac)
    t_data = time.perf_counter() - t0
    floors = []
    t0, c0 = time.perf_counter(), time.process_time()
    floor_wall = floor_cpu_time = 0.0
    iter_cpu, last_end = [], None      # CPU seconds of iterations 2, 3, ... (the first follows the setup)

    def after_iteration(i, seconds):
        nonlocal floor_wall, floor_cpu_time, last_end
        t, c_ = time.perf_counter(), time.process_time()
        if last_end is not None:
            iter_cpu.append(c_ - last_end)
        floors.append(floor_sample(be.count / i))
        floor_wall += time.perf_counter() - t
        last_end = time.process_time()
        floor_cpu_time += last_end - c_

    with open_datacube(work / f"{name}_datacube.h5") as (dc, _):
        res = reconstruct(dc, cal, params, initial_aberrations=ab, vacuum_probe_intensity=vac, backend=be,
                          on_iteration=after_iteration)
        datacube_GiB = dc.size * 4 / 1024**3
    t_total, cpu_total = time.perf_counter() - t0 - floor_wall, time.process_time() - c0 - floor_cpu_time
    (work / f"{name}_datacube.h5").unlink()
    if not data_dir:
        work.rmdir()
    sec = np.asarray(res.seconds_history, dtype=float)
    ffts_per_iter = be.count / it
    rss_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    # per sample: the best batch, and the mini-batch
    anyb = [min(f.values()) for f in floors]
    floor_s = np.array([a[0] for a in anyb]) * ffts_per_iter
    floor_mb = np.array([f[params.batch_size][0] for f in floors]) * ffts_per_iter
    best = anyb[int(np.argmin(floor_s))]
    floor_cpu = min(a[3] for a in anyb) * ffts_per_iter
    # CPU time (immune to a shared host's stolen time): each later iteration against the floor
    # sampled just before it; with one iteration, the whole run's CPU time (setup included)
    cpu_iter = float(np.median(iter_cpu)) if iter_cpu else cpu_total / it
    cpu_ratio = (float(np.median([ci / (anyb[k][3] * ffts_per_iter) for k, ci in enumerate(iter_cpu)]))
                 if iter_cpu else cpu_total / it / floor_cpu)
    nz, (nx, ny) = c["nz"], res.potential_VA.shape[1:]
    n = c["n"]
    return dict(case=name, positions=int(c["scan"][0] * c["scan"][1]), window=n, slices=nz,
                object_px=[int(nx), int(ny)], iterations=it, chunk=chunk, seconds_per_iteration=float(sec.mean()),
                seconds_per_iteration_all=sec.tolist(), best_seconds_per_iteration=float(sec.min()),
                setup_seconds=t_total - float(np.sum(sec)), data_seconds=t_data,
                ffts_per_iteration=ffts_per_iter, fft_floor_seconds=float(floor_s.min()),
                fft_floor_seconds_all=floor_s.tolist(), fft_library=f"{best[1]}, batch {best[2]}",
                ratio_to_floor=float(sec.min() / floor_s.min()),
                ratio_to_floor_paired_median=float(np.median(sec / floor_s)),
                fft_floor_minibatch_seconds=float(floor_mb.min()), fft_floor_minibatch_seconds_all=floor_mb.tolist(),
                ratio_to_minibatch_floor=float(sec.min() / floor_mb.min()),
                ratio_to_minibatch_floor_paired_median=float(np.median(sec / floor_mb)),
                fft_floor_cpu_seconds=floor_cpu,
                cpu_ratio_to_floor=cpu_ratio, engine_fft_library=res.fft_library,
                baseline_rss_GiB=rss_base_gib, cpu_seconds_per_iteration=cpu_iter, peak_rss_GiB=rss_gib,
                datacube_GiB=datacube_GiB, model_GiB=res.engine_GiB,
                threads=be.workers, cpu=os.cpu_count())


def fft_floor_sampler(n, batches, workers, seconds=0.2):
    """A function ``sample(count)`` that measures the FFT floor once. For each batch size, every
    library and mode (unnormalised complex64 n x n FFTs, in place or out of place, the input kept
    as the engine's are) is tried for about ``seconds``; the one with the best throughput is then
    timed over ``count`` transforms, the number an iteration makes, so that the floor is measured
    over about as long as an iteration, under the same load of a shared machine. It returns
    {batch: (seconds per FFT, library, batch, CPU seconds per FFT)}."""
    from msptycho.ptycho.kernels_cpu import CPUBackend, _pocketfft
    pfft = _pocketfft()
    try:
        import pyfftw
    except ImportError:
        pyfftw = None
    libs = []
    for batch in batches:
        a = np.empty((batch, n, n), dtype=np.complex64)
        a.real = np.random.default_rng(0).standard_normal((batch, n, n), dtype=np.float32)
        a.imag = 1.0
        o = np.empty_like(a)
        libs.append(("pocketfft", batch, lambda a=a: pfft.c2c(a, (-2, -1), True, 0, a, workers)))
        libs.append(("pocketfft out-of-place", batch, lambda a=a, o=o: pfft.c2c(a, (-2, -1), True, 0, o, workers)))
        libs.append(("numpy", batch, lambda a=a: np.fft.fft2(a, out=a)))
        if pyfftw is not None:
            for flag in ("FFTW_ESTIMATE", "FFTW_MEASURE"):
                for place in ("", " out-of-place"):
                    b = pyfftw.empty_aligned((batch, n, n), dtype=np.complex64)
                    c = pyfftw.empty_aligned((batch, n, n), dtype=np.complex64) if place else b
                    plan = pyfftw.FFTW(b, c, axes=(-2, -1), flags=(flag,), threads=workers)
                    b[...] = a
                    libs.append(("fftw-" + flag[5:].lower() + place, batch, plan.execute))
            # single-window plans, the windows in parallel (a thread each), as the engine's fused
            # kernels run them
            be = CPUBackend(workers, fft_planning="measure")
            src, dst = be.zeros((batch, n, n)), be.zeros((batch, n, n))
            src[...] = a
            if be.window_plans(src, dst) is not None:
                libs.append(("fftw-measure windows out-of-place", batch, lambda be=be, s=src, d=dst: be.fft2(s, out=d)))

    def timed(f, batch, reps=None):
        f()
        done, t0, c0 = 0, time.perf_counter(), time.process_time()
        while (done < reps) if reps else (time.perf_counter() - t0 < seconds):
            f()
            done += 1
        return (time.perf_counter() - t0) / (done * batch), (time.process_time() - c0) / (done * batch)

    def sample(count):
        best = {b: (np.inf, "", b, np.inf, None) for b in batches}
        for name, batch, f in libs:
            per, per_cpu = timed(f, batch)
            if per < best[batch][0]:
                best[batch] = (per, name, batch, per_cpu, f)
        out = {}
        for batch, (per, name, _, per_cpu, f) in best.items():
            if count > 0:
                per, per_cpu = timed(f, batch, max(1, int(round(count / batch))))
            out[batch] = (per, name, batch, per_cpu)
        return out

    return sample


def thread_env(threads):
    env = dict(os.environ)
    if threads:
        for k in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env[k] = str(threads)
        env["MSPTYCHO_FFT_WORKERS"] = str(threads)
    return env


def run_py4dstem(name, data_dir, iterations, threads=0):
    c = CASES[name]
    script = Path(__file__).with_name("bench_py4dstem.py")
    out = subprocess.run([VENV_PY, str(script), str(Path(data_dir) / f"{name}_datacube.npy"),
                          str(Path(data_dir) / f"{name}_vacuum.npy"), str(c["nz"]), str(iterations or 1),
                          str(c.get("py4dstem_batches", 0))],
                         capture_output=True, text=True, env=thread_env(threads))
    if out.returncode != 0:
        return dict(error=out.stderr.strip().splitlines()[-1] if out.stderr else "failed")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", nargs="+", default=["default"], choices=sorted(CASES))
    ap.add_argument("--iterations", type=int, default=None)
    ap.add_argument("--py4dstem", action="store_true")
    ap.add_argument("--threads", type=int, default=0, help="threads for both codes (0: all cores)")
    ap.add_argument("--run-case", help=argparse.SUPPRESS)
    ap.add_argument("--data-dir", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.run_case:
        print(json.dumps(run_case(a.run_case, a.iterations, a.data_dir)))
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in a.cases:
            cmd = [sys.executable, __file__, "--run-case", name]
            if a.iterations:
                cmd += ["--iterations", str(a.iterations)]
            if a.py4dstem:
                cmd += ["--data-dir", tmp]
            out = subprocess.run(cmd, capture_output=True, text=True, env=thread_env(a.threads))
            if out.returncode != 0:
                print(out.stderr, file=sys.stderr)
                raise SystemExit(f"case {name} failed")
            row = json.loads(out.stdout.strip().splitlines()[-1])
            if a.py4dstem:
                row["py4dstem"] = run_py4dstem(name, tmp, a.iterations or CASES[name]["iterations"], a.threads)
            rows.append(row)
            print(json.dumps(row), file=sys.stderr)
    print_table(rows)


def print_table(rows):
    hdr = ("case", "threads", "FFT lib", "positions", "window", "slices", "s/iter (best)", "CPU s/iter", "FFTs/iter", "FFT floor s: mini-batch / any batch (library, batch)", "x floor, mini-batch (best / paired median)", "x floor, any batch (best / paired median)", "x floor any batch, CPU time (median)",
           "peak RSS GiB (above start)", "cube+model GiB", "py4DSTEM s/iter", "py4DSTEM CPU s/iter", "x faster")
    print("| " + " | ".join(hdr) + " |")
    print("|" + "---|" * len(hdr))
    for r in rows:
        p = r.get("py4dstem", {})
        ps = p.get("seconds_per_iteration")
        print("| " + " | ".join([
            r["case"], str(r["threads"]), r["engine_fft_library"], str(r["positions"]), f"{r['window']}^2", str(r["slices"]),
            f"{r['seconds_per_iteration']:.2f} ({r['best_seconds_per_iteration']:.2f})", f"{r['cpu_seconds_per_iteration']:.2f}",
            f"{r['ffts_per_iteration']:.0f}",
            f"{r['fft_floor_minibatch_seconds']:.2f} / {r['fft_floor_seconds']:.2f} ({r['fft_library']})",
            f"{r['ratio_to_minibatch_floor']:.2f} / {r['ratio_to_minibatch_floor_paired_median']:.2f}",
            f"{r['ratio_to_floor']:.2f} / {r['ratio_to_floor_paired_median']:.2f}",
            f"{r['cpu_ratio_to_floor']:.2f}",
            f"{r['peak_rss_GiB']:.2f} ({r['peak_rss_GiB'] - r['baseline_rss_GiB']:.2f})", f"{2 * r['datacube_GiB'] + r['model_GiB']:.2f}",
            (f"{ps:.2f}" + (f" ({p['extrapolated_from_batches']} of {p['batches_per_iteration']} batches)"
                            if p.get("extrapolated_from_batches") else "")) if ps else (p.get("error", "-") if p else "-"),
            f"{p['cpu_seconds_per_iteration']:.2f}" if ps else "-",
            f"{ps / r['seconds_per_iteration']:.1f}" if ps else "-"]) + " |")
    if rows:
        print(f"\n{rows[0]['cpu']} cores; CPU s = process CPU time per iteration (all threads; the median of iterations 2 and later, or the whole run's over the iterations when there is one; immune to time stolen by a shared host), and 'x floor, CPU time' compares each with the CPU time of the floor's FFTs sampled just before it; 'cube+model' is twice the "
              "float32 datacube plus the engine's arrays (state, stored waves, work arrays: the memory goal); the datacube is read from its file a scan row at a time, as in the reconstruct rule; RSS in brackets is above the process's peak after imports and the Numba warm-up.")


if __name__ == "__main__":
    main()
