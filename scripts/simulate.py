"""Rule simulate: a synthetic sample's four HDF5 files and its model/truth figure."""
import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")  # the library, also in envs without msptycho installed
import dataclasses

from msptycho.figures.simulation import simulation_overview
from msptycho.io import Provenance
from msptycho.io.simio import write_simulation
from msptycho.logs import setup_logging
from msptycho.simulate import configured, simulate_sample

log = setup_logging(snakemake.log[0])
params = configured(snakemake.wildcards.sample, snakemake.params.preset, snakemake.params.overrides,
                    snakemake.params.seed)
prov = Provenance.collect("simulate", {"simulation": dataclasses.asdict(params),
                                       "recon_slice_thickness_A": snakemake.params.recon_slice_thickness_A},
                          seed=params.seed, project_dir=f"{snakemake.scriptdir}/..")
log.info("simulating %s (preset %s, seed %d)", params.name, snakemake.params.preset, params.seed)
result = simulate_sample(params, recon_slice_thickness_A=snakemake.params.recon_slice_thickness_A, logger=log,
                         workers=snakemake.threads)
out = snakemake.output
write_simulation(result, out.datacube, out.scan_pair, out.vacuum_probe, out.truth, prov)
simulation_overview(result.truth, result.scan_pair.images, result.datacube.mean(axis=(0, 1)), result.vacuum_probe,
                    result.model, name=params.name, mrad_per_pixel=result.calibration.mrad_per_pixel,
                    haadf_pixel_A=result.scan_pair.pixel_size_A, path=out.figure)
log.info("timings (s): %s", {k: round(v, 2) for k, v in result.timings_s.items()})
