"""Time py4DSTEM 0.14's MultislicePtychography (CPU, gradient descent) on a saved datacube.

Run with the py4DSTEM venv's interpreter (it pins numpy < 2)::

    /work/venvs/py4dstem/bin/python benchmarks/bench_py4dstem.py datacube.npy vacuum.npy NUM_SLICES ITERATIONS

The data are those of ``bench_ptycho.py`` (300 keV, 25 mrad, 120 A defocus, 2 A step, detector
100/128 mrad per pixel). Same settings as our benchmark: slices of 12 A, batch 110, probe and
positions updated from the first iteration, positivity, TV off in the timing (py4DSTEM's TV is a
per-iteration post-processing step in both codes). Prints one JSON line: seconds per iteration
(the mean of the iterations after the first call's set-up), peak RSS.
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


if __name__ == "__main__":
    main()
