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
from msptycho.simulate.truth import defocus_reference_planes
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
    # the reconstruction's probe is defined at its first slab's plane: msptycho.simulate.truth.defocus_reference_planes
    planes = defocus_reference_planes(read_truth(inp.truth))
    truth = {"defocus_A": planes["defocus_first_slab_A"], "scan_rotation_deg": 0.0}
    ref = planes["defocus_first_slab_A"]
    log.info("truth: defocus %.1f A at the entrance surface, %.1f A at the first slab's mid-plane (the "
             "reconstruction's reference), %.1f A at the parallax plane; scan rotation 0 deg",
             planes["defocus_entrance_A"], ref, planes["defocus_parallax_A"])
    log.info("calibrated vs truth (first slab): defocus %.1f A vs %.1f A (%+.1f %%; parallax start %.1f A, "
             "%+.1f %%; vs the entrance's %.1f A: %+.1f %%), scan rotation %.2f deg vs 0 (parallax %.2f deg)",
             result.defocus_A, ref, 100 * (result.defocus_A / ref - 1), px.defocus_A, 100 * (px.defocus_A / ref - 1),
             planes["defocus_entrance_A"], 100 * (result.defocus_A / planes["defocus_entrance_A"] - 1),
             result.scan_rotation_deg, px.scan_rotation_deg)
prov = Provenance.collect("calibrate", {"calibrate": dataclasses.asdict(settings)}, list(snakemake.input),
                          seed=par.seed, project_dir=f"{snakemake.scriptdir}/..")
write_calibration_json(snakemake.output.calibration, result, prov)
plot_calibration_trace(result, snakemake.output.figure, title=snakemake.wildcards.sample, truth=truth)
