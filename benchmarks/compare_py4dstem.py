"""Our engine against py4DSTEM 0.14 on the simulator's data: quality against the ground truth.

Usage::

    python benchmarks/compare_py4dstem.py results/pristine/00_raw [--iterations 8] [--threads 1]

Both codes reconstruct the same datacube (``datacube.h5`` of the simulate rule, its dose and its
jittered scan) from the same start (nominal positions, the true defocus at the entrance surface,
the vacuum probe's Fourier amplitude) with the same slices (the truth's: count and thickness),
iterations, batch size (110), step size (0.5) and schedule (probe updated from iteration 2,
positions from iteration 4, positivity, no TV). py4DSTEM runs in its own venv
(``/work/venvs/py4dstem``, numpy < 2) through ``py4dstem_reconstruct.py``.

Each reconstruction is registered to the truth by the global translation ptychography leaves
free (:func:`msptycho.validate.registered_origin_A`) and compared slice by slice with
:func:`msptycho.validate.compare_potential` (Pearson r over the particle's footprint; py4DSTEM's
object is a phase in rad per slice, ours a potential in V*A: r does not depend on the scale), and
its positions with :func:`msptycho.validate.position_errors`. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench_ptycho import VENV_PY, thread_env

HERE = Path(__file__).resolve().parent


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("raw_dir")
    ap.add_argument("--iterations", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1, help="threads for both codes (0: all cores)")
    ap.add_argument("--keep", default=None, help="directory to keep both reconstructions in")
    a = ap.parse_args(argv)
    if a.threads:
        os.environ.update(thread_env(a.threads))

    from msptycho import physics
    from msptycho.io import read_datacube
    from msptycho.io.simio import read_truth, read_vacuum_probe
    from msptycho.ptycho import ReconstructionParameters, reconstruct
    from msptycho.validate import compare_potential, position_errors, registered_origin_A

    raw = Path(a.raw_dir)
    dc, cal = read_datacube(raw / "datacube.h5")
    dc = np.asarray(dc)
    vac, _ = read_vacuum_probe(raw / "vacuum_probe.h5")
    truth = read_truth(raw / "truth.h5")
    defocus_A = float(truth.probe.get("defocus_A", 0.0))
    nz, dz = truth.potential_VA.shape[0], float(truth.slice_thickness_A)
    shared = dict(num_slices=nz, slice_thickness_A=dz, num_iterations=a.iterations, batch_size=110, step_size=0.5,
                  probe_update_start_iteration=2, position_correction_start_iteration=4, positivity=True,
                  tv_z_weight_VA=0.0, tv_xy_weight_VA=0.0)
    tpos = truth.scan_positions_A.reshape(-1, 2)

    def quality(obj, origin, sampling, pos0, pos1):
        o, shift = registered_origin_A(obj, origin, truth.potential_VA, truth.origin_A, truth.sampling_A,
                                       max_shift_A=20.0)
        q = compare_potential(obj, o, sampling, truth.potential_VA, truth.origin_A, truth.sampling_A,
                              truth.particle_mask, truth.core_mask)
        q["registration_shift_A"] = shift.tolist()
        q["positions"] = position_errors(pos0, pos1, tpos)
        return q

    rows = {}
    # ours
    params = ReconstructionParameters(**shared, fft_workers=a.threads)
    t0, c0 = time.perf_counter(), time.process_time()
    res = reconstruct(dc, cal, params, initial_aberrations=physics.Aberrations(defocus_A=defocus_A),
                      vacuum_probe_intensity=vac)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    rows["msptycho"] = dict(quality(res.potential_VA, res.origin_A, res.sampling_A, res.positions_initial_A,
                                    res.positions_A),
                            seconds_per_iteration=float(np.mean(res.seconds_history)),
                            cpu_seconds_per_iteration=cpu / a.iterations, error=res.error_history.tolist())
    print(f"msptycho: {wall:.0f} s, error {res.error_history[0]:.4g} -> {res.error_history[-1]:.4g}", file=sys.stderr)

    # py4DSTEM, same data and settings
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(a.keep) if a.keep else Path(tmp)
        tmp.mkdir(parents=True, exist_ok=True)
        np.save(tmp / "datacube.npy", dc)
        np.save(tmp / "vacuum.npy", np.asarray(vac, dtype=np.float32))
        s = dict(datacube=str(tmp / "datacube.npy"), vacuum=str(tmp / "vacuum.npy"), out=str(tmp / "py4dstem.npz"),
                 energy_eV=cal.energy_eV, semiangle_mrad=cal.semiangle_mrad, scan_step_A=cal.scan_step_A,
                 mrad_per_pixel=cal.mrad_per_pixel, defocus_A=defocus_A, num_slices=nz, slice_thickness_A=dz,
                 iterations=a.iterations, batch_size=110, step_size=0.5, probe_update_start_iteration=2,
                 position_correction_start_iteration=4)
        (tmp / "settings.json").write_text(json.dumps(s))
        out = subprocess.run([VENV_PY, str(HERE / "py4dstem_reconstruct.py"), str(tmp / "settings.json")],
                             env=thread_env(a.threads), stderr=sys.stderr)
        if out.returncode != 0:
            raise SystemExit("py4DSTEM failed (see above)")
        p = np.load(tmp / "py4dstem.npz")
        if a.keep:
            from msptycho.io import Provenance
            from msptycho.io.reconstruction import write_reconstruction
            write_reconstruction(tmp / "msptycho.h5", res, Provenance(rule="compare_py4dstem", params=params.to_dict()))
    sampling = float(p["sampling_A"][0])
    nominal = res.positions_initial_A
    origin = nominal[0] - p["positions_initial_A"][0]
    rows["py4DSTEM " + str(p["version"])] = dict(
        quality(p["object"], origin, sampling, p["positions_initial_A"] + origin, p["positions_A"] + origin),
        seconds_per_iteration=float(np.mean(p["seconds"])), cpu_seconds_per_iteration=float(np.mean(p["cpu_seconds"])),
        error=p["error"].tolist())
    print(json.dumps(rows), file=sys.stderr)

    print(f"\n{raw}: {dc.shape[0]} x {dc.shape[1]} positions, {dc.shape[2]}^2 detector, {nz} slices of {dz:g} A, "
          f"{a.iterations} iterations, {a.threads or os.cpu_count()} thread(s)\n")
    hdr = ["code", "per-slice Pearson r (slice 0 ..)", "projected r", "core contrast peak slice (truth)",
           "RMS position error A (initial -> refined, mean shift removed)", "s/iter", "CPU s/iter"]
    print("| " + " | ".join(hdr) + " |")
    print("|" + "---|" * len(hdr))
    for name, r in rows.items():
        pe = r["positions"]
        print("| " + " | ".join([
            name, " ".join(f"{v:.2f}" for v in r["slice_correlation"]), f"{r['projected_correlation']:.3f}",
            f"{r['core_peak_slice']} ({r['true_core_slice']:.1f})",
            f"{pe['initial_rms_A']:.3f} -> {pe['refined_rms_A']:.3f}",
            f"{r['seconds_per_iteration']:.1f}", f"{r['cpu_seconds_per_iteration']:.1f}"]) + " |")


if __name__ == "__main__":
    main()
