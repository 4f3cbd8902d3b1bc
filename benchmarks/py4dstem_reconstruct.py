"""Reconstruct a saved datacube with py4DSTEM 0.14's MultislicePtychography (CPU, gradient descent).

Run with the py4DSTEM venv's interpreter (it pins numpy < 2); ``compare_py4dstem.py`` calls it::

    /work/venvs/py4dstem/bin/python benchmarks/py4dstem_reconstruct.py settings.json

``settings.json`` names the datacube (``.npy``, (Rx, Ry, Qx, Qy) counts), the vacuum probe
(``.npy``), the output ``.npz`` and the settings shared with our engine: energy (eV), semi-angle
(mrad), scan step (A), detector sampling (mrad/pixel), defocus (A, ``-C10``, at the entrance
surface), slices and their thickness (A), iterations, batch size, step size, the iteration from
which the probe is updated and the one from which positions are corrected.

The schedule is ours: the probe is held fixed before ``probe_update_start_iteration`` and the
positions before ``position_correction_start_iteration`` (py4DSTEM's ``fix_probe`` /
``fix_positions`` switched between calls of ``reconstruct``); the probe's Fourier amplitude is
held to the vacuum probe's (``fix_probe_aperture``) and its phase smoothed by an aberration fit
(``fit_probe_aberrations``), positivity on, no filters and no TV, as in our default.

Writes ``object`` (nz, Nx, Ny; py4DSTEM's "potential" object, a phase in rad per slice),
``sampling_A``, ``positions_initial_A`` and ``positions_A`` (object frame, probe centres),
``error`` (per iteration), ``seconds`` and ``cpu_seconds`` (per iteration).
"""

import json
import sys
import time
import warnings

import numpy as np

warnings.filterwarnings("ignore")


def main():
    import py4DSTEM
    s = json.load(open(sys.argv[1]))
    data = np.load(s["datacube"])
    vac = np.load(s["vacuum"])
    dc = py4DSTEM.DataCube(data=data)
    dc.calibration.set_R_pixel_size(s["scan_step_A"])
    dc.calibration.set_R_pixel_units("A")
    dc.calibration.set_Q_pixel_size(s["mrad_per_pixel"])
    dc.calibration.set_Q_pixel_units("mrad")
    ptycho = py4DSTEM.process.phase.MultislicePtychography(
        datacube=dc, energy=s["energy_eV"], num_slices=s["num_slices"], slice_thicknesses=s["slice_thickness_A"],
        semiangle_cutoff=s["semiangle_mrad"], vacuum_probe_intensity=vac, defocus=s["defocus_A"],
        object_type="potential", device="cpu", verbose=False,
    ).preprocess(plot_center_of_mass=False, plot_rotation=False, plot_probe_overlaps=False,
                 force_com_rotation=0.0, force_com_transpose=False, fit_function="constant")
    kw = dict(reconstruction_method="gradient-descent", max_batch_size=s["batch_size"], step_size=s["step_size"],
              fix_probe_aperture=True, fit_probe_aberrations=True, object_positivity=True,
              gaussian_filter=False, butterworth_filter=False, kz_regularization_filter=False,
              tv_denoise=False, tv_denoise_chambolle=False, progress_bar=False, seed_random=0)
    seconds, cpu, error = [], [], []
    for it in range(s["iterations"]):
        t0, c0 = time.perf_counter(), time.process_time()
        ptycho.reconstruct(num_iter=1, reset=(it == 0),
                           fix_probe=it < s["probe_update_start_iteration"],
                           fix_positions=it < s["position_correction_start_iteration"], **kw)
        seconds.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        error.append(float(ptycho.error))
        print(f"py4DSTEM iteration {it + 1}/{s['iterations']} error {error[-1]:.5g} seconds {seconds[-1]:.1f}",
              file=sys.stderr, flush=True)
    sampling = np.asarray(ptycho.sampling, dtype=float)
    init = np.asarray(ptycho._positions_px_initial, dtype=float) * sampling
    np.savez(s["out"], object=np.asarray(ptycho.object, dtype=np.float32), sampling_A=sampling,
             positions_initial_A=init, positions_A=np.asarray(ptycho.positions, dtype=float),
             error=np.array(error), seconds=np.array(seconds), cpu_seconds=np.array(cpu),
             version=py4DSTEM.__version__)


if __name__ == "__main__":
    main()
