"""Rule calibrate: Bayesian optimisation of the reconstruction's starting point."""
import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")  # the library, also in envs without msptycho installed
import dataclasses

from msptycho.calibrate import CalibrationSettings, calibrate, write_calibration_json
from msptycho.figures.trace import plot_calibration_trace
from msptycho.io import InputError, Provenance, read_datacube
from msptycho.io.calib_io import read_parallax
from msptycho.io.simio import read_truth, read_vacuum_probe
from msptycho.logs import setup_logging
from msptycho.ptycho import ReconstructionParameters

log = setup_logging(snakemake.log[0])
inp, par = snakemake.input, snakemake.params
try:
    settings = CalibrationSettings.from_mapping({**par.calibrate, "seed": par.seed}, "config 'calibrate'")
    recon = ReconstructionParameters.from_mapping(
        {**{k: v for k, v in par.reconstruct.items() if k != "engine"}, "seed": par.seed,
         "fft_workers": snakemake.threads}, "config 'reconstruct'")
    cube, cal = read_datacube(inp.datacube)
    px = read_parallax(inp.parallax)
    start = px.aberrations
    vacuum = read_vacuum_probe(inp.vacuum_probe)[0] if inp.get("vacuum_probe") else None
    log.info("start (parallax): %s, scan rotation %.2f deg", start.as_dict(), px.scan_rotation_deg)
    result = calibrate(cube, cal, start, px.scan_rotation_deg, recon, settings, logger=log,
                       transpose=px.transpose, vacuum_probe_intensity=vacuum)
except InputError as e:
    log.error("%s", e)
    raise SystemExit(1)
truth = None
if inp.get("truth"):
    truth = {"defocus_A": read_truth(inp.truth).probe["defocus_A"], "scan_rotation_deg": 0.0}
    log.info("truth: %s; parallax %.1f A; calibrated %.1f A", truth, px.defocus_A, result.aberrations.defocus_A)
prov = Provenance.collect("calibrate", {"calibrate": dataclasses.asdict(settings)}, list(snakemake.input),
                          seed=par.seed, project_dir=f"{snakemake.scriptdir}/..")
write_calibration_json(snakemake.output.calibration, result, prov)
plot_calibration_trace(result, snakemake.output.figure, title=snakemake.wildcards.sample, truth=truth)
