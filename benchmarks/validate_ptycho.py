"""Reconstruct a simulated sample and compare it with the simulator's ground truth.

Usage::

    python benchmarks/validate_ptycho.py results/pristine/00_raw [--iterations 12] [--slices 6]

Reads ``datacube.h5``, ``vacuum_probe.h5`` and ``truth.h5`` written by the simulate rule, runs
:func:`msptycho.ptycho.reconstruct` from the nominal positions and the true probe aberrations
(as the calibration rule would provide them), and prints the quality measures of issue 4:
per-slice Pearson correlation of the potential with the true slice potential over the particle,
the correlation of the projected potential, the slice where the core's contrast peaks against the
true core depth, and the RMS position error before and after position correction.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
from scipy.ndimage import map_coordinates


def resample_to(truth_origin, truth_sampling, arr, origin, sampling, shape):
    """Bilinear resampling of a truth map (x, y) onto a reconstruction grid."""
    x = origin[0] + sampling * np.arange(shape[0])
    y = origin[1] + sampling * np.arange(shape[1])
    ix = (x - truth_origin[0]) / truth_sampling
    iy = (y - truth_origin[1]) / truth_sampling
    gx, gy = np.meshgrid(ix, iy, indexing="ij")
    return map_coordinates(arr, [gx, gy], order=1, cval=0.0)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("raw_dir")
    ap.add_argument("--iterations", type=int, default=12)
    ap.add_argument("--slices", type=int, default=None, help="default: the truth's slice count")
    ap.add_argument("--out", default=None, help="write reconstruction.h5 and convergence.png here")
    ap.add_argument("--params", default="{}", help="JSON of extra ReconstructionParameters fields")
    ap.add_argument("--backend", choices=("cpu", "gpu"), default="cpu",
                    help="cpu: Numba kernels; gpu: the CuPy backend (needs a CUDA GPU)")
    ap.add_argument("--json", default=None, help="also write the measures as JSON here")
    a = ap.parse_args(argv)

    from msptycho import physics
    from msptycho.io import read_datacube
    from msptycho.io.simio import read_truth, read_vacuum_probe
    from msptycho.ptycho import ReconstructionParameters, reconstruct

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    raw = Path(a.raw_dir)
    dc, cal = read_datacube(raw / "datacube.h5")
    vac, _ = read_vacuum_probe(raw / "vacuum_probe.h5")
    truth = read_truth(raw / "truth.h5")
    nz = a.slices or truth.potential_VA.shape[0]
    pr = truth.probe
    ab = physics.Aberrations(defocus_A=float(pr.get("defocus_A", 0.0)))
    params = ReconstructionParameters(num_slices=nz, slice_thickness_A=float(truth.slice_thickness_A),
                                      num_iterations=a.iterations, **json.loads(a.params))
    t0 = time.perf_counter()
    res = reconstruct(dc, cal, params, initial_aberrations=ab, vacuum_probe_intensity=vac, backend=a.backend)
    wall = time.perf_counter() - t0

    shape = res.potential_VA.shape[1:]
    tp = np.stack([resample_to(truth.origin_A, truth.sampling_A, t, res.origin_A, res.sampling_A, shape)
                   for t in truth.potential_VA])
    mask = np.stack([resample_to(truth.origin_A, truth.sampling_A, m.astype(float), res.origin_A,
                                 res.sampling_A, shape) > 0.5 for m in truth.particle_mask]).any(axis=0)
    core = np.stack([resample_to(truth.origin_A, truth.sampling_A, m.astype(float), res.origin_A,
                                 res.sampling_A, shape) > 0.5 for m in truth.core_mask])
    # scanned area only
    p = res.positions_initial_A
    x = res.origin_A[0] + res.sampling_A * np.arange(shape[0])
    y = res.origin_A[1] + res.sampling_A * np.arange(shape[1])
    scanned = ((x[:, None] >= p[:, 0].min()) & (x[:, None] <= p[:, 0].max())
               & (y[None, :] >= p[:, 1].min()) & (y[None, :] <= p[:, 1].max()))
    m = mask & scanned
    r = lambda u, v: float(np.corrcoef(u[m], v[m])[0, 1])  # noqa: E731
    nt = tp.shape[0]
    print(f"{a.backend} backend reconstruction: {nz} slices of {res.slice_thickness_A} A, {res.iterations_done} iterations "
          f"in {wall:.1f} s ({np.mean(res.seconds_history):.2f} s per iteration, {res.fft_library} FFTs)")
    print(f"error {res.error_history[0]:.4g} -> {res.error_history[-1]:.4g}")
    per = [r(res.potential_VA[k], tp[k]) for k in range(nz)] if nz == nt else []
    if per:
        print("per-slice Pearson r over the particle:", " ".join(f"{v:.3f}" for v in per))
    proj = r(res.potential_VA.sum(0), tp.sum(0))
    print(f"projected potential Pearson r over the particle: {proj:.3f}")
    # core contrast per slice: mean potential in the core minus in the shell, per slice
    cm = core.any(axis=0) & m
    sm = m & ~cm
    contrast = [float(res.potential_VA[k][cm].mean() - res.potential_VA[k][sm].mean()) for k in range(nz)]
    tcon = [float(tp[k][cm].mean() - tp[k][sm].mean()) for k in range(nt)]
    print("core contrast per slice (recon):", " ".join(f"{v:.1f}" for v in contrast))
    print("core contrast per slice (truth):", " ".join(f"{v:.1f}" for v in tcon))
    print(f"core contrast peaks at slice {int(np.argmax(contrast))} (truth {int(np.argmax(tcon))}; "
          f"true core centre z = {truth.core_center_A[2]:.1f} A)")
    tpos = truth.scan_positions_A.reshape(-1, 2)
    rms = lambda q: float(np.sqrt(np.mean(np.sum((q - tpos) ** 2, axis=1))))  # noqa: E731
    d = res.positions_A - tpos
    print(f"RMS position error: {rms(res.positions_initial_A):.3f} A -> {rms(res.positions_A):.3f} A "
          f"({float(np.sqrt(np.mean(np.sum((d - d.mean(0)) ** 2, axis=1)))):.3f} A after removing the mean shift)")
    if a.json:
        Path(a.json).write_text(json.dumps(dict(
            backend=a.backend, slices=nz, iterations=res.iterations_done, wall_s=wall,
            seconds_per_iteration=float(np.mean(res.seconds_history)), error_history=list(map(float, res.error_history)),
            per_slice_r=per, projected_r=proj, core_contrast_peak_slice=int(np.argmax(contrast)),
            true_core_peak_slice=int(np.argmax(tcon)), position_rms_A=[rms(res.positions_initial_A),
                                                                      rms(res.positions_A)]), indent=1))
    if a.out:
        from msptycho.figures.convergence import plot_convergence
        from msptycho.io import Provenance
        from msptycho.io.reconstruction import write_reconstruction
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        write_reconstruction(out / "reconstruction.h5", res, Provenance(rule="validate_ptycho", params=params.to_dict()))
        plot_convergence(res, out / "convergence.png")


if __name__ == "__main__":
    main()
