"""Rule reconstruct / reconstruct_gpu: canonical datacube + calibration -> reconstruction.h5."""
import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")  # the library, also in envs without msptycho installed
import dataclasses
import os
from pathlib import Path

from msptycho.calibrate import read_calibration_json
from msptycho.figures.convergence import plot_convergence
from msptycho.io import InputError, Provenance, open_datacube
from msptycho.io.reconstruction import write_reconstruction
from msptycho.io.simio import read_vacuum_probe
from msptycho.logs import setup_logging
from msptycho.ptycho import ReconstructionParameters, reconstruct

log = setup_logging(snakemake.log[0])
inp, out = snakemake.input, snakemake.output
settings = {k: v for k, v in dict(snakemake.params.reconstruct).items() if k != "engine"}
try:
    # the datacube stays on disk: reconstruct() reads it a scan row at a time into its amplitudes
    with open_datacube(inp.datacube) as (cube, cal):
        calib = read_calibration_json(inp.calibration)
        params = ReconstructionParameters.from_mapping(
            {**settings, "seed": snakemake.params.seed, "fft_workers": snakemake.threads}, "config 'reconstruct'")
        # the calibrated step scale, applied as in its evaluations (object and probe steps)
        scale = float(calib.best.get("step_scale", 1.0))
        params = dataclasses.replace(params, step_size=params.step_size * scale,
                                     probe_step_size=params.probe_step_size * scale).validate()
        cal = dataclasses.replace(cal, scan_rotation_deg=calib.scan_rotation_deg)
        vacuum = read_vacuum_probe(inp.vacuum_probe)[0] if inp.get("vacuum_probe") else None
        log.info("reconstructing %s: %s, start %s, rotation %.2f deg, backend %s", snakemake.wildcards.sample,
                 cube.shape, calib.aberrations.as_dict(), cal.scan_rotation_deg, snakemake.params.backend)
        checkpoint = Path(out.reconstruction).with_name(".checkpoint.h5")
        result = reconstruct(cube, cal, params, initial_aberrations=calib.aberrations, vacuum_probe_intensity=vacuum,
                             checkpoint_path=checkpoint, logger=log, backend=snakemake.params.backend)

    prov = Provenance.collect(snakemake.rule, {"reconstruct": dataclasses.asdict(params),
                                               "start": calib.aberrations.as_dict(),
                                               "scan_rotation_deg": cal.scan_rotation_deg},
                              list(snakemake.input), seed=params.seed, project_dir=f"{snakemake.scriptdir}/..")
    write_reconstruction(out.reconstruction, result, prov)
    plot_convergence(result, out.convergence)
    if checkpoint.exists():
        os.remove(checkpoint)
except InputError as e:
    log.error("%s", e)
    raise SystemExit(1)
