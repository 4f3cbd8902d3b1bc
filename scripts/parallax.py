"""Rule parallax: datacube -> defocus, astigmatism and scan rotation from tilt-corrected bright field."""
import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")  # the library, also in envs without msptycho installed
from msptycho.figures.calibration import plot_parallax
from msptycho.io import InputError, Provenance, open_datacube
from msptycho.io.calib_io import write_parallax
from msptycho.io.simio import read_truth
from msptycho.logs import setup_logging
from msptycho.parallax import parallax_fit

log = setup_logging(snakemake.log[0])
settings = {k: tuple(v) if isinstance(v, list) else v for k, v in dict(snakemake.params.parallax).items()}
try:
    with open_datacube(snakemake.input.datacube) as (dset, cal):
        result = parallax_fit(dset, cal, **settings)
except InputError as e:
    log.error("%s", e)
    raise SystemExit(1)
log.info("defocus %.1f A, C12 %.1f A at %.3f rad, scan rotation %.2f deg, transpose %s, residual %.3f A",
         result.defocus_A, result.C12_A, result.phi12_rad, result.scan_rotation_deg, result.transpose,
         result.residual_rms_A)
truth = None
if snakemake.input.get("truth"):
    probe = read_truth(snakemake.input.truth).probe
    truth = {"defocus_A": probe["defocus_A"], "C12_A": probe["C12_A"], "scan_rotation_deg": 0.0}
    log.info("truth: %s", truth)
prov = Provenance.collect("parallax", {"parallax": settings}, [snakemake.input.datacube],
                          project_dir=f"{snakemake.scriptdir}/..")
write_parallax(snakemake.output.parallax, result, prov)
plot_parallax(result, snakemake.output.figure, title=snakemake.wildcards.sample, truth=truth)
