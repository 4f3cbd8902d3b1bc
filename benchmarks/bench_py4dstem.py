"""Time py4DSTEM 0.14's MultislicePtychography (CPU, gradient descent) on a saved datacube.

Run with the py4DSTEM venv's interpreter (it pins numpy < 2)::

    /work/venvs/py4dstem/bin/python benchmarks/bench_py4dstem.py datacube.npy vacuum.npy NUM_SLICES ITERATIONS [BATCHES]

The data are those of ``bench_ptycho.py`` (300 keV, 25 mrad, 120 A defocus, 2 A step, detector
100/128 mrad per pixel). Same settings as our benchmark: slices of 12 A, batch 110, probe and
positions updated from the first iteration, positivity, TV off in the timing (py4DSTEM's TV is a
per-iteration post-processing step in both codes). Prints one JSON line: seconds per iteration
(the mean of the iterations after the first call's set-up), peak RSS.

With ``BATCHES`` (for cases where one py4DSTEM iteration takes most of an hour), one iteration is
started and timed over mini-batches 2 .. BATCHES + 1 (forward, adjoint and position update of
each; the first batch's allocations left out), then stopped; the time per iteration is that
per-batch time times the number of batches in an iteration (``ceil(N / batch)``), leaving out
the once-per-iteration constraints (positivity and the probe's aberration fit, under 1 % of an
iteration at these sizes). The JSON says ``"extrapolated_from_batches"``.
"""

import json
import resource
import sys
import time
import warnings

import numpy as np

warnings.filterwarnings("ignore")


def main():
    import py4DSTEM
    dc_path, vac_path, nz, iters = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    max_batches = int(sys.argv[5]) if len(sys.argv) > 5 else 0
    data = np.load(dc_path)
    vac = np.load(vac_path)
    dc = py4DSTEM.DataCube(data=data)
    dc.calibration.set_R_pixel_size(2.0)
    dc.calibration.set_R_pixel_units("A")
    dc.calibration.set_Q_pixel_size(100 / 128)
    dc.calibration.set_Q_pixel_units("mrad")
    t0 = time.perf_counter()
    ptycho = py4DSTEM.process.phase.MultislicePtychography(
        datacube=dc, energy=300e3, num_slices=nz, slice_thicknesses=12.0, semiangle_cutoff=25.0,
        vacuum_probe_intensity=vac, defocus=120.0, object_type="potential", device="cpu", verbose=False,
    ).preprocess(plot_center_of_mass=False, plot_rotation=False, plot_probe_overlaps=False,
                 force_com_rotation=0.0, force_com_transpose=False, fit_function="constant")
    t_pre = time.perf_counter() - t0
    kw = dict(reconstruction_method="gradient-descent", max_batch_size=110, step_size=0.5,
              fix_probe=False, fix_positions=False, object_positivity=True,
              gaussian_filter=False, butterworth_filter=False, kz_regularization_filter=False,
              tv_denoise=False, tv_denoise_chambolle=False, progress_bar=False, seed_random=0)
    if max_batches:
        print(json.dumps(time_batches(ptycho, kw, max_batches, data.shape[0] * data.shape[1], t_pre)))
        return
    times, cpu = [], []
    for i in range(iters):
        t0, c0 = time.perf_counter(), time.process_time()
        ptycho.reconstruct(num_iter=1, reset=(i == 0), **kw)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print(json.dumps(dict(seconds_per_iteration=float(np.mean(times)), iteration_seconds=times,
                          cpu_seconds_per_iteration=float(np.mean(cpu)),
                          preprocess_seconds=t_pre, peak_rss_GiB=rss, version=py4DSTEM.__version__,
                          numpy=np.__version__)))


class _Stop(Exception):
    pass


def time_batches(ptycho, kw, max_batches, num_positions, t_pre):
    """Time mini-batches 2 .. max_batches + 1 of one iteration (see the module docstring)."""
    import py4DSTEM

    forward = ptycho._forward
    calls, marks = [0], []

    def counted(*a, **k):
        n = calls[0]
        calls[0] += 1
        if n in (1, max_batches + 1):
            marks.append((time.perf_counter(), time.process_time()))
            if n == max_batches + 1:
                raise _Stop
        return forward(*a, **k)

    ptycho._forward = counted
    try:
        ptycho.reconstruct(num_iter=1, reset=True, **kw)
        raise SystemExit("the iteration ended before the requested number of batches")
    except _Stop:
        pass
    (t0, c0), (t1, c1) = marks
    batches_per_iteration = -(-num_positions // kw["max_batch_size"])
    per_batch, per_batch_cpu = (t1 - t0) / max_batches, (c1 - c0) / max_batches
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    return dict(seconds_per_iteration=per_batch * batches_per_iteration,
                cpu_seconds_per_iteration=per_batch_cpu * batches_per_iteration,
                extrapolated_from_batches=max_batches, batches_per_iteration=batches_per_iteration,
                seconds_per_batch=per_batch, preprocess_seconds=t_pre, peak_rss_GiB=rss,
                version=py4DSTEM.__version__, numpy=np.__version__)


if __name__ == "__main__":
    main()
